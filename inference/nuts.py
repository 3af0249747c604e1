"""NUTS on a log density given in closed form: numpy arrays in, value and gradient out.

The sampler of Pyro's ``NUTS`` kernel and Stan, written for a flat parameter vector so that a step
costs the log density and a few vector operations, not a Pyro trace and autograd:

- multinomial sampling of the trajectory with the generalized no-U-turn criterion (Betancourt 2017),
  trees doubled in a random direction up to ``max_tree_depth``, divergence when the energy error
  exceeds 1000;
- Stan's warmup: dual-averaging step size (Hoffman & Gelman 2014, target acceptance
  ``target_accept``), a diagonal metric re-estimated at the end of doubling windows after a
  75-iteration start buffer and before a 50-iteration end buffer (regularized towards 1e-3 as in
  Stan), windows shrunk for short warmups; the metric starts at the curvature of the log density
  at the starting point instead of the identity.

``inference.run_nuts`` uses it for zoo models with a ``log_density``; Pyro's kernel samples the others.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from tqdm import tqdm

LogDensity = Callable[[np.ndarray], "tuple[float, np.ndarray]"]   # theta (d,) -> (log p, gradient (d,))
# per-draw statistics with ArviZ's names (az.bfmi and az.plot_energy read ``energy``)
STATS = ("step_size", "acceptance_rate", "n_steps", "tree_depth", "energy", "lp")


def sample(log_density: LogDensity, start: np.ndarray, *, num_samples: int, warmup_steps: int, seed: int,
           target_accept: float = 0.8, max_tree_depth: int = 10, desc: str = "NUTS", progress: bool = True,
           position: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draws (num_samples, d) after ``warmup_steps`` of adaptation, and per-draw statistics:
    ``diverging``, ``step_size``, ``acceptance_rate`` (mean over the tree), ``n_steps`` (leapfrog
    steps), ``tree_depth``, ``reached_max_treedepth``, ``energy`` (the Hamiltonian at the draw, as
    Stan's ``energy__``) and ``lp`` (the log density at the draw)."""
    rng = np.random.default_rng(seed)
    theta = np.array(start, dtype=np.float64)
    logp, grad = _evaluate(log_density, theta)
    if not np.isfinite(logp):
        raise ValueError(f"start: the log density is {logp} at the starting point")
    inv_metric = 1 / curvature(log_density, theta)
    step = _reasonable_step(log_density, theta, logp, grad, inv_metric, rng)
    adapt = _StepSizeAdaptation(step, target_accept)
    windows = _metric_windows(warmup_steps)
    welford = _Welford(theta.size)
    draws = np.empty((num_samples, theta.size))
    stats = {k: np.zeros(num_samples) for k in STATS}
    stats["diverging"] = np.zeros(num_samples, dtype=bool)
    stats["reached_max_treedepth"] = np.zeros(num_samples, dtype=bool)
    divergences = 0
    bar = tqdm(total=warmup_steps + num_samples, desc=desc, disable=None if progress else True, leave=False,
               position=position)
    try:
        for i in range(warmup_steps + num_samples):
            theta, logp, grad, info = _transition(log_density, theta, logp, grad, step, inv_metric, rng,
                                                  max_tree_depth)
            if i < warmup_steps:
                step = adapt.update(info["acceptance_rate"])
                if any(a <= i < b for a, b in windows):
                    welford.add(theta)
                if any(i == b - 1 for _, b in windows):   # a window closes: new metric, new step size
                    inv_metric = welford.regularized_variance()
                    welford = _Welford(theta.size)
                    step = _reasonable_step(log_density, theta, logp, grad, inv_metric, rng, step)
                    adapt = _StepSizeAdaptation(step, target_accept)
                if windows and i == windows[-1][1] - 1:   # the end buffer: the metric is final
                    step = adapt.polish()
                if i == warmup_steps - 1:
                    step = adapt.final()
            else:
                j = i - warmup_steps
                draws[j] = theta
                stats["diverging"][j] = info["diverging"]
                divergences += info["diverging"]
                stats["step_size"][j] = step
                for k in STATS[1:]:
                    stats[k][j] = info[k]
                stats["reached_max_treedepth"][j] = info["tree_depth"] >= max_tree_depth
            if i % 10 == 0 or i == warmup_steps + num_samples - 1:
                bar.set_postfix(phase="warmup" if i < warmup_steps else "sample", step=f"{step:.3g}",
                                div=divergences)
            bar.update()
    finally:
        bar.close()
    return draws, stats


def _evaluate(log_density: LogDensity, theta: np.ndarray) -> tuple[float, np.ndarray]:
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        logp, grad = log_density(theta)
    logp = float(logp)
    return (logp if not math.isnan(logp) else -math.inf), grad


class _Tree:
    """A subtrajectory: its two ends (position, momentum, gradient), the sample it proposes, its
    log weight, the sum of its momenta, and what went wrong."""

    __slots__ = ("minus", "plus", "sample", "log_weight", "rho", "turning", "diverging", "accept_sum", "n")

    def __init__(self, minus, plus, sample, log_weight, rho, turning, diverging, accept_sum, n):
        self.minus, self.plus, self.sample, self.log_weight = minus, plus, sample, log_weight
        self.rho, self.turning, self.diverging, self.accept_sum, self.n = rho, turning, diverging, accept_sum, n


def _transition(log_density, theta, logp, grad, step, inv_metric, rng, max_depth):
    """One NUTS iteration from theta: returns the new (theta, log p, gradient) and statistics."""
    p = rng.standard_normal(theta.size) / np.sqrt(inv_metric)
    energy0 = -logp + 0.5 * p @ (inv_metric * p)
    edge = (theta, p, grad, logp)
    tree = _Tree(edge, edge, edge, 0.0, p.copy(), False, False, 0.0, 0)
    depth = 0
    while depth < max_depth:
        direction = 1 if rng.random() < 0.5 else -1
        start = tree.plus if direction > 0 else tree.minus
        new = _build(log_density, start, direction * step, depth, inv_metric, energy0, rng)
        tree.accept_sum += new.accept_sum
        tree.n += new.n
        if new.turning or new.diverging:
            tree.diverging = new.diverging
            break
        depth += 1   # as Stan: the depth counts the doublings that were kept
        turning = _merged_turning(*((tree, new) if direction > 0 else (new, tree)), inv_metric)
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
    theta, p, grad, logp = tree.sample
    info = {"acceptance_rate": tree.accept_sum / max(tree.n, 1), "n_steps": tree.n, "tree_depth": depth,
            "diverging": tree.diverging, "energy": -logp + 0.5 * p @ (inv_metric * p), "lp": logp}
    return theta, logp, grad, info


def _build(log_density, start, step, depth, inv_metric, energy0, rng) -> _Tree:
    """A subtree of 2^depth leapfrog steps from ``start`` (signed step size)."""
    if depth == 0:
        theta, p, grad, _ = start
        p = p + 0.5 * step * grad
        theta = theta + step * inv_metric * p
        logp, grad = _evaluate(log_density, theta)
        p = p + 0.5 * step * grad
        with np.errstate(over="ignore", invalid="ignore"):   # a diverging trajectory: energy inf or nan
            energy = -logp + 0.5 * p @ (inv_metric * p)
        if math.isnan(energy):
            energy = math.inf
        edge = (theta, p, grad, logp)
        delta = energy0 - energy
        return _Tree(edge, edge, edge, delta, p, False, -delta > 1000.0, min(1.0, math.exp(min(delta, 0.0))), 1)
    first = _build(log_density, start, step, depth - 1, inv_metric, energy0, rng)
    if first.turning or first.diverging:
        return first
    outer = first.plus if step > 0 else first.minus
    second = _build(log_density, outer, step, depth - 1, inv_metric, energy0, rng)
    log_weight = np.logaddexp(first.log_weight, second.log_weight)
    sample = second.sample if _coin(rng, second.log_weight - log_weight) else first.sample
    left, right = (first, second) if step > 0 else (second, first)
    minus, plus = left.minus, right.plus
    rho = first.rho + second.rho
    turning = second.turning or second.diverging or _merged_turning(left, right, inv_metric)
    return _Tree(minus, plus, sample, log_weight, rho, turning, second.diverging,
                 first.accept_sum + second.accept_sum, first.n + second.n)


def _coin(rng, log_p: float) -> bool:
    """True with probability min(1, exp(log_p))."""
    return rng.random() < math.exp(min(log_p, 0.0))


def _turning(minus, plus, rho, inv_metric) -> bool:
    """The generalized no-U-turn criterion on the momenta at both ends and their sum."""
    return bool((inv_metric * minus[1]) @ rho <= 0 or (inv_metric * plus[1]) @ rho <= 0)


def _merged_turning(left: _Tree, right: _Tree, inv_metric) -> bool:
    """Whether two adjacent subtrees (``left`` before ``right`` in integration time) make a U-turn when
    merged: over the whole, and, as Stan checks since 2.23 (base_nuts.hpp), across the seam, from each
    subtree to the first point of the other. Without the seam checks a tree can grow past a U-turn
    that falls between its halves: twice the leapfrog steps on a mixture posterior."""
    return (_turning(left.minus, right.plus, left.rho + right.rho, inv_metric)
            or _turning(left.minus, right.minus, left.rho + right.minus[1], inv_metric)
            or _turning(left.plus, right.plus, right.rho + left.plus[1], inv_metric))


def curvature(log_density: LogDensity, theta: np.ndarray, eps: float = np.finfo(np.float64).eps) -> np.ndarray:
    """|d^2 log p / d theta_i^2| by central differences of the gradient (steps eps^(1/3) |theta_i|, for
    a density computed to precision ``eps``), clamped to [1e-4, 1e4]: 1 / curvature is a Laplace
    guess at the posterior variances, which starts the metric."""
    h = eps ** (1 / 3)
    out = np.ones(theta.size)
    for i in range(theta.size):
        step = h * max(1.0, abs(theta[i]))
        moved = theta.copy()
        moved[i] += step
        upper = _evaluate(log_density, moved)[1][i]
        moved[i] -= 2 * step
        lower = _evaluate(log_density, moved)[1][i]
        out[i] = abs(upper - lower) / (2 * step)
    return np.clip(np.nan_to_num(out, nan=1.0), 1e-4, 1e4)


def _reasonable_step(log_density, theta, logp, grad, inv_metric, rng, step: float = 1.0) -> float:
    """Stan's heuristic (Hoffman & Gelman's, threshold 0.8): from ``step``, double or halve until the
    acceptance of one leapfrog step crosses 0.8."""
    p = rng.standard_normal(theta.size) / np.sqrt(inv_metric)
    energy0 = -logp + 0.5 * p @ (inv_metric * p)

    def accepted(eps):
        leaf = _build(log_density, (theta, p, grad, logp), eps, 0, inv_metric, energy0, rng)
        return np.isfinite(leaf.log_weight) and leaf.log_weight > math.log(0.8)

    direction = 1 if accepted(step) else -1
    while True:
        step = step * 2.0 ** direction
        if not 1e-12 < step < 1e7:
            raise ValueError(f"log density: no usable step size (reached {step:.3g}); is the density "
                             "flat (improper) or non-finite around the starting point?")
        if accepted(step) != (direction > 0):
            return step


class _StepSizeAdaptation:
    """Nesterov dual averaging of log step size towards a mean acceptance of ``target``, then
    polishing in the end buffer.

    Dual averaging makes the *iterates* average ``target``, but its iterates keep fluctuating by
    O(1) in log step; their average, which Stan keeps as the final step, sits where the acceptance
    averaged over that spread equals ``target``, and acceptance is concave in log step where it
    falls off, so the averaged step accepts more: Stan ends warmup near 0.9 for a target of 0.8
    (stan-dev/stan#3105). After :meth:`polish` (the end buffer, once the metric is final), updates
    are Robbins-Monro steps with gain ``c / k``, whose iterates converge to the step that accepts
    ``target``; the final step averages the second half of them (Polyak averaging).
    """

    def __init__(self, step: float, target: float, gamma=0.05, t0=10.0, kappa=0.75, c=2.0):
        self.mu, self.target, self.gamma, self.t0, self.kappa = math.log(10 * step), target, gamma, t0, kappa
        self.t, self.h_bar, self.log_step_bar = 0, 0.0, 0.0
        self.c, self.polishing, self.polished = c, 0, []
        self.log_step = math.log(step)

    def update(self, accept: float) -> float:
        if self.polishing:
            self.log_step += self.c / self.polishing * (accept - self.target)
            self.polishing += 1
            self.polished.append(self.log_step)
            return math.exp(self.log_step)
        self.t += 1
        eta = 1 / (self.t + self.t0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - accept)
        self.log_step = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        w = self.t ** -self.kappa
        self.log_step_bar = w * self.log_step + (1 - w) * self.log_step_bar
        return math.exp(self.log_step)

    def polish(self) -> float:
        """Switch to Robbins-Monro from the averaged step; returns the step to use next."""
        if not self.polishing:
            self.log_step, self.polishing = self.log_step_bar if self.t else self.log_step, 1
        return math.exp(self.log_step)

    def final(self) -> float:
        """The averaged Robbins-Monro iterates of the second half of polishing (Polyak averaging), else
        the averaged dual-averaging step."""
        if self.polished:
            return math.exp(float(np.mean(self.polished[len(self.polished) // 2:])))
        return math.exp(self.log_step if self.polishing else self.log_step_bar)


def _metric_windows(warmup: int, start: int = 75, end: int = 50, base: int = 25) -> list[tuple[int, int]]:
    """Stan's slow adaptation windows [a, b) of iterations: doubling from ``base`` between a start
    buffer and an end buffer (15% / 10% / 75% of a warmup shorter than 150 iterations)."""
    if warmup < 20:
        return []
    if start + end + base > warmup:
        start, end = int(0.15 * warmup), int(0.1 * warmup)
        base = warmup - start - end
    windows, size = [(start, start + base)], base
    while windows[-1][1] < warmup - end:
        a, size = windows[-1][1], 2 * size
        b = a + size
        if b + 2 * size > warmup - end:   # the next window would not fit: stretch this one to the end buffer
            b = warmup - end
        windows.append((a, b))
    return windows


class _Welford:
    """Running mean and variance; the metric is Stan's regularized variance."""

    def __init__(self, d: int):
        self.n, self.mean, self.m2 = 0, np.zeros(d), np.zeros(d)

    def add(self, x: np.ndarray) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def regularized_variance(self) -> np.ndarray:
        n = self.n
        var = self.m2 / max(n - 1, 1)
        return (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))
