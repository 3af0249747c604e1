"""Posterior predictive checks: p-values against a closed form, uniform where theory says so, extreme
where the model cannot reproduce the data, and every model's statistics against a direct numpy computation."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import inference
import zoo
from inference import Posterior
from inference.checks.ppc import ppc
from inference.target import Target
from zoo.data import Sequences


def normal_mean(data):
    """mu ~ N(0, 1), y_n ~ N(mu, 1): posterior N(sum y / (N + 1), 1 / (N + 1))."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data)


def exact_posterior(y, draws, seed):
    """Independent draws from the closed-form posterior of :func:`normal_mean`, as a Posterior."""
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    mu = y.sum() / (n + 1) + torch.randn(1, draws, generator=gen, dtype=torch.float64) / math.sqrt(n + 1)
    return Posterior(Target(normal_mean), y, {"mu": mu}, method="exact", wall_time=0.0)


def test_p_value_of_the_mean_matches_the_closed_form():
    """y_rep mean | y ~ N(m, v + 1/N) with m, v the posterior mean and variance, so
    p = P(mean_rep > mean_obs) = 1 - Phi((ybar - m) / sqrt(v + 1/N)); the estimate from R replicates
    is within 4 binomial sd."""
    y = torch.tensor([0.3, 2.1, 1.4, 0.9, 1.7, 2.5, 0.2, 1.1], dtype=torch.float64)
    n, R = len(y), 2000
    result = ppc(exact_posterior(y, R, 0), num_replicates=R, seed=1, progress=False)
    m, v = float(y.sum()) / (n + 1), 1 / (n + 1)
    expected = 1 - stats.norm.cdf((float(y.mean()) - m) / math.sqrt(v + 1 / n))
    p = result.p_values()["y_mean"]
    assert abs(p - expected) < 4 * math.sqrt(expected * (1 - expected) / R), (p, expected)
    assert result.observed["y_max"][0] == pytest.approx(2.5) and result.observed["y_sd"][0] == pytest.approx(float(y.std()))
    assert set(result.p_values().index) == {"y_mean", "y_sd", "y_min", "y_max"}


def test_p_values_uniform_for_an_ancillary_statistic_under_the_model():
    """Data simulated from :func:`normal_mean` itself: the sd of the data does not depend on mu (it is
    ancillary), so its p-value is exactly uniform; the mean's is not (it concentrates around 1/2, Meng
    1994: its variance is below the uniform's 1/12). Kolmogorov-Smirnov at level 0.001, 40 data sets."""
    gen = torch.Generator().manual_seed(5)
    sd_p, mean_p = [], []
    for i in range(40):
        y = torch.randn((), generator=gen, dtype=torch.float64) + torch.randn(10, generator=gen, dtype=torch.float64)
        p = ppc(exact_posterior(y, 300, i), num_replicates=300, seed=i, progress=False).p_values()
        sd_p.append(p["y_sd"])
        mean_p.append(p["y_mean"])
    assert stats.kstest(sd_p, "uniform").pvalue > 1e-3
    # mean: p = 1 - Phi(Z sqrt(v / (v + 1/N))) with Z ~ N(0, 1) under the prior predictive: var(p) is that
    # of Phi(0.30 Z), 0.0067, far from 1/12 = 0.083
    assert np.var(mean_p) < 0.03


def hmm_data(persistent: bool, seed=0, T=200):
    stay = 0.95 if persistent else 0.5
    params = {"initial": torch.tensor([0.5, 0.5]), "transition": torch.tensor([[stay, 1 - stay], [1 - stay, stay]]),
              "locs": torch.tensor([[-1.5], [1.5]]), "scales": torch.tensor([[1.0], [1.0]])}
    return zoo.get("hmm", n_states=2).simulate(T, seed=seed, params=params)[0]


@pytest.mark.parametrize("persistent", [False, True])
def test_a_one_state_hmm_fails_the_persistence_check_only_on_persistent_data(persistent):
    """A 1-state HMM (i.i.d. Gaussian) has no persistence. On data switching states at random (stay 0.5)
    the lag-1 autocorrelation is ancillary under it and its p-value uniform (extreme at the 1% level with
    probability 1%); on sticky data (stay 0.95: autocorrelation about 0.6) no replicate comes close."""
    m = zoo.get("hmm", n_states=1)
    post = inference.run_nuts(m, hmm_data(persistent), num_chains=1, num_samples=200, warmup_steps=200, seed=0,
                              progress=False)
    result = ppc(post, statistics=["autocorrelation", "switches"], num_replicates=100, progress=False)
    table = result.table()
    assert table.loc["switches", "p_value"] == 0.5       # one state: never a switch, in the data or a replicate
    if persistent:
        assert table.loc["autocorrelation", "p_value"] < 0.005 and table.loc["autocorrelation", "verdict"] == "extreme"
    else:
        assert table.loc["autocorrelation", "verdict"] == "ok", table
    fig = result.plot()
    assert len([a for a in fig.axes if a.get_title()]) == 2
    plt.close(fig)


def test_hmm_statistics_against_numpy():
    m = zoo.get("hmm", n_states=2)
    params = {"initial": torch.tensor([0.5, 0.5]), "transition": torch.tensor([[0.9, 0.1], [0.1, 0.9]]),
              "locs": torch.tensor([[-5.0], [5.0]]), "scales": torch.tensor([[1.0], [1.0]])}
    x = torch.tensor([[-5.0, -4.0, 5.0, 6.0, 4.0, -5.0, 0.0], [5.0, 5.0, -5.0, 0.0, 0.0, 0.0, 0.0]]).unsqueeze(-1)
    data = m.validate(Sequences(x, torch.tensor([6, 3])))
    got = m.ppc_statistics(data.values, data, params)
    # states (well separated): 0 0 1 1 1 0 | 1 1 0 -> runs 2, 3, 1 | 2, 1
    runs = np.array([2, 3, 1, 2, 1])
    assert got["mean_run_length"] == pytest.approx(runs.mean())
    assert got["max_run_length"] == 3 and got["switches"] == 3
    seqs = [np.array([-5.0, -4.0, 5.0, 6.0, 4.0, -5.0]), np.array([5.0, 5.0, -5.0])]
    centre = np.concatenate(seqs).mean()
    num = sum(((s[1:] - centre) * (s[:-1] - centre)).sum() for s in seqs)
    den = sum(((s - centre) ** 2).sum() for s in seqs)
    assert got["autocorrelation"] == pytest.approx(num / den)


def test_gmm_and_ppca_statistics_against_numpy():
    gmm = zoo.get("gmm", n_components=2)
    x = torch.tensor([[0.0, 0.0], [0.2, -0.1], [-0.3, 0.4], [10.0, 10.0], [11.0, 9.0]])
    params = {"weights": torch.tensor([0.5, 0.5]), "locs": torch.tensor([[10.0, 10.0], [0.0, 0.0]]),
              "scales": torch.ones(2, 2)}
    got = gmm.ppc_statistics(x, x, params)
    np.testing.assert_allclose(got["cluster_size"], [3 / 5, 2 / 5])
    xn = x.numpy()
    np.testing.assert_allclose(got["cluster_spread"], [xn[:3].std(0, ddof=1).mean(), xn[3:].std(0, ddof=1).mean()],
                               rtol=1e-6)

    ppca = zoo.get("ppca", n_components=1, missing="mask")
    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 4)) @ np.diag([3.0, 1.0, 0.5, 0.2])
    y[2, 1] = np.nan
    data = ppca.validate(y)
    filled = np.where(np.isnan(y), np.nanmean(y, 0), y)
    expected = np.sort(np.linalg.eigvalsh(np.cov(filled.T, bias=True)))[::-1]
    np.testing.assert_allclose(ppca.ppc_statistics(data, data, {})["eigenvalues"], expected, atol=1e-6 * expected[0])  # float32
    # a replicate is read with the data's missing entries left out too
    rep = torch.as_tensor(rng.normal(size=(30, 4)), dtype=data.dtype)
    rep_np = rep.numpy().copy()
    rep_np[2, 1] = np.nan
    filled = np.where(np.isnan(rep_np), np.nanmean(rep_np, 0), rep_np)
    np.testing.assert_allclose(ppca.ppc_statistics(rep, data, {})["eigenvalues"],
                               np.sort(np.linalg.eigvalsh(np.cov(filled.T, bias=True)))[::-1], atol=1e-5)


def test_vae_statistics_against_numpy():
    vae = zoo.get("vae", latent_dim=2, hidden=(8,))
    x = (torch.rand(20, 16, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    x = vae.validate(x)
    with pyro.poutine.seed(rng_seed=0):
        got = vae.ppc_statistics(x, x, {})
    np.testing.assert_allclose(got["pixel_mean"], x.numpy().mean(0))
    with pyro.poutine.seed(rng_seed=0):   # the same importance draws
        ll = vae.log_likelihood(x, num_particles=100).numpy()
    assert got["log_likelihood_mean"] == pytest.approx(ll.mean(), rel=1e-6)
    assert got["log_likelihood_sd"] == pytest.approx(ll.std(ddof=1), rel=1e-5)


def test_unknown_statistic_names_the_argument():
    y = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^statistics: unknown statistic 'skew'; expected some of y_mean"):
        ppc(exact_posterior(y, 10, 0), statistics=["skew"], num_replicates=10, progress=False)
    with pytest.raises(ValueError, match=r"^num_replicates"):
        ppc(exact_posterior(y, 10, 0), num_replicates=1)
