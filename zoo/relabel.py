"""Label switching: relabel the components (mixtures) or states (HMMs) of posterior draws.

A mixture's or an HMM's likelihood is invariant to permuting its components, so every posterior
mode has K! copies. Each draw is matched to a reference by minimum-cost assignment (Hungarian
algorithm, :func:`match`) and permuted (:func:`permute`); :func:`align_to_reference` repeats this
with the reference refined as the mean of the relabelled draws (Stephens 2000).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def match(locs, ref_locs, ref_scales):
    """Per draw, the permutation p minimizing sum_k ||(locs[p[k]] - ref[k]) / ref_scale[k]||^2. (n, K).

    ``locs`` (n, K, F) per draw; ``ref_locs``, ``ref_scales`` (K, F)."""
    cost = (((locs.unsqueeze(-2) - ref_locs) / ref_scales) ** 2).sum(-1)   # (n, K_draw, K_ref)
    cost = cost.detach().cpu().numpy()
    perm = np.empty(cost.shape[:2], dtype=np.int64)
    for s, c in enumerate(cost):
        rows, cols = linear_sum_assignment(c)
        perm[s, cols] = rows
    return torch.as_tensor(perm)


def permute(x, perm):
    """x[s, perm[s, k], ...] for every draw s: ``x`` (n, K, ...), ``perm`` (n, K)."""
    index = perm.reshape(*perm.shape, *([1] * (x.dim() - 2))).expand(*perm.shape, *x.shape[2:])
    return torch.gather(x, 1, index.to(x.device))


def align_to_reference(flat: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor],
                       signature: Callable, relabel: Callable, iterations: int) -> dict[str, torch.Tensor]:
    """Relabel draws ``flat`` (n, K, ...) to the reference ``ref`` (K, ...), Stephens-style.

    ``signature(params)`` gives per component a location and a spread (..., K, F) to match on;
    ``relabel(flat, perm)`` permutes every draw. After each round the reference becomes the mean of
    the relabelled draws; stops when the permutations no longer change (at most ``iterations``)."""
    perm = None
    for _ in range(iterations):
        ref_center, ref_spread = signature(ref)
        new_perm = match(signature(flat)[0], ref_center, ref_spread)
        relabeled = relabel(flat, new_perm)
        ref = {k: v.mean(0) for k, v in relabeled.items()}
        if perm is not None and torch.equal(new_perm, perm):
            break
        perm = new_perm
    return relabeled
