"""Pyro's calling convention: untouched user models ``model(x, y=None)`` through ``model_args`` /
``model_kwargs`` (the names of Pyro's ``initialize_model`` and ``Predictive``).

Each model is checked against a direct numpy/scipy computation of its pointwise log-likelihood at the
posterior draws, and against the same model fitted through the one-argument form ``model(data)``: the
same seed gives the same draws, since the data are the same tensors in the same graph.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule, PyroSample
from scipy import stats

import inference
import zoo
from inference.inspection import ModelArgs, model_data
from inference.potential import Potential, pyro_potential
from inference.target import Target
from inference.tracing import flatten_data

pytestmark = pytest.mark.usefixtures("one_thread")

NUTS = dict(num_samples=100, warmup_steps=100, num_chains=1, progress=False)
SVI = dict(num_steps=200, lr=0.05, num_samples=100, progress=False)


def regression(x, y=None):
    """y_n ~ Normal(a + b x_n, s): a covariate, and the observations as an optional keyword."""
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(5.0, dtype=x.dtype)))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal(a + b * x, s), obs=y)


def regression_one(data):
    """The same model in the one-argument form."""
    x, y = data
    return regression(x, y)


def binomial(x1, x2, trials, y=None):
    """Several positional arguments, one of them an int: y_n ~ Binomial(trials, logit = a + b1 x1 + b2 x2)."""
    a = pyro.sample("a", dist.Normal(0.0, 3.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    with pyro.plate("data", len(x1)):
        pyro.sample("y", dist.Binomial(trials, logits=a + b[0] * x1 + b[1] * x2), obs=y)


def poisson(*, exposure, counts=None):
    """Keywords only: counts_n ~ Poisson(rate * exposure_n), rate ~ Gamma(2, 1) (conjugate)."""
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=exposure.dtype), 1.0))
    with pyro.plate("data", len(exposure)):
        pyro.sample("counts", dist.Poisson(rate * exposure), obs=counts)


def rate_guide(*, exposure, counts=None):
    """A user's guide with the model's signature: Gamma(alpha, beta), the conjugate family."""
    alpha = pyro.param("alpha", torch.tensor(1.0, dtype=exposure.dtype), constraint=dist.constraints.positive)
    beta = pyro.param("beta", torch.tensor(1.0, dtype=exposure.dtype), constraint=dist.constraints.positive)
    pyro.sample("rate", dist.Gamma(alpha, beta))


class BayesianRegression(PyroModule):
    """Pyro's tutorial model (``bayesian_regression.ipynb``): a PyroModule with ``forward(x, y=None)``."""

    def __init__(self, in_features):
        super().__init__()
        self.linear = PyroModule[torch.nn.Linear](in_features, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x, y=None):
        sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def regression_data(dtype=torch.float32, n=40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = 1.0 + 2.0 * x + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def flat(post, name) -> np.ndarray:
    return post.samples[name].reshape(-1, *post.samples[name].shape[2:]).double().numpy()


def loglik(post, var) -> np.ndarray:
    values = post.idata.log_likelihood[var].values
    return values.reshape(-1, *values.shape[2:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_regression_with_a_covariate_matches_numpy_and_the_one_argument_form(dtype):
    x, y = regression_data(dtype)
    post = inference.run_nuts(regression, model_args=(x,), model_kwargs={"y": y}, **NUTS)
    one = inference.run_nuts(regression_one, (x, y), **NUTS)
    assert post.settings["potential"] == one.settings["potential"] == "graph"   # data traced as inputs, not eager
    for name in ("a", "b", "s"):
        assert post.samples[name].dtype == dtype
        np.testing.assert_array_equal(flat(post, name), flat(one, name))
    a, b, s = (flat(post, k)[:, None] for k in ("a", "b", "s"))
    expected = stats.norm.logpdf(y.double().numpy(), a + b * x.double().numpy(), s)
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(loglik(post, "y"), expected, rtol=rtol)
    np.testing.assert_allclose(loglik(post, "y"), loglik(one, "y"), rtol=0)
    np.testing.assert_array_equal(post.idata.observed_data["y"].values, y.numpy())
    assert post.idata.posterior_predictive["y"].shape[-1] == len(y)

    svi = inference.fit_svi(regression, model_args=(x,), model_kwargs={"y": y}, **SVI)
    svi_one = inference.fit_svi(regression_one, (x, y), **SVI)
    for name in ("a", "b", "s"):
        np.testing.assert_array_equal(flat(svi, name), flat(svi_one, name))
    np.testing.assert_allclose(loglik(svi, "y"), loglik(svi_one, "y"), rtol=0)


def test_several_arguments_one_of_them_an_int():
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(50, generator=g), torch.randn(50, generator=g)
    y = dist.Binomial(10, logits=0.3 + 1.0 * x1 - 0.5 * x2).sample()
    data = model_data(None, (x1, x2, 10), {"y": y})
    assert isinstance(data, ModelArgs)
    leaves, rebuild = flatten_data(data)
    assert [id(t) for t in leaves] == [id(x1), id(x2), id(y)] and rebuild(leaves).args[2] == 10
    post = inference.run_nuts(binomial, model_args=(x1, x2, 10), model_kwargs={"y": y}, **NUTS)
    a, b = flat(post, "a")[:, None], flat(post, "b")
    logits = a + b[:, :1] * x1.numpy() + b[:, 1:] * x2.numpy()
    expected = stats.binom.logpmf(y.numpy(), 10, 1 / (1 + np.exp(-logits)))
    np.testing.assert_allclose(loglik(post, "y"), expected, rtol=1e-4, atol=1e-5)
    check = inference.ppc(post, num_replicates=20, progress=False)
    assert check.table().loc["y_mean", "observed"] == pytest.approx(float(y.mean()))


def test_keywords_only_against_the_conjugate_posterior():
    g = torch.Generator().manual_seed(2)
    exposure = torch.rand(30, generator=g, dtype=torch.float64) * 2 + 0.5
    counts = torch.poisson(1.7 * exposure, generator=g)
    kwargs = {"exposure": exposure, "counts": counts}
    post = inference.run_nuts(poisson, model_kwargs=kwargs, **{**NUTS, "num_samples": 300})
    rate = flat(post, "rate")
    exact = stats.gamma(2 + float(counts.sum()), scale=1 / (1 + float(exposure.sum())))
    # Monte Carlo error of the mean: sd / sqrt(ESS); 4 of them
    ess = float(inference.diagnose(post).summary.loc["rate", "ess_bulk"])
    assert abs(rate.mean() - exact.mean()) < 4 * exact.std() / np.sqrt(ess)
    expected = stats.poisson.logpmf(counts.numpy(), rate[:, None] * exposure.numpy())
    np.testing.assert_allclose(loglik(post, "counts"), expected, rtol=1e-10)

    # a user's guide with the model's signature, trained on the keywords: its draws are Gamma(alpha, beta)
    # at the trained parameters (left in Pyro's store), and the loss falls
    svi = inference.fit_svi(poisson, model_kwargs=kwargs, guide=rate_guide, num_steps=300, lr=0.05,
                            num_samples=1000, progress=False)
    alpha, beta = (float(pyro.param(k).detach()) for k in ("alpha", "beta"))
    fitted = stats.gamma(alpha, scale=1 / beta)
    assert abs(flat(svi, "rate").mean() - fitted.mean()) < 4 * fitted.std() / np.sqrt(1000)
    assert np.mean(svi.losses[-50:]) < np.mean(svi.losses[:50])


def test_the_traced_potential_takes_the_arguments_as_inputs():
    """The graph built on one data set gives Pyro's potential on another of the same shapes: the data
    are inputs of the graph, not constants baked into it."""
    x, y = regression_data(torch.float64)
    data = model_data(None, (x,), {"y": y})
    target = Target(regression, args_form=True)
    potential = Potential(target.model_fn, data, max_plate_nesting=1, route="graph")
    assert potential.route == "graph" and len(potential.leaves) == 2
    x2, y2 = regression_data(torch.float64, n=40)
    x2, y2 = x2 * 2 - 1, y2 + 3
    new = model_data(None, (x2,), {"y": y2})
    reference = pyro_potential(target.model_fn, new, potential)
    theta = np.array([0.3, 1.5, -0.2])
    moved = potential.with_data(new)
    assert moved.route == "graph" and all(a is b for a, b in zip(moved.leaves, flatten_data(new)[0]))
    value, grad = moved(theta)
    expected, expected_grad = reference(theta)
    assert value == pytest.approx(expected, rel=1e-10)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-8)
    assert abs(expected - pyro_potential(target.model_fn, data, potential)(theta)[0]) > 1   # the data matter


def test_pyro_tutorial_module_with_forward_x_y():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(60, 2, generator=g)
    y = 0.5 + X @ torch.tensor([1.0, -2.0]) + 0.3 * torch.randn(60, generator=g)
    module = BayesianRegression(2)
    svi = inference.fit_svi(module, model_args=(X,), model_kwargs={"y": y}, guide="normal", **SVI)
    nuts = inference.run_nuts(module, model_args=(X,), model_kwargs={"y": y}, **NUTS)
    for post in (svi, nuts):
        w, bias, sigma = flat(post, "linear.weight")[:, 0], flat(post, "linear.bias"), flat(post, "sigma")
        expected = stats.norm.logpdf(y.numpy(), bias + w @ X.numpy().T, sigma[:, None])
        np.testing.assert_allclose(loglik(post, "obs"), expected, rtol=1e-4, atol=1e-5)   # float32
    assert abs(flat(nuts, "linear.weight").mean((0, 1)) - [1.0, -2.0]).max() < 0.2


def test_check_and_dims_with_model_args():
    x, y = regression_data()
    report = inference.check(regression, model_args=(x,), model_kwargs={"y": y})
    assert report.ok, str(report)
    post = inference.fit_svi(regression, model_args=(x,), model_kwargs={"y": y}, dims={"y": ["obs_id"]},
                             coords={"obs_id": list(range(100, 140))}, **SVI)
    for group in ("log_likelihood", "observed_data", "posterior_predictive"):
        assert post.idata[group]["y"].dims[-1] == "obs_id"
    assert list(post.idata.observed_data["obs_id"].values) == list(range(100, 140))


def test_bad_calls_name_the_argument():
    x, y = regression_data()
    with pytest.raises(ValueError, match="data: .*not both"):
        inference.run_nuts(regression, (x, y), model_args=(x,), **NUTS)
    with pytest.raises(TypeError, match="model_args: expected a tuple"):
        inference.fit_svi(regression, model_args=x, **SVI)
    with pytest.raises(TypeError, match="model_kwargs: expected a dict"):
        inference.check(regression, model_args=(x,), model_kwargs=[("y", y)])
    with pytest.raises(TypeError, match="model_args: a zoo model"):
        inference.run_nuts(zoo.get("gmm", n_components=2), model_args=(x, 2), **NUTS)
    assert model_data(None, (x,), None) is x   # one positional argument: the one-argument form itself
