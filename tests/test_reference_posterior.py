"""A Gaussian mixture written by hand as a plain Pyro model reproduces a published reference posterior.

Benchmark: ``low_dim_gauss_mix`` (Stan's stat_comp_benchmarks / posteriordb; see tests/data/README.md).
The model below is the Stan program line by line; nothing from the zoo is used.
"""

import json
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

import inference

DATA = Path(__file__).parent / "data" / "low_dim_gauss_mix.json"
# (mean, sd) from 10^6 Stan NUTS draws (low_dim_gauss_mix.params)
REFERENCE = {
    "mu[0]": (-2.7331, 0.042029), "mu[1]": (2.8698, 0.054133),
    "sigma[0]": (1.0287, 0.031371), "sigma[1]": (1.0234, 0.040492),
    "theta": (0.62140, 0.015368),
}
# a user's starting point (the improper ordered prior has nothing to sample an init from)
INIT = {"mu": torch.tensor([-1.0, 1.0]), "sigma": torch.ones(2), "theta": torch.tensor(0.5)}


def low_dim_gauss_mix(y):
    # ordered[2] mu;  mu ~ normal(0, 2)  (density restricted to mu[1] < mu[2])
    mu = pyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), (2,)))
    pyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum(-1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))   # real<lower=0> sigma[2]
    theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
    probs = torch.stack([theta, 1 - theta], -1)
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(probs), infer={"enumerate": "parallel"})   # log_mix
        pyro.sample("y", dist.Normal(mu[..., z], sigma[..., z]), obs=y)


@pytest.fixture(scope="module")
def y():
    values = json.loads(DATA.read_text())
    assert values["N"] == len(values["y"]) == 1000
    return torch.tensor(values["y"])


def standardized_differences(post):
    s = post.samples
    draws = {"mu[0]": s["mu"][..., 0], "mu[1]": s["mu"][..., 1], "sigma[0]": s["sigma"][..., 0],
             "sigma[1]": s["sigma"][..., 1], "theta": s["theta"]}
    return {k: abs(float(draws[k].double().mean()) - m) / sd for k, (m, sd) in REFERENCE.items()}


def test_nuts_reproduces_reference_posterior(y):
    post = inference.run_nuts(low_dim_gauss_mix, y, num_samples=1000, warmup_steps=500, num_chains=2,
                              seed=0, jit=True, init=INIT, progress=False)
    diag = inference.diagnose(post)
    assert diag.ok, str(diag)
    # MC error of a mean is sd / sqrt(ESS); with ESS_bulk >= 400 per quantity (checked by diagnose)
    # it is <= 0.05 sd, so a correct sampler passes 0.1 sd with >= 2 MC standard errors to spare
    smd = standardized_differences(post)
    assert max(smd.values()) < 0.1, smd
    # the marginal log-likelihood has one value per data point
    assert post.idata.log_likelihood["y"].shape == (2, 1000, 1000)


def test_full_rank_svi_reproduces_reference_posterior(y):
    post = inference.fit_svi(low_dim_gauss_mix, y, guide="mvn", num_steps=2000, lr=0.02, num_samples=4000,
                             init=INIT, seed=0, progress=False)
    smd = standardized_differences(post)
    assert max(smd.values()) < 0.25, smd
