"""The densities of PPCA's marginal form (``zoo/ppca.py``), x_n ~ N(mean, W W^T + sigma^2 I) with z
integrated out: :class:`MarginalNormal` for complete rows, evaluated through K x K matrices,
:func:`observed_marginal` for rows with missing entries (the marginal of each row's observed entries),
and :func:`marginal_log_prob`, the per-row log density that picks between them.

Shapes: loadings W (*b, D, K), noise_scale sigma (*b), mean (*b, D); rows (..., D).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution, constraints


class MarginalNormal(TorchDistribution):
    """N(loc, W W^T + sigma^2 I) over vectors of length D: PPCA's marginal, with z integrated out.

    ``log_prob`` works through the K x K matrix M = W^T W + sigma^2 I (Woodbury and the matrix
    determinant lemma): log|C| = (D - K) log sigma^2 + log|M| and
    (x - loc)^T C^-1 (x - loc) = (|x - loc|^2 - |L^-1 W^T (x - loc)|^2) / sigma^2 with M = L L^T.
    The same value as ``LowRankMultivariateNormal(loc, W, sigma^2 1)``, with the isotropic noise kept as one
    scalar per batch entry instead of a D-vector.
    ``loc`` (*b, D), ``loadings`` (*b, D, K), ``noise_scale`` (*b).
    """

    arg_constraints = {"loc": constraints.real_vector, "noise_scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, loadings, noise_scale, validate_args=None):
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], loadings.shape[:-2], noise_scale.shape)
        self.loc, self.loadings, self.noise_scale = loc, loadings, noise_scale
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MarginalNormal, _instance)
        new.loc, new.loadings, new.noise_scale = self.loc, self.loadings, self.noise_scale
        super(MarginalNormal, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        W, s2 = self.loadings, self.noise_scale ** 2
        D, K = W.shape[-2:]
        M = W.transpose(-1, -2) @ W + s2[..., None, None] * torch.eye(K, dtype=W.dtype)
        L = torch.linalg.cholesky(M)                                                 # (*b, K, K)
        dev = value - self.loc                                                       # (..., D)
        proj = (dev.unsqueeze(-2) @ W).squeeze(-2)                                    # (..., K)
        a = torch.linalg.solve_triangular(L, proj.unsqueeze(-1), upper=False).squeeze(-1)
        maha = ((dev ** 2).sum(-1) - (a ** 2).sum(-1)) / s2
        logdet = (D - K) * s2.log() + 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        out = -0.5 * (D * math.log(2 * math.pi) + logdet + maha)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        K = self.loadings.shape[-1]
        z = torch.randn(*shape[:-1], K, dtype=self.loc.dtype, device=self.loc.device)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self.loadings @ z.unsqueeze(-1)).squeeze(-1) + self.noise_scale[..., None] * eps


def observed_marginal(observed, W, sigma, mean):
    """Per-row marginal of the observed entries as one LowRankMultivariateNormal over all D entries,
    to be evaluated at the data with missing entries filled by 0: rows of W zeroed, mean 0 and variance
    1 / (2 pi) at missing entries, which then contribute exactly log N(0 | 0, 1 / 2 pi) = 0.
    ``W`` (*b, 1 or N, D, K), ``sigma`` (*b), ``mean`` (*b, 1, D) or (D,); batch shape (*b, N)."""
    mask = observed.to(W.dtype)                                                     # (N, D)
    Wn = W * mask.unsqueeze(-1)                                                     # (*b, N, D, K)
    s2 = (sigma ** 2)[..., None, None]                                              # (*b, 1, 1)
    cov_diag = torch.where(observed, s2, torch.full((), 1 / (2 * math.pi), dtype=W.dtype))  # (*b, N, D)
    return dist.LowRankMultivariateNormal(mean * mask, Wn, cov_diag)


def marginal_log_prob(data, loadings, noise_scale, mean, *, chunk: int = 256) -> torch.Tensor:
    """log N(x_n | mean, W W^T + sigma^2 I) of the observed entries of every row of ``data`` (N, D), for
    parameters with leading batch dims *b; returns (*b, N). With NaN entries the per-row factors take
    (*b, N, D, K) memory, so the draws go through in chunks of ``chunk``."""
    batch = loadings.shape[:-2]
    observed = ~torch.isnan(data)
    if bool(observed.all()):
        return MarginalNormal(mean.unsqueeze(-2), loadings.unsqueeze(-3), noise_scale.unsqueeze(-1)).log_prob(data)
    filled, _ = zero_filled(data)
    flat = [t.reshape(-1, *t.shape[len(batch):]) for t in (loadings, noise_scale, mean)]
    out = []
    for i in range(0, flat[0].shape[0], chunk):
        w, s, m = (t[i:i + chunk] for t in flat)
        out.append(observed_marginal(observed, w.unsqueeze(-3), s, m.unsqueeze(-2)).log_prob(filled))
    return torch.cat(out).reshape(*batch, data.shape[0])


def zero_filled(data) -> tuple[torch.Tensor, torch.Tensor]:
    """``(data with NaN entries replaced by 0, mask of the observed entries)``."""
    observed = ~torch.isnan(data)
    return torch.where(observed, data, torch.zeros((), dtype=data.dtype)), observed
