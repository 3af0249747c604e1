"""run_nuts on models with discrete latents that enumeration does not sum out (HMC-within-Gibbs), against
exact posteriors: Royle's N-mixture model (the counts summed to a bound on a 2-D grid of (lam, p)), a change
point over 100 steps and one over 3000 steps (a finite latent too large for its exact conditional; both by
enumeration of the change point, the rates conjugate), and calibration by SBC.

Tolerances (the issue's "Done when"): every posterior mean within 0.3 exact posterior sd, every sd within
x0.8-1.25. Each run asserts an effective sample size of at least 100 for every quantity, so that 0.3 sd is
at least 3 Monte Carlo standard errors of the mean (sd / sqrt(ESS)), and a ratio of 0.8 or 1.25 at least 3
standard errors of the sd's estimate (relative standard error about 1 / sqrt(2 ESS) = 0.07).
"""

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import special, stats

import inference


def nmix(y):
    """Royle (2004): N_i ~ Poisson(lam) animals at site i, y_it ~ Binomial(N_i, p) counted at visit t."""
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("sites", y.shape[0], dim=-2):
        N = pyro.sample("N", dist.Poisson(lam))
        with pyro.plate("visits", y.shape[1], dim=-1):
            pyro.sample("y", dist.Binomial(N, p), obs=y)


def nmix_exact(y, bound=150, n=300):
    """Posterior means and sds of lam and p on a 300 x 300 grid, each N_i summed from max_t y_it to 150
    (the Poisson(25) tail beyond is below 1e-60 at the grid's largest lam, 25)."""
    y = np.asarray(y)
    lam, p = np.linspace(0.01, 25, n)[:, None], np.linspace(0.001, 0.999, n)[None, :]
    counts = np.arange(bound)[:, None, None]
    log_post = stats.gamma.logpdf(lam, 2.0, scale=2.0) + stats.beta.logpdf(p, 2.0, 2.0)
    for row in y:
        terms = stats.poisson.logpmf(counts, lam) + stats.binom.logpmf(row[None, None, None, :], counts[..., None],
                                                                        p[..., None]).sum(-1)
        log_post = log_post + special.logsumexp(terms, axis=0)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    return {k: _moments(w, np.broadcast_to(g, w.shape)) for k, g in (("lam", lam), ("p", p))}


def _moments(w, values):
    mean = (w * values).sum()
    return mean, np.sqrt((w * (values - mean) ** 2).sum())


def changepoint(y):
    """Counts whose rate jumps from r1 to r2 at an unknown step tau (uniform over the steps)."""
    T = len(y)
    tau = pyro.sample("tau", dist.Categorical(logits=torch.zeros(T)))
    r1 = pyro.sample("r1", dist.Gamma(2.0, 1.0))
    r2 = pyro.sample("r2", dist.Gamma(2.0, 1.0))
    rate = torch.where(torch.arange(T) < tau, r1, r2)
    with pyro.plate("time", T):
        pyro.sample("y", dist.Poisson(rate), obs=y)


def changepoint_exact(y, a=2.0, b=1.0):
    """By enumeration of tau: given tau the rates are conjugate (Gamma(a + sum y, b + steps) each), so
    p(tau | y) is proportional to the product of the two Gamma-Poisson marginal likelihoods."""
    y = np.asarray(y, dtype=float)
    T = len(y)
    cum = np.r_[0.0, np.cumsum(y)]
    tau = np.arange(T)
    parts = [(cum[tau], tau), (cum[T] - cum[tau], T - tau)]   # (sum of y, steps) before and after tau

    def log_marginal(s, n):
        return special.gammaln(a + s) - (a + s) * np.log(b + n)
    log_w = log_marginal(*parts[0]) + log_marginal(*parts[1])
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    out = {"tau": _moments(w, tau)}
    for name, (s, n) in zip(("r1", "r2"), parts):
        mean, var = (a + s) / (b + n), (a + s) / (b + n) ** 2
        m = (w * mean).sum()
        out[name] = (m, np.sqrt((w * (var + mean ** 2)).sum() - m ** 2))
    return out


def changepoint_data(T, seed):
    g = torch.Generator().manual_seed(seed)
    before = int(0.4 * T)
    return torch.cat([torch.poisson(torch.full((before,), 2.0), generator=g),
                      torch.poisson(torch.full((T - before,), 4.0), generator=g)])


def assert_matches(post, exact):
    for name, (mean, sd) in exact.items():
        draws = post.samples[name].double().reshape(post.num_chains, post.num_draws).numpy()
        ess = float(az.ess(draws))
        assert ess >= 100, (name, ess)
        assert abs(draws.mean() - mean) < 0.3 * sd, (name, draws.mean(), mean, sd)
        assert 0.8 < draws.std() / sd < 1.25, (name, draws.std(), sd)


def test_n_mixture_matches_the_exact_posterior():
    g = torch.Generator().manual_seed(0)
    R, T = 25, 5
    N = torch.poisson(torch.full((R, 1), 5.0), generator=g)
    y = torch.binomial(N.expand(R, T), torch.full((R, T), 0.75), generator=g)
    post = inference.run_nuts(nmix, y, num_samples=1500, warmup_steps=300, num_chains=2, seed=0, progress=False)
    assert post.settings["gibbs"] == {"N": "metropolis"}
    assert post.samples["N"].shape == (2, 1500, R, 1) and post.samples["N"].dtype == y.dtype
    assert bool((post.samples["N"] >= y.max(1, keepdim=True).values).all())   # never an impossible count
    assert 0.2 < post.sample_stats["acceptance_rate_N"].mean() < 0.7
    assert_matches(post, nmix_exact(y.numpy()))


def test_changepoint_over_100_steps_matches_enumeration():
    y = changepoint_data(100, seed=1)
    post = inference.run_nuts(changepoint, y, num_samples=600, warmup_steps=300, num_chains=2, seed=0, progress=False)
    assert post.settings["gibbs"] == {"tau": "exact"}
    assert post.samples["tau"].dtype == torch.long
    assert_matches(post, changepoint_exact(y.numpy()))


def test_a_large_finite_latent_moves_by_metropolis_and_matches_enumeration():
    """3000 values: more than MAX_EXACT, so tau moves by random-walk Metropolis-Hastings."""
    y = changepoint_data(3000, seed=2)
    post = inference.run_nuts(changepoint, y, num_samples=1000, warmup_steps=300, num_chains=2, seed=0,
                              progress=False)
    assert post.settings["gibbs"] == {"tau": "metropolis"}
    assert_matches(post, changepoint_exact(y.numpy()))


def test_changepoint_is_calibrated_by_sbc():
    """20 replicates of 12 steps drawn from the prior; SBCResult.calibrated rejects a quantity at the
    Bonferroni level 0.01 / 3, so a correct sampler fails here with probability about 1%."""
    r = inference.sbc(changepoint, model_args=(torch.zeros(12),), num_simulations=20,
                      fit_kwargs=dict(num_samples=100, warmup_steps=80), seed=0, progress=False)
    assert set(r.ranks) == {"tau", "r1", "r2"}
    assert r.calibrated, r.table()


def test_draws_stats_and_log_likelihood_in_inference_data(caplog):
    """Parallel chains give the sequential draws (seeded per chain); the discrete draws are in the posterior
    group, the Metropolis-Hastings acceptance in sample_stats, and the attrs say that the pointwise
    log-likelihood is conditional on the counts (a sum over N_i to infinity is not computed)."""
    y = torch.tensor([[2.0, 1.0, 3.0], [0.0, 1.0, 0.0], [4.0, 2.0, 3.0]])
    kw = dict(num_samples=30, warmup_steps=30, num_chains=2, seed=3, progress=False)
    with caplog.at_level("INFO"):
        a = inference.run_nuts(nmix, y, chain_method="parallel", **kw)
    assert "Metropolis-Hastings random walk: ['N']" in caplog.text
    b = inference.run_nuts(nmix, y, chain_method="sequential", **kw)
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in a.samples)
    idata = a.idata
    assert idata.posterior["N"].shape == (2, 30, 3, 1)
    assert idata.sample_stats["acceptance_rate_N"].shape == (2, 30)
    assert "conditional" in idata.log_likelihood.attrs["setting_log_likelihood"]
    # the pointwise log-likelihood of each site given the drawn counts, by scipy
    ll = stats.binom.logpmf(y.numpy(), a.samples["N"][0, -1].numpy(), float(a.samples["p"][0, -1])).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0, -1], ll, rtol=1e-4)


def test_sites_that_cannot_move_are_named():
    def multinomial_latent(y):
        counts = pyro.sample("counts", dist.Multinomial(10, torch.ones(3)))
        pyro.sample("y", dist.Normal(counts.sum(), 1.0), obs=y)

    with pytest.raises(ValueError, match=r"\['counts'\] can be neither enumerated nor updated"):
        inference.run_nuts(multinomial_latent, torch.tensor(10.0), num_samples=5, warmup_steps=5, num_chains=1,
                           progress=False)
    with pytest.raises(ValueError, match="engine: latent discrete site.*'tau'.*Pyro's NUTS kernel cannot draw"):
        inference.run_nuts(changepoint, changepoint_data(20, 0), engine="pyro", num_samples=5, warmup_steps=5,
                           num_chains=1, progress=False)


def test_check_names_how_discrete_sites_move_and_those_that_cannot():
    y = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    finding = {f.check: f for f in inference.check(nmix, data=y).findings}["discrete"]
    assert finding.ok and "Metropolis-Hastings random walk: ['N']" in finding.message

    def multinomial_latent(y):
        counts = pyro.sample("counts", dist.Multinomial(10, torch.ones(3)))
        pyro.sample("y", dist.Normal(counts.sum(), 1.0), obs=y)

    finding = {f.check: f for f in inference.check(multinomial_latent, data=torch.tensor(10.0)).findings}["discrete"]
    assert not finding.ok and "['counts'] can be neither enumerated nor updated" in finding.message


def mixture_unmarked(y):
    """A mixture whose assignments are not marked for enumeration: they move by their exact conditional."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(w))
        pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)


def test_local_finite_sites_are_summed_out_of_the_pointwise_log_likelihood():
    """Assignments inside the data plate: the log-likelihood of each point is the mixture density, by scipy,
    not the density given the drawn assignment."""
    y = torch.tensor([-3.1, -2.5, 2.9, 3.3, 0.2])
    post = inference.run_nuts(mixture_unmarked, y, num_samples=20, warmup_steps=20, num_chains=1, seed=0,
                              progress=False)
    assert post.settings["gibbs"] == {"z": "exact"} and post.settings["log_likelihood"].startswith("marginal")
    assert post.samples["z"].shape == (1, 20, 5)
    w, loc = post.samples["w"][0, -1].numpy(), post.samples["loc"][0, -1].numpy()
    mixture = np.log((w * stats.norm(loc, 1.0).pdf(y.numpy()[:, None])).sum(-1))
    np.testing.assert_allclose(post.idata.log_likelihood["y"].values[0, -1], mixture, rtol=1e-4)
