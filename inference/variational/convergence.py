"""When has stochastic optimisation of a variational objective converged? Read it from the iterates.

At a fixed step size, stochastic gradient iterates do not settle on the optimum: they become a
stationary Markov chain around it (Dhaka et al. 2020, "Robust, accurate stochastic optimization for
variational inference"). So the tools of MCMC apply to them:

- **stationarity**: split R-hat of every tracked coordinate of the parameter vector over a window of the
  latest iterates (the window split in two halves, as two chains); the iterates are stationary when the
  largest R-hat over one of a few candidate windows is at most ``ITERATE_RHAT_MAX`` = 1.1 (the longest such window
  is averaged). Candidate windows run from ``WINDOW_MIN`` iterates to 95 % of the iterates at the current
  step size (FASO);
- **iterate averaging**: the mean of the stationary window estimates the optimum far better than the
  last iterate (the noise of single iterates averages out), provided the window holds enough effective
  draws: its bulk effective sample size is at least ``ITERATE_ESS_MIN`` for every tracked coordinate, and the
  Monte Carlo standard error of the average is ``sd / sqrt(ESS)`` per coordinate;
- **step-size levels** (Welandawe et al. 2022, RABVI): once stationary, the parameters restart from
  the average with the step size multiplied by ``RHO``; the run stops at the last level, or earlier when
  the averages of two successive levels agree within three combined Monte Carlo standard errors for
  every coordinate (a smaller step would not move the answer detectably). A run whose budget ends at a
  smaller step size after an earlier one converged has converged (at that earlier step size).

``num_steps`` is a maximum: a run that never becomes stationary ends there, at the average of the
iterates of the last tenth of the budget (tail averaging: the last iterate carries the whole gradient
noise of the step size), and is reported as not converged. Memory stays bounded: the history kept for
R-hat has at most ``MAX_TRACKED`` coordinates (evenly spaced over the parameter vector), the averages
use running sums of every coordinate.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

ITERATE_RHAT_MAX = 1.1          # Dhaka et al. 2020; Welandawe et al. 2022
WINDOW_MIN = 200        # the smallest window R-hat is computed on (FASO's W_min)
CHECK_EVERY = 100       # steps between checks; windows are multiples of it
ITERATE_ESS_MIN = WINDOW_MIN // 8   # effective iterates an average needs (FASO)
RHO = 0.5               # step-size factor between levels (RABVI)
MAX_LEVELS = 3
AGREE_Z = 3.0           # two levels agree: |difference| <= 3 combined MCSEs, every coordinate
MAX_TRACKED = 1000
#: the steps a run that converges typically takes (benchmarks/README.md, "SVI convergence": 2300-3000):
#: what the route policy (inference.tracing) expects of a run whose num_steps is only a maximum
TYPICAL_STEPS = 3000


@dataclass
class Convergence:
    """What the iterates said: ``converged`` (a step size reached a stationary window with enough effective
    iterates; for ``mode="fixed"``: the last iterates are stationary), ``steps`` taken, the step where the
    last stationary window began (``stationary_at``, None when never stationary), that window's R-hat (or
    the last check's), why (``reason``), and per step size ``{"lr", "start", "stationary_at", "window",
    "rhat", "ess_min", "mcse_max"}``."""

    converged: bool
    steps: int
    stationary_at: int | None = None
    rhat: float = float("nan")
    levels: list[dict] = field(default_factory=list)
    reason: str = ""

    def settings(self) -> dict:
        """The entries recorded in ``Posterior.settings``."""
        return {"converged": self.converged, "steps_taken": self.steps, "stationary_at": self.stationary_at,
                "iterate_rhat": round(float(self.rhat), 4), "convergence": self.reason}


def split_rhat(x: np.ndarray) -> np.ndarray:
    """Split R-hat of each column of ``x`` (iterates, coordinates): the two halves as two chains
    (Gelman et al. 2013, without rank normalisation, as Dhaka et al. use it). Constant columns: 1."""
    n = x.shape[0] // 2
    halves = np.stack([x[:n], x[x.shape[0] - n:]])            # (2, n, coordinates)
    means = halves.mean(1)
    within = halves.var(1, ddof=1).mean(0)
    between = n * means.var(0, ddof=1)
    var_plus = (n - 1) / n * within + between / n
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = np.sqrt(var_plus / within)
    return np.where(within > 0, rhat, 1.0)


def effective_sample_size(x: np.ndarray) -> np.ndarray:
    """Effective sample size of each column of ``x`` (one chain, no rank normalisation), Geyer's initial
    monotone sequence, vectorized over columns. Constant columns: the number of rows."""
    n = x.shape[0]
    centred = x - x.mean(0)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=0)
    acov = np.fft.irfft(f * np.conjugate(f), n=size, axis=0)[:n] / n
    var0 = acov[0]
    ok = var0 > 0
    rho = np.where(ok, acov / np.where(ok, var0, 1.0), 0.0)
    pairs = rho[: n - n % 2].reshape(-1, 2, rho.shape[1]).sum(1)   # Gamma_t = rho_2t + rho_2t+1
    positive = np.cumprod(pairs > 0, axis=0).astype(bool)            # initial positive sequence
    pairs = np.minimum.accumulate(np.where(positive, pairs, 0.0), axis=0)   # initial monotone sequence
    tau = -1.0 + 2.0 * pairs.sum(0)
    tau = np.maximum(tau, 1.0 / np.log10(max(n, 10)))
    return np.where(ok, n / tau, float(n))


class IterateMonitor:
    """Records the parameter iterates of one optimisation (``record()`` after each step) and answers
    whether the latest ones are stationary and what their average is."""

    def __init__(self, params: list[torch.Tensor], max_tracked: int = MAX_TRACKED):
        self.params = params
        self.size = sum(p.numel() for p in params)
        self.tracked = np.unique(np.linspace(0, self.size - 1, min(self.size, max_tracked)).round().astype(int))
        self.history: list[np.ndarray] = []
        self.total = torch.zeros(self.size, dtype=torch.float64)
        self.snapshots: dict[int, torch.Tensor] = {0: self.total.clone()}

    @property
    def steps(self) -> int:
        return len(self.history)

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).double() for p in self.params])

    def record(self) -> None:
        flat = self.flat()
        self.history.append(flat[self.tracked].numpy())
        self.total += flat
        if self.steps % CHECK_EVERY == 0:
            self.snapshots[self.steps] = self.total.clone()

    def stationary(self, since: int) -> tuple[bool, int, float]:
        """Whether the iterates after step ``since`` end in a stationary window: ``(ok, window, rhat)`` for
        the longest of up to five candidate windows (multiples of ``CHECK_EVERY``, from ``WINDOW_MIN`` to
        95 % of the iterates since ``since``) whose R-hat is at most ``ITERATE_RHAT_MAX`` (else the one of least
        R-hat): the longest holds the most effective iterates to average."""
        available = self.steps - since
        upper = int(0.95 * available) // CHECK_EVERY * CHECK_EVERY
        if upper < WINDOW_MIN:
            return False, 0, float("nan")
        windows = sorted({int(w) // CHECK_EVERY * CHECK_EVERY for w in np.linspace(WINDOW_MIN, upper, 5)})
        x = np.asarray(self.history[self.steps - windows[-1]:])
        rhats = [float(split_rhat(x[len(x) - w:]).max()) for w in windows]
        passing = [i for i, r in enumerate(rhats) if r <= ITERATE_RHAT_MAX]
        best = passing[-1] if passing else int(np.argmin(rhats))   # the longest stationary window: most iterates
        return bool(passing), windows[best], rhats[best]

    def window_stats(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """Bulk ESS and Monte Carlo standard error of the average, per tracked coordinate, over the last
        ``window`` iterates."""
        x = np.asarray(self.history[self.steps - window:])
        ess = effective_sample_size(x)
        return ess, x.std(0, ddof=1) / np.sqrt(ess)

    def average(self, window: int) -> torch.Tensor:
        """The mean of every coordinate over the last ``window`` iterates (a multiple of ``CHECK_EVERY``)."""
        return (self.total - self.snapshots[self.steps - window]) / window

    def tracked_of(self, flat: torch.Tensor) -> np.ndarray:
        return flat[self.tracked].numpy()

    def assign(self, flat: torch.Tensor) -> None:
        """Set the parameters to the flat vector ``flat``."""
        with torch.no_grad():
            offset = 0
            for p in self.params:
                p.copy_(flat[offset:offset + p.numel()].reshape(p.shape).to(p.dtype))
                offset += p.numel()


def optimize(loop, loss_fn, params: list[torch.Tensor], *, num_steps: int, mode: str = "levels",
             max_levels: int = MAX_LEVELS, rho: float = RHO) -> Convergence:
    """Run ``loop.step(loss_fn)`` for at most ``num_steps`` steps and say whether the iterates converged.

    ``mode``: "levels" (lower the step size by ``rho`` at each stationary point, ``loop.scale_lr``, up to
    ``max_levels`` step sizes: the module docstring), "single" (a user's own optimiser and schedule: one
    stationary window with enough effective iterates ends the run) or "fixed" (exactly ``num_steps``
    steps; stationarity of the last iterates is only reported). On convergence ("levels", "single") the
    parameters are left at the final average."""
    monitor = IterateMonitor(params)
    level_start, level, previous = 0, 0, None
    report = Convergence(converged=False, steps=0)
    info = {"lr": loop.lr, "start": 0, "stationary_at": None}
    rhat, few = float("nan"), None
    tail_start = num_steps - max(1, num_steps // 10)
    tail, tail_count = None, 0
    for _ in range(num_steps):
        loop.step(loss_fn)
        monitor.record()
        if mode != "fixed" and monitor.steps > tail_start:   # the last tenth of the budget, at one step size
            tail = monitor.flat() if tail is None else tail + monitor.flat()
            tail_count += 1
        if mode == "fixed" or (monitor.steps - level_start) % CHECK_EVERY:
            continue
        ok, window, rhat = monitor.stationary(level_start)
        if not ok:
            continue
        ess, mcse = monitor.window_stats(window)
        if ess.min() < ITERATE_ESS_MIN:
            few = float(ess.min())
            continue
        average = monitor.average(window)
        info.update(stationary_at=monitor.steps - window, window=window, rhat=rhat, ess_min=float(ess.min()),
                    mcse_max=float(mcse.max()))
        report.levels.append(info)
        agree = previous is not None and bool(np.all(
            np.abs(monitor.tracked_of(average) - previous[0]) <= AGREE_Z * np.sqrt(mcse ** 2 + previous[1] ** 2)))
        monitor.assign(average)
        report.stationary_at, report.rhat = monitor.steps - window, rhat
        if mode == "single" or agree or level + 1 >= max_levels:
            report.converged = True
            report.reason = (f"stationary (iterate R-hat {rhat:.3f} <= {ITERATE_RHAT_MAX}) {_at(loop.lr)}"
                             + ("; the last two step sizes agree" if agree else "")
                             + f"; parameters averaged over the last {window} iterates")
            break
        previous = (monitor.tracked_of(average), mcse)
        loop.scale_lr(rho)
        level, level_start = level + 1, monitor.steps
        tail, tail_count = None, 0
        info = {"lr": loop.lr, "start": level_start, "stationary_at": None}
    report.steps = monitor.steps
    if mode == "fixed":
        ok, window, rhat = monitor.stationary(0)
        report.converged, report.rhat = ok, rhat
        report.stationary_at = monitor.steps - window if ok else None
        report.reason = (f"{monitor.steps} fixed steps; the last {window} iterates are stationary (R-hat {rhat:.3f})"
                         if ok else f"{monitor.steps} fixed steps; the last iterates are not stationary "
                         f"(R-hat {rhat:.3f} > {ITERATE_RHAT_MAX}): the optimisation was still moving" if np.isfinite(rhat)
                         else f"{monitor.steps} fixed steps: too few to judge stationarity (R-hat needs "
                         f"{math.ceil(WINDOW_MIN / 0.95)})")
    elif not report.converged:
        ok, _, rhat_now = monitor.stationary(level_start)
        if tail is not None:
            monitor.assign(tail / tail_count)
        averaged = (f"parameters averaged over the last {tail_count} iterates" if tail_count else
                    "parameters from the last average")
        if report.levels:   # an earlier step size converged; the budget ended at a smaller one
            report.converged = True
            report.reason = (f"stationary (iterate R-hat {report.rhat:.3f} <= {ITERATE_RHAT_MAX}) at step size "
                             f"{report.levels[-1]['lr']:.3g}; the budget ended at step size {loop.lr:.3g}; {averaged}")
        else:
            report.rhat = rhat_now
            why = (f"stationary, but only {few:.0f} effective iterates in the window, fewer than {ITERATE_ESS_MIN}" if ok
                   else f"iterate R-hat {rhat_now:.3f} > {ITERATE_RHAT_MAX}" if np.isfinite(rhat_now)
                   else f"too few steps to judge stationarity: R-hat needs {math.ceil(WINDOW_MIN / 0.95)}")
            report.reason = (f"not converged after {monitor.steps} steps ({why} {_at(loop.lr)}); {averaged}; "
                             "raise num_steps")
        report.levels.append(info)
    return report


def _at(lr: float) -> str:
    return f"at step size {lr:.3g}" if math.isfinite(lr) else "at the optimiser's own step size"
