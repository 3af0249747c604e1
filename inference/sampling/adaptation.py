"""Stan's warmup for NUTS, in pieces that return what they adapted.

- :class:`DualAveraging`: the step size, by Nesterov dual averaging towards a target acceptance
  (Hoffman & Gelman 2014), polished in the end buffer;
- :func:`windows`: Stan's schedule of slow windows that re-estimate the metric;
- :func:`reasonable_step`: Stan's first guess of a step size for a metric;
- :func:`curvature`: the metric's starting point (a Laplace guess at the variances);
- :class:`WindowAdaptation`: the three wired together as ``WindowAdaptation(...)`` (init),
  ``update(i, state, acceptance)`` after each warmup iteration and ``final()``, each returning the
  step size and metric to use next.
"""

from __future__ import annotations

import math

import numpy as np

from inference.sampling.integrator import LogDensity, Point, evaluate, hamiltonian, leapfrog
from inference.sampling.metric import Metric, Welford, make_metric


class DualAveraging:
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
        self.start, self.log_step = step, math.log(step)

    def update(self, accept: float) -> float:
        """The step size to use next, after an iteration that accepted ``accept`` on average."""
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
        the averaged dual-averaging step; the starting step before any update."""
        if self.polished:
            return math.exp(float(np.mean(self.polished[len(self.polished) // 2:])))
        if self.polishing:
            return math.exp(self.log_step)
        return math.exp(self.log_step_bar) if self.t else self.start


def windows(warmup: int, start: int = 75, end: int = 50, base: int = 25) -> list[tuple[int, int]]:
    """Stan's slow adaptation windows [a, b) of iterations: doubling from ``base`` between a start
    buffer and an end buffer (15% / 10% / 75% of a warmup shorter than 150 iterations)."""
    if warmup < 20:
        return []
    if start + end + base > warmup:
        start, end = int(0.15 * warmup), int(0.1 * warmup)
        base = warmup - start - end
    out, size = [(start, start + base)], base
    while out[-1][1] < warmup - end:
        a, size = out[-1][1], 2 * size
        b = a + size
        if b + 2 * size > warmup - end:   # the next window would not fit: stretch this one to the end buffer
            b = warmup - end
        out.append((a, b))
    return out


def reasonable_step(log_density: LogDensity, state: Point, metric: Metric, rng: np.random.Generator,
                    step: float = 1.0) -> float:
    """Stan's heuristic (Hoffman & Gelman's, threshold 0.8): from ``step``, double or halve until the
    acceptance of one leapfrog step from ``state`` (a fresh momentum) crosses 0.8."""
    p = metric.momentum(rng)
    start = Point(state.theta, p, state.grad, state.logp, metric.velocity(p))
    energy0 = hamiltonian(start)

    def accepted(eps):
        with np.errstate(all="ignore"):
            delta = energy0 - hamiltonian(leapfrog(log_density, start, eps, metric))
        return math.isfinite(delta) and delta > math.log(0.8)

    direction = 1 if accepted(step) else -1
    while True:
        step = step * 2.0 ** direction
        if not 1e-12 < step < 1e7:
            raise ValueError(f"log density: no usable step size (reached {step:.3g}); is the density "
                             "flat (improper) or non-finite around the starting point?")
        if accepted(step) != (direction > 0):
            return step


def curvature(log_density: LogDensity, theta: np.ndarray, eps: float = np.finfo(np.float64).eps) -> np.ndarray:
    """|d^2 log p / d theta_i^2| by central differences of the gradient (steps eps^(1/3) |theta_i|, for
    a density computed to precision ``eps``), clamped to [1e-4, 1e4]: 1 / curvature is a Laplace
    guess at the posterior variances, which starts the metric."""
    h = eps ** (1 / 3)
    out = np.ones(theta.size)
    for i in range(theta.size):
        step = h * max(1.0, abs(theta[i]))
        moved = theta.copy()
        with np.errstate(all="ignore"):
            moved[i] += step
            upper = evaluate(log_density, moved)[1][i]
            moved[i] -= 2 * step
            lower = evaluate(log_density, moved)[1][i]
            out[i] = abs(upper - lower) / (2 * step)
    return np.clip(np.nan_to_num(out, nan=1.0), 1e-4, 1e4)


class WindowAdaptation:
    """Stan's windowed warmup: the step size by :class:`DualAveraging` throughout, restarted from
    :func:`reasonable_step` whenever a slow window (:func:`windows`) closes with a new metric estimated
    from the window's draws (:meth:`Welford.metric`, diagonal or dense as the starting ``metric``; the
    diagonal from the draws and their gradients, as nutpie, the dense Stan's regularised covariance);
    polished in the end buffer once the metric is final.

    ``WindowAdaptation(log_density, state, metric, num_steps, target_accept, rng)`` starts it (and
    finds a first step size for ``metric`` at ``state``); ``update(i, state, acceptance)`` after
    warmup iteration ``i`` and ``final()`` after the last each return ``(step_size, metric)``.
    """

    def __init__(self, log_density: LogDensity, state: Point, metric: Metric, num_steps: int,
                 target_accept: float, rng: np.random.Generator):
        self.log_density, self.target, self.rng = log_density, target_accept, rng
        self.windows = windows(num_steps)
        self.metric = metric
        self.step_size = reasonable_step(log_density, state, metric, rng)
        self.dual = DualAveraging(self.step_size, target_accept)
        self.welford = Welford(metric.dim, dense=metric.kind == "dense")

    def update(self, i: int, state: Point, acceptance: float, saturated: bool = False) -> tuple[float, Metric]:
        """After warmup iteration ``i``, which moved to ``state`` accepting ``acceptance`` on average and
        ``saturated`` (reached the maximum tree depth) or not."""
        step = self.dual.update(acceptance)
        if saturated and (not self.windows or i < self.windows[0][0]):
            # Still on the metric guessed where the chain started: a start far out in the tails (a mixture's
            # chain started at log density -10,468 against -3,280 at home) gives one whose trees saturate
            # for dozens of iterations. Guess again where the chain is now (2d gradients against a
            # saturated tree's 1,023; benchmarks/README.md, "Warmup").
            self.metric = make_metric(self.metric.kind, 1 / curvature(self.log_density, state.theta))
            step = reasonable_step(self.log_density, state, self.metric, self.rng, step)
            self.dual = DualAveraging(step, self.target)
        if any(a <= i < b for a, b in self.windows):
            self.welford.add(state.theta, state.grad)
        if any(i == b - 1 for _, b in self.windows):   # a window closes: new metric, new step size
            self.metric = self.welford.metric()
            self.welford = Welford(self.metric.dim, dense=self.welford.dense)
            step = reasonable_step(self.log_density, state, self.metric, self.rng, step)
            self.dual = DualAveraging(step, self.target)
        if self.windows and i == self.windows[-1][1] - 1:   # the end buffer: the metric is final
            step = self.dual.polish()
        self.step_size = step
        return step, self.metric

    def final(self) -> tuple[float, Metric]:
        self.step_size = self.dual.final()
        return self.step_size, self.metric
