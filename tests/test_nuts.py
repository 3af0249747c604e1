"""inference.nuts, the closed-form NUTS sampler: known moments, adaptation, reproducibility."""

import arviz as az
import numpy as np
import pytest
from scipy import special

from inference import nuts

SHAPES = np.array([0.5, 2.0, 10.0])                 # log-Gamma(a) coordinates: skewed, heavy left tails
COV = np.array([[4.0, 0.18], [0.18, 0.01]])         # correlation 0.9, scales 2 and 0.1
PRECISION = np.linalg.inv(COV)


def log_density(theta):
    """Independent u_i = log g_i, g_i ~ Gamma(a_i, 1), and a correlated Gaussian pair y."""
    u, y = theta[:3], theta[3:]
    value = (SHAPES * u - np.exp(u)).sum() - special.gammaln(SHAPES).sum() - 0.5 * y @ PRECISION @ y
    return float(value), np.concatenate([SHAPES - np.exp(u), -PRECISION @ y])


@pytest.fixture(scope="module")
def chains():
    runs = [nuts.sample(log_density, np.zeros(5), num_samples=2000, warmup_steps=500, seed=s, progress=False)
            for s in range(2)]
    return np.stack([d for d, _ in runs]), [s for _, s in runs]   # (chain, draw, 5)


def test_moments_match_the_target(chains):
    """Means within 4 Monte Carlo sd (sd^2 / ESS) and variances within 4 sd of their estimator
    (relative sd sqrt((excess kurtosis + 2) / ESS)), for each of 5 coordinates: a Bonferroni level
    of about 6e-4 for the 10 checks."""
    draws, _ = chains
    mean = np.r_[special.digamma(SHAPES), 0.0, 0.0]
    var = np.r_[special.polygamma(1, SHAPES), np.diag(COV)]
    kurtosis = np.r_[special.polygamma(3, SHAPES) / special.polygamma(1, SHAPES) ** 2, 0.0, 0.0]
    flat = draws.reshape(-1, 5)
    for i in range(5):
        ess = float(az.ess(np.ascontiguousarray(draws[:, :, i])))
        assert ess > 1000, (i, ess)
        assert abs(flat[:, i].mean() - mean[i]) < 4 * np.sqrt(var[i] / ess), (i, flat[:, i].mean(), mean[i])
        assert abs(flat[:, i].var() / var[i] - 1) < 4 * np.sqrt((kurtosis[i] + 2) / ess), (i, flat[:, i].var(), var[i])
    assert np.corrcoef(flat[:, 3], flat[:, 4])[0, 1] == pytest.approx(0.9, abs=0.02)


def test_adaptation_reaches_the_target_acceptance_without_divergences(chains):
    _, stats = chains
    for s in stats:
        assert s["diverging"].sum() == 0
        assert 0.7 < s["acceptance_rate"].mean() < 0.97
        assert np.all(s["step_size"] == s["step_size"][0])       # fixed after warmup
        assert np.all(s["n_steps"] <= 2 ** s["tree_depth"])


def test_same_seed_same_draws_and_bad_start():
    a = nuts.sample(log_density, np.zeros(5), num_samples=20, warmup_steps=30, seed=5, progress=False)
    b = nuts.sample(log_density, np.zeros(5), num_samples=20, warmup_steps=30, seed=5, progress=False)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="start"):
        nuts.sample(lambda t: (-np.inf, np.zeros_like(t)), np.zeros(2), num_samples=1, warmup_steps=0, seed=0,
                    progress=False)


@pytest.mark.parametrize("warmup", [0, 10, 100, 150, 1000])
def test_metric_windows_follow_stans_schedule(warmup):
    windows = nuts._metric_windows(warmup)
    if warmup < 20:
        assert windows == []
        return
    start, end = (75, 50) if warmup >= 150 else (int(0.15 * warmup), int(0.1 * warmup))
    assert windows[0][0] == start and windows[-1][1] == warmup - end
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(windows, windows[1:]))       # contiguous
    if warmup == 1000:
        assert windows == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
