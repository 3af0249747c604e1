"""inference.svi.Optimization, the one optimisation step of fit_svi, train and train_lightning: Adam,
schedule and clipping against hand computations, NaN rollback, errors that are not divergences."""

import math

import pytest
import torch

from inference.svi import Optimization, SVIDivergedError


def quadratic(p, c=2.0):
    """c/2 |p|^2: gradient c p."""
    return 0.5 * c * (p ** 2).sum()


def test_adam_step_with_clipping_and_schedule_match_hand_computation():
    p0 = torch.tensor([3.0, -4.0], dtype=torch.float64)
    p = p0.clone().requires_grad_(True)
    lr, decay, n = 0.1, 0.01, 4
    with Optimization([p], lr=lr, lr_decay=decay, num_steps=n, clip_norm=1.0, progress=False) as loop:
        loss = loop.step(lambda: quadratic(p))
    assert float(loss) == pytest.approx(25.0, rel=1e-15)                # c/2 |p0|^2 = 25
    # the gradient 2 p0 clipped to norm 1: scaled by 1 / (|2 p0| + 1e-6) (torch's clip_grad_norm_)
    g = 2.0 * p0 / (float((2.0 * p0).norm()) + 1e-6)
    torch.testing.assert_close(p.grad, g, rtol=1e-14, atol=0)
    # Adam's first step: bias-corrected moments m = g, sqrt(v) = |g|, so p1 = p0 - lr g / (|g| + eps)
    torch.testing.assert_close(p.detach(), p0 - lr * g / (g.abs() + 1e-8), rtol=1e-14, atol=0)
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(lr * decay ** (1 / n), rel=1e-14)
    for _ in range(n - 1):
        loop.step(lambda: quadratic(p))
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(lr * decay, rel=1e-14)   # lr * lr_decay at the end
    assert loop.steps == n and loop.losses[0] == 25.0


def test_no_clipping_leaves_the_gradient():
    p0 = torch.tensor([3.0, -4.0], dtype=torch.float64)
    p = p0.clone().requires_grad_(True)
    with Optimization([p], lr=0.1, lr_decay=None, num_steps=1, clip_norm=None, progress=False) as loop:
        loop.step(lambda: quadratic(p))
    torch.testing.assert_close(p.grad, 2.0 * p0, rtol=0, atol=0)
    assert loop.optimizer.param_groups[0]["lr"] == 0.1


def test_nan_rollback_restores_the_parameters_of_the_last_finite_loss():
    """Steps 0-2 are finite; the loss at step 3 is NaN. The parameters come back to those step 2 evaluated
    (two Adam updates from the start, recomputed here with torch's Adam alone), with their names."""
    p0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    p = p0.clone().requires_grad_(True)
    calls = [0]

    def loss_fn():
        calls[0] += 1
        return quadratic(p) * (math.nan if calls[0] == 4 else 1.0)

    loop = Optimization([p], lr=0.05, lr_decay=0.5, num_steps=10, clip_norm=None, names={id(p): "w"},
                        model="the model", guide="the guide", progress=False)
    with pytest.raises(SVIDivergedError, match="non-finite at step 3") as err, loop:
        for _ in range(10):
            loop.step(loss_fn)
    q = p0.clone().requires_grad_(True)
    adam = torch.optim.Adam([q], lr=0.05)
    schedule = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.5 ** (1 / 10))
    for _ in range(2):
        adam.zero_grad()
        quadratic(q).backward()
        adam.step()
        schedule.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
    e = err.value
    assert e.step == 3 and e.params["w"] is p and (e.model, e.guide) == ("the model", "the guide")
    assert e.losses[-2] == pytest.approx(float(quadratic(q.detach())), rel=1e-15) and math.isnan(e.losses[-1])
    assert len(e.losses) == 4


def test_a_distribution_refusing_nan_is_a_divergence_but_other_errors_pass_unchanged():
    import pyro
    import pyro.distributions as dist

    p = torch.tensor([0.5], requires_grad=True)

    def refuses():   # validation refuses the NaN scale; without validation the log-density is NaN
        return -dist.Normal(0.0, p * math.nan).log_prob(torch.tensor(1.0)).sum()

    with pytest.raises(SVIDivergedError, match="step 0 .*scale") as err, pyro.validation_enabled(True), \
            Optimization([p], lr=0.1, lr_decay=None, num_steps=3, clip_norm=None, progress=False) as loop:
        loop.step(refuses)
    assert isinstance(err.value.__cause__, ValueError) and float(p.detach()) == 0.5

    def broken():
        raise KeyError("a bug in the model")

    with pytest.raises(KeyError, match="a bug in the model"), \
            Optimization([p], lr=0.1, lr_decay=None, num_steps=3, clip_norm=None, progress=False) as loop:
        loop.step(broken)
