"""inference.checks.check: a correct pair passes; each broken pair fails the expected check, naming the site."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.nn import PyroParam

import inference
from zoo.base import ZooModel, as_float_tensor


def model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def guide(data):
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.tensor(0.0)),
                                   pyro.param("q_loc_sd", torch.tensor(1.0), constraint=constraints.positive)))
    pyro.sample("scale", dist.LogNormal(pyro.param("q_scale", torch.tensor(0.0)),
                                       pyro.param("q_scale_sd", torch.tensor(1.0), constraint=constraints.positive)))


def guide_missing_scale(data):
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.tensor(0.0)), 1.0))


def guide_wrong_support(data):
    guide_missing_scale(data)
    pyro.sample("scale", dist.Normal(pyro.param("q_scale", torch.tensor(-3.0)), 1.0))   # may be negative


def guide_nan(data):
    q = pyro.param("q_loc", torch.tensor(0.0))
    pyro.sample("loc", dist.Normal(q, (q - 1.0).sqrt()))   # sqrt of a negative number: NaN
    pyro.sample("scale", dist.LogNormal(0.0, 1.0))


def local_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data)


def guide_wrong_plate(data):
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.tensor(0.0)), 1.0))
    pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))   # 3 values, outside the plate of 20


def broadcast_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
    pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)   # batch shape () broadcast against (N,)


class Normals(ZooModel):
    """x_n ~ Normal(loc, 1), loc ~ Normal(0, 5): a zoo model in the house style."""

    name = "normals"
    global_sites = ("loc",)

    def __init__(self):
        super().__init__()
        self.q_loc = PyroParam(torch.tensor(0.0))
        self.q_sd = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def model(self, data=None):
        loc = pyro.sample("loc", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    def guide(self, data=None):
        pyro.sample("loc", dist.Normal(self.q_loc, self.q_sd))

    def log_likelihood(self, data, params):
        return dist.Normal(params["loc"].unsqueeze(-1), 1.0).log_prob(data)

    def simulate(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        loc = 5.0 * torch.randn((), generator=g)
        return loc + torch.randn(n, generator=g), {"loc": loc}

    def validate(self, data):
        return as_float_tensor(data)


class WrongLikelihood(Normals):
    def log_likelihood(self, data, params):
        return dist.Normal(params["loc"].unsqueeze(-1), 2.0).log_prob(data)   # the model says scale 1


@pytest.fixture
def data():
    return 1.0 + torch.randn(20, generator=torch.Generator().manual_seed(0))


def test_a_correct_pair_passes(data):
    report = inference.check(model, guide, data)
    assert report.ok, str(report)
    assert {f.check for f in report.findings} >= {"model", "guide", "elbo", "prior predictive", "log_likelihood"}
    assert "obs dist" in report.shapes and "OK" in str(report)


def test_a_correct_zoo_model_passes_and_moves_toward_the_truth():
    report = inference.check(Normals(), seed=1)
    assert report.ok, str(report)
    assert "relative distance to the truth" in next(f.message for f in report.findings if f.check == "recovery")


@pytest.mark.parametrize("pair, failed, words", [
    ((model, guide_missing_scale), "guide", ["'scale'", "add pyro.sample"]),
    ((local_model, guide_wrong_plate), "guide", ["'z'", "(3,)", "(20,)", "data"]),
    ((model, guide_nan), "guide", ["'loc'", "not finite"]),
    ((model, guide_wrong_support), "guide", ["'scale'", "support"]),
    ((broadcast_model, None), "prior predictive", ["'obs'", "(20,)", "plate"]),
    ((WrongLikelihood(), None), "log_likelihood", ["log_likelihood", "trace"]),
])
def test_a_broken_pair_fails_the_named_check(data, pair, failed, words):
    report = inference.check(*pair, data)
    assert not report.ok
    first = report.failures[0]
    assert first.check == failed, str(report)
    for word in words:
        assert word in first.message, str(report)
    assert "FAIL" in str(report)


def test_a_discrete_site_left_unenumerated_is_a_named_problem(poisson_count, poisson_count_guide):
    """A latent Poisson count: NUTS moves it by Gibbs updates (the discrete check says how), an autoguide
    cannot draw it (the guide check fails in one line naming it), a guide of the user's own can."""
    y = torch.tensor([2.1, 2.9, 3.2])
    report = inference.check(poisson_count, None, y)
    findings = {f.check: f for f in report.findings}
    assert findings["discrete"].ok and "random walk: ['n']" in findings["discrete"].message
    assert "autoguides cannot" in findings["discrete"].message
    assert report.failures[0].check == "guide", str(report)
    message = report.failures[0].message
    assert "'n' (Poisson, infinite support)" in message and "infer={'enumerate': 'parallel'}" in message
    findings = {f.check: f for f in inference.check(poisson_count, poisson_count_guide, y).findings}
    assert findings["discrete"].ok and "autoguides" not in findings["discrete"].message and findings["guide"].ok


def test_cli_check(capsys):
    from zoo.cli import main

    assert main(["check", "gmm", "--components", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("check gmm: OK") and "Model trace shapes" in out
