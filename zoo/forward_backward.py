"""The HMM forward-backward recursions, compiled (numba), and the autograd function built on them.

One pass per sequence, rescaled at every step (Rabiner 1989, section V.A), loops compiled by numba:
the forward pass gives log p(x) and the filtered state probabilities; the backward pass gives the
gradient of log p(x), which is the smoothing distribution (see :class:`ForwardBackward`). On the CPU
this is what :func:`zoo.hmm.forward_log_prob` runs; it takes O(T S^2) operations and no per-step
tensor allocations, so short sequences are not dominated by per-operation overhead and long ones
are not slowed by temporaries.
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True)
def _forward(log_init, log_trans, log_emis, lengths, alpha, scale, keep):  # pragma: no cover - compiled
    """log p(x_b) (n, B); with ``keep``, also the filtered probabilities ``alpha`` (n, B, T, S) and the
    per-step log normalizers ``scale`` (n, B, T), written in place for :func:`_backward`. ``n``
    indexes parameter sets, ``B`` sequences."""
    n, B, T, S = log_emis.shape
    out = np.zeros((n, B), dtype=log_emis.dtype)
    prev = np.empty(S, dtype=log_emis.dtype)
    cur = np.empty(S, dtype=log_emis.dtype)
    for k in range(n):
        A = np.exp(log_trans[k])
        init = np.exp(log_init[k])
        for b in range(B):
            total = 0.0
            for t in range(lengths[b]):
                m = log_emis[k, b, t, 0]                       # e_t(s) / max_s e_t(s) <= 1
                for s in range(1, S):
                    m = max(m, log_emis[k, b, t, s])
                if m == -np.inf:                               # no state can emit x_t
                    total = -np.inf
                    break
                if t == 0:
                    cur[:] = init
                else:                                          # cur = prev @ A, rows of A contiguous
                    cur[:] = 0.0
                    for i in range(S):
                        for s in range(S):
                            cur[s] += prev[i] * A[i, s]
                c = 0.0
                for s in range(S):
                    cur[s] *= np.exp(log_emis[k, b, t, s] - m)
                    c += cur[s]
                if c == 0.0:                                   # the path so far is impossible
                    total = -np.inf
                    break
                for s in range(S):
                    prev[s] = cur[s] / c
                if keep:
                    alpha[k, b, t] = prev
                    scale[k, b, t] = np.log(c) + m
                total += np.log(c) + m
            out[k, b] = total
    return out


@numba.njit(cache=True)
def _backward(log_trans, log_emis, lengths, log_p, alpha, scale, weight,
              g_init, g_trans, g_emis):  # pragma: no cover - compiled
    """Adds weight[k, b] times the gradient of log p(x_b) to ``g_init`` (n, S), ``g_trans`` (n, S, S)
    and writes it to ``g_emis`` (n, B, T, S): gamma_0, the expected transitions and gamma_t.
    A sequence with log p = -inf (impossible under these parameters) contributes 0."""
    n, B, T, S = log_emis.shape
    beta = np.empty(S, dtype=log_emis.dtype)
    ahead = np.empty(S, dtype=log_emis.dtype)
    for k in range(n):
        A = np.exp(log_trans[k])
        for b in range(B):
            if log_p[k, b] == -np.inf:                         # the forward pass stopped early
                continue
            w = weight[k, b]
            for s in range(S):
                beta[s] = 1.0
            for t in range(lengths[b] - 1, -1, -1):
                for s in range(S):                             # gamma_t = alpha_t * beta_t (rescaled)
                    g_emis[k, b, t, s] = w * alpha[k, b, t, s] * beta[s]
                if t == 0:
                    break
                for j in range(S):                             # e_t(j) beta_t(j) / c_t
                    ahead[j] = np.exp(log_emis[k, b, t, j] - scale[k, b, t]) * beta[j]
                for i in range(S):
                    acc = 0.0
                    for j in range(S):
                        step = A[i, j] * ahead[j]
                        g_trans[k, i, j] += w * alpha[k, b, t - 1, i] * step   # xi_t-1(i, j)
                        acc += step
                    beta[i] = acc
            for s in range(S):
                g_init[k, s] += g_emis[k, b, 0, s]


def forward(log_init: np.ndarray, log_trans: np.ndarray, log_emis: np.ndarray, lengths: np.ndarray,
            keep: bool = True):
    """log p(x_b) (n, B) for ``log_init`` (n, S), ``log_trans`` (n, S, S), ``log_emis`` (n, B, T, S)
    and ``lengths`` (B,); also (with ``keep``) the saved state that :func:`gradient` needs."""
    shape = log_emis.shape if keep else (1, 1, 1, log_emis.shape[-1])
    alpha = np.empty(shape, dtype=log_emis.dtype)
    scale = np.empty(shape[:-1], dtype=log_emis.dtype)
    out = _forward(log_init, log_trans, log_emis, lengths, alpha, scale, keep)
    return out, (log_trans, log_emis, lengths, out, alpha, scale) if keep else None


def gradient(saved, weight: np.ndarray):
    """The gradient of sum_kb weight[k, b] log p(x_kb) with respect to the three log potentials."""
    log_trans, log_emis, lengths, log_p, alpha, scale = saved
    g_init = np.zeros(log_trans.shape[:-1], dtype=log_emis.dtype)
    g_trans = np.zeros_like(log_trans)
    g_emis = np.zeros_like(log_emis)
    _backward(log_trans, log_emis, lengths, log_p, alpha, scale,
              np.ascontiguousarray(weight, dtype=log_emis.dtype), g_init, g_trans, g_emis)
    return g_init, g_trans, g_emis


class ForwardBackward(torch.autograd.Function):
    """log p(x_b) per parameter set and sequence, differentiable (CPU tensors).

    Inputs ``log_init`` (n, S), ``log_trans`` (n, S, S), ``log_emis`` (n, B, T, S), ``lengths`` (B,);
    output (n, B). The backward pass is the backward recursion: d log p(x) / d log e_t(s) = gamma_t(s),
    d / d log transition[i, j] = sum_t xi_t(i, j) and d / d log initial[s] = gamma_0(s), exact for
    any (also unnormalized) potentials and for ragged lengths (steps past a length get 0).
    """

    @staticmethod
    def forward(ctx, log_init, log_trans, log_emis, lengths):
        arrays = [np.ascontiguousarray(x.detach().numpy()) for x in (log_init, log_trans, log_emis)]
        lengths = np.ascontiguousarray(lengths.numpy(), dtype=np.int64)
        out, ctx.saved = forward(*arrays, lengths, keep=any(ctx.needs_input_grad))
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        return (*(torch.from_numpy(g) for g in gradient(ctx.saved, grad_out.numpy())), None)
