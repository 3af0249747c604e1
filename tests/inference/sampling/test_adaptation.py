"""inference.sampling.adaptation: dual averaging reaches the target acceptance of HMC on a Gaussian,
whose acceptance as a function of the step size is known; the first step size crosses Stan's 0.8;
windowed warmup returns Stan's regularised estimate of each window's draws. (Stan's window schedule
itself: test_nuts.py.)"""

import math

import numpy as np
import pytest

from inference.sampling.adaptation import DualAveraging, WindowAdaptation, reasonable_step, windows
from inference.sampling.integrator import Point, evaluate
from inference.sampling.metric import DiagonalMetric, make_metric

D = 10   # a standard Gaussian in 10-D; HMC with one leapfrog step per iteration and the unit metric


def energy_error(x, p, eps):
    """H after one leapfrog step minus H before, for H = (x'x + p'p) / 2 (per coordinate a linear map)."""
    x1 = x * (1 - eps**2 / 2) + eps * p
    p1 = p * (1 - eps**2 / 2) - eps * x * (1 - eps**2 / 4)
    return 0.5 * ((x1**2 + p1**2) - (x**2 + p**2)).sum(-1)


_REFERENCE = np.random.default_rng(123).standard_normal((2, 100_000, D))


def expected_acceptance(eps):
    """E min(1, exp(-dH)) over x, p ~ N(0, I): Monte Carlo over 1e5 fixed draws (sd < 0.002)."""
    return float(np.minimum(1, np.exp(-energy_error(*_REFERENCE, eps))).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_dual_averaging_reaches_the_target_acceptance(seed):
    """The dual-averaging iterates accept 0.8 on average (seeds 0-5: 0.795-0.798 over the last 250 of 500);
    their average, Stan's step, accepts more (0.84-0.86: stan-dev/stan#3105); Robbins-Monro polishing
    brings the final step back to 0.8 (seeds 0-5: 0.779-0.807, sd 0.01; the test allows 0.03)."""
    rng, target = np.random.default_rng(seed), 0.8
    dual = DualAveraging(1.0, target)
    step, accepted = 1.0, []
    for _ in range(500):
        x, p = rng.standard_normal((2, D))
        accepted.append(min(1.0, math.exp(-energy_error(x, p, step))))
        step = dual.update(accepted[-1])
    assert abs(np.mean(accepted[250:]) - target) < 0.02
    assert expected_acceptance(math.exp(dual.log_step_bar)) > target + 0.02
    step = dual.polish()
    for _ in range(1000):
        x, p = rng.standard_normal((2, D))
        step = dual.update(min(1.0, math.exp(-energy_error(x, p, step))))
    assert abs(expected_acceptance(dual.final()) - target) < 0.03


def test_dual_averaging_without_updates_keeps_its_step():
    assert DualAveraging(0.125, 0.8).final() == 0.125


def _gaussian(x):
    return -0.5 * x @ x, -x


def _state(x):
    logp, grad = evaluate(_gaussian, x)
    return Point(x, None, grad, logp, None)


@pytest.mark.parametrize("seed", range(4))
def test_reasonable_step_is_where_one_step_acceptance_crosses_08(seed):
    """Doubling or halving from 1, the returned step is a power of two at which the one-step acceptance
    (the closed-form energy error, with the momentum the search draws) crosses 0.8."""
    x = np.random.default_rng(10 + seed).standard_normal(D)
    metric = DiagonalMetric(np.ones(D))
    step = reasonable_step(_gaussian, _state(x), metric, np.random.default_rng(seed))
    p = metric.momentum(np.random.default_rng(seed))
    accepts = [-energy_error(x, p, eps) > math.log(0.8) for eps in (step / 2, step, 2 * step)]
    assert math.log2(step) == round(math.log2(step))
    assert accepts[0] != accepts[1] or accepts[1] != accepts[2]


@pytest.mark.parametrize("kind", ["diag", "dense"])
def test_windowed_warmup_returns_stans_estimate_of_each_window(kind):
    """Fed draws of N(0, S), the metric changes exactly when a window closes, to (n / (n + 5)) cov + 1e-3
    (5 / (n + 5)) I of that window's draws, and ``final`` returns the last one with a step size."""
    cov = np.array([[2.0, 0.9], [0.9, 1.0]])
    draws = np.random.default_rng(0).multivariate_normal(np.zeros(2), cov, size=200)
    warmup = WindowAdaptation(_gaussian, _state(draws[0]), make_metric(kind, np.ones(2)), 200, 0.8,
                              np.random.default_rng(0))
    ends = {b - 1: (a, b) for a, b in windows(200)}   # [(75, 100), (100, 150)]
    metric = warmup.metric
    for i, x in enumerate(draws):
        step, new = warmup.update(i, _state(x), 0.8)
        assert step > 0 and (new is metric) == (i not in ends)
        if i in ends:
            a, b = ends[i]
            n = b - a
            cov_hat = np.cov(draws[a:b].T) if kind == "dense" else draws[a:b].var(0, ddof=1)
            expected = n / (n + 5) * cov_hat + 1e-3 * 5 / (n + 5) * (np.eye(2) if kind == "dense" else 1.0)
            np.testing.assert_allclose(new.inverse, expected, rtol=1e-10)
        metric = new
    step, final = warmup.final()
    assert final is metric and step > 0 and step == warmup.step_size


def test_a_saturated_tree_before_the_first_window_guesses_the_metric_again_where_the_chain_is():
    """Started on a metric 10^4 times too wide (a start far in the tails), a saturated tree in the start
    buffer replaces it with 1 / curvature at the chain's state, the exact variances of N(0, diag(s^2));
    a saturated tree once the windows have begun changes nothing until the window closes."""
    s2 = np.array([0.5, 2.0])

    def gaussian(x):
        return float(-0.5 * (x**2 / s2).sum()), -x / s2

    def state(x):
        logp, grad = evaluate(gaussian, x)
        return Point(x, None, grad, logp, None)

    x = np.array([0.3, -1.0])
    warmup = WindowAdaptation(gaussian, state(x), DiagonalMetric(1e4 * s2), 200, 0.8, np.random.default_rng(0))
    first = windows(200)[0][0]
    step, metric = warmup.update(first - 2, state(x), 0.8)
    assert metric is warmup.metric and np.allclose(metric.inverse, 1e4 * s2)   # not saturated: kept
    step, metric = warmup.update(first - 1, state(x), 0.8, saturated=True)
    np.testing.assert_allclose(metric.inverse, s2, rtol=1e-6)
    assert step > 0
    step, again = warmup.update(first, state(x), 0.8, saturated=True)
    assert again is metric
