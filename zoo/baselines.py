"""Classical fits: the oracles the Bayesian models are tested against, and the CLI's ``--method em``.

Each section serves one model (its ``em``/starting values call into it) and takes the model object
for what is model-specific (its emission family's M-step, its log potentials), so nothing here
imports a model.
"""

from __future__ import annotations

import logging
import math

import torch
from tqdm.auto import tqdm

from zoo.kernels import forward_log_prob

log = logging.getLogger(__name__)


# --- HMM ----------------------------------------------------------------------------------------


def baum_welch(hmm, seqs, params, *, max_iter: int, tol: float | None, progress: bool = True):
    """Baum-Welch: maximum-likelihood HMM parameters by expectation-maximization, from ``params``.

    ``hmm`` is a ``zoo.hmm.HiddenMarkovModel``, ``seqs`` validated ``Sequences``. E-step: expected state
    and transition counts, the gradients of the forward algorithm with respect to the log initial /
    log transition / log emission potentials (exact padding, so every direction is exact). M-step:
    normalized counts, and the emission family's closed form (``hmm.family.m_step``); a state never
    visited keeps its parameters. Stops when the log-likelihood per observation improves by less than
    ``tol`` (``None``: run ``max_iter`` iterations).
    """
    n_obs = float(seqs.lengths.sum())
    previous = -math.inf
    bar = tqdm(range(max_iter), desc="Baum-Welch", disable=not progress, leave=False)
    for it in bar:
        with torch.enable_grad():
            potentials = [p.detach().requires_grad_() for p in hmm.log_potentials(seqs, params)]
            ll = forward_log_prob(*potentials, seqs.mask, exact_padding=True).sum()
            counts_initial, counts_transition, gamma = torch.autograd.grad(ll, potentials)
        ll = float(ll.detach()) / n_obs
        bar.set_postfix(loglik_per_step=f"{ll:.5g}")
        if tol is not None and ll - previous < tol:
            break
        previous = ll
        w = gamma[seqs.mask]                                          # (N, S) state marginals of the observed steps
        seen = w.sum(0) > 0                                           # (S,)
        emission = hmm.family.m_step(seqs.values[seqs.mask], w, params)
        params = {"initial": counts_initial / counts_initial.sum(),
                  "transition": _normalize_rows(counts_transition, params["transition"]),
                  **{k: torch.where(seen.reshape(-1, *[1] * (v.dim() - 1)), v, params[k]) for k, v in emission.items()}}
    bar.close()
    log.info("Baum-Welch: %d iterations, log-likelihood per step %.6g", it + 1, ll)
    return params


def kmeans_start(hmm, seqs, seed: int):
    """An HMM read off k-means++ clusters of the observed steps (seeded): the emission parameters per
    cluster (``hmm.family.cluster``) and, from the cluster labels of consecutive steps, first-state
    counts + 1 (S,), transition counts + 1 (S, S) and visits + 1 per state (S, 1) (add-one smoothing)."""
    S, mask = hmm.n_states, seqs.mask
    x = seqs.values[mask]                                                   # (N, *E)
    emission, flat = hmm.family.cluster(x, S, hmm.family.size(x), seed)
    labels = torch.full(mask.shape, -1, dtype=torch.long)                   # (B, T), -1 on padding
    labels[mask] = flat
    dtype = next(iter(emission.values())).dtype
    first = torch.bincount(labels[:, 0], minlength=S).to(dtype) + 1
    pairs = (labels[:, :-1] >= 0) & (labels[:, 1:] >= 0)
    counts = torch.ones(S, S, dtype=dtype).index_put_((labels[:, :-1][pairs], labels[:, 1:][pairs]),
                                                       torch.ones((), dtype=dtype), accumulate=True)
    visits = torch.bincount(flat, minlength=S).to(dtype).unsqueeze(-1) + 1
    return emission, first, counts, visits


def _normalize_rows(counts: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    total = counts.sum(-1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1e-300), previous)


# --- k-means ------------------------------------------------------------------------------------


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 50):
    """k-means++ seeding and Lloyd iterations on standardized features. Returns (centers, labels)."""
    gen = torch.Generator().manual_seed(int(seed))
    scale = x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[-1], dtype=x.dtype)
    z = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    centers = z[torch.randint(0, z.shape[0], (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(z, centers).min(-1).values ** 2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centers = torch.cat([centers, z[torch.multinomial(probs, 1, generator=gen)]])
    for _ in range(iterations):
        labels = torch.cdist(z, centers).argmin(-1)
        new = torch.stack([z[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
        if torch.allclose(new, centers):
            break
        centers = new
    labels = torch.cdist(z, centers).argmin(-1)
    return centers * torch.where(scale > 0, scale, torch.ones_like(scale)), labels


def kmeans_gaussians(x: torch.Tensor, k: int, spread: torch.Tensor, *, seed: int = 0):
    """:func:`kmeans` clusters as diagonal Gaussians: centers (k, D), per-cluster standard deviations
    (k, D) and labels (N,). A cluster of fewer than two points gets ``spread`` (D,), and every
    standard deviation is at least 5% of it (mixture and HMM starting values)."""
    centers, labels = kmeans(x, k, seed=seed)
    counts = torch.bincount(labels, minlength=k)
    scales = torch.stack([x[labels == j].std(0) if counts[j] > 1 else spread for j in range(k)])
    return centers, torch.maximum(torch.nan_to_num(scales, nan=1.0), 0.05 * spread), labels
