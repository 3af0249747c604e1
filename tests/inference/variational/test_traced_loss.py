"""The traced ELBO (inference.variational.traced_loss) against Pyro's Trace_ELBO, on plain models written here."""

import logging

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroParam
from pyro.util import get_rng_state, set_rng_state

import inference
from inference.tracing import has_compiler
from inference.variational.objectives import FixedSubsample
from inference.variational.optimization import collect_parameters
from inference.variational.traced_loss import traced_loss


def regression(data):
    """Bayesian linear regression with tuple data, no plate on the weights."""
    X, y = data
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    noise = pyro.sample("noise", dist.LogNormal(torch.tensor(0.0, dtype=X.dtype), 1.0))
    with pyro.plate("rows", len(y)):
        pyro.sample("y", dist.Normal(X @ w, noise), obs=y)


def coin(data):
    """A Beta-Bernoulli model; with a Beta guide (reparameterized) and with a Bernoulli latent."""
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("flips", len(data)):
        pyro.sample("obs", dist.Bernoulli(p), obs=data)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(40, 3)))
    y = X @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + 0.3 * torch.tensor(rng.normal(size=40))
    return X, y


def _pair(data, particles=1):
    pyro.set_rng_seed(0)
    guide = AutoNormal(regression)
    elbo = Trace_ELBO(num_particles=particles)
    params = collect_parameters(lambda: elbo.differentiable_loss(regression, guide, data), [guide])
    return guide, elbo, params


@pytest.mark.parametrize("particles", [1, 3])
def test_traced_loss_equals_pyro_trace_elbo_draw_for_draw(data, particles):
    guide, elbo, params = _pair(data, particles)
    loss_fn, route = traced_loss(elbo, regression, guide, data, params, num_steps=10, route="graph")
    assert route == "graph"
    for seed in range(3):
        pyro.set_rng_seed(seed)
        expected = elbo.differentiable_loss(regression, guide, data)
        expected_grads = torch.autograd.grad(expected, params)
        pyro.set_rng_seed(seed)
        got = loss_fn()
        got_grads = torch.autograd.grad(got, params)   # through _KnownGradient
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_the_loop_hands_known_gradients_to_the_optimiser(data):
    """Optimization.step gives the traced loss's gradients to Adam without a pass of autograd: the same
    parameters, step after step, as Adam on Pyro's own ELBO and its autograd gradients."""
    from inference.variational.optimization import Optimization

    runs = []
    for route in ("graph", "pyro"):
        pyro.clear_param_store()   # the guide's parameters start where the other run's did, not where it ended
        guide, elbo, params = _pair(data)
        loss_fn, got = traced_loss(elbo, regression, guide, data, params, num_steps=30, route=route)
        assert got == route
        loop = Optimization(params, lr=0.05, lr_decay=0.1, num_steps=30, clip_norm=None, progress=False)
        pyro.set_rng_seed(1)
        for _ in range(30):
            loss = loop.step(loss_fn)
        assert (getattr(loss_fn(), "known_gradients", None) is not None) == (route == "graph")
        runs.append([p.detach().clone() for p in params])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_known_gradient_that_is_a_view_is_copied_before_the_step():
    """Autograd hands out the gradient of a sum as a view of one value (``expand``, stride 0); given so to
    the optimiser, clipping would scale it in place. The loop copies it: the same step as autograd's."""
    from inference.variational.optimization import Optimization

    steps = []
    for known in (True, False):
        w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
        loop = Optimization([w], lr=0.1, lr_decay=None, num_steps=3, clip_norm=0.5, progress=False)

        def loss_fn():
            loss = (w * 3.0).sum() if not known else (w.detach() * 3.0).sum()
            if known:
                loss.known_gradients = ([w], [torch.tensor(3.0, dtype=torch.float64).expand(3)])
            return loss
        for _ in range(3):
            loop.step(loss_fn)
        steps.append(w.detach().clone())
    torch.testing.assert_close(steps[0], steps[1], rtol=1e-12, atol=1e-12)
    assert not torch.equal(steps[0], torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))


def test_untraceable_pairs_keep_pyro_and_say_why(data, caplog):
    caplog.set_level(logging.INFO, logger="inference.variational.traced_loss")
    x = torch.tensor([1.0, 0.0, 1.0, 1.0])

    def score_guide(data):   # a discrete latent: a score-function gradient, not traceable
        q = pyro.param("q", torch.tensor(0.5), constraint=dist.constraints.unit_interval)
        pyro.sample("p", dist.Bernoulli(q))

    pyro.clear_param_store()
    _, route = traced_loss(Trace_ELBO(), coin, score_guide, x, [], num_steps=5000, route="graph")
    assert route == "pyro"
    guide, _, params = _pair(data)
    _, route = traced_loss(TraceEnum_ELBO(), regression, guide, data, params, num_steps=5000, route="graph")
    assert route == "pyro"
    assert "guide site 'p' is not reparameterized" in caplog.text and "TraceEnum_ELBO, not Trace_ELBO" in caplog.text
    with pytest.raises(ValueError, match="route"):
        traced_loss(Trace_ELBO(), regression, guide, data, params, num_steps=1, route="jit")


def test_fit_svi_is_the_same_fit_whichever_route(data):
    kw = dict(num_steps=200, lr=0.05, num_samples=50, seed=3, progress=False)
    a = inference.fit_svi(regression, data, loss_route="pyro", **kw)
    b = inference.fit_svi(regression, data, loss_route="graph", **kw)
    assert (a.settings["loss_route"], b.settings["loss_route"]) == ("pyro", "graph")
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-9)
    for k in a.samples:
        torch.testing.assert_close(a.samples[k], b.samples[k], rtol=1e-8, atol=1e-10)


@pytest.mark.skipif(not has_compiler(), reason="no C++ compiler: Inductor cannot compile here")
def test_compiled_loss_draws_the_same_random_numbers(data):
    guide, elbo, params = _pair(data)
    loss_fn, route = traced_loss(elbo, regression, guide, data, params, num_steps=10, route="compiled")
    assert route == "compiled"
    state = get_rng_state()
    expected = elbo.differentiable_loss(regression, guide, data)
    set_rng_state(state)
    assert float(loss_fn()) == pytest.approx(float(expected), rel=1e-9)


# --- importance weights: estimates of log p(x) and the ELBO against the closed form ------------------


def local_gaussian(x):
    """z_n ~ N(0, 1), x_n | z_n ~ N(z_n, 1): p(x_n) = N(0, 2), p(z_n | x_n) = N(x_n / 2, 1 / 2)."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def exact_posterior(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(x / 2, 0.5 ** 0.5))


def prior_proposal(x):
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))


def test_importance_estimate_and_elbo_against_the_closed_form():
    from inference.variational.objectives import elbo_estimate, importance_estimate

    x = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    log_px = dist.Normal(torch.zeros_like(x), torch.full_like(x, 2.0).sqrt()).log_prob(x).numpy()
    kw = dict(max_plate_nesting=1, data_plate="data")
    pyro.set_rng_seed(0)
    # the exact posterior as proposal: every log-weight is log p(x), the ESS is k, the ELBO has no gap
    lp, ess = importance_estimate(local_gaussian, exact_posterior, x, 700, **kw)   # 2 chunks of draws
    np.testing.assert_allclose(lp, log_px, rtol=1e-12)
    np.testing.assert_allclose(ess, 700, rtol=1e-9)
    elbo, se = elbo_estimate(local_gaussian, exact_posterior, x, 700, **kw)
    np.testing.assert_allclose(elbo, log_px, rtol=1e-12)
    np.testing.assert_allclose(se, 0, atol=1e-12)
    # the prior as proposal: ELBO = log p(x) - KL(N(0, 1) || N(x/2, 1/2)), within 4 standard errors
    kl = np.log(0.5 ** 0.5) + (1 + x.numpy() ** 2 / 4) / (2 * 0.5) - 0.5
    elbo, se = elbo_estimate(local_gaussian, prior_proposal, x, 4000, **kw)
    assert np.all(np.abs(np.array(elbo) - (log_px - kl)) < 4 * np.array(se)), (elbo, log_px - kl, se)
    # ... and log p(x) by importance sampling, within 4 delta-method standard errors sqrt(Var w / (E w)^2 / k),
    # Var w / (E w)^2 = 2 / sqrt(3) exp(x^2 / 6) - 1 for this proposal
    lp, ess = importance_estimate(local_gaussian, prior_proposal, x, 4000, **kw)
    rel_var = 2 / np.sqrt(3) * np.exp(x.numpy() ** 2 / 6) - 1
    assert np.all(np.abs(np.array(lp) - log_px) < 4 * np.sqrt(rel_var / 4000)), (lp, log_px)
    assert all(1 < e < 4000 for e in ess)

# --- minibatches: the batch's indices an input of the graph ---------------------------------------


class Factor(PyroModule):
    """A user's amortized model, written as users write one: z_n ~ N(0, 1), x_n | z_n ~ N(w z_n + b, s^2 I_3)
    inside a data plate that yields its indices, and an affine encoder as the guide."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(3, generator=g, dtype=dtype))
        self.b = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
        self.s = PyroParam(torch.tensor(1.0, dtype=dtype), dist.constraints.positive)
        with torch.random.fork_rng(devices=[]):   # the same initial weights in every instance
            torch.manual_seed(0)
            self.enc = torch.nn.Linear(3, 2).to(dtype)

    def model(self, data):
        with pyro.plate("rows", len(data)) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=data.dtype), 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * self.w + self.b, self.s).to_event(1), obs=data[idx])

    def guide(self, data):
        with pyro.plate("rows", len(data)) as idx:
            loc, raw = self.enc(data[idx]).unbind(-1)
            pyro.sample("z", dist.Normal(loc, torch.nn.functional.softplus(raw) + 1e-3))


def _rows(dtype, n=30):
    z = torch.tensor(np.random.default_rng(1).normal(size=(n, 1)))
    noise = torch.tensor(np.random.default_rng(2).normal(size=(n, 3)))
    return (z * torch.tensor([1.5, -1.0, 0.5]) + 0.3 * noise).to(dtype)


def _vae(dtype):
    import zoo

    m = zoo.get("vae", latent_dim=2, hidden=(8,), input_dim=6).to(dtype)
    x = torch.tensor(np.random.default_rng(3).random((30, 6)) < 0.4, dtype=dtype)
    return m, x, "data"


CASES = [("factor", "graph", torch.float64), ("factor", "graph", torch.float32), ("vae", "graph", torch.float64),
         ("vae", "graph", torch.float32)] + ([("factor", "compiled", torch.float64)] if has_compiler() else [])


@pytest.mark.parametrize("which, route, dtype", CASES, ids=[f"{w}-{r}-{str(d)[6:]}" for w, r, d in CASES])
def test_minibatch_traced_loss_equals_pyro_on_given_indices(which, route, dtype):
    """On batches other than the one traced, from the same random state: Pyro's Trace_ELBO with the plate
    fixed to those indices, value and every gradient (the same ATen operations in the same order: float64
    to 1e-10, float32 to 1e-5, about a hundred float32 roundings of a sum over the batch)."""
    m, x, plate = (Factor(dtype), _rows(dtype), "rows") if which == "factor" else _vae(dtype)
    elbo = Trace_ELBO(max_plate_nesting=1)
    params = [p for p in m.parameters()]
    loss_fn, taken = traced_loss(elbo, m.model, m.guide, x, params, num_steps=10, route=route,
                                 subsample=(plate, torch.arange(8)))
    assert taken == route
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    g = torch.Generator().manual_seed(4)
    for indices in (torch.randperm(30, generator=g)[:8], torch.arange(22, 30), torch.randperm(30, generator=g)[:5]):
        fix = FixedSubsample(plate, indices)
        state = get_rng_state()
        expected = elbo.differentiable_loss(fix(m.model), fix(m.guide), x)
        expected_grads = torch.autograd.grad(expected, params)
        set_rng_state(state)
        got = loss_fn(x, indices)   # (5 indices: another size, so Pyro's ELBO itself)
        got_grads = torch.autograd.grad(got, params)
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=rtol)
        for a, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(a, e, rtol=rtol, atol=rtol * float(e.abs().max()))


def test_train_gives_the_same_numbers_whichever_route_and_seed_for_seed(caplog):
    from inference.variational.train import train

    x = _rows(torch.float64)
    kw = dict(epochs=3, batch_size=8, lr=0.05, seed=5, progress=False)   # 30 rows: batches of 8, 8, 8, 6
    graph = train(Factor(), x, loss_route="graph", **kw)
    again = train(Factor(), x, loss_route="graph", **kw)
    pyro_ = train(Factor(), x, loss_route="pyro", **kw)
    assert (graph.loss_route, pyro_.loss_route) == ("graph", "pyro")
    assert graph.losses == again.losses                     # same seed, same numbers
    np.testing.assert_allclose(graph.losses, pyro_.losses, rtol=1e-9)
    for (k, a), (_, b) in zip(graph.model.state_dict().items(), pyro_.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=k)
    caplog.set_level(logging.INFO, logger="inference.variational.traced_loss")
    iwae = train(Factor(), x, elbo="iwae", num_particles=2, loss_route="graph", **kw)
    assert iwae.loss_route == "pyro" and "IWAE, not Trace_ELBO" in caplog.text
