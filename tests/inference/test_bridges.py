"""inference.from_pyro: a Pyro user's MCMC run, trained guide or draws as a Posterior.

Checked against Pyro's own results (its draws, divergences and acceptance rates; the trained guide's
parameters), against the same model fitted by the zoo, and against a numpy computation of the
MARGINAL pointwise log-likelihood (enumerated assignments summed out).
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from scipy import special, stats

import inference
import zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def regression(x, y=None):
    a = pyro.sample("a", dist.Normal(0.0, 10.0))
    b = pyro.sample("b", dist.Normal(0.0, 10.0))
    s = pyro.sample("s", dist.HalfNormal(5.0))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal(a + b * x, s), obs=y)


def mixture(x, y=None):
    """Two components shifted by a covariate; the assignments z are enumerated (summed out by NUTS)."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(loc[z] + 0.5 * x, 1.0), obs=y)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, generator=g)
    y_reg = 1.0 + 2.0 * x + 0.5 * torch.randn(30, generator=g)
    y_mix = torch.cat([torch.randn(15, generator=g) - 3, torch.randn(15, generator=g) + 3]) + 0.5 * x
    return x, y_reg, y_mix


def run_pyro_mcmc(model, *args, num_chains=1, **kwargs):
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(model, max_plate_nesting=1), num_samples=100, warmup_steps=100, num_chains=num_chains,
                disable_progbar=True)
    mcmc.run(*args, **kwargs)
    return mcmc


def flat(post, name) -> np.ndarray:
    return post.samples[name].reshape(-1, *post.samples[name].shape[2:]).double().numpy()


def loglik(post, var="y") -> np.ndarray:
    values = post.idata.log_likelihood[var].values
    return values.reshape(-1, *values.shape[2:])


def regression_loglik(post, x, y) -> np.ndarray:
    a, b, s = (flat(post, k)[:, None] for k in ("a", "b", "s"))
    return stats.norm.logpdf(y.numpy(), a + b * x.numpy(), s)


def test_mcmc_of_an_enumerated_mixture_gets_the_marginal_log_likelihood(data):
    x, _, y = data
    mcmc = run_pyro_mcmc(mixture, x, y=y)
    post = inference.from_pyro(mcmc)   # the kernel's model, the run's arguments
    assert post.method == "nuts" and (post.num_chains, post.num_draws) == (1, 100)
    for k, v in mcmc.get_samples(group_by_chain=True).items():
        assert torch.equal(post.samples[k], v)
    w, loc = flat(post, "w"), flat(post, "loc")
    # log p(y_n | w, loc) = logsumexp_k [log w_k + log N(y_n; loc_k + x_n / 2, 1)]
    expected = special.logsumexp(np.log(w)[:, None, :] + stats.norm.logpdf(
        y.numpy()[None, :, None], loc[:, None, :] + 0.5 * x.numpy()[None, :, None], 1.0), axis=-1)
    np.testing.assert_allclose(loglik(post), expected, rtol=1e-5)
    assert np.isfinite(float(inference.loo(post).elpd_loo))
    np.testing.assert_array_equal(post.idata.observed_data["y"].values, y.numpy())
    assert post.idata.posterior_predictive["y"].shape[-1] == 30


def test_mcmc_in_two_chains_against_the_zoo(data, tmp_path):
    x, y, _ = data
    mcmc = run_pyro_mcmc(regression, x, y=y, num_chains=2)
    post = inference.from_pyro(mcmc, regression, model_args=(x,), model_kwargs={"y": y},
                               dims={"y": ["obs_id"]}, coords={"obs_id": np.arange(30) + 1})
    assert post.idata.posterior["a"].shape == (2, 100)
    assert post.idata.log_likelihood["y"].dims == ("chain", "draw", "obs_id")
    np.testing.assert_allclose(loglik(post), regression_loglik(post, x, y), rtol=1e-5, atol=1e-6)
    diagnostics = mcmc.diagnostics()
    diverging = post.idata.sample_stats["diverging"].values
    for c in range(2):
        assert sorted(np.flatnonzero(diverging[c])) == sorted(diagnostics["divergences"][f"chain {c}"])
        assert post.settings["acceptance_rate"][c] == pytest.approx(diagnostics["acceptance rate"][f"chain {c}"],
                                                                    abs=1e-4)
    zoo_nuts = inference.run_nuts(regression, model_args=(x,), model_kwargs={"y": y}, num_samples=200,
                                  warmup_steps=200, num_chains=1, progress=False)
    # the same posterior: means agree within 4 Monte Carlo standard errors (sd / sqrt(ESS) of each run)
    summaries = [inference.diagnose(p).summary for p in (post, zoo_nuts)]
    for name in ("a", "b", "s"):
        se = np.sqrt(sum(float(t.loc[name, "sd"]) ** 2 / float(t.loc[name, "ess_bulk"]) for t in summaries))
        assert abs(flat(post, name).mean() - flat(zoo_nuts, name).mean()) < 4 * se, name
    assert len(inference.compare(post, zoo_nuts)) == 3
    table = inference.select({"pyro": post, "zoo": zoo_nuts})
    assert np.isfinite(table["elpd_loo"]).all()
    out = inference.write_report(tmp_path / "report", {"pyro": post, "nuts": zoo_nuts})
    assert {"posterior_pyro.nc", "posterior_nuts.nc", "report.html"} <= {p.name for p in out.iterdir()}


def test_trained_guides(data):
    x, y, _ = data
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(regression)
    svi = SVI(regression, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, y=y)
    store = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    rng = torch.get_rng_state()
    post = inference.from_pyro(guide, regression, model_args=(x,), model_kwargs={"y": y}, num_samples=1000)
    assert torch.equal(torch.get_rng_state(), rng)   # seeded draws, the global RNG untouched
    assert post.method == "svi" and post.num_draws == 1000
    # draws of `a` are Normal(loc, scale) at the trained parameters: mean within 4 sd / sqrt(1000), sd within
    # 4 standard errors of a sample sd, sd / sqrt(2 * 1000)
    loc, scale = float(guide.locs.a.detach()), float(guide.scales.a.detach())
    assert abs(flat(post, "a").mean() - loc) < 4 * scale / np.sqrt(1000)
    assert abs(flat(post, "a").std() / scale - 1) < 4 / np.sqrt(2000)
    np.testing.assert_allclose(loglik(post), regression_loglik(post, x, y), rtol=1e-5, atol=1e-6)
    again = inference.from_pyro(guide, regression, model_args=(x,), model_kwargs={"y": y}, num_samples=1000)
    assert torch.equal(again.samples["b"], post.samples["b"])   # same seed, same draws
    assert all(torch.equal(v.detach(), store[k]) for k, v in pyro.get_param_store().items())   # store unchanged

    # a classic guide: its parameters live in Pyro's store, where SVI trained them
    def classic(x, y=None):
        for k in ("a", "b"):
            pyro.sample(k, dist.Normal(pyro.param(f"{k}_loc", torch.tensor(0.0)), 0.1))
        pyro.sample("s", dist.LogNormal(pyro.param("s_loc", torch.tensor(0.0)), 0.1))

    pyro.clear_param_store()
    svi = SVI(regression, classic, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(300):
        svi.step(x, y=y)
    post = inference.from_pyro(classic, regression, model_args=(x,), model_kwargs={"y": y}, num_samples=400)
    assert abs(flat(post, "b").mean() - float(pyro.param("b_loc").detach())) < 4 * 0.1 / np.sqrt(400)

    delta = AutoDelta(regression)
    svi = SVI(regression, delta, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(100):
        svi.step(x, y=y)
    point = inference.from_pyro(delta, regression, model_args=(x,), model_kwargs={"y": y})
    assert point.method == "map" and point.num_draws == 1
    assert float(point.samples["s"]) == pytest.approx(float(delta.median(x, y=y)["s"]))


def test_a_dict_of_draws_and_a_zoo_model(data):
    x, y, _ = data
    rng = np.random.default_rng(0)
    draws = {"a": rng.normal(1, 0.1, (2, 50)), "b": rng.normal(2, 0.1, (2, 50)), "s": rng.uniform(0.4, 0.6, (2, 50))}
    post = inference.from_pyro(draws, regression, model_args=(x,), model_kwargs={"y": y})
    assert post.method == "draws" and post.samples["a"].dtype == torch.float32   # the model's dtype
    np.testing.assert_allclose(flat(post, "a"), draws["a"].reshape(-1).astype(np.float32))
    np.testing.assert_allclose(loglik(post), regression_loglik(post, x, y), rtol=1e-5, atol=1e-6)

    m = zoo.get("gmm", n_components=2, dim=1, prior_center=0.0, prior_spread=1.0)
    points, truth = m.simulate(40, seed=0)
    points = m.validate(points)
    post = inference.from_pyro({k: torch.as_tensor(truth[k])[None, None] for k in m.global_sites}, m,
                               model_args=(points,))
    expected = m.log_likelihood(points, {k: torch.as_tensor(truth[k]) for k in m.global_sites})
    np.testing.assert_allclose(post.log_likelihood[0, 0].numpy(), expected.numpy(), rtol=1e-6)


def test_bad_inputs_name_the_argument(data):
    x, y, _ = data
    args = dict(model_args=(x,), model_kwargs={"y": y})
    with pytest.raises(TypeError, match="obj: expected a pyro.infer.MCMC"):
        inference.from_pyro(42, regression, **args)
    with pytest.raises(ValueError, match="model: needed"):
        inference.from_pyro(AutoNormal(regression), **args)
    with pytest.raises(ValueError, match="obj: this MCMC has not run"):
        inference.from_pyro(MCMC(NUTS(regression), num_samples=10))
    with pytest.raises(ValueError, match="num_samples"):
        inference.from_pyro(AutoNormal(regression), regression, num_samples=0, **args)
    with pytest.raises(ValueError, match=r"obj: draws of \['slope'\], which are not latent sites"):
        inference.from_pyro({"slope": np.zeros((1, 5))}, regression, **args)
    with pytest.raises(ValueError, match="obj: draws of 'b' have shape"):
        inference.from_pyro({"a": np.zeros((1, 5)), "b": np.zeros((2, 5))}, regression, **args)


def test_pyro_mcmc_private_arguments_still_exist(data):
    """``from_pyro(mcmc)`` takes the run's arguments from ``MCMC._args`` / ``_kwargs`` (private, as
    ``az.from_pyro`` does); this fails loudly when Pyro renames them."""
    x, y, _ = data
    mcmc = MCMC(NUTS(regression), num_samples=2, warmup_steps=2, disable_progbar=True)
    assert mcmc._args is None
    mcmc.run(x, y=y)
    assert mcmc._args == (x,) and mcmc._kwargs == {"y": y}
