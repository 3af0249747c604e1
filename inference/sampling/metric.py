"""The Euclidean metric of HMC: momentum p ~ N(0, M), kinetic energy p' M^-1 p / 2, velocity M^-1 p.

A metric is given by its inverse ``M^-1``, a guess at the posterior covariance of the sampled vector:
a vector of variances (:class:`DiagonalMetric`) or a covariance matrix (:class:`DenseMetric`, for
posteriors whose correlations a diagonal metric cannot undo). Warmup estimates it from draws (and, for
the diagonal, their gradients) with a :class:`Welford` accumulator, regularised as Stan does
(``metric()``).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

METRICS = ("diag", "dense")
#: how many times nutpie's estimate a window's variance may be before the window counts as a chain
#: still travelling (:meth:`Welford.metric`)
DISAGREEMENT = 10.0


class DiagonalMetric:
    """``M^-1 = diag(inverse)``; ``inverse`` the variances (d,)."""

    kind = "diag"

    def __init__(self, inverse: np.ndarray):
        self.inverse = np.asarray(inverse, dtype=np.float64)
        if self.inverse.ndim != 1 or not np.all(self.inverse > 0):
            raise ValueError(f"inverse: expected positive variances (d,), got {self.inverse!r}")
        self._scale = np.sqrt(self.inverse)

    @property
    def dim(self) -> int:
        return self.inverse.size

    def momentum(self, rng: np.random.Generator) -> np.ndarray:
        """A draw of p ~ N(0, M)."""
        return rng.standard_normal(self.inverse.size) / self._scale

    def velocity(self, p: np.ndarray) -> np.ndarray:
        """M^-1 p: the time derivative of the position."""
        return self.inverse * p

    def kinetic_energy(self, p: np.ndarray) -> float:
        return 0.5 * p @ self.velocity(p)


class DenseMetric:
    """``M^-1 = inverse``, a symmetric positive definite covariance (d, d)."""

    kind = "dense"

    def __init__(self, inverse: np.ndarray):
        inverse = np.asarray(inverse, dtype=np.float64)
        if inverse.ndim != 2 or inverse.shape[0] != inverse.shape[1]:
            raise ValueError(f"inverse: expected a square (d, d) covariance, got shape {inverse.shape}")
        self.inverse = 0.5 * (inverse + inverse.T)
        try:
            lower = np.linalg.cholesky(self.inverse)   # L L' = M^-1
        except np.linalg.LinAlgError:
            raise ValueError("inverse: the covariance is not positive definite") from None
        # p = L'^-1 z, z ~ N(0, I), has covariance L'^-1 L^-1 = (L L')^-1 = M
        self._momentum = linalg.solve_triangular(lower, np.eye(self.dim), lower=True).T

    @property
    def dim(self) -> int:
        return self.inverse.shape[0]

    def momentum(self, rng: np.random.Generator) -> np.ndarray:
        return self._momentum @ rng.standard_normal(self.dim)

    def velocity(self, p: np.ndarray) -> np.ndarray:
        return self.inverse @ p

    def kinetic_energy(self, p: np.ndarray) -> float:
        return 0.5 * p @ self.velocity(p)


Metric = DiagonalMetric | DenseMetric


def make_metric(kind: str, variances: np.ndarray) -> Metric:
    """A ``kind`` ("diag" or "dense") metric with ``variances`` on its diagonal and no correlation."""
    if kind not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {kind!r}")
    return DiagonalMetric(variances) if kind == "diag" else DenseMetric(np.diag(variances))


class Welford:
    """Running mean and (co)variance of draws (Welford's algorithm); ``dense`` keeps the covariance. Draws
    added with the gradient of the log density there also accumulate the gradients' variances, which
    tell a diagonal metric whether the draws came from one region (``metric()``)."""

    def __init__(self, d: int, dense: bool = False, gradients: bool = True):
        self.dense = dense
        self.n, self.mean = 0, np.zeros(d)
        self.m2 = np.zeros((d, d) if dense else d)   # sum of (outer) products of deviations
        self.gradients = Welford(d, gradients=False) if gradients and not dense else None

    def add(self, x: np.ndarray, grad: np.ndarray | None = None) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        if self.dense:
            self.m2 += np.outer(x - self.mean, delta)
        else:
            self.m2 += delta * (x - self.mean)
            if grad is not None and self.gradients is not None:
                self.gradients.add(grad)

    def covariance(self) -> np.ndarray:
        """The unbiased sample variance (diagonal) or covariance matrix (dense)."""
        m2 = 0.5 * (self.m2 + self.m2.T) if self.dense else self.m2
        return m2 / max(self.n - 1, 1)

    def metric(self) -> Metric:
        """Stan's regularised estimate: (n / (n + 5)) V + 1e-3 (5 / (n + 5)) I, shrunk towards a small
        multiple of the identity so that a short window cannot give a singular metric; V the covariance
        of the draws.

        Diagonal, with the gradients: V is the draws' variance unless it disagrees with theirs, then
        nutpie's estimate sqrt(var(draws) / var(gradients)) (Seyboldt et al.). For a Gaussian the two are
        equal (the gradient has variance 1 / sigma^2), and in windows of a chain at home they agree within
        a factor of about 3; a chain still travelling between regions inflates the draws' variance and
        the gradients' together, so Stan's estimate alone takes the journey for spread (up to 140 times a
        coordinate's variance on a mixture) and the next window's step size collapses into trees of
        maximal depth (benchmarks/README.md, "Warmup"). Disagreeing means more than ``DISAGREEMENT``."""
        n = self.n
        shrinkage = 1e-3 * (5.0 / (n + 5.0))
        if self.dense:
            return DenseMetric((n / (n + 5.0)) * self.covariance() + shrinkage * np.eye(self.mean.size))
        variance = self.covariance()
        if self.gradients is not None and self.gradients.n == n > 1:
            fisher = self.gradients.covariance()
            ok = (fisher > 0) & (variance > 0)
            nutpie = np.where(ok, np.sqrt(variance / np.where(ok, fisher, 1.0)), variance)
            if np.any(variance > DISAGREEMENT * nutpie):
                variance = nutpie
        return DiagonalMetric((n / (n + 5.0)) * variance + shrinkage)

