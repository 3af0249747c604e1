"""Model-agnostic inference: plain Pyro callables, guides, ELBO choice, seeds, failures, idata, diagnostics."""

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
import zoo.hmm
from inference.posterior import Posterior
from inference.target import Target, inspect_model


def plain_mixture(y):
    """A two-component mixture written as a user would, not from the zoo."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)


def plain_regression(data):
    x, y = data
    slope = pyro.sample("slope", dist.Normal(0.0, 10.0))
    noise = pyro.sample("noise", dist.HalfNormal(5.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(slope * x, noise), obs=y)


@pytest.fixture(scope="module")
def y():
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(60, generator=g) - 3, torch.randn(40, generator=g) + 3])


def test_inspect_model_finds_structure(y):
    info = inspect_model(plain_mixture, y)
    assert info.observed == ("y",)
    assert info.enumerated == ("z",)
    assert info.global_sites == ("w", "loc")
    assert (info.data_plate, info.data_size, info.max_plate_nesting) == ("data", 100, 1)


def test_elbo_auto_picks_enumeration(y):
    info = inspect_model(plain_mixture, y)
    assert isinstance(inference.svi.make_elbo("auto", info, 1, False), pyro.infer.TraceEnum_ELBO)
    x = torch.linspace(0, 1, 20)
    info2 = inspect_model(plain_regression, (x, 2 * x))
    assert type(inference.svi.make_elbo("auto", info2, 1, False)) is pyro.infer.Trace_ELBO
    with pytest.raises(ValueError, match="cannot sum out"):
        inference.svi.make_elbo("trace", info, 1, False)


@pytest.mark.parametrize("guide", ["delta", "normal", "mvn", "iaf"])
def test_plain_model_runs_through_every_guide(y, guide):
    post = inference.fit_svi(plain_mixture, y, guide=guide, num_steps=300, lr=0.05, num_samples=200,
                             init={"w": torch.tensor([0.5, 0.5]), "loc": torch.tensor([-1.0, 1.0])},
                             progress=False)
    assert post.method == ("map" if guide == "delta" else "svi")
    assert post.samples["loc"].shape == ((1, 1, 2) if guide == "delta" else (1, 200, 2))
    locs = post.samples["loc"].mean((0, 1)).sort().values
    assert torch.allclose(locs, torch.tensor([-3.0, 3.0]), atol=0.6)
    assert "z" not in post.samples  # enumerated, hidden from the autoguide


def test_plain_model_runs_through_nuts_with_discrete_recovery(y):
    post = inference.run_nuts(plain_mixture, y, num_samples=60, warmup_steps=60, num_chains=2,
                              recover_discrete=True, init={"w": torch.tensor([0.5, 0.5]),
                                                           "loc": torch.tensor([-1.0, 1.0])}, progress=False)
    assert post.samples["loc"].shape == (2, 60, 2)
    z = post.samples["z"]
    assert z.shape == (2, 60, 100)
    # the first 60 points belong to the component at -3, the others to +3 (separation ~ 6 sd)
    low = post.samples["loc"].argmin(-1)  # (chain, draw)
    agree = (z == low.unsqueeze(-1))[..., :60].float().mean()
    assert agree > 0.97
    assert set(post.idata.groups()) >= {"posterior", "log_likelihood", "posterior_predictive",
                                        "observed_data", "sample_stats"}
    assert post.idata.sample_stats["diverging"].shape == (2, 60)


def test_unknown_guide_and_bad_sizes(y):
    with pytest.raises(ValueError, match="guide"):
        inference.fit_svi(plain_mixture, y, guide="laplace", num_steps=1, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        inference.fit_svi(plain_mixture, y, num_steps=0, progress=False)
    with pytest.raises(ValueError, match="num_chains"):
        inference.run_nuts(plain_mixture, y, num_chains=0, progress=False)
    with pytest.raises(ValueError, match="init"):
        inference.run_nuts(plain_mixture, y, num_chains=2, init=[{}], progress=False)
    with pytest.raises(TypeError, match="model"):
        inference.fit_svi(42, y, progress=False)


def test_svi_is_reproducible():
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(80, seed=0)
    a = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=5, progress=False)
    b = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=5, progress=False)
    c = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=6, progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in a.samples)
    assert a.losses != c.losses


def test_fit_does_not_mutate_the_model():
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(50, seed=0)
    post = inference.fit_svi(m, x, num_steps=20, num_samples=5, progress=False)
    assert len(list(m.parameters())) == 0          # the user's object is untouched
    assert len(list(post.model.parameters())) > 0  # the fitted copy holds the guide


@pytest.mark.parametrize("name, engine", [("gmm", "zoo"), ("gmm", "pyro"), ("hmm", "zoo")])
def test_nuts_is_reproducible_and_parallel_equals_sequential(name, engine):
    m = zoo.get(name, **({"n_components": 2} if name == "gmm" else {"n_states": 2}))
    x, _ = m.simulate(60, seed=1)
    kw = dict(num_samples=30, warmup_steps=30, num_chains=2, seed=3, engine=engine, progress=False)
    a = inference.run_nuts(m, x, chain_method="parallel", **kw)
    b = inference.run_nuts(m, x, chain_method="sequential", **kw)
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in a.samples)
    np.testing.assert_array_equal(a.sample_stats["step_size"], b.sample_stats["step_size"])
    assert not torch.equal(a.samples["locs"][0], a.samples["locs"][1])  # chains are seeded apart
    expected = {"pyro": "pyro kernel", "zoo": "graph" if name == "gmm" else "closed form"}[engine]
    assert a.settings["potential"] == expected


class _OffByOne(zoo.hmm.HiddenMarkovModel):
    """An HMM whose closed-form log density is wrong by a constant (or misses a site)."""

    def __init__(self, drop: str | None = None):
        super().__init__(2)
        self.drop = drop

    def log_density(self, data):
        transforms, fn = super().log_density(data)
        if self.drop:
            return {k: t for k, t in transforms.items() if k != self.drop}, fn
        return transforms, lambda u: (fn(u)[0] + 1.0, fn(u)[1])


def test_closed_form_log_density_is_checked_against_the_pyro_model():
    x, _ = zoo.get("hmm", n_states=2).simulate(20, seed=0)
    kw = dict(num_samples=2, warmup_steps=2, num_chains=1, progress=False)
    with pytest.raises(RuntimeError, match="does not match"):
        inference.run_nuts(_OffByOne(), x, **kw)
    with pytest.raises(ValueError, match="latent sites"):
        inference.run_nuts(_OffByOne(drop="locs"), x, **kw)
    # the model as written, traced: its forward algorithm is compiled numba, opaque to the tracer,
    # so the traced graph disagrees with Pyro's potential and the eager route is used instead
    post = inference.run_nuts(_OffByOne(), x, potential="graph", **kw)
    assert post.settings["potential"] == "eager"
    assert inference.run_nuts(_OffByOne(), x, engine="pyro", **kw).settings["potential"] == "pyro kernel"
    assert inference.run_nuts(zoo.get("hmm", n_states=2), x, **kw).settings["potential"] == "closed form"


def test_nan_loss_stops_with_step_and_restores_last_finite_parameters():
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.1), obs=data)

    def guide(data):
        loc = pyro.param("nan_test_loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, (2.0 - loc).sqrt()))   # NaN once loc passes 2

    pyro.clear_param_store()
    with pytest.raises(inference.SVIDivergedError, match=r"non-finite at step \d+") as err:
        inference.fit_svi(model, torch.tensor(10.0), guide=guide, num_steps=500, lr=0.1, lr_decay=1.0,
                          clip_norm=None, progress=False)
    assert err.value.step > 0 and np.isfinite(err.value.losses[-2]) and not np.isfinite(err.value.losses[-1])
    assert float(pyro.param("nan_test_loc").detach()) < 2.0
    pyro.clear_param_store()


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


def _fake(samples, stats=None):
    target = Target(plain_mixture)
    y = torch.zeros(4)
    return Posterior(target, y, samples, method="nuts", wall_time=1.0, sample_stats=stats)


def test_diagnose_flags_rhat_ess_and_divergences():
    g = torch.Generator().manual_seed(0)
    good = {"w": torch.distributions.Dirichlet(torch.ones(2)).sample((4, 1000)),
            "loc": torch.randn(4, 1000, 2, generator=g)}
    d = inference.diagnose(_fake(good, {"diverging": np.zeros((4, 1000), bool)}))
    assert d.ok and d.divergences == 0, str(d)
    assert list(d.summary.columns[:2]) == ["mean", "sd"] and "r_hat" in d.summary

    shifted = dict(good, loc=good["loc"] + torch.tensor([0.0, 0.0, 0.0, 3.0]).view(4, 1, 1))
    stats = np.zeros((4, 1000), bool)
    stats[1, 10] = True
    d = inference.diagnose(_fake(shifted, {"diverging": stats}))
    assert not d.ok
    assert any("R-hat" in r for r in d.reasons) and any("divergent" in r for r in d.reasons)

    short = {k: v[:, :50] for k, v in good.items()}
    assert any("ESS_bulk" in r for r in inference.diagnose(_fake(short)).reasons)


def test_compare_computes_standardized_differences():
    g = torch.Generator().manual_seed(1)
    a = {"w": torch.full((1, 4000, 2), 0.5), "loc": torch.randn(1, 4000, 2, generator=g) * 3 + 1}
    b = {"w": torch.full((2, 2000, 2), 0.5), "loc": torch.randn(2, 2000, 2, generator=g)}
    table = inference.compare(_fake(a), _fake(b), labels=("a", "b"))
    row = table.loc["loc[0]"]
    assert row["smd"] == pytest.approx((row["mean_a"] - row["mean_b"]) / row["sd_b"])
    assert row["smd"] == pytest.approx(1.0, abs=0.1)        # 1 sd apart, MC error ~ 0.03
    assert row["sd_ratio"] == pytest.approx(3.0, rel=0.05)
    assert "means differ" in row["verdict"] and "too large" in row["verdict"]
    assert table.attrs["labels"] == ("a", "b")


def test_posterior_predictive_draws_new_data(y):
    """Replicated data are drawn from the model (observed sites unconditioned), not copies of y."""
    post = inference.fit_svi(plain_mixture, y, guide="delta", num_steps=300, lr=0.05, progress=False,
                             init={"w": torch.tensor([0.5, 0.5]), "loc": torch.tensor([-1.0, 1.0])})
    replicated = post.posterior_predictive()["y"]
    assert replicated.shape == (1, 1, 100) and not torch.equal(replicated[0, 0], y)
    # a draw of 100 points from the fitted mixture (sd about 3.2): its mean is within 4 * 3.2 / 10 of y's
    assert abs(float(replicated.mean() - y.mean())) < 1.3


def test_pyro_kernel_private_members_still_exist():
    """engine="pyro" reads three private members of Pyro's NUTS kernel (inference.mcmc._run_chain)."""
    from pyro.infer import NUTS

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    kernel = NUTS(model)
    kernel.setup(5, torch.zeros(3))
    assert callable(kernel.potential_fn)
    assert hasattr(kernel, "_mean_accept_prob")
    assert callable(kernel._adapter.reset_step_size_adaptation)
    kernel.cleanup()
