"""The simplex in additive log-ratio coordinates, as NUTS sees every simplex of the HMM's closed form (the
chain's ``initial`` and ``transition`` rows, categorical ``emission_probs``): :class:`LogRatioToSimplex`,
and the numpy pieces of the closed form, :func:`log_simplex` and :func:`dirichlet_log_ratio`."""

from __future__ import annotations

import math

import numpy as np
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.transforms import Transform


class LogRatioToSimplex(Transform):
    """R^(K-1) -> the simplex in R^K, y = softmax(u, 0) (additive log-ratios, u_k = log(y_k / y_K)).

    log |det J| = sum_k log y_k; rows are transformed independently (event dim 1)."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.simplex
    bijective = True

    def __eq__(self, other):
        return isinstance(other, LogRatioToSimplex)

    def _call(self, u):
        return F.pad(u, (0, 1)).softmax(-1)

    def _inverse(self, y):
        return y[..., :-1].log() - y[..., -1:].log()

    def log_abs_det_jacobian(self, u, y):
        return F.pad(u, (0, 1)).log_softmax(-1).sum(-1)

    def forward_shape(self, shape):
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        return shape[:-1] + (shape[-1] - 1,)


def log_simplex(u: np.ndarray) -> np.ndarray:
    """log softmax(u, 0) along the last axis: (..., K-1) -> (..., K)."""
    padded = np.concatenate([u, np.zeros(u.shape[:-1] + (1,))], -1)
    return padded - np.logaddexp.reduce(padded, axis=-1, keepdims=True)


def dirichlet_log_ratio(log_y: np.ndarray, weights: np.ndarray, grad: dict, name: str) -> float:
    """Dirichlet(1) rows in log-ratio coordinates: log p(y) + log |J| = sum_k log y_k + log (K-1)!.

    ``weights`` (..., K) is 1 + d(log-likelihood)/d log y; the gradient of sum_k weights_k log y_k in
    u is weights_k - (sum_j weights_j) y_k for k < K; stored in ``grad[name]``."""
    K = log_y.shape[-1]
    grad[name] = weights[..., :-1] - weights.sum(-1, keepdims=True) * np.exp(log_y[..., :-1])
    return float(log_y.sum() + log_y[..., 0].size * math.lgamma(K))
