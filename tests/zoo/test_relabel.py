"""Relabelling: the Hungarian matching against brute force over all permutations, and permute."""

import itertools

import pytest
import torch

from zoo.relabel import align_draws, match, permute, permute_all


def test_match_is_the_cheapest_permutation_by_brute_force():
    g = torch.Generator().manual_seed(0)
    locs = torch.randn(25, 4, 2, generator=g, dtype=torch.float64)                  # (draws, K, F)
    ref, scales = torch.randn(4, 2, generator=g, dtype=torch.float64), 0.5 + torch.rand(4, 2, generator=g,
                                                                                      dtype=torch.float64)
    perm = match(locs, ref, scales)
    permuted = permute(locs, perm)
    for s in range(25):
        def cost(p):
            return float((((locs[s, list(p)] - ref) / scales) ** 2).sum())
        best = min(itertools.permutations(range(4)), key=cost)
        assert cost(perm[s].tolist()) == pytest.approx(cost(best), rel=1e-12)
        assert torch.equal(permuted[s], locs[s, perm[s]])


def test_align_draws_undoes_known_permutations():
    """Draws of three well separated components, each draw shuffled by a known permutation: aligned, every
    draw is back in the reference's order (sorted by location without a reference)."""
    g = torch.Generator().manual_seed(1)
    truth = torch.tensor([[-4.0], [0.0], [4.0]], dtype=torch.float64)
    shuffles = [torch.tensor(p) for p in itertools.permutations(range(3))] * 5          # 30 draws
    draws = {"locs": torch.stack([truth[p] for p in shuffles]) + 0.1 * torch.randn(30, 3, 1, generator=g,
                                                                                    dtype=torch.float64)}
    draws["weights"] = torch.stack([torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)[p] for p in shuffles])

    def signature(p):
        return p["locs"], torch.ones_like(p["locs"])

    out = align_draws(draws, signature, permute_all)
    assert (out["locs"][..., 0].argsort(-1) == torch.arange(3)).all()
    assert torch.equal(out["weights"], torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).expand(30, 3))
    flipped = {k: v[:5].flip(1) for k, v in out.items()}
    again = align_draws(draws, signature, permute_all, reference=flipped)              # the reference's order
    assert torch.equal(again["weights"], torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).expand(30, 3))
