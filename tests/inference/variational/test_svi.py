"""inference.variational.svi: plain Pyro callables through every guide, ELBO choice, seeds, bad inputs, failures;
the one optimisation step (``Optimization``) against hand computations."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
from inference.inspection import inspect_model
from inference.variational.optimization import Optimization, SVIDivergedError


@pytest.mark.parametrize("guide", [None, "delta", "mvn"])
def test_an_autoguide_refuses_a_discrete_site_it_cannot_draw(poisson_count, guide):
    with pytest.raises(ValueError) as e:
        inference.fit_svi(poisson_count, torch.tensor([2.1, 2.9, 3.2]), guide=guide, num_steps=2, progress=False)
    message = str(e.value)
    assert "\n" not in message and "'n' (Poisson, infinite support)" in message
    assert "infer={'enumerate': 'parallel'}" in message and "a guide of your own" in message


def test_a_guide_of_your_own_draws_the_discrete_site(poisson_count, poisson_count_guide):
    post = inference.fit_svi(poisson_count, torch.tensor([2.1, 2.9, 3.2]), guide=poisson_count_guide, num_steps=3,
                             num_samples=4, progress=False)
    assert post.samples["n"].shape == (1, 4)


def test_elbo_auto_picks_enumeration(y, plain_mixture, plain_regression):
    info = inspect_model(plain_mixture, y)
    assert isinstance(inference.variational.svi.make_elbo("auto", info, 1, False), pyro.infer.TraceEnum_ELBO)
    x = torch.linspace(0, 1, 20)
    info2 = inspect_model(plain_regression, (x, 2 * x))
    assert type(inference.variational.svi.make_elbo("auto", info2, 1, False)) is pyro.infer.Trace_ELBO
    with pytest.raises(ValueError, match="cannot sum out"):
        inference.variational.svi.make_elbo("trace", info, 1, False)


@pytest.mark.parametrize("guide", ["delta", "normal", "mvn", "iaf"])
def test_plain_model_runs_through_every_guide(y, plain_mixture, guide):
    post = inference.fit_svi(plain_mixture, y, guide=guide, num_steps=300, lr=0.05, num_samples=200,
                             init={"w": torch.tensor([0.5, 0.5]), "loc": torch.tensor([-1.0, 1.0])},
                             progress=False)
    assert post.method == ("map" if guide == "delta" else "svi")
    assert post.samples["loc"].shape == ((1, 1, 2) if guide == "delta" else (1, 200, 2))
    locs = post.samples["loc"].mean((0, 1)).sort().values
    assert torch.allclose(locs, torch.tensor([-3.0, 3.0]), atol=0.6)
    assert "z" not in post.samples  # enumerated, hidden from the autoguide


def test_unknown_guide_and_bad_sizes(y, plain_mixture):
    with pytest.raises(ValueError, match="guide"):
        inference.fit_svi(plain_mixture, y, guide="laplace", num_steps=1, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        inference.fit_svi(plain_mixture, y, num_steps=0, progress=False)
    with pytest.raises(TypeError, match="model"):
        inference.fit_svi(42, y, progress=False)


def test_svi_is_reproducible():
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(80, seed=0)
    a = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=5, progress=False)
    b = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=5, progress=False)
    c = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=6, progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in a.samples)
    assert a.losses != c.losses


def test_fit_does_not_mutate_the_model():
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(50, seed=0)
    post = inference.fit_svi(m, x, num_steps=20, num_samples=5, progress=False)
    assert len(list(m.parameters())) == 0          # the user's object is untouched
    assert len(list(post.model.parameters())) > 0  # the fitted copy holds the guide


def test_nan_loss_stops_with_step_and_restores_last_finite_parameters():
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.1), obs=data)

    def guide(data):
        loc = pyro.param("nan_test_loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, (2.0 - loc).sqrt()))   # NaN once loc passes 2

    pyro.clear_param_store()
    with pytest.raises(inference.SVIDivergedError, match=r"non-finite at step \d+") as err:
        inference.fit_svi(model, torch.tensor(10.0), guide=guide, num_steps=500, lr=0.1, lr_decay=1.0,
                          clip_norm=None, progress=False)
    assert err.value.step > 0 and np.isfinite(err.value.losses[-2]) and not np.isfinite(err.value.losses[-1])
    assert float(pyro.param("nan_test_loc").detach()) < 2.0
    pyro.clear_param_store()

# --- inference.variational.optimization.Optimization, the one optimisation step of fit_svi, train and
# train_lightning: Adam, schedule and clipping against hand computations, NaN rollback, errors that are not
# divergences.


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
