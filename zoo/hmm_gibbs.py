"""Gibbs sampling of the HMM (``HiddenMarkovModel.gibbs_sweep``, run by ``inference.run_gibbs``).

One sweep, given the global sites:

1. the state paths by forward filtering, backward sampling (FFBS; Frühwirth-Schnatter 1994, Chib 1996):
   the filtered state probabilities of the forward algorithm (:func:`zoo.kernels.forward`), then z_T-1 from
   the last of them and z_t from p(z_t | x_0..t) p(z_t+1 | z_t), backwards (:func:`sample_paths`);
2. ``initial`` ~ Dirichlet(1 + first states) and each row of ``transition`` ~ Dirichlet(1 + transitions
   counted from that state) (:func:`zoo.conjugate.dirichlet`);
3. the emission parameters given the states: categorical ``emission_probs`` ~ Dirichlet(1 + symbol counts),
   Bernoulli ones ~ Beta(1 + ones, 1 + zeros), Gaussian ``locs`` from their Normal conditional given the
   scales; Gaussian ``scales`` and Poisson ``rates`` (LogNormal priors, not conjugate) are returned as a
   block, their conditional log density given the rest, for a NUTS transition (:mod:`zoo.conjugate`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from zoo import kernels
from zoo.conjugate import dirichlet, gaussian_components, log_normal_rates


@numba.njit(cache=True)
def _backward_sample(alpha, transition, lengths, uniforms):  # pragma: no cover - compiled
    B, T, S = alpha.shape
    states = np.zeros((B, T), dtype=np.int64)
    p = np.empty(S)
    for b in range(B):
        last = lengths[b] - 1
        for t in range(last, -1, -1):
            total = 0.0
            for s in range(S):
                p[s] = alpha[b, t, s] if t == last else alpha[b, t, s] * transition[s, states[b, t + 1]]
                total += p[s]
            u, acc, k = uniforms[b, t] * total, 0.0, S - 1
            for s in range(S):
                acc += p[s]
                if u < acc:
                    k = s
                    break
            states[b, t] = k
        for t in range(last + 1, T):                 # padding: the last state, repeated
            states[b, t] = states[b, last]
    return states


def sample_paths(rng: np.random.Generator, log_initial: np.ndarray, log_transition: np.ndarray,
                 log_emission: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """State paths (B, T) drawn from p(z | x, params) by FFBS: ``log_initial`` (S,), ``log_transition``
    (S, S), ``log_emission`` (B, T, S), ``lengths`` (B,). Steps past a sequence's length repeat its last state."""
    _, saved = kernels.forward(log_initial[None], log_transition[None], log_emission[None], lengths)
    alpha = saved[4][0]                                                     # (B, T, S) filtered probabilities
    return _backward_sample(alpha, np.exp(log_transition), lengths, rng.random(alpha.shape[:2]))


def sweep(hmm, data, values, rng: np.random.Generator):
    """One Gibbs sweep of ``hmm`` on validated ``data`` from the global ``values`` (module docstring):
    ``(new values, block)`` as ``ZooModel.gibbs_sweep`` returns them."""
    S, mask = hmm.n_states, data.mask.numpy()
    params = {k: torch.as_tensor(v) for k, v in values.items()}
    potentials = [np.ascontiguousarray(p.detach().double().numpy()) for p in hmm.log_potentials(data, params)]
    lengths = mask.sum(-1).astype(np.int64)
    z = sample_paths(rng, *potentials, lengths)                              # (B, T)
    pairs = np.zeros((S, S))
    np.add.at(pairs, (z[:, :-1][mask[:, 1:]], z[:, 1:][mask[:, 1:]]), 1.0)
    new = {"initial": dirichlet(rng, 1.0 + np.bincount(z[:, 0], minlength=S)),
           "transition": dirichlet(rng, 1.0 + pairs)}
    emission, block = _EMISSIONS[type(hmm.family).__name__](hmm, data, data.values[data.mask], z[mask], params, rng)
    new.update(emission)
    dtype = params["initial"].dtype
    out = {**params, **{k: torch.as_tensor(v, dtype=dtype) for k, v in new.items()}}
    if block is None:
        return out, None
    def conditioned():   # the explicit form's sites: one per step
        states = {f"states_{t}": z_t for t, z_t in enumerate(torch.from_numpy(z).unbind(1))}
        return {**states, **{k: out[k] for k in hmm.global_sites if k not in block[0]}}
    return out, (*block, conditioned)


def _gaussian(hmm, data, x, labels, params, rng):
    center, spread = (h.double().numpy() for h in hmm.hyperparameters(data))
    scales = params["scales"].double().numpy()
    locs, block = gaussian_components(rng, x.double().numpy(), labels, scales, center, spread)
    return {"locs": locs}, block


def _categorical(hmm, data, x, labels, params, rng):
    S, V = params["emission_probs"].shape
    counts = np.zeros((S, V))
    np.add.at(counts, (labels, x.numpy()), 1.0)
    return {"emission_probs": dirichlet(rng, 1.0 + counts)}, None


def _bernoulli(hmm, data, x, labels, params, rng):
    onehot = np.eye(hmm.n_states)[labels]
    ones = onehot.T @ x.double().numpy()
    return {"emission_probs": rng.beta(1.0 + ones, 1.0 + onehot.sum(0)[:, None] - ones)}, None


def _poisson(hmm, data, x, labels, params, rng):
    onehot = np.eye(hmm.n_states)[labels]
    mean = float(hmm.hyperparameters(data)[0])
    return {}, log_normal_rates(onehot.sum(0), onehot.T @ x.double().numpy(), np.log(mean), 1.5)


_EMISSIONS = {"Gaussian": _gaussian, "Categorical": _categorical, "Bernoulli": _bernoulli, "Poisson": _poisson}
