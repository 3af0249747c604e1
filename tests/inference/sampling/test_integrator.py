"""inference.sampling.integrator and .termination: the leapfrog step against its closed form on a
quadratic potential, its O(step^2) energy error and reversibility, and the U-turn criterion in the
metric's geometry."""

import numpy as np
import pytest

from inference.sampling.integrator import Point, evaluate, hamiltonian, leapfrog
from inference.sampling.metric import DenseMetric, DiagonalMetric
from inference.sampling.termination import is_turning, merged_turning

COV = np.array([[1.0, 0.95], [0.95, 1.0]])
PRECISION = np.linalg.inv(COV)


def gaussian(x):
    g = -PRECISION @ x
    return 0.5 * x @ g, g


def start(log_density, x, p, metric):
    logp, grad = evaluate(log_density, x)
    return Point(x, p, grad, logp, metric.velocity(p))


def oscillator(x, p, eps):
    """One leapfrog step of H = x^2 / 2 + p^2 / 2, expanded: a linear map."""
    return x * (1 - eps**2 / 2) + eps * p, p * (1 - eps**2 / 2) - eps * x * (1 - eps**2 / 4)


def test_leapfrog_with_the_dense_metric_is_the_oscillator_in_whitened_coordinates():
    """On N(0, S) with M^-1 = S = L L', z = L^-1 x and q = L' p follow H = z'z / 2 + q'q / 2: each
    coordinate a unit oscillator."""
    metric, chol = DenseMetric(COV), np.linalg.cholesky(COV)
    x0, p0, eps = np.array([0.7, -0.2]), np.array([1.5, 0.4]), 0.3
    end = leapfrog(gaussian, start(gaussian, x0, p0, metric), eps, metric)
    z, q = oscillator(np.linalg.solve(chol, x0), chol.T @ p0, eps)
    np.testing.assert_allclose(end.theta, chol @ z, rtol=1e-12)
    np.testing.assert_allclose(end.p, np.linalg.solve(chol.T, q), rtol=1e-12)
    np.testing.assert_allclose(end.grad, -PRECISION @ end.theta, rtol=1e-12)
    np.testing.assert_allclose(end.velocity, COV @ end.p, rtol=1e-12)
    assert hamiltonian(end) == pytest.approx(0.5 * end.theta @ PRECISION @ end.theta + 0.5 * end.p @ COV @ end.p)


@pytest.mark.parametrize("metric", [DiagonalMetric(np.array([1.0, 0.5])), DenseMetric(COV)], ids=["diag", "dense"])
def test_energy_error_is_second_order_and_the_step_reversible(metric):
    """Over a fixed time (T = 1), the largest energy error shrinks 4x when the step halves (O(step^2));
    stepping back with the momentum negated returns to the start (to rounding)."""
    first = start(gaussian, np.array([1.0, -0.5]), np.array([0.3, 0.8]), metric)

    def worst_error(eps):
        point, worst = first, 0.0
        for _ in range(round(1 / eps)):
            point = leapfrog(gaussian, point, eps, metric)
            worst = max(worst, abs(hamiltonian(point) - hamiltonian(first)))
        return worst

    errors = [worst_error(eps) for eps in (0.02, 0.01, 0.005)]
    assert 3.6 < errors[0] / errors[1] < 4.4 and 3.6 < errors[1] / errors[2] < 4.4, errors
    point = first
    for _ in range(25):
        point = leapfrog(gaussian, point, 0.1, metric)
    point = point._replace(p=-point.p, velocity=-point.velocity)
    for _ in range(25):
        point = leapfrog(gaussian, point, 0.1, metric)
    np.testing.assert_allclose(point.theta, first.theta, atol=1e-12)
    np.testing.assert_allclose(-point.p, first.p, atol=1e-12)


def test_a_nan_log_density_is_minus_infinity_and_its_energy_infinite():
    metric = DiagonalMetric(np.ones(1))
    point = start(lambda x: (np.nan, np.zeros(1)), np.zeros(1), np.ones(1), metric)
    assert point.logp == -np.inf and hamiltonian(point) == np.inf


def _point(p, metric):
    p = np.asarray(p, dtype=float)
    return Point(np.zeros(p.size), p, np.zeros(p.size), 0.0, metric.velocity(p))


def test_u_turn_is_measured_with_the_metrics_velocity():
    """Momenta along the momentum sum do not turn; the same momenta turn under a metric whose velocity
    M^-1 p points away from the sum: p . rho = 0.5 > 0, but (M^-1 p) . rho = 1 - 2 < 0 for M^-1 = diag(1, 4)."""
    identity, stretched = DiagonalMetric(np.ones(2)), DiagonalMetric(np.array([1.0, 4.0]))
    rho = np.array([1.0, -0.5])
    assert not is_turning(_point([1.0, 1.0], identity), _point([1.0, 1.0], identity), rho)
    assert is_turning(_point([1.0, 1.0], stretched), _point([1.0, 1.0], stretched), rho)
    assert is_turning(_point([1.0, 0.0], identity), _point([-1.0, 0.0], identity), rho)


class _Sub:
    def __init__(self, minus, plus, rho):
        self.minus, self.plus, self.rho = minus, plus, np.asarray(rho, dtype=float)


def test_merged_turning_checks_across_the_seam():
    """Two subtrajectories whose ends both move along the total momentum (no U-turn over the whole)
    but whose seam turns: the right one starts moving back (p = -0.1) against the left one's sum."""
    m = DiagonalMetric(np.ones(1))
    left = _Sub(_point([1.0], m), _point([1.0], m), [1.0])
    right = _Sub(_point([-0.1], m), _point([2.0], m), [1.9])
    assert not is_turning(left.minus, right.plus, left.rho + right.rho)
    assert merged_turning(left, right)
    straight = _Sub(_point([0.5], m), _point([2.0], m), [2.5])
    assert not merged_turning(left, straight)
