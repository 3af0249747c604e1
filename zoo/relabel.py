"""Label switching: relabel the components (mixtures) or states (HMMs) of posterior draws.

A mixture's or an HMM's likelihood is invariant to permuting its components, so every posterior
mode has K! copies. Each draw is matched to a reference by minimum-cost assignment (Hungarian
algorithm, :func:`match`) and permuted (:func:`permute`); :func:`align_draws` repeats this with
the reference refined as the mean of the relabelled draws (Stephens 2000).
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


def permute_all(flat: Mapping[str, torch.Tensor], perm) -> dict[str, torch.Tensor]:
    """:func:`permute` every entry of ``flat`` (n, K, ...) by ``perm`` (n, K)."""
    return {k: permute(v, perm) for k, v in flat.items()}


def align_draws(flat: Mapping[str, torch.Tensor], signature: Callable, relabel: Callable,
                reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Relabel draws ``flat[site]`` (n, K, ...) to a common labeling, Stephens-style.

    ``signature(params)`` gives per component a location and a spread (..., K, F) to match on;
    ``relabel(flat, perm)`` permutes every draw by ``perm`` (n, K). The reference is the mean of
    ``reference`` (draws (m, K, ...) of the same sites; 2 rounds), or the draw nearest the middle of
    the run (10 rounds); after each round it becomes the mean of the relabelled draws, until the
    permutations stop changing. Without ``reference`` the components are then ordered by the first
    coordinate of the reference's location."""
    if reference is not None:
        ref, iterations = {k: v.mean(0) for k, v in reference.items()}, 2
    else:
        ref, iterations = {k: v[v.shape[0] // 2] for k, v in flat.items()}, 10
    perm = None
    for _ in range(iterations):
        ref_center, ref_spread = signature(ref)
        new_perm = match(signature(flat)[0], ref_center, ref_spread)
        relabeled = relabel(flat, new_perm)
        ref = {k: v.mean(0) for k, v in relabeled.items()}
        if perm is not None and torch.equal(new_perm, perm):
            break
        perm = new_perm
    if reference is None:
        order = torch.argsort(signature(ref)[0][:, 0])
        relabeled = relabel(relabeled, order.expand(perm.shape[0], -1))
    return relabeled
