"""NUTS on a flat parameter vector: numpy arrays in, log density and gradient out.

``inference.run_nuts`` samples every model with it: the log density is the model's closed form
(``ZooModel.log_density``) or its Pyro log joint traced once (:mod:`inference.potential`), so that a
leapfrog step costs one call of the log density and a few vector operations, not a Pyro trace and
autograd. The algorithm is that of Stan and Pyro's ``NUTS`` kernel, built from the pieces of this
package:

- :mod:`~inference.sampling.metric`: a diagonal or dense Euclidean metric;
- :mod:`~inference.sampling.integrator`: the leapfrog step;
- :mod:`~inference.sampling.termination`: the generalized no-U-turn criterion (Betancourt 2017);
- :func:`transition`: one NUTS iteration, multinomial sampling of a trajectory doubled in a random
  direction up to ``max_tree_depth`` times, divergence when the energy error exceeds 1000;
- :mod:`~inference.sampling.adaptation`: Stan's warmup (dual-averaging step size, windowed metric
  estimates), starting the metric at the curvature of the log density at the start, not the identity;
- :func:`sample`: warmup, then draws; it returns the adapted step size and metric, and reports each
  iteration to a ``callback`` (the caller's progress bar: :func:`progress`).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from inference.sampling.adaptation import WindowAdaptation, curvature
from inference.sampling.integrator import LogDensity, Point, evaluate, hamiltonian, leapfrog
from inference.sampling.metric import Metric, make_metric
from inference.sampling.termination import merged_turning

__all__ = ["Chain", "STATS", "curvature", "progress", "sample", "transition"]

# per-draw statistics with ArviZ's names (az.bfmi and az.plot_energy read ``energy``)
STATS = ("step_size", "acceptance_rate", "n_steps", "tree_depth", "energy", "lp")
MAX_ENERGY_ERROR = 1000.0   # a leapfrog step whose energy rises by more than this diverges (as Stan)

#: ``callback(iteration, step_size, info)`` after every iteration, warmup first: the step size for the
#: next iteration and the statistics of this one (:func:`transition`)
Callback = Callable[[int, float, dict], None]


class Chain(NamedTuple):
    """What :func:`sample` returns: draws (num_samples, d), per-draw statistics, and what warmup adapted."""

    draws: np.ndarray
    stats: dict[str, np.ndarray]
    step_size: float
    metric: Metric


def sample(log_density: LogDensity, start: np.ndarray, *, num_samples: int, warmup_steps: int, seed: int,
           target_accept: float = 0.8, max_tree_depth: int = 10, metric: str = "diag",
           callback: Callback | None = None) -> Chain:
    """Draws after ``warmup_steps`` of adaptation of the step size and a ``metric`` ("diag" or "dense"),
    with per-draw statistics: ``diverging``, ``step_size``, ``acceptance_rate`` (mean over the
    trajectory), ``n_steps`` (leapfrog steps), ``tree_depth``, ``reached_max_treedepth``, ``energy``
    (the Hamiltonian at the draw, as Stan's ``energy__``) and ``lp`` (the log density at the draw)."""
    rng = np.random.default_rng(seed)
    theta = np.array(start, dtype=np.float64)
    with np.errstate(all="ignore"):
        logp, grad = evaluate(log_density, theta)
    if not np.isfinite(logp):
        raise ValueError(f"start: the log density is {logp} at the starting point")
    state = Point(theta, None, grad, logp, None)
    warmup = WindowAdaptation(log_density, state, make_metric(metric, 1 / curvature(log_density, theta)),
                              warmup_steps, target_accept, rng)
    step, metric = warmup.step_size, warmup.metric
    for i in range(warmup_steps):
        state, info = transition(log_density, state, step, metric, rng, max_tree_depth)
        step, metric = warmup.update(i, state, info["acceptance_rate"], info["tree_depth"] >= max_tree_depth)
        if callback is not None:
            callback(i, step, info)
    step, metric = warmup.final()
    draws = np.empty((num_samples, theta.size))
    stats = {k: np.zeros(num_samples) for k in STATS}
    stats["diverging"] = np.zeros(num_samples, dtype=bool)
    stats["reached_max_treedepth"] = np.zeros(num_samples, dtype=bool)
    stats["step_size"][:] = step
    for j in range(num_samples):
        state, info = transition(log_density, state, step, metric, rng, max_tree_depth)
        draws[j] = state.theta
        for k in STATS[1:]:
            stats[k][j] = info[k]
        stats["diverging"][j] = info["diverging"]
        stats["reached_max_treedepth"][j] = info["tree_depth"] >= max_tree_depth
        if callback is not None:
            callback(warmup_steps + j, step, info)
    return Chain(draws, stats, step, metric)


def progress(bar, warmup_steps: int) -> Callback:
    """A callback for :func:`sample` that moves a progress ``bar`` (tqdm's) on, with the phase, the step
    size and the divergences after warmup in its postfix."""
    divergences = 0

    def callback(i: int, step: float, info: dict) -> None:
        nonlocal divergences
        divergences += bool(i >= warmup_steps and info["diverging"])
        if i % 10 == 0 or i == bar.total - 1:
            bar.set_postfix(phase="warmup" if i < warmup_steps else "sample", step=f"{step:.3g}", div=divergences)
        bar.update()

    return callback


class _Tree:
    """A subtrajectory: its two end points, the point it proposes, its log weight, the sum of its
    momenta, and what went wrong."""

    __slots__ = ("minus", "plus", "sample", "log_weight", "rho", "turning", "diverging", "accept_sum", "n")

    def __init__(self, minus, plus, sample, log_weight, rho, turning, diverging, accept_sum, n):
        self.minus, self.plus, self.sample, self.log_weight = minus, plus, sample, log_weight
        self.rho, self.turning, self.diverging, self.accept_sum, self.n = rho, turning, diverging, accept_sum, n


def transition(log_density: LogDensity, state: Point, step: float, metric: Metric, rng: np.random.Generator,
               max_depth: int = 10) -> tuple[Point, dict]:
    """One NUTS iteration from ``state`` (its position, log density and gradient) with a fresh momentum:
    the new state and its statistics (``acceptance_rate``, ``n_steps``, ``tree_depth``, ``diverging``,
    ``energy``, ``lp``)."""
    p = metric.momentum(rng)
    start = Point(state.theta, p, state.grad, state.logp, metric.velocity(p))
    energy0 = hamiltonian(start)
    tree = _Tree(start, start, start, 0.0, p, False, False, 0.0, 0)
    depth = 0
    while depth < max_depth:
        direction = 1 if rng.random() < 0.5 else -1
        new = _build(log_density, tree.plus if direction > 0 else tree.minus, direction * step, depth, metric,
                     energy0, rng)
        tree.accept_sum += new.accept_sum
        tree.n += new.n
        if new.turning or new.diverging:
            tree.diverging = new.diverging
            break
        depth += 1   # as Stan: the depth counts the doublings that were kept
        turning = merged_turning(*((tree, new) if direction > 0 else (new, tree)))
        # biased progressive sampling: move to the new subtree with probability min(1, w_new / w_old)
        if _coin(rng, new.log_weight - tree.log_weight):
            tree.sample = new.sample
        tree.log_weight = np.logaddexp(tree.log_weight, new.log_weight)
        tree.rho = tree.rho + new.rho
        if direction > 0:
            tree.plus = new.plus
        else:
            tree.minus = new.minus
        if turning:
            break
    end = tree.sample
    info = {"acceptance_rate": tree.accept_sum / max(tree.n, 1), "n_steps": tree.n, "tree_depth": depth,
            "diverging": tree.diverging, "energy": hamiltonian(end), "lp": end.logp}
    return end, info


def _build(log_density, start: Point, step: float, depth: int, metric: Metric, energy0: float, rng) -> _Tree:
    """A subtree of 2^depth leapfrog steps from ``start`` (signed step size); uniform (multinomial)
    sampling within it."""
    if depth == 0:
        with np.errstate(all="ignore"):   # a diverging trajectory: overflow, energy inf or nan
            end = leapfrog(log_density, start, step, metric)
            delta = energy0 - hamiltonian(end)
        return _Tree(end, end, end, delta, end.p, False, -delta > MAX_ENERGY_ERROR,
                     min(1.0, math.exp(min(delta, 0.0))), 1)
    first = _build(log_density, start, step, depth - 1, metric, energy0, rng)
    if first.turning or first.diverging:
        return first
    second = _build(log_density, first.plus if step > 0 else first.minus, step, depth - 1, metric, energy0, rng)
    log_weight = np.logaddexp(first.log_weight, second.log_weight)
    sample = second.sample if _coin(rng, second.log_weight - log_weight) else first.sample
    left, right = (first, second) if step > 0 else (second, first)
    turning = second.turning or second.diverging or merged_turning(left, right)
    return _Tree(left.minus, right.plus, sample, log_weight, first.rho + second.rho, turning, second.diverging,
                 first.accept_sum + second.accept_sum, first.n + second.n)


def _coin(rng, log_p: float) -> bool:
    """True with probability min(1, exp(log_p))."""
    return rng.random() < math.exp(min(log_p, 0.0))
