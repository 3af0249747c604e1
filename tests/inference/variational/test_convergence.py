"""inference.variational.convergence: stationarity of optimisation iterates (split R-hat over windows), their effective
sample size and averaging, and the step-size levels, checked against ArviZ and against processes whose
answers are known in closed form."""

import arviz as az
import numpy as np
import pytest
import torch

from inference.variational import convergence
from inference.variational.convergence import effective_sample_size, optimize, split_rhat
from inference.variational.optimization import Optimization

pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors: a thread pool only contends


def ar1(phi: float, n: int, columns: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros((n, columns))
    noise = rng.normal(size=(n, columns))
    for t in range(1, n):
        x[t] = phi * x[t - 1] + noise[t]
    return x


def test_split_rhat_is_arviz_rhat_of_the_two_halves():
    x = ar1(0.7, 401, 3) + np.array([0.0, 0.0, 1e-3]) * np.arange(401)[:, None]   # one drifting column
    x[:, 1] = 2.0                                                                # a constant column
    # ArviZ's classic R-hat ("identity": no split, no rank normalisation) of the halves as two chains
    expected = [float(az.rhat(np.stack([x[:200, j], x[201:, j]]), method="identity")) for j in (0, 2)]
    got = split_rhat(x)
    np.testing.assert_allclose(got[[0, 2]], expected, rtol=1e-12)
    assert got[1] == 1.0


def test_split_rhat_flags_a_trend_and_passes_noise():
    noise = ar1(0.5, 400, 20, seed=1)
    assert split_rhat(noise).max() < convergence.ITERATE_RHAT_MAX
    trend = noise + np.linspace(0, 5, 400)[:, None]   # the halves' means differ by ~2.5 sds
    assert split_rhat(trend).min() > convergence.ITERATE_RHAT_MAX


def test_ess_of_ar1_iterates_is_the_closed_form():
    # AR(1): integrated autocorrelation time (1 + phi) / (1 - phi), so ESS = n (1 - phi) / (1 + phi);
    # the estimator's relative sd at n = 20000 is ~ sqrt(2 * tau_window / n) ~ 4 %, so 15 % is > 3 sds
    phi, n = 0.6, 20000
    x = ar1(phi, n, 4, seed=2)
    np.testing.assert_allclose(effective_sample_size(x), n * (1 - phi) / (1 + phi), rtol=0.15)
    iid = np.random.default_rng(3).normal(size=(n, 2))
    np.testing.assert_allclose(effective_sample_size(iid), n, rtol=0.15)


class NoisyQuadratic:
    """loss = 0.5 * |theta - target|^2 with Gaussian gradient noise (sd 1): the optimum is ``target``."""

    def __init__(self, theta, target, seed=0):
        self.theta, self.target = theta, target
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self):
        noise = torch.randn(self.theta.shape, generator=self.gen, dtype=self.theta.dtype)
        return 0.5 * ((self.theta - self.target) ** 2).sum() + (noise * self.theta).sum()


def run(num_steps, theta0=0.0, seed=0, mode="levels"):
    theta = torch.full((3,), theta0, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([3.0, -2.0, 0.5], dtype=torch.float64)
    with Optimization([theta], lr=0.05, lr_decay=None, num_steps=num_steps, clip_norm=None,
                      progress=False) as loop:
        report = optimize(loop, NoisyQuadratic(theta, target, seed), [theta], num_steps=num_steps, mode=mode)
    return theta.detach(), target, report, loop


def test_optimize_stops_at_stationarity_with_the_average_near_the_optimum():
    theta, target, report, loop = run(20000)
    assert report.converged, report.reason
    assert report.steps < 20000 and report.stationary_at is not None
    assert [lv["lr"] for lv in report.levels] == pytest.approx([0.05 * 0.5 ** i for i in range(len(report.levels))])
    # the averaged iterate's error is its Monte Carlo standard error (recorded per level) plus the
    # step size's bias; 5 MCSEs of the last level bound it with room to spare
    mcse = report.levels[-1]["mcse_max"]
    assert float((theta - target).abs().max()) < 5 * mcse + 0.01, (theta, report.levels)
    assert report.settings()["converged"] is True and report.settings()["steps_taken"] == report.steps


def test_optimize_says_when_the_budget_ends_before_stationarity():
    # from 100 units away at 0.05 per step, 300 steps cannot arrive
    theta, target, report, _ = run(300, theta0=100.0)
    assert not report.converged and report.steps == 300
    assert "not converged after 300 steps" in report.reason and "raise num_steps" in report.reason


def test_fixed_mode_takes_every_step_and_reports_stationarity():
    _, _, report, loop = run(1000, mode="fixed")
    assert report.steps == loop.steps == 1000
    assert report.converged and "1000 fixed steps" in report.reason
