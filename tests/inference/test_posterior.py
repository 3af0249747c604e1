"""inference.posterior: netCDF round trip, posterior predictive draws."""

import arviz as az
import numpy as np
import pytest
import torch

import inference
import zoo


def test_to_netcdf_round_trip_and_refuses_overwrite(tmp_path):
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(40, seed=2)
    post = inference.fit_svi(m, x, num_steps=10, num_samples=10, progress=False)
    path = post.to_netcdf(tmp_path / "p.nc")
    back = az.from_netcdf(path)
    np.testing.assert_allclose(back.posterior["locs"].values, post.idata.posterior["locs"].values)
    assert back.posterior["locs"].dims == ("chain", "draw", "component", "feature")
    assert back.log_likelihood["obs"].dims == ("chain", "draw", "point")
    with pytest.raises(FileExistsError, match="exists"):
        post.to_netcdf(tmp_path / "p.nc")


def test_posterior_predictive_draws_new_data(y, plain_mixture):
    """Replicated data are drawn from the model (observed sites unconditioned), not copies of y."""
    post = inference.fit_svi(plain_mixture, y, guide="delta", num_steps=300, lr=0.05, progress=False,
                             init={"w": torch.tensor([0.5, 0.5]), "loc": torch.tensor([-1.0, 1.0])})
    replicated = post.posterior_predictive()["y"]
    assert replicated.shape == (1, 1, 100) and not torch.equal(replicated[0, 0], y)
    # a draw of 100 points from the fitted mixture (sd about 3.2): its mean is within 4 * 3.2 / 10 of y's
    assert abs(float(replicated.mean() - y.mean())) < 1.3


def test_heldout_scores_are_the_log_mean_likelihood_per_point_computed_by_hand():
    from inference.posterior import heldout

    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(60, seed=4)
    train, valid, test = x[:30], x[30:45], x[45:]
    post = inference.fit_svi(m, train, num_steps=30, num_samples=50, seed=0, progress=False)
    table = heldout(post, {"valid": valid, "test": test, "train": post.data})
    assert list(table.index) == ["valid", "test", "train"] and table.attrs["csv"] == "heldout.csv"
    draws = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.samples.items()}          # (50, ...)
    for split, data in (("valid", valid), ("test", test), ("train", train)):
        ll = m.log_likelihood(data, draws).double().numpy()                               # (50, N)
        lpd = np.log(np.exp(ll - ll.max(0)).mean(0)) + ll.max(0)                          # log mean_s p(x_n | s)
        row = table.loc[split]
        assert (row.points, row.observations) == (len(data), len(data))
        np.testing.assert_allclose(row.lpd, lpd.sum(), rtol=1e-5)
        np.testing.assert_allclose(row.nll_per_observation, -lpd.mean(), rtol=1e-5)
        np.testing.assert_allclose(row.se, lpd.std(ddof=1) / np.sqrt(len(lpd)), rtol=1e-5)
