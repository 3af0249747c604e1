"""When to stop doubling a NUTS trajectory: the generalized no-U-turn criterion (Betancourt 2017).

A trajectory from ``minus`` to ``plus`` (its two end points, in integration time) whose momenta sum
to ``rho`` turns when the velocity M^-1 p at either end points away from ``rho``; with the metric's
velocity, the criterion measures the turn in the metric's geometry (for M = I, Hoffman & Gelman's
(theta+ - theta-) . p criterion, with the momentum sum standing in for the displacement).
"""

from __future__ import annotations


def is_turning(minus, plus, rho) -> bool:
    """``minus``, ``plus``: the end points (:class:`~inference.sampling.integrator.Point`) of a trajectory
    whose momenta sum to ``rho``."""
    return bool(minus.velocity @ rho <= 0 or plus.velocity @ rho <= 0)


def merged_turning(left, right) -> bool:
    """Whether two adjacent subtrajectories (``left`` before ``right`` in integration time; each with
    end points ``minus``, ``plus`` and momentum sum ``rho``) make a U-turn when merged: over the whole,
    and, as Stan checks since 2.23 (base_nuts.hpp), across the seam, from each to the first point of
    the other. Without the seam checks a trajectory can grow past a U-turn that falls between its
    halves: twice the leapfrog steps on a mixture posterior."""
    return (is_turning(left.minus, right.plus, left.rho + right.rho)
            or is_turning(left.minus, right.minus, left.rho + right.minus.p)
            or is_turning(left.plus, right.plus, right.rho + left.plus.p))
