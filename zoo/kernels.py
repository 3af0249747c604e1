"""HMM kernels: the forward algorithm, its gradient (forward-backward) and Viterbi, shared by the models.

The tensor functions take log potentials: ``log_initial`` (*b, S) (the law of the first state),
``log_transition`` (*b, S, S) (row i: the law of z_t given z_t-1 = i), ``log_emission`` (*b, B, T, S)
(log e_t(s) = log p(x_bt | z_bt = s)) and ``mask`` (B, T), False on padding at the end of a sequence;
``*b`` are parameter sets (posterior draws), ``B`` sequences.

* :func:`forward_log_prob`: log p(x_b), differentiable. On the CPU the compiled recursions below
  (:class:`ForwardBackward`): one pass per sequence, rescaled at every step (Rabiner 1989, section
  V.A), loops compiled by numba; the forward pass gives log p(x) and the filtered state probabilities,
  the backward pass its gradient, which is the smoothing distribution. O(T S^2) operations and no
  per-step tensor allocations, so short sequences are not dominated by per-operation overhead and
  long ones are not slowed by temporaries. On a GPU (or under ``torch.jit`` tracing):
  :func:`tree_log_prob`, a balanced tree of batched ``matmul`` (O(log T) sequential steps).
* :func:`forward` / :func:`gradient`: the same recursions on numpy arrays, for closed-form densities.
* :func:`state_marginals`: p(z_bt = s | x_b), the gradient of log p(x) in the log emissions.
* :func:`viterbi`: the most likely state path; :func:`sample_states`: paths of the chain.
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


# --- the forward algorithm on tensors ----------------------------------------------------------


def forward_log_prob(log_initial, log_transition, log_emission, mask, *, exact_padding: bool = False):
    """log p(x_b) = log sum_z initial[z_0] e_0(z_0) prod_t transition[z_t-1, z_t] e_t(z_t), per sequence.

    ``log_initial`` (*b, S), ``log_transition`` (*b, S, S), ``log_emission`` (*b, B, T, S) and
    ``mask`` (B, T), False on padding (which comes at the end of a sequence). Returns (*b, B).

    On the CPU: the compiled forward recursion, whose gradient is the backward recursion
    (:class:`ForwardBackward`); exact, also on padding. Elsewhere (a GPU) and
    under ``torch.jit`` tracing: :func:`tree_log_prob`, pure tensor operations.
    """
    if log_emission.device.type == "cpu" and not torch.jit.is_tracing():
        return _compiled_forward(log_initial, log_transition, log_emission, mask)
    return tree_log_prob(log_initial, log_transition, log_emission, mask, exact_padding=exact_padding)


def tree_log_prob(log_initial, log_transition, log_emission, mask, *, exact_padding: bool = False):
    """:func:`forward_log_prob` as a balanced tree of batched matrix products (O(log T) sequential steps).

    With e_t scaled by its largest entry, step t >= 1 is the matrix M_t[i, j] = transition[i, j] e_t(j)
    and p(x) = v M_1 ... M_T-1 1 with v = initial * e_0 (:func:`_vector_times_product`). Padding has
    emission 1, so its steps contribute transition^k 1 = 1: exact for the likelihood and for its
    gradient along row-stochastic transitions (SVI, NUTS, smoothing). ``exact_padding`` makes padded
    steps identity matrices instead, which the expected transition counts of EM (the gradient in
    every direction of log transition) need.
    """
    if not bool(mask.all()):  # a property of the data, not of the parameters
        log_emission = torch.where(mask[:, :, None], log_emission, 0.0)
    shift = log_emission.detach().amax(-1, keepdim=True).clamp_min(torch.finfo(log_emission.dtype).min)
    emission = (log_emission - shift).exp()                                            # (*b, B, T, S) <= 1
    transition = log_transition.exp().unsqueeze(-3)                                    # (*b, 1, S, S)
    v = log_initial.exp().unsqueeze(-2) * emission[..., 0, :]                         # (*b, B, S)
    if exact_padding and not bool(mask.all()):
        steps = transition.unsqueeze(-3) * emission[..., 1:, None, :]                  # (*b, B, T-1, S, S)
        steps = torch.where(mask[:, 1:, None, None], steps, torch.eye(steps.shape[-1], dtype=steps.dtype))
    else:
        rest = emission[..., 1:, :]
        if rest.shape[-2] % 2:   # take one step into v, so that the others pair up
            v = (v.unsqueeze(-2) @ transition).squeeze(-2) * rest[..., 0, :]
            rest = rest[..., 1:, :]
        steps = _step_pairs(transition, rest)                                          # (*b, B, ~T/2, S, S)
    return _vector_times_product(v, steps) + shift.squeeze(-1).sum(-1)


def _compiled_forward(log_initial, log_transition, log_emission, mask):
    """:func:`forward_log_prob` on the CPU: the compiled recursions above."""
    B, T, S = mask.shape + log_emission.shape[-1:]
    batch = torch.broadcast_shapes(log_initial.shape[:-1], log_transition.shape[:-2], log_emission.shape[:-3])
    dtype = torch.promote_types(torch.promote_types(log_initial.dtype, log_transition.dtype), log_emission.dtype)
    potentials = [p.to(dtype).expand(*batch, *shape).reshape(-1, *shape) for p, shape in
                  ((log_initial, (S,)), (log_transition, (S, S)), (log_emission, (B, T, S)))]
    return ForwardBackward.apply(*potentials, mask.sum(-1)).reshape(*batch, B)


def _step_pairs(transition, emission):
    """The products M_t M_t+1 of consecutive steps (an even number of them), without forming each M_t:
    (M_t M_t+1)[i, l] = sum_j e_t(j) A[i, j] A[j, l] e_t+1(l), one matrix product of the emissions
    (.., n, S) with W[j, (i, l)] = A[i, j] A[j, l] (S, S * S)."""
    n, S = int(emission.shape[-2]), int(emission.shape[-1])
    W = (transition.transpose(-1, -2).unsqueeze(-1) * transition.unsqueeze(-2)).reshape(*transition.shape[:-2], S, S * S)
    pairs = (emission[..., 0:n:2, :] @ W).reshape(*emission.shape[:-2], n // 2, S, S)
    return pairs * emission[..., 1:n:2, None, :]


def _vector_times_product(v, m):
    """log(v m[0] m[1] ... 1) for row vectors v (.., S) and matrices m (.., n, S, S).

    A tree of batched matmuls (O(log n) sequential steps; an odd count gets an identity appended).
    v and every partial product are divided by their largest entry and the scales summed in log
    space: the scales are constants for autograd, so the value and every gradient are exact."""
    n, S = int(m.shape[-3]), int(m.shape[-1])   # int(): python numbers also under torch.jit tracing
    v, log_scale = _rescale(v.unsqueeze(-2))                                           # (.., 1, S), (..,)
    while n > 1:
        if n % 2:
            m = torch.cat([m, torch.eye(S, dtype=m.dtype).expand(*m.shape[:-3], 1, S, S)], dim=-3)
        m, log_m = _rescale(m[..., 0::2, :, :] @ m[..., 1::2, :, :])
        log_scale, n = log_scale + log_m.sum(-1), (n + 1) // 2
    if n:
        v = v @ m[..., 0, :, :]
    return v.sum((-2, -1)).log() + log_scale


def _rescale(x):
    """x divided by the largest entry of each of its matrices (last two dims), and log of those (no grad)."""
    scale = x.detach().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return x / scale, scale.log()[..., 0, 0]


def state_marginals(log_initial, log_transition, log_emission, mask):
    """Smoothing: p(z_bt = s | x_b), (*b, B, T, S), 0 on padding. Forward-backward by automatic
    differentiation: d log p(x) / d log e_t(s) = p(z_t = s | x)."""
    with torch.enable_grad():
        log_emission = log_emission.detach().requires_grad_()
        total = forward_log_prob(log_initial.detach(), log_transition.detach(), log_emission, mask).sum()
        (marginals,) = torch.autograd.grad(total, log_emission)
    return marginals


# --- Viterbi and simulation ------------------------------------------------------------------------------------


def viterbi(log_initial, log_transition, log_emission, mask):
    """The most likely state path per sequence and its log joint probability log p(x, z*).

    One parameter set: ``log_initial`` (S,), ``log_transition`` (S, S), ``log_emission`` (B, T, S),
    ``mask`` (B, T). Returns ``(path (B, T) long, -1 on padding; log_prob (B,))``. A loop over time,
    vectorized over sequences and states (decoding is not on an inference hot path).
    """
    B, T, S = log_emission.shape
    stay = torch.arange(S).expand(B, S)
    score = log_initial + log_emission[:, 0]                           # (B, S) best log p(x_0..t, z_t = s)
    back = torch.empty(B, T, S, dtype=torch.long)                     # back[b, t, s] = best z_t-1
    back[:, 0] = stay
    for t in range(1, T):
        best, arg = (score.unsqueeze(-1) + log_transition).max(-2)     # over the previous state
        valid = mask[:, t, None]
        score = torch.where(valid, best + log_emission[:, t], score)
        back[:, t] = torch.where(valid, arg, stay)                     # padding: stay put
    log_prob, state = score.max(-1)
    path = torch.empty(B, T, dtype=torch.long)
    for t in range(T - 1, -1, -1):
        path[:, t] = state
        state = back[:, t].gather(-1, state.unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, path, -1), log_prob


def sample_states(initial, transition, n_sequences: int, n: int):
    """State paths (B, T) long of the chain with first-state law ``initial`` (S,) and ``transition``
    (S, S): inverse-CDF steps from torch's global RNG (one uniform per step), vectorized over sequences."""
    uniform = torch.rand(n, n_sequences, 1, dtype=initial.dtype)
    cum_init, cum_trans = initial.cumsum(-1), transition.cumsum(-1)
    last = cum_init.shape[-1] - 1
    states = torch.empty(n_sequences, n, dtype=torch.long)
    states[:, 0] = torch.searchsorted(cum_init, uniform[0]).squeeze(-1).clamp_max(last)
    for t in range(1, n):
        states[:, t] = torch.searchsorted(cum_trans[states[:, t - 1]], uniform[t]).squeeze(-1).clamp_max(last)
    return states
