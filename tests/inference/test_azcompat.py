"""inference.azcompat on the installed ArviZ: each function against numbers computed here."""

import numpy as np

from inference import azcompat


def test_from_dict_groups_coords_dims_attrs():
    rng = np.random.default_rng(0)
    idata = azcompat.from_dict({"posterior": {"mu": rng.normal(size=(2, 50, 3))},
                                "log_likelihood": {"y": rng.normal(size=(2, 50, 4))}},
                               coords={"k": ["a", "b", "c"]}, dims={"mu": ["k"], "y": ["obs"]}, attrs={"run": "x"})
    assert isinstance(idata, azcompat.InferenceData)
    assert idata.posterior["mu"].dims == ("chain", "draw", "k") and list(idata.posterior["k"].values) == ["a", "b", "c"]
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert idata.posterior.attrs["run"] == idata.log_likelihood.attrs["run"] == "x"


def test_custom_groups_survive_a_netcdf_round_trip(tmp_path):
    values = np.arange(10.0).reshape(1, 10)
    idata = azcompat.from_groups({"prior_sbc": {"r": values}}, attrs={"model": "m"})
    idata.to_netcdf(str(tmp_path / "x.nc"))
    back = azcompat.from_netcdf(tmp_path / "x.nc")
    np.testing.assert_array_equal(back["prior_sbc"]["r"].values, values)
    assert back["prior_sbc"].attrs["model"] == "m"


def test_ess_of_independent_draws_and_of_an_ar1_chain():
    """Independent draws: ESS near the number of draws. AR(1) with coefficient phi: ESS near
    N (1 - phi) / (1 + phi) (the integrated autocorrelation time); 4 chains of 2000 draws. The estimator's
    relative sd is about 5% (independent) and 10% (AR(1)) at these sizes: the bounds are 3 of them."""
    rng = np.random.default_rng(1)
    iid = rng.normal(size=(4, 2000))
    assert 0.85 * iid.size < float(azcompat.ess(iid)) < 1.15 * iid.size
    phi, x = 0.8, np.zeros((4, 2000))
    for t in range(1, 2000):
        x[:, t] = phi * x[:, t - 1] + rng.normal(size=4)
    expected = x.size * (1 - phi) / (1 + phi)
    assert 0.7 * expected < float(azcompat.ess(x)) < 1.3 * expected
    assert azcompat.ess(rng.normal(size=(2, 100, 3)), method="tail").shape == (3,)
