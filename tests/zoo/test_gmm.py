"""GMM: closed-form and scikit-learn oracles, enumeration, recovery, SVI-vs-NUTS agreement, alignment."""

import itertools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture as SkGMM

import inference
import zoo
from inference.target import Target

TRUTH = {  # well separated, unequal weights and scales
    "weights": torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
    "locs": torch.tensor([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]], dtype=torch.float64),
    "scales": torch.tensor([[1.0, 0.5], [0.7, 0.7], [0.5, 1.2]], dtype=torch.float64),
}


def random_params(K, D, seed):
    g = np.random.default_rng(seed)
    return {
        "weights": torch.tensor(g.dirichlet(np.ones(K))),
        "locs": torch.tensor(g.normal(0, 2, (K, D))),
        "scales": torch.tensor(g.uniform(0.3, 2.0, (K, D))),
    }


def numpy_loglik(x, p):
    x, w, m, s = x.numpy(), p["weights"].numpy(), p["locs"].numpy(), p["scales"].numpy()
    comp = np.stack([stats.norm(m[k], s[k]).logpdf(x).sum(-1) for k in range(len(w))], -1)
    return logsumexp(comp + np.log(w), axis=-1)


def test_log_likelihood_matches_numpy_and_sklearn():
    m = zoo.get("gmm", n_components=3)
    params = random_params(3, 4, seed=1)
    x = torch.tensor(np.random.default_rng(2).normal(0, 3, (200, 4)))
    ours = m.log_likelihood(x, params).numpy()
    np.testing.assert_allclose(ours, numpy_loglik(x, params), rtol=0, atol=1e-10)

    sk = SkGMM(n_components=3, covariance_type="diag", reg_covar=0.0)
    sk.weights_ = params["weights"].numpy()
    sk.means_ = params["locs"].numpy()
    sk.covariances_ = params["scales"].numpy() ** 2
    sk.precisions_cholesky_ = 1.0 / params["scales"].numpy()
    np.testing.assert_allclose(ours, sk.score_samples(x.numpy()), rtol=0, atol=1e-9)


def test_log_likelihood_batches_over_draws():
    m = zoo.get("gmm", n_components=2)
    draws = [random_params(2, 3, seed=s) for s in range(5)]
    batched = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
    x = torch.tensor(np.random.default_rng(0).normal(size=(30, 3)))
    out = m.log_likelihood(x, batched)
    assert out.shape == (5, 30)
    for i, d in enumerate(draws):
        np.testing.assert_allclose(out[i].numpy(), numpy_loglik(x, d), atol=1e-10)


def test_generic_marginal_log_likelihood_equals_closed_form():
    """The model-agnostic contraction in inference.target agrees with the GMM's own formula."""
    m = zoo.get("gmm", n_components=3)
    params = random_params(3, 2, seed=3)
    x = torch.tensor(np.random.default_rng(4).normal(0, 2, (50, 2)))
    plain = Target(m.model)  # seen as a plain callable: no zoo protocol used
    generic = plain.log_likelihood(x, {k: v.unsqueeze(0) for k, v in params.items()})["obs"][0]
    np.testing.assert_allclose(generic.numpy(), numpy_loglik(x, params), atol=1e-9)


def test_traceenum_loss_with_delta_guide_is_negative_marginal_log_joint():
    m = zoo.get("gmm", n_components=3)
    x = torch.tensor(np.random.default_rng(5).normal(0, 2, (40, 2)))
    p = random_params(3, 2, seed=6)

    def delta_guide(data):
        pyro.sample("weights", dist.Delta(p["weights"], event_dim=1))
        with pyro.plate("components", 3, dim=-1):
            pyro.sample("locs", dist.Delta(p["locs"], event_dim=1))
            pyro.sample("scales", dist.Delta(p["scales"], event_dim=1))

    loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, delta_guide, x)
    center, spread = x.mean(0).numpy(), x.std(0).numpy()
    log_prior = (
        stats.dirichlet(np.ones(3)).logpdf(p["weights"].numpy())
        + stats.norm(center, 2 * spread).logpdf(p["locs"].numpy()).sum()
        + stats.lognorm(s=1.0, scale=spread / 2).logpdf(p["scales"].numpy()).sum()
    )
    expected = -(log_prior + numpy_loglik(x, p).sum())
    assert loss == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("data, message", [
    ([[1.0, float("nan")], [2.0, 3.0], [0.0, 1.0]], "NaN"),
    ([[1.0, float("inf")], [2.0, 3.0], [0.0, 1.0]], "inf"),
    (np.zeros((0, 2)), "empty"),
    (np.zeros((4, 2, 2)), "2-D"),
    (np.ones((2, 2)), "exceed the number of data points"),
    (np.array([["a", "b"], ["c", "d"]]), "numeric"),
])
def test_validate_rejects_bad_data(data, message):
    m = zoo.get("gmm", n_components=3)
    with pytest.raises((ValueError, TypeError), match=message):
        m.validate(data)


def test_validate_rejects_non_numeric_columns():
    import pandas as pd

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "kind": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="non-numeric column.*kind"):
        zoo.get("gmm", n_components=2).validate(frame)


@pytest.mark.parametrize("config, message", [
    ({"n_components": 0}, "n_components"),
    ({"n_components": 2.5}, "n_components"),
    ({"concentration": -1.0}, "concentration"),
    ({"n_states": 3}, "unknown configuration 'n_states'"),
])
def test_bad_config(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        zoo.get("gmm", **config)


def test_simulate_is_reproducible_and_follows_truth():
    m = zoo.get("gmm", n_components=3)
    x1, t1 = m.simulate(2000, seed=7, params=TRUTH)
    x2, _ = m.simulate(2000, seed=7, params=TRUTH)
    assert torch.equal(x1, x2) and x1.shape == (2000, 2)
    counts = torch.bincount(t1["assignment"], minlength=3).double() / 2000.0
    # multinomial proportions: sd <= sqrt(0.25 / 2000) = 0.011; allow 4 sd
    assert torch.allclose(counts, TRUTH["weights"], atol=0.045)
    for k in range(3):
        xk = x1[t1["assignment"] == k]
        se = TRUTH["scales"][k] / len(xk) ** 0.5
        assert ((xk.mean(0) - TRUTH["locs"][k]).abs() < 4 * se).all()


@pytest.fixture(scope="module")
def simulated():
    m = zoo.get("gmm", n_components=3)
    x, truth = m.simulate(300, seed=11, params=TRUTH)
    return m, x, truth


@pytest.fixture(scope="module")
def nuts_simulated(simulated):
    m, x, _ = simulated
    return inference.run_nuts(m, x, num_samples=500, warmup_steps=300, num_chains=2, seed=1, progress=False)


def test_nuts_recovers_truth(simulated, nuts_simulated):
    """Every true parameter lies inside its Bonferroni-adjusted 95% interval (joint 95% coverage).

    The 15 quantities are correlated (weights sum to one), so a count of misses is not binomial;
    the union bound makes the joint level exact-or-conservative whatever the correlation. Intervals
    are posterior mean +- z * sd (posteriors here are near-Gaussian; MC error of z ~ 1/sqrt(ESS)).
    """
    m, x, truth = simulated
    post = nuts_simulated
    z = []
    for name in m.global_sites:
        draws = post.flat(name).double()
        z.append(((draws.mean(0) - truth[name]) / draws.std(0)).flatten())
    z = torch.cat(z).abs()
    assert len(z) == 15
    assert z.max() < stats.norm.ppf(1 - 0.05 / (2 * len(z))), z
    assert inference.diagnose(post).divergences == 0


def test_nuts_and_full_rank_svi_agree_on_separated_data(simulated, nuts_simulated):
    m, x, _ = simulated
    svi = inference.fit_svi(m, x, guide="mvn", num_steps=2500, lr=0.02, num_samples=2000, seed=2,
                            progress=False)
    table = inference.compare(svi, nuts_simulated)
    assert len(table) == 15
    assert (table["smd"].abs() < 0.25).all(), table[["smd", "sd_ratio"]]


def test_two_chains_in_swapped_labelings_agree_after_alignment(simulated):
    m, x, truth = simulated
    swapped = {k: v[torch.tensor([2, 0, 1])] for k, v in TRUTH.items()}
    post = inference.run_nuts(m, x, num_samples=1000, warmup_steps=200, num_chains=2, seed=3,
                              init=[dict(TRUTH), swapped], progress=False)
    raw = post.global_samples["locs"][..., 0]  # (chain, draw, K): labels differ between chains
    assert (raw[0].mean(0) - raw[1].mean(0)).abs().max() > 3.0
    import arviz as az

    raw_rhat = az.rhat(az.convert_to_dataset({"locs": post.global_samples["locs"].numpy()}))["locs"].values
    assert np.nanmax(raw_rhat) > 1.5
    diag = inference.diagnose(post)
    assert diag.summary["r_hat"].max() < 1.01, diag.summary["r_hat"]


def test_align_undoes_every_permutation():
    m = zoo.get("gmm", n_components=3)
    g = torch.Generator().manual_seed(0)
    draws = {k: v.expand(1, 60, *v.shape).clone() + 0.05 * torch.randn(1, 60, *v.shape, generator=g, dtype=v.dtype)
             for k, v in TRUTH.items()}
    perms = list(itertools.permutations(range(3)))
    for i in range(60):
        p = torch.tensor(perms[i % 6])
        for k in draws:
            draws[k][0, i] = draws[k][0, i][p]
    aligned = m.align(draws)
    order = torch.argsort(TRUTH["locs"][:, 0])
    assert torch.allclose(aligned["locs"].mean((0, 1)), TRUTH["locs"][order], atol=0.05)
    ref = m.align({k: v[..., torch.tensor([1, 2, 0])] if k == "weights" else v[:, :, torch.tensor([1, 2, 0])]
                   for k, v in aligned.items()})
    # aligning to a reference keeps the reference's labeling
    again = m.align(draws, reference={k: v[:, :, torch.tensor([1, 2, 0])] for k, v in aligned.items()})
    assert torch.allclose(again["locs"].mean((0, 1)), aligned["locs"].mean((0, 1))[torch.tensor([1, 2, 0])])
    assert ref["locs"].shape == aligned["locs"].shape


def test_loo_from_idata_equals_loo_from_marginal_log_likelihood(nuts_simulated, simulated):
    import arviz as az

    m, x, _ = simulated
    post = nuts_simulated
    g = post.global_samples
    by_hand = np.stack([
        np.stack([numpy_loglik(x, {k: g[k][c, d] for k in g}) for d in range(post.num_draws)])
        for c in range(post.num_chains)
    ])
    stored = post.idata.log_likelihood["obs"].values
    np.testing.assert_allclose(stored, by_hand, rtol=1e-9, atol=1e-9)
    loo_idata = az.loo(post.idata)
    same_posterior = {k: v.values for k, v in post.idata.posterior.data_vars.items()}  # same relative ESS
    loo_hand = az.loo(az.from_dict(posterior=same_posterior, log_likelihood={"obs": by_hand}))
    assert loo_idata.elpd_loo == pytest.approx(loo_hand.elpd_loo, abs=1e-8)
    # marginal, not conditional on sampled assignments: the effective number of parameters is about
    # the 15 global ones (a per-point assignment would add up to ~N = 300 more)
    assert 7.5 < loo_idata.p_loo < 30, loo_idata.p_loo
