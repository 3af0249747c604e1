"""Fixtures shared by the inference tests: plain Pyro models written as a user would (not from the zoo),
and one small VAE fit for the tests of inference.variational.train, inference.reporting.report and
inference.checks.amortization."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import ExpTransform, OrderedTransform

import zoo
from inference.posterior import Posterior
from inference.target import Target
from inference.variational.train import train
from zoo import datasets


def _plain_mixture(y):
    """A two-component mixture written as a user would, not from the zoo."""
    w = pyro.sample("w", dist.Dirichlet(torch.ones(2)))
    with pyro.plate("components", 2):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Categorical(w), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(loc[z], 1.0), obs=y)


def _plain_regression(data):
    x, y = data
    slope = pyro.sample("slope", dist.Normal(0.0, 10.0))
    noise = pyro.sample("noise", dist.HalfNormal(5.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(slope * x, noise), obs=y)


def _ordered_positive(y):
    """Ordinal regression with positive, increasing cutpoints, as a user writes it. Torch calls the support
    of this TransformedDistribution ``positive``: wider than the ordered values the prior gives, so a point
    drawn on that support (uniform on the unconstrained scale) is positive but not ordered, and
    OrderedLogistic's validation refuses it."""
    base = dist.Normal(torch.zeros(3, dtype=y.dtype), 1.0).to_event(1)
    c = pyro.sample("c", dist.TransformedDistribution(base, [OrderedTransform(), ExpTransform()]))   # (3,)
    pyro.factor("shrink", -0.5 * (c ** 2).sum(-1))   # a prior correction
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.OrderedLogistic(torch.ones_like(y), c), obs=y)   # y in {0, 1, 2, 3}


@pytest.fixture(scope="session")
def ordered_positive():
    return _ordered_positive


@pytest.fixture(scope="session")
def ordinal():
    """Ordinal observations in {0, 1, 2, 3} for the ordered-positive model."""
    return [0, 1, 1, 2, 3, 2, 1, 0, 2, 3, 1, 2, 2, 1, 3, 0]


def _poisson_count(y):
    """A latent count: n ~ Poisson(rate), observed with Gaussian noise. Its support is infinite, so it cannot
    be enumerated (nor sampled by NUTS)."""
    rate = pyro.sample("rate", dist.Gamma(2.0, 0.5))
    n = pyro.sample("n", dist.Poisson(rate))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(n, 1.0), obs=y)


def _poisson_count_guide(y):
    """A guide of the user's own that draws the count."""
    shape = pyro.param("shape", torch.tensor(2.0), constraint=dist.constraints.positive)
    pyro.sample("rate", dist.Gamma(shape, 0.5))
    pyro.sample("n", dist.Poisson(pyro.param("q_rate", torch.tensor(3.0), constraint=dist.constraints.positive)))


@pytest.fixture(scope="session")
def poisson_count():
    return _poisson_count


@pytest.fixture(scope="session")
def poisson_count_guide():
    return _poisson_count_guide


@pytest.fixture(scope="session")
def plain_mixture():
    return _plain_mixture


@pytest.fixture(scope="session")
def plain_regression():
    return _plain_regression


@pytest.fixture(scope="module")
def y():
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.randn(60, generator=g) - 3, torch.randn(40, generator=g) + 3])


@pytest.fixture(scope="session")
def fake_posterior():
    """``fake(samples, stats=None)``: a NUTS Posterior of the plain mixture holding the given draws."""
    def fake(samples, stats=None):
        target = Target(_plain_mixture)
        y = torch.zeros(4)
        return Posterior(target, y, samples, method="nuts", wall_time=1.0, sample_stats=stats)
    return fake





@pytest.fixture(scope="session")
def digits_fit():
    """A small VAE trained 40 epochs on the bundled digits (one thread), shared by every test that reads a fit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = datasets.load("digits")
        m = zoo.get("vae", latent_dim=2, hidden=(64,))
        x = m.validate(ds.data)
        fit = train(m, x, valid=ds.splits["valid"], epochs=40, batch_size=50, lr=3e-3, progress=False)
    finally:
        torch.set_num_threads(before)
    return ds, fit
