"""The leapfrog (velocity Verlet) integrator of Hamilton's equations for H(theta, p) = -log p(theta) + K(p).

A point of a trajectory carries what the sampler reuses: the position, the momentum, the gradient and
value of the log density there, and the velocity M^-1 p (for the kinetic energy and the U-turn check,
computed once per point).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from inference.sampling.metric import Metric

LogDensity = Callable[[np.ndarray], "tuple[float, np.ndarray]"]   # theta (d,) -> (log p, gradient (d,))


class Point(NamedTuple):
    """A point of a trajectory. A chain's state between iterations is a point without momentum and
    velocity (None): each NUTS iteration draws a new momentum."""

    theta: np.ndarray
    p: np.ndarray
    grad: np.ndarray
    logp: float
    velocity: np.ndarray


def evaluate(log_density: LogDensity, theta: np.ndarray) -> tuple[float, np.ndarray]:
    """(log p, gradient) at ``theta``; a NaN log density (outside the support, overflow) counts as -inf.
    Call it under ``np.errstate(all="ignore")`` where a diverging trajectory may overflow."""
    logp, grad = log_density(theta)
    logp = float(logp)
    return (logp if not math.isnan(logp) else -math.inf), grad


def leapfrog(log_density: LogDensity, start: Point, step: float, metric: Metric) -> Point:
    """One leapfrog step of signed size ``step``: half a momentum step, a position step along the
    velocity, a full gradient, half a momentum step. Volume-preserving and reversible (negate the
    momentum, step again, negate: back at the start); its energy error is O(step^2). Floating-point
    warnings are the caller's (``np.errstate``): a diverging step may overflow."""
    p = start.p + 0.5 * step * start.grad
    theta = start.theta + step * metric.velocity(p)
    logp, grad = evaluate(log_density, theta)
    p = p + 0.5 * step * grad
    return Point(theta, p, grad, logp, metric.velocity(p))


def hamiltonian(point: Point) -> float:
    """H = -log p(theta) + p' M^-1 p / 2 at ``point``; +inf where it is not a number."""
    energy = -point.logp + 0.5 * point.p @ point.velocity
    return energy if not math.isnan(energy) else math.inf
