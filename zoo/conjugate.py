"""Conjugate draws and closed-form conditionals shared by the zoo's Gibbs sweeps (``gibbs_sweep`` of the
HMM and the GMM; ``inference.run_gibbs``). Everything in numpy float64, from a ``numpy.random.Generator``.

- :func:`dirichlet`: rows of probabilities given counts (Dirichlet prior + categorical counts);
- :func:`normal_means`: per-group means of Gaussian observations with known scales under a Normal prior;
- :func:`log_normal_scales` / :func:`log_normal_rates`: the conditional log density, on the log scale, of
  Gaussian scales or Poisson rates under a LogNormal prior given the sufficient statistics: no conjugate
  draw exists, so ``inference.run_gibbs`` moves them by a NUTS transition of this density (the
  ``(transforms, fn)`` format of ``ZooModel.log_density``, up to a constant).
"""

from __future__ import annotations

import numpy as np
from torch.distributions.transforms import ExpTransform


def dirichlet(rng: np.random.Generator, concentration: np.ndarray) -> np.ndarray:
    """A draw of each row's Dirichlet(concentration[..., :]) (normalized Gamma draws), kept off exact 0."""
    g = rng.standard_gamma(concentration)
    g = np.maximum(g, np.finfo(np.float64).tiny)
    return g / g.sum(-1, keepdims=True)


def normal_means(rng: np.random.Generator, n: np.ndarray, sums: np.ndarray, scales: np.ndarray,
                 center: np.ndarray, prior_sd: np.ndarray) -> np.ndarray:
    """mu_kd | x ~ Normal(m, s^2), the posterior of mu_kd ~ Normal(center_d, prior_sd_d^2) given ``n[k]``
    observations x ~ Normal(mu_kd, scales_kd^2) summing to ``sums[k, d]``: precision 1 / prior_sd^2 +
    n / scales^2, mean (center / prior_sd^2 + sums / scales^2) / precision. ``n`` (K, 1), the rest (K, D)."""
    precision = 1 / prior_sd**2 + n / scales**2
    mean = (center / prior_sd**2 + sums / scales**2) / precision
    return mean + rng.standard_normal(mean.shape) / np.sqrt(precision)


def log_normal_scales(n: np.ndarray, squares: np.ndarray, mean: np.ndarray, sd: float = 1.0):
    """Scales sigma_kd ~ LogNormal(mean_d, sd) of ``n[k]`` Gaussian observations whose squared deviations
    from their means sum to ``squares[k, d]``. On u = log sigma (the Jacobian included): log p(u) =
    sum -n u - squares exp(-2u) / 2 - (u - mean)^2 / (2 sd^2) + const, gradient -n + squares exp(-2u) -
    (u - mean) / sd^2."""
    def fn(u):
        s = u["scales"]
        value = (-n * s - 0.5 * squares * np.exp(-2 * s) - 0.5 * ((s - mean) / sd) ** 2).sum()
        return float(value), {"scales": -n + squares * np.exp(-2 * s) - (s - mean) / sd**2}
    return {"scales": ExpTransform()}, fn


def log_normal_rates(n: np.ndarray, sums: np.ndarray, mean: float, sd: float):
    """Poisson rates lambda_s ~ LogNormal(mean, sd) of ``n[s]`` observed counts summing to ``sums[s]``. On
    u = log lambda: log p(u) = sum sums u - n exp(u) - (u - mean)^2 / (2 sd^2) + const."""
    def fn(u):
        r = u["rates"]
        value = (sums * r - n * np.exp(r) - 0.5 * ((r - mean) / sd) ** 2).sum()
        return float(value), {"rates": sums - n * np.exp(r) - (r - mean) / sd**2}
    return {"rates": ExpTransform()}, fn


def gaussian_components(rng: np.random.Generator, x: np.ndarray, labels: np.ndarray, scales: np.ndarray,
                        center: np.ndarray, spread: np.ndarray):
    """The zoo's Gaussian components (GMM components, HMM Gaussian emissions): locs_kd ~ Normal(center_d,
    2 spread_d), scales_kd ~ LogNormal(log(spread_d / 2), 1), x_n ~ Normal(locs[labels_n], scales[labels_n]).
    Returns the locs drawn given the labels and ``scales`` (:func:`normal_means`), and the scales' block
    given those locs (:func:`log_normal_scales`). ``x`` (N, D), ``labels`` (N,), ``scales`` (K, D)."""
    onehot = np.eye(len(scales))[labels]                                     # (N, K)
    n = onehot.sum(0)[:, None]
    locs = normal_means(rng, n, onehot.T @ x, scales, center, 2 * spread)
    squares = onehot.T @ (x - locs[labels]) ** 2
    return locs, log_normal_scales(n, squares, np.log(spread / 2), 1.0)
