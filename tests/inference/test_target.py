"""inference.target: how inference sees a plain Pyro callable (structure found by tracing)."""

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats
from scipy.special import expit, logsumexp

import inference
from inference.inspection import inspect_model
from inference.posterior import Posterior
from inference.target import Target


def test_inspect_model_finds_structure(y, plain_mixture):
    info = inspect_model(plain_mixture, y)
    assert info.observed == ("y",)
    assert info.enumerated == ("z",)
    assert info.global_sites == ("w", "loc")
    assert (info.data_plate, info.data_size, info.max_plate_nesting) == ("data", 100, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structure_needs_no_valid_point(ordered_positive, ordinal, dtype):
    """The structure of a model is found without a valid point: the ordered-positive model's support is
    wider than its prior's values, and a point on it (positive, not ordered) failed validation here. The
    traced values keep the model's dtype."""
    y = torch.tensor(ordinal, dtype=dtype)
    target = Target(ordered_positive)
    info = target.info(y)
    assert (info.latent, info.observed, info.shapes["c"], info.data_plate) == (("c",), ("y",), (3,), "data")
    assert target.observed_values(y)["y"].dtype == dtype
    c = torch.tensor([0.3, 1.0, 2.0], dtype=dtype)
    assert target.log_likelihood(y, {"c": c})["y"].dtype == dtype


def test_latent_discrete_sites_that_are_not_enumerated_are_listed(poisson_count, y, plain_mixture):
    assert Target(poisson_count).info(torch.ones(3)).discrete == {"n": "Poisson, infinite support"}
    assert Target(plain_mixture).info(y).discrete == {}   # its assignments are enumerated


def measured_twice(data):
    """y and a second measurement x of the same mean, x's likelihood written by hand in a factor."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    pyro.factor("shrink", -0.1 * mu ** 2)   # outside the data plate: a prior term, not a likelihood
    with pyro.plate("data", len(data["y"])):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=data["y"])
        pyro.factor("x_lik", dist.Normal(mu, 2.0).log_prob(data["x"]))


def imputation(data):
    """NumPyro's discrete-imputation model: a binary covariate A (-1 where missing) enumerated everywhere,
    its prior masked out and its likelihood (and where it is observed, its value) added by a factor."""
    A, B, Y = data
    mu_A = pyro.sample("mu_A", dist.Normal(0.0, 2.5))
    b_B_A = pyro.sample("b_B_A", dist.Normal(0.0, 2.5))
    b_A = pyro.sample("b_A", dist.Normal(0.0, 2.5))
    b_B = pyro.sample("b_B", dist.Normal(0.0, 2.5))
    s_Y = pyro.sample("s_Y", dist.HalfCauchy(2.5))
    with pyro.plate("obs", len(Y)):
        eta_A = mu_A + b_B_A * B
        a = pyro.sample("A", dist.Bernoulli(logits=eta_A).mask(False), infer={"enumerate": "parallel"})   # (2, 1)
        log_prob = dist.Bernoulli(logits=eta_A).log_prob(a)
        pyro.factor("A_obs", torch.where((A >= 0) & (a != A), torch.tensor(-torch.inf, dtype=B.dtype), log_prob))
        pyro.sample("obs_Y", dist.Normal(b_A * a + b_B * B, s_Y), obs=Y)


@pytest.fixture
def twice():
    g = torch.Generator().manual_seed(0)
    return {"x": 1.0 + 2.0 * torch.randn(6, generator=g, dtype=torch.float64),
            "y": 1.0 + torch.randn(6, generator=g, dtype=torch.float64)}


def test_a_factor_in_the_data_plate_is_part_of_each_points_likelihood(twice):
    target = Target(measured_twice)
    assert target.info(twice).factors == {"x_lik": "y"}
    ll = target.log_likelihood(twice, {"mu": torch.tensor(0.7, dtype=torch.float64)})
    expected = stats.norm.logpdf(twice["y"].numpy(), 0.7, 1.0) + stats.norm.logpdf(twice["x"].numpy(), 0.7, 2.0)
    assert list(ll) == ["y+x_lik"]
    np.testing.assert_allclose(ll["y+x_lik"].numpy(), expected, rtol=1e-12)


def test_an_enumerated_covariate_whose_likelihood_is_a_factor():
    """The imputation shape: per point, log p(A_n) p(Y_n | A_n) where A_n is observed, and the sum over both
    values of A_n where it is missing (its masked prior is not counted twice)."""
    A = torch.tensor([1.0, 0.0, -1.0, 1.0, -1.0, 0.0], dtype=torch.float64)
    B = torch.linspace(-1.0, 1.0, 6, dtype=torch.float64)
    Y = torch.tensor([0.5, -0.2, 0.3, 1.1, -0.4, 0.0], dtype=torch.float64)
    p = dict(mu_A=0.2, b_B_A=0.8, b_A=0.6, b_B=0.3, s_Y=0.5)
    ll = Target(imputation).log_likelihood((A, B, Y), {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()})
    eta = p["mu_A"] + p["b_B_A"] * B.numpy()

    def joint(a):   # log p(A = a) + log p(Y | A = a)
        return (np.log(expit(eta)) if a else np.log(expit(-eta))) + stats.norm.logpdf(
            Y.numpy(), p["b_A"] * a + p["b_B"] * B.numpy(), p["s_Y"])

    observed = A.numpy() >= 0
    expected = np.where(observed, np.where(A.numpy() == 1, joint(1), joint(0)), logsumexp([joint(0), joint(1)], axis=0))
    assert list(ll) == ["obs_Y+A_obs"]
    np.testing.assert_allclose(ll["obs_Y+A_obs"].numpy(), expected, rtol=1e-12)


def test_loo_and_the_log_likelihood_group_carry_the_factor(twice):
    """Fixed draws of mu (no sampling): the idata's log_likelihood holds y's and x's likelihood together, and
    PSIS-LOO is computed on it."""
    mu = torch.linspace(0.2, 1.4, 200, dtype=torch.float64).reshape(2, 100)   # (chain, draw)
    post = Posterior(Target(measured_twice), twice, {"mu": mu}, method="nuts", wall_time=1.0)
    m = mu.numpy()[..., None]
    expected = stats.norm.logpdf(twice["y"].numpy(), m, 1.0) + stats.norm.logpdf(twice["x"].numpy(), m, 2.0)
    group = post.idata.log_likelihood
    assert list(group.data_vars) == ["y+x_lik"] and group["y+x_lik"].dims == ("chain", "draw", "data")
    np.testing.assert_allclose(group["y+x_lik"].values, expected, rtol=1e-12)
    reference = az.loo(az.from_dict(posterior={"mu": m[..., 0]}, log_likelihood={"y": expected}), pointwise=True)
    assert inference.loo(post).elpd_loo == pytest.approx(reference.elpd_loo, rel=1e-12)
