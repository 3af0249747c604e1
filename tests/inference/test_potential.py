"""The traced and compiled log density of plain Pyro models (inference.potential), and NUTS on it.

Every value is checked against a hand computation with scipy, or against Pyro's own potential.
"""

import math

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroSample
from scipy import stats

import inference
import inference.tracing
from inference.potential import Potential, pyro_potential
from inference.tracing import compile_graph, has_compiler

matplotlib.use("Agg")


def no_plate(data):
    """No plate: the observations are a plain batch of shape (N,)."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=data.dtype), 10.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(2.0, dtype=data.dtype)))
    pyro.sample("obs", dist.Normal(mu, sigma).expand(data.shape), obs=data)


def no_plate_by_hand(theta, x):
    """log p(mu, sigma, x) + log|J| at theta = (mu, log sigma), by scipy."""
    mu, sigma = theta[0], math.exp(theta[1])
    return (stats.norm(0, 10).logpdf(mu) + stats.halfnorm(scale=2).logpdf(sigma) + theta[1]
            + stats.norm(mu, sigma).logpdf(x).sum())


def mixture(data):
    """Two-component mixture with enumerated assignments, in the data's dtype."""
    dtype = data.dtype
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2, dtype=dtype)))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(torch.zeros((), dtype=dtype), 5.0))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
        pyro.sample("obs", dist.Normal(locs[z], 1.0), obs=data)


def mixture_by_hand(values, x):
    w, locs = values["weights"].double().numpy(), values["locs"].double().numpy()
    per_point = np.logaddexp(np.log(w[0]) + stats.norm(locs[0], 1).logpdf(x),
                             np.log(w[1]) + stats.norm(locs[1], 1).logpdf(x))
    return stats.dirichlet([1, 1]).logpdf(w / w.sum()) + stats.norm(0, 5).logpdf(locs).sum() + per_point.sum()


def eight_schools(data):
    """Non-centered eight schools with dict data."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(data["y"])):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, data["sigma"]), obs=data["y"])


SCHOOLS = {"y": torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]),
           "sigma": torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])}


def branching(data):
    """Python control flow on a latent value: a trace freezes the branch taken."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if float(mu) > 0 else 3.0
    pyro.sample("obs", dist.Normal(mu, scale).expand(data.shape), obs=data)


class Regression(PyroModule):
    """A PyroModule Bayesian linear regression with PyroSample priors, tuple data (X, y)."""

    def __init__(self, d):
        super().__init__()
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.weight = PyroSample(dist.Normal(zero, 1.0).expand([d]).to_event(1))
        self.noise = PyroSample(dist.LogNormal(zero, 1.0))

    def forward(self, data):
        X, y = data
        mean, noise = X @ self.weight, self.noise   # the global sites, drawn outside the plate
        with pyro.plate("rows", len(y)):
            pyro.sample("y", dist.Normal(mean, noise), obs=y)


@pytest.fixture
def normal_data():
    return torch.tensor(np.random.default_rng(0).normal(1.5, 2.0, 25))


@pytest.mark.parametrize("route", ["graph", "eager"])
def test_no_plate_log_density_and_gradient_equal_a_hand_computation(normal_data, route):
    p = Potential(no_plate, normal_data, max_plate_nesting=0, route=route)
    assert p.route == route and p.names == ("mu", "sigma") and p.dtype == torch.float64
    x = normal_data.numpy()
    for theta in ([0.3, 0.1], [2.0, -0.5], [-1.0, 1.2]):
        theta = np.array(theta)
        value, grad = p(theta)
        assert value == pytest.approx(no_plate_by_hand(theta, x), rel=1e-12)
        h = 1e-6
        numeric = [(no_plate_by_hand(theta + h * e, x) - no_plate_by_hand(theta - h * e, x)) / (2 * h)
                   for e in np.eye(2)]
        np.testing.assert_allclose(grad, numeric, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_enumerated_mixture_sums_assignments_out_in_its_dtype(dtype):
    x = torch.tensor(np.r_[np.random.default_rng(1).normal(-2, 1, 15), np.random.default_rng(2).normal(3, 1, 10)],
                     dtype=dtype)
    p = Potential(mixture, x, max_plate_nesting=1, route="graph")
    assert p.route == "graph" and p.enumerated == ("z",) and p.dtype == dtype
    theta = np.random.default_rng(3).normal(0, 0.5, p.dim)
    values = p.constrain(theta)
    assert all(v.dtype == dtype for v in values.values())
    log_det = sum(float(p.transforms[k].log_abs_det_jacobian(u, p.transforms[k](u)).sum())
                  for k, u in p.unflatten(torch.from_numpy(theta)).items())
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    assert p(theta)[0] == pytest.approx(mixture_by_hand(values, x.double().numpy()) + log_det, rel=tol)


def test_dict_data_deterministic_sites_and_pyro_modules_are_traced():
    p = Potential(eight_schools, SCHOOLS, max_plate_nesting=1, route="graph")
    assert p.route == "graph" and set(p.names) == {"mu", "tau", "eta"} and len(p.leaves) == 2
    X = torch.tensor(np.random.default_rng(4).normal(size=(30, 3)))
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(30, dtype=torch.float64)
    model = Regression(3)
    r = Potential(model, (X, y), max_plate_nesting=1, route="graph")
    assert r.route == "graph" and len(r.leaves) == 2
    theta = np.array([0.5, -1.0, 0.2, math.log(0.4)])
    by_hand = (stats.norm(0, 1).logpdf(theta[:3]).sum() + stats.lognorm(1.0).logpdf(0.4) + theta[3]
               + stats.norm(X.numpy() @ theta[:3], 0.4).logpdf(y.numpy()).sum())
    assert r(theta)[0] == pytest.approx(by_hand, rel=1e-12)


def test_a_graph_that_froze_a_branch_is_caught_and_the_eager_route_used(caplog):
    x = torch.linspace(-1, 1, 10)
    p = Potential(branching, x, max_plate_nesting=0, route="graph")
    assert p.route == "eager"
    assert "graph route is not usable" in caplog.text
    for mu in (-0.5, 0.5):   # both branches right
        expected = stats.norm(0, 1).logpdf(mu) + stats.norm(mu, 1.0 if mu > 0 else 3.0).logpdf(x.numpy()).sum()
        assert p(np.array([mu]))[0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not has_compiler(), reason="no C++ compiler: Inductor cannot compile here")
def test_compiled_route_equals_the_hand_computation(normal_data):
    p = Potential(no_plate, normal_data, max_plate_nesting=0, route="compiled")
    assert p.route == "compiled"
    theta = np.array([0.7, 0.4])
    assert p(theta)[0] == pytest.approx(no_plate_by_hand(theta, normal_data.numpy()), rel=1e-12)


def test_nuts_on_a_plain_conjugate_model_matches_the_closed_form_posterior():
    """mu ~ N(0, 10), x_n ~ N(mu, 1): the posterior is N(sum x / (N + 1/100), 1 / (N + 1/100))."""
    x = torch.tensor(np.random.default_rng(5).normal(2.0, 1.0, 20))

    def model(data):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 10.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)

    post = inference.run_nuts(model, x, num_samples=500, warmup_steps=300, num_chains=2, seed=0, progress=False)
    assert post.settings["potential"] == "graph" and post.samples["mu"].dtype == torch.float64
    precision = len(x) + 1e-2
    mean, sd = float(x.sum()) / precision, precision ** -0.5
    draws = post.samples["mu"].numpy()
    ess = float(az.ess(draws))
    assert abs(draws.mean() - mean) < 4 * sd / math.sqrt(ess)
    # sd of a sample sd is about sd / sqrt(2 ESS) for a Gaussian
    assert abs(draws.std() - sd) < 4 * sd / math.sqrt(2 * ess)
    # ArviZ's energy diagnostics work on the posterior of a plain model
    bfmi = az.bfmi(post.idata)
    assert bfmi.shape == (2,) and np.all(bfmi > 0.3)
    assert az.plot_energy(post.idata) is not None
    stats_ = post.sample_stats
    assert np.all(stats_["energy"] >= -stats_["lp"])   # energy = -log p + kinetic energy >= -log p


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("engine", ["zoo", "pyro"])
def test_both_engines_keep_the_dtype_of_an_enumerated_mixture(dtype, engine):
    x = torch.tensor(np.r_[np.random.default_rng(6).normal(-2, 1, 20), np.random.default_rng(7).normal(3, 1, 20)],
                     dtype=dtype)
    post = inference.run_nuts(mixture, x, num_samples=40, warmup_steps=40, num_chains=1, seed=0, engine=engine,
                              progress=False)
    assert all(v.dtype == dtype for v in post.samples.values())
    locs = post.samples["locs"].double().mean((0, 1)).sort().values
    np.testing.assert_allclose(locs.numpy(), [-2, 3], atol=1.0)   # the two clusters (|mean error| ~ 0.3)


def test_an_unknown_potential_is_refused():
    with pytest.raises(ValueError, match="potential"):
        inference.run_nuts(no_plate, torch.zeros(3), potential="jit")


def tutorial_hmm(data):
    """The HMM of Pyro's enumeration tutorial: one sequence of symbols in a pyro.markov loop, the hidden
    states enumerated, Categorical emissions."""
    with pyro.plate("hidden_state", 3):
        transition = pyro.sample("transition", dist.Dirichlet(0.5 * torch.ones(3)))   # (3, 3)
        emission = pyro.sample("emission", dist.Dirichlet(0.5 * torch.ones(4)))       # (3, 4)
    x = 0
    for t, y in pyro.markov(enumerate(data)):
        x = pyro.sample(f"x_{t}", dist.Categorical(transition[x]), infer={"enumerate": "parallel"})   # (3, 1)
        pyro.sample(f"y_{t}", dist.Categorical(emission[x]), obs=y)


@pytest.fixture(scope="module")
def hmm_graph():
    symbols = torch.randint(0, 4, (25,), generator=torch.Generator().manual_seed(0))
    return Potential(tutorial_hmm, symbols, max_plate_nesting=1, route="graph"), symbols


def _agrees_with_pyro(fn, potential, symbols, points=4):
    """``fn``'s value and gradient against Pyro's potential at the trace point and three others (float32:
    1e-4 relative, the route check's 1e3 machine epsilons)."""
    reference = pyro_potential(tutorial_hmm, symbols, potential)
    rng = np.random.default_rng(1)
    base = potential.flatten(potential.prototypes)
    worst = 0.0
    for i in range(points):
        theta = base + (rng.normal(0, 0.5, base.size) if i else 0)
        value, grad = fn(torch.from_numpy(theta).float(), *potential.leaves)
        expected, expected_grad = reference(theta)
        assert float(value) == pytest.approx(expected, rel=1e-4)
        worst = max(worst, float(np.abs(grad.double().numpy() - expected_grad).max() / np.abs(expected_grad).max()))
    return worst


def test_tutorial_hmm_graph_agrees_with_pyro(hmm_graph):
    potential, symbols = hmm_graph
    assert potential.route == "graph"
    assert _agrees_with_pyro(potential.guard.fn, potential, symbols) < 1e-4


@pytest.mark.slow
@pytest.mark.skipif(not has_compiler(), reason="no C++ compiler: Inductor cannot compile here")
def test_tutorial_hmm_compiled_agrees_once_its_scatters_are_fenced(hmm_graph, monkeypatch):
    """The compiled tutorial HMM failed the route check: Inductor fused the accumulating index_put of the
    gradient of ``transition[x]`` with the kernel summing its results, which read the buffer before the
    adds (inference.tracing.fence_accumulating_scatters). Fenced, it agrees with Pyro and passes the route
    check; unfenced, it still does not: when that half fails, Inductor is fixed and the fence can go. (All 49
    of its scatters are at the enumeration's indices, which inference.tracing.identity_scatters now writes
    as the values themselves; that half turns it off too.)"""
    potential, symbols = hmm_graph
    example = [torch.from_numpy(potential.flatten(potential.prototypes)).float(), *potential.leaves]
    assert _agrees_with_pyro(compile_graph(potential.guard.fn, example), potential, symbols) < 1e-4
    assert Potential(tutorial_hmm, symbols, max_plate_nesting=1, route="compiled").route == "compiled"
    monkeypatch.setattr(inference.tracing, "fence_accumulating_scatters", lambda graph: graph)
    monkeypatch.setattr(inference.tracing, "identity_scatters", lambda graph: graph)   # it removes some of them
    assert _agrees_with_pyro(compile_graph(potential.guard.fn, example), potential, symbols, points=1) > 1e-2
