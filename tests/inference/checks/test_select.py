"""Model choice by PSIS-LOO: the marginal log-likelihood against a brute-force leave-one-out, and bad input.

The reference is exact: a two-parameter mixture whose leave-one-out predictive densities
p(x_n | x_-n) = ∫ p(x_n | theta) p(theta | x_-n) dtheta are computed by quadrature on a grid, i.e. the
posterior refitted N times on N - 1 points without Monte Carlo error.
"""

import math

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive, config_enumerate
from pyro.ops.indexing import Vindex
from scipy import stats
from scipy.special import logsumexp

import inference
from inference.checks.select import loo, select
from inference.posterior import Posterior
from inference.reporting.plots import plot_khat, plot_select

PRIOR_MU = (3.0, 1.5)     # mu ~ Normal(3, 1.5); w ~ Beta(2, 2); the other component is N(0, 1)


@config_enumerate
def mixture(x):
    """w N(mu, 1) + (1 - w) N(0, 1), assignments enumerated (written as a user would)."""
    w = pyro.sample("w", dist.Beta(2.0, 2.0))
    mu = pyro.sample("mu", dist.Normal(*PRIOR_MU))
    locs = torch.stack([torch.zeros_like(mu), mu], -1)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Categorical(torch.stack([1 - w, w], -1)))
        pyro.sample("obs", dist.Normal(Vindex(locs)[..., z], 1.0), obs=x)


def one_gaussian(x):
    """The rival: one Gaussian N(mu, 1) with the same prior on mu."""
    mu = pyro.sample("mu", dist.Normal(*PRIOR_MU))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(1)
    z = torch.rand(10, generator=g) < 0.5
    return torch.where(z, 3.0, 0.0) + torch.randn(10, generator=g)


@pytest.fixture(scope="module")
def fits(x):
    kw = dict(num_samples=300, warmup_steps=150, num_chains=2, seed=0, progress=False)
    return {"mixture": inference.run_nuts(mixture, x, **kw), "one gaussian": inference.run_nuts(one_gaussian, x, **kw)}


def exact_loo_mixture(x) -> np.ndarray:
    """log p(x_n | x_-n) by quadrature over (w, mu): the posterior of the N - 1 other points, N times."""
    w = (np.arange(400) + 0.5) / 400
    mu = np.linspace(PRIOR_MU[0] - 8 * PRIOR_MU[1], PRIOR_MU[0] + 8 * PRIOR_MU[1], 2001)
    W, M = np.meshgrid(w, mu, indexing="ij")
    log_prior = stats.beta(2, 2).logpdf(W) + stats.norm(*PRIOR_MU).logpdf(M)
    ll = np.stack([np.logaddexp(np.log(W) + stats.norm(M, 1).logpdf(v), np.log1p(-W) + stats.norm(0, 1).logpdf(v))
                   for v in x.numpy().astype(float)])
    rest = log_prior + ll.sum(0) - ll          # log p(theta, x_-n) up to a constant, for each n
    return np.array([logsumexp(rest[n] + ll[n]) - logsumexp(rest[n]) for n in range(len(ll))])


def exact_loo_gaussian(x) -> np.ndarray:
    """Conjugate normal: x_n | x_-n ~ N(m_-n, 1 + v_-n)."""
    x = x.numpy().astype(float)
    m0, s0 = PRIOR_MU
    out = []
    for n in range(len(x)):
        rest = np.delete(x, n)
        v = 1 / (1 / s0 ** 2 + len(rest))
        m = v * (m0 / s0 ** 2 + rest.sum())
        out.append(stats.norm(m, math.sqrt(1 + v)).logpdf(x[n]))
    return np.array(out)


def is_mcse(log_lik: np.ndarray) -> float:
    """Monte Carlo standard error of the importance-sampling LOO sum, by the delta method on the ratios
    1 / p(x_n | theta_s) with each point's effective sample size (what PSIS smooths, not what it adds)."""
    flat = log_lik.reshape(-1, log_lik.shape[-1])
    var = 0.0
    for n in range(flat.shape[1]):
        r = np.exp(-(flat[:, n] - flat[:, n].max()))
        ess = float(az.ess(r.reshape(log_lik.shape[:2])))
        var += r.var() / (ess * r.mean() ** 2)
    return math.sqrt(var)


def conditional_log_lik(model, x, post: Posterior) -> az.InferenceData:
    """The log-likelihood ``az.from_pyro`` records (arviz/data/io_pyro.py, ``log_likelihood_to_xarray``):
    the model traced under ``Predictive`` with the posterior draws, ``obs_site["fn"].log_prob(value)``.
    The enumerated assignments are not among the draws, so they are drawn afresh: log p(x_n | z_n, w, mu)."""
    samples = {k: v.reshape(-1, *v.shape[2:]) for k, v in post.samples.items()}
    pyro.set_rng_seed(0)
    trace = Predictive(model, samples).get_vectorized_trace(x)
    site = trace.nodes["obs"]
    ll = site["fn"].log_prob(site["value"]).detach().numpy()
    return az.from_dict(posterior={k: v.numpy() for k, v in post.samples.items()},
                        log_likelihood={"obs": ll.reshape(post.num_chains, post.num_draws, -1)})


def test_marginal_loo_matches_brute_force_and_conditional_does_not(fits, x):
    post = fits["mixture"]
    exact = exact_loo_mixture(x)
    result = loo(post)
    tol = 4 * is_mcse(post.log_likelihood.numpy())
    assert abs(float(result.elpd_loo) - exact.sum()) < tol, (float(result.elpd_loo), exact.sum(), tol)
    assert float(np.max(result.pareto_k)) < 0.7
    # the conditional log-likelihood: more than 3 standard errors (of the data) off, and flagged by Pareto k
    wrong = loo(conditional_log_lik(mixture, x, post), name="conditional")
    assert exact.sum() - float(wrong.elpd_loo) > 3 * float(wrong.se)
    assert float(np.max(wrong.pareto_k)) > 0.7


def test_select_ranks_by_elpd_against_exact_values(fits, x):
    table = select(fits)
    exact = {"mixture": exact_loo_mixture(x).sum(), "one gaussian": exact_loo_gaussian(x).sum()}
    assert list(table.index) == sorted(exact, key=exact.get, reverse=True)
    assert exact["mixture"] - exact["one gaussian"] > 1.0   # the data are bimodal: the ranking is not a toss-up
    for label, post in fits.items():
        tol = 4 * is_mcse(post.log_likelihood.numpy())
        assert abs(table.loc[label, "elpd_loo"] - exact[label]) < tol
        assert table.loc[label, "pareto_k>0.7"] == int((np.asarray(table.attrs["loo"][label].pareto_k) > 0.7).sum())
    assert table["rank"].tolist() == [0, 1] and table["elpd_diff"].iloc[0] == 0
    for fig in (plot_select(table), plot_khat(table.attrs["loo"])):
        assert fig.axes
        fig.clf()


def test_bad_input_names_the_argument(fits, x):
    post = fits["one gaussian"]
    with pytest.raises(ValueError, match=r"^posterior: no log_likelihood group"):
        loo(az.from_dict(posterior={"mu": np.zeros((2, 10))}))
    with pytest.raises(ValueError, match=r"^candidates\['map'\]: a point estimate"):
        select({"nuts": post, "map": Posterior.point(one_gaussian, x, {"mu": torch.tensor(1.0)}, method="map",
                                                       wall_time=0.0)})
    with pytest.raises(ValueError, match=r"^candidates: expected at least two"):
        select({"nuts": post})
    with pytest.raises(TypeError, match=r"^candidates\['a'\]: expected a Posterior"):
        select({"a": 1, "b": post})
    with pytest.raises(TypeError, match=r"^candidates: expected a dict"):
        select([post, post])
    short = inference.run_nuts(one_gaussian, x[:6], num_samples=20, warmup_steps=20, num_chains=2, seed=0,
                               progress=False)
    with pytest.raises(ValueError, match="different data sizes"):
        select({"a": post, "b": short})


# --- the HMM: one item per sequence -------------------------------------------------------------

HMM_TRUTH = {"initial": torch.tensor([0.5, 0.5]), "transition": torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
             "locs": torch.tensor([[-2.0], [2.0]]), "scales": torch.tensor([[1.0], [1.0]])}


def forward_log_prob(x: np.ndarray, p) -> float:
    """log p(x_1..x_T) of one Gaussian-emission sequence by the scaled forward algorithm in numpy."""
    emit = stats.norm(p["locs"][:, 0], p["scales"][:, 0]).logpdf(x[:, None])        # (T, S)
    alpha = np.log(p["initial"]) + emit[0]
    for t in range(1, len(x)):
        alpha = logsumexp(alpha[:, None] + np.log(p["transition"]), axis=0) + emit[t]
    return float(logsumexp(alpha))


def test_hmm_states_chosen_by_loo_over_sequences():
    """12 sequences from a 2-state HMM: the pointwise log-likelihood has one entry per sequence (the
    forward algorithm's log p(sequence | draw), checked in numpy), PSIS-LOO leaves sequences out, and
    two states beat one by far more than 4 standard errors of the difference, while a third state
    adds nothing beyond 2 of them. One sequence is refused before any fit."""
    import zoo

    data, _ = zoo.get("hmm", n_states=2).simulate(30, seed=0, params=HMM_TRUTH, n_sequences=12)
    fits = {f"S={k}": inference.run_nuts(zoo.get("hmm", n_states=k), data, num_samples=100, warmup_steps=100,
                                         num_chains=2, seed=0, progress=False) for k in (1, 2, 3)}
    post = fits["S=2"]
    ll = post.idata.log_likelihood["obs"].values                                      # (chain, draw, sequence)
    assert ll.shape == (2, 100, 12)
    draw = {k: v[1, 7].double().numpy() for k, v in post.samples.items()}
    expect = [forward_log_prob(post.data.values[b, :, 0].double().numpy(), draw) for b in range(12)]
    np.testing.assert_allclose(ll[1, 7], expect, rtol=1e-5)

    table = select(fits)
    assert all(r.n_data_points == 12 for r in table.attrs["loo"].values())
    assert table.index[-1] == "S=1" and table.loc["S=1", "elpd_diff"] > 4 * table.loc["S=1", "dse"]
    assert abs(table.loc["S=2", "elpd_loo"] - table.loc["S=3", "elpd_loo"]) < 2 * max(table["dse"].max(), 1.0)

    from inference.checks.select import check_loo_data

    assert check_loo_data(zoo.get("hmm", n_states=2), data) == 12
    one = zoo.get("hmm", n_states=2).simulate(30, seed=0, params=HMM_TRUTH)[0]
    with pytest.raises(ValueError, match=r"^data: PSIS-LOO leaves out one item of the data plate 'sequences' at a "
                                         r"time and needs at least 2, got 1"):
        check_loo_data(zoo.get("hmm", n_states=2), one)
