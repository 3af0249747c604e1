"""inference.sampling.nuts, NUTS on a numpy log density: known moments, adaptation, reproducibility."""

import arviz as az
import numpy as np
import pytest
from scipy import special

from inference.sampling import adaptation, nuts

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
    runs = [nuts.sample(log_density, np.zeros(5), num_samples=2000, warmup_steps=500, seed=s)
            for s in range(2)]
    return np.stack([r.draws for r in runs]), [r.stats for r in runs]   # (chain, draw, 5)


def test_moments_match_the_target(chains):
    """Means within 4 Monte Carlo sd (sd^2 / ESS of the draws), variances within 4 sd of their estimator
    (relative sd sqrt((excess kurtosis + 2) / ESS of the squared deviations)), for each of 5 coordinates
    (a Bonferroni level of about 6e-4 for the 10 checks), and the correlation within 4 sd
    ((1 - rho^2) / sqrt(ESS))."""
    draws, _ = chains
    mean = np.r_[special.digamma(SHAPES), 0.0, 0.0]
    var = np.r_[special.polygamma(1, SHAPES), np.diag(COV)]
    kurtosis = np.r_[special.polygamma(3, SHAPES) / special.polygamma(1, SHAPES) ** 2, 0.0, 0.0]
    flat = draws.reshape(-1, 5)
    for i in range(5):
        x = draws[:, :, i]
        ess_mean = float(az.ess(np.ascontiguousarray(x), method="mean"))
        ess_var = float(az.ess(np.ascontiguousarray((x - mean[i]) ** 2), method="mean"))
        assert min(ess_mean, ess_var) > 500, (i, ess_mean, ess_var)
        assert abs(x.mean() - mean[i]) < 4 * np.sqrt(var[i] / ess_mean), (i, x.mean(), mean[i])
        assert abs(x.var() / var[i] - 1) < 4 * np.sqrt((kurtosis[i] + 2) / ess_var), (i, x.var(), var[i])
    ess = min(float(az.ess(np.ascontiguousarray(draws[:, :, i]), method="mean")) for i in (3, 4))
    assert abs(np.corrcoef(flat[:, 3], flat[:, 4])[0, 1] - 0.9) < 4 * (1 - 0.9**2) / np.sqrt(ess)


def test_no_divergences_and_trees_as_reported(chains):
    _, stats = chains
    for s in stats:
        assert s["diverging"].sum() == 0
        assert np.all(s["n_steps"] < 2 ** (s["tree_depth"] + 1))   # kept doublings + at most one rejected


def test_step_size_adaptation_follows_the_target_acceptance():
    """Dual averaging: target acceptance 0.99 gives much smaller steps and a higher acceptance than 0.5
    (seeds 0-3 give step ratios 3.3-8.7 on this target; the test asks for 2)."""
    gaussian = lambda t: (float(-0.5 * t @ PRECISION @ t), -PRECISION @ t)   # noqa: E731
    runs = {target: nuts.sample(gaussian, np.zeros(2), num_samples=300, warmup_steps=500, seed=0,
                                target_accept=target).stats for target in (0.5, 0.99)}
    assert runs[0.5]["step_size"][0] > 2 * runs[0.99]["step_size"][0]
    assert runs[0.5]["acceptance_rate"].mean() < runs[0.99]["acceptance_rate"].mean()
    assert runs[0.99]["acceptance_rate"].mean() > 0.95


@pytest.mark.parametrize("warmup", [0, 5])
def test_short_or_no_warmup_still_samples(warmup):
    run = nuts.sample(log_density, np.zeros(5), num_samples=10, warmup_steps=warmup, seed=1)
    assert run.draws.shape == (10, 5) and np.isfinite(run.draws).all() and len(run.stats["n_steps"]) == 10


def test_same_seed_same_draws_and_bad_start():
    a = nuts.sample(log_density, np.zeros(5), num_samples=20, warmup_steps=30, seed=5)
    b = nuts.sample(log_density, np.zeros(5), num_samples=20, warmup_steps=30, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="start"):
        nuts.sample(lambda t: (-np.inf, np.zeros_like(t)), np.zeros(2), num_samples=1, warmup_steps=0, seed=0)
    with pytest.raises(ValueError, match="flat"):   # an improper, flat density has no step size
        nuts.sample(lambda t: (0.0, np.zeros_like(t)), np.zeros(2), num_samples=1, warmup_steps=0, seed=0)


@pytest.mark.parametrize("warmup", [0, 10, 100, 150, 151, 500, 1000])
def test_metric_windows_follow_stans_schedule(warmup):
    windows = adaptation.windows(warmup)
    if warmup < 20:
        assert windows == []
        return
    start, end = (75, 50) if warmup >= 150 else (int(0.15 * warmup), int(0.1 * warmup))
    assert windows[0][0] == start and windows[-1][1] == warmup - end
    assert all(a1 == b0 for (_, a1), (b0, _) in zip(windows, windows[1:]))       # contiguous
    if warmup in STAN_WINDOWS:   # Stan's adaptation windows for these warmups
        assert windows == STAN_WINDOWS[warmup]


STAN_WINDOWS = {151: [(75, 100), (100, 101)], 500: [(75, 100), (100, 150), (150, 250), (250, 450)],
                1000: [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]}


def test_post_warmup_acceptance_lands_on_the_target():
    """Stan's averaged dual-averaging step ends near 0.9 for a target of 0.8 (stan-dev/stan#3105); the
    polished step accepts the target. A 20-D Gaussian with correlations and scales over 3 decades; the
    mean over 3 chains of 400 draws has a Monte Carlo sd of about 0.01 (chain-to-chain sd 0.017)."""
    d = 20
    rng = np.random.default_rng(1)
    A = rng.normal(size=(d, d))
    precision = np.linalg.inv(A @ A.T / d + np.diag(np.logspace(-2, 1, d)))

    def log_density(x):
        return -0.5 * x @ precision @ x, -precision @ x

    accept = [nuts.sample(log_density, rng.normal(size=d), num_samples=400, warmup_steps=1000, seed=s,
                          target_accept=0.8).stats["acceptance_rate"].mean() for s in range(3)]
    assert abs(np.mean(accept) - 0.8) < 0.05, accept


def test_progress_is_reported_to_a_callback_outside_the_sampler():
    """Every iteration reaches the callback once, in order, warmup first; :func:`nuts.progress` drives a
    tqdm-like bar and counts the divergences of the draws (Neal's funnel after a short warmup: 5)."""

    class Bar:
        total, updates, postfix = 50, 0, {}

        def update(self):
            self.updates += 1

        def set_postfix(self, **kw):
            self.postfix = kw

    def funnel(t):   # v ~ N(0, 3^2), x_i | v ~ N(0, exp(v))
        v, x = t[0], t[1:]
        value = -v**2 / 18 - 0.5 * (x @ x) * np.exp(-v) - 0.5 * len(x) * v
        return float(value), np.r_[-v / 9 + 0.5 * (x @ x) * np.exp(-v) - 0.5 * len(x), -x * np.exp(-v)]

    seen, bar = [], Bar()
    report = nuts.progress(bar, 10)
    run = nuts.sample(funnel, np.zeros(10), num_samples=40, warmup_steps=10, seed=0, target_accept=0.6,
                      callback=lambda i, step, info: (seen.append(i), report(i, step, info)))
    assert seen == list(range(50)) and bar.updates == 50
    assert bar.postfix["phase"] == "sample" and bar.postfix["div"] == run.stats["diverging"].sum() > 0
    assert float(bar.postfix["step"]) == pytest.approx(run.step_size, rel=1e-2)
