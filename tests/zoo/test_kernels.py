"""The HMM kernels: compiled forward-backward against the tensor tree and autograd, impossible sequences,
Viterbi against brute force."""

import itertools
import math

import numpy as np
import pytest
import torch

from zoo.kernels import forward_log_prob, tree_log_prob, viterbi


def test_compiled_forward_backward_equals_the_matmul_tree():
    """The compiled recursions (CPU) and the tensor tree (GPU, jit) give the same log p(x) and, through
    the hand-written backward recursion vs autograd, the same gradients: ragged, batched over draws,
    unnormalized potentials (the tree with exact padding, which is exact in every direction)."""
    g = torch.Generator().manual_seed(0)
    draws, B, T, S = 3, 4, 37, 3
    potentials = [torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
                  for shape in ((draws, S), (draws, S, S), (draws, B, T, S))]
    mask = torch.arange(T) < torch.tensor([37, 20, 1, 8])[:, None]
    weights = torch.randn(draws, B, generator=g, dtype=torch.float64)
    compiled = forward_log_prob(*potentials, mask)
    tree = tree_log_prob(*potentials, mask, exact_padding=True)
    np.testing.assert_allclose(compiled.detach().numpy(), tree.detach().numpy(), rtol=1e-12)
    for a, b in zip(torch.autograd.grad((compiled * weights).sum(), potentials),
                    torch.autograd.grad((tree * weights).sum(), potentials)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def test_impossible_sequence_has_minus_infinite_likelihood_and_no_gradient():
    """A sequence that stays in state 0, which cannot emit its third step: log p = -inf, and it adds
    nothing to the gradient (the same answer twice: no uninitialized memory is read), while the other
    sequence keeps the gradient it has alone."""
    inf = math.inf
    log_init = torch.tensor([0.0, -inf], dtype=torch.float64, requires_grad=True)
    log_trans = torch.tensor([[0.0, -inf], [-inf, 0.0]], dtype=torch.float64, requires_grad=True)
    log_emis = torch.tensor([[[-1.0, -2.0], [-1.0, -2.0], [-inf, -1.0], [-1.0, -2.0]],
                             [[-1.0, -2.0], [-0.5, -2.0], [-1.0, -1.0], [-1.0, -2.0]]], dtype=torch.float64,
                            requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    ll = forward_log_prob(log_init, log_trans, log_emis, mask)
    assert ll[0] == -inf and float(ll[1].detach()) == pytest.approx(-1.0 - 0.5 - 1.0 - 1.0)   # state 0 throughout
    grads = [torch.autograd.grad(forward_log_prob(log_init, log_trans, log_emis, mask) @ torch.tensor([1.0, 1.0],
             dtype=torch.float64), [log_init, log_trans, log_emis]) for _ in range(2)]
    alone = torch.autograd.grad(forward_log_prob(log_init, log_trans, log_emis[1:], mask[1:]).sum(),
                                [log_init, log_trans, log_emis])
    for a, b, c in zip(*grads, alone):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    assert torch.equal(grads[0][2][0], torch.zeros(4, 2, dtype=torch.float64))
    assert torch.equal(grads[0][0], alone[0]) and torch.equal(grads[0][1], alone[1])


def test_viterbi_is_the_best_path_by_brute_force():
    """Every path of every ragged sequence enumerated: viterbi's path has the largest log joint, its
    log-probability is that maximum, and padding is -1 (unnormalized potentials, so nothing cancels)."""
    g = torch.Generator().manual_seed(1)
    B, T, S = 3, 5, 3
    log_init, log_trans = torch.randn(S, generator=g, dtype=torch.float64), torch.randn(S, S, generator=g,
                                                                                      dtype=torch.float64)
    log_emis = torch.randn(B, T, S, generator=g, dtype=torch.float64)
    lengths = [5, 3, 1]
    mask = torch.arange(T) < torch.tensor(lengths)[:, None]
    path, log_prob = viterbi(log_init, log_trans, log_emis, mask)
    for b, L in enumerate(lengths):
        def joint(z):
            return float(log_init[z[0]] + sum(log_trans[i, j] for i, j in zip(z, z[1:]))
                         + sum(log_emis[b, t, s] for t, s in enumerate(z)))
        best = max(itertools.product(range(S), repeat=L), key=joint)
        assert path[b, :L].tolist() == list(best) and (path[b, L:] == -1).all()
        assert float(log_prob[b]) == pytest.approx(joint(best), abs=1e-12)
