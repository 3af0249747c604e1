"""inference.sampling.mcmc (run_nuts): plain Pyro callables with discrete recovery, seeds and parallel chains, the
closed-form density check, bad inputs, and the private members of Pyro's kernel it reads."""

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import ExpTransform, OrderedTransform

import inference
import zoo
import zoo.hmm


def test_plain_model_runs_through_nuts_with_discrete_recovery(y, plain_mixture):
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


def test_bad_chain_count_and_init(y, plain_mixture):
    with pytest.raises(ValueError, match="num_chains"):
        inference.run_nuts(plain_mixture, y, num_chains=0, progress=False)
    with pytest.raises(ValueError, match="init"):
        inference.run_nuts(plain_mixture, y, num_chains=2, init=[{}], progress=False)


def test_a_discrete_site_pyros_kernel_cannot_draw_is_a_one_line_error(poisson_count):
    """A latent Poisson count (infinite support), and a Bernoulli nobody marked for enumeration: the zoo's
    engine moves them by Gibbs updates (tests/inference/sampling/test_hmc_within_gibbs.py); Pyro's kernel cannot, and
    says so in one line naming the site, its distribution and what would work (it used to fail in
    biject_to, or to leave the Bernoulli out of the log-likelihood)."""
    def unmarked(y):
        p = pyro.sample("p", dist.Beta(1.0, 1.0))
        with pyro.plate("data", len(y)):
            z = pyro.sample("z", dist.Bernoulli(p))
            pyro.sample("y", dist.Normal(3.0 * z, 1.0), obs=y)

    y = torch.tensor([0.1, 2.9, 3.2, -0.4])
    for model, site in ((poisson_count, "'n' (Poisson, infinite support)"), (unmarked, "'z' (Bernoulli, finite support)")):
        with pytest.raises(ValueError) as e:
            inference.run_nuts(model, y, num_samples=5, warmup_steps=5, num_chains=1, engine="pyro", progress=False)
        message = str(e.value)
        assert "\n" not in message and site in message and "infer={'enumerate': 'parallel'}" in message
        assert "engine='zoo'" in message


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


def test_the_pyro_engine_is_pyros_own_nuts():
    """engine="pyro" runs Pyro's kernel through its public API (initialize_model, NUTS(potential_fn=...)) and
    patches nothing: with the chain's seed and the same start strategy, its draws are exactly those of
    pyro.infer.MCMC on the model; the chain's acceptance rate is Pyro's."""
    from pyro.infer import MCMC, NUTS

    from inference.initialization import init_to_uniform_any
    from inference.target import chain_seed

    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, sigma), obs=data)

    y = torch.tensor([0.3, -1.2, 0.8, 2.1, 0.4], dtype=torch.float64)
    post = inference.run_nuts(model, y, num_samples=40, warmup_steps=40, num_chains=1, seed=5, engine="pyro",
                              progress=False)
    pyro.set_rng_seed(chain_seed(5, 0))
    mcmc = MCMC(NUTS(model, max_plate_nesting=1, init_strategy=init_to_uniform_any), num_samples=40,
                warmup_steps=40, disable_progbar=True)
    mcmc.run(y)
    for k, v in mcmc.get_samples(group_by_chain=True).items():
        assert torch.equal(post.samples[k], v), k
    assert post.settings["acceptance_rate"] == [round(float(mcmc.diagnostics()["acceptance rate"]["chain 0"]), 4)]


def _line(data):
    """A straight line through points away from x = 0: intercept and slope correlate at about -0.96."""
    x, y = data
    intercept = pyro.sample("intercept", dist.Normal(0.0, 10.0))
    slope = pyro.sample("slope", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(intercept + slope * x, 0.5), obs=y)


def test_dense_mass_runs_the_zoo_engine_and_records_the_adapted_metric():
    """The conjugate posterior is Gaussian with precision X'X / 0.25 + I / 100: the means of the draws are
    within 4.5 Monte Carlo sd (sqrt(var / ESS)) of its mean; each chain's adapted inverse metric (the
    unconstrained vector is the constrained one here) carries its correlation: Stan's estimate from the
    last window's 50 draws, within 0.08 of it (sd of a correlation (1 - rho^2) / sqrt(n) = 0.016 at 25
    effective draws: about 5 sd)."""
    import arviz as az

    g = torch.Generator().manual_seed(0)
    x = torch.linspace(1.0, 3.0, 20, dtype=torch.float64)
    y = 1.0 + 2.0 * x + 0.5 * torch.randn(20, generator=g, dtype=torch.float64)
    design = np.stack([np.ones(20), x.numpy()], 1)
    cov = np.linalg.inv(design.T @ design / 0.25 + np.eye(2) / 100)
    mean = cov @ design.T @ y.numpy() / 0.25
    post = inference.run_nuts(_line, (x, y), num_samples=150, warmup_steps=200, num_chains=2, dense_mass=True,
                              chain_method="sequential", progress=False)
    assert post.settings["engine"] == "zoo" and post.settings["potential"] != "pyro kernel"
    assert post.adaptation["step_size"].shape == (2,) and post.adaptation["inverse_metric"].shape == (2, 2, 2)
    np.testing.assert_array_equal(post.adaptation["step_size"], post.sample_stats["step_size"][:, 0])
    for i, site in enumerate(("intercept", "slope")):
        draws = post.samples[site].numpy()
        ess = float(az.ess(draws, method="mean"))
        assert abs(draws.mean() - mean[i]) < 4.5 * np.sqrt(cov[i, i] / ess), (site, draws.mean(), mean[i])
    rho = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    for inverse in post.adaptation["inverse_metric"]:
        assert abs(inverse[0, 1] / np.sqrt(inverse[0, 0] * inverse[1, 1]) - rho) < 0.08, (inverse, rho)


def test_ordered_positive_model_samples_its_posterior(ordered_positive, ordinal):
    """The model whose support is wider than its prior's values samples like Pyro (which retries initial
    points until the potential is finite), and its posterior means match importance sampling."""
    y = torch.tensor(ordinal, dtype=torch.float64)
    post = inference.run_nuts(ordered_positive, y, num_samples=400, warmup_steps=400, num_chains=1, seed=0,
                              progress=False)
    draws = post.samples["c"][0].numpy()   # (400, 3)
    # reference: self-normalised importance sampling with 400000 prior draws, weights exp(shrink + log-lik)
    u = torch.randn(400_000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = ExpTransform()(OrderedTransform()(u))   # prior draws of c
    log_w = -0.5 * (c ** 2).sum(-1) + dist.OrderedLogistic(torch.ones_like(y), c[:, None]).log_prob(y).sum(-1)
    w = torch.softmax(log_w, 0)
    mean = (w[:, None] * c).sum(0).numpy()
    sd = (w[:, None] * (c - torch.as_tensor(mean)) ** 2).sum(0).sqrt().numpy()
    ess_is = float(1 / (w ** 2).sum())   # about 10000
    # 4 standard errors of the difference: NUTS's sd / sqrt(bulk ESS) and the reference's sd / sqrt(its ESS)
    ess = np.array([az.ess(draws[None, :, k]) for k in range(3)])
    se = np.sqrt(sd ** 2 / ess + sd ** 2 / ess_is)
    assert np.all(np.abs(draws.mean(0) - mean) < 4 * se), (draws.mean(0), mean, se)
