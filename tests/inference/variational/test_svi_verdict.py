"""SVI that knows whether it worked (issue 19), against closed forms: the defaults of ``fit_svi`` reach the
optimum of the ELBO far from the prior, ``diagnose`` carries the Pareto k-hat of the guide and says when it
is above 0.7 or the optimisation did not converge, PSIS-reweighted draws, and PSIS-LOO corrected for the
guide against NUTS; ``optim=`` takes a user's optimiser."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
from inference.checks import importance

pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors: a thread pool only contends

N = 200
PRIOR_SD = 100.0
# N(3, 1) points shifted by +40: the posterior (sd 0.07) lies ~600 of its sds from the prior median 0,
# where a guide starts by default
X = torch.randn(N, generator=torch.Generator().manual_seed(1)) + 3.0 + 40.0


def normal_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, PRIOR_SD))                       # ()
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)                      # (N,)


def exact_normal():
    """Conjugate posterior of mu: precision 1/100^2 + N, mean sum(x) / precision."""
    precision = 1.0 / PRIOR_SD ** 2 + N
    return float(X.sum()) / precision, precision ** -0.5


RHO = -0.995


def correlated(data):
    """A 2-D Gaussian posterior of correlation RHO (unit marginal sds), written as a chain of normals."""
    z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))                                  # ()
    pyro.sample("z2", dist.Normal(RHO * z1, math.sqrt(1 - RHO ** 2)))              # ()


@pytest.fixture(scope="module")
def normal_fit():
    return inference.fit_svi(normal_model, X, progress=False)


def test_defaults_reach_the_exact_posterior_far_from_the_prior(normal_fit):
    """The issue's bar: mean within 0.2 posterior sd, sd within 10 %. Monte Carlo error of 1000 guide draws:
    0.032 sd for the mean, 2.2 % for the sd; the rest is the optimiser's, which the averaged iterates keep
    below 0.05 sd and 4 % (measured over seeds 0-2: benchmarks/README.md)."""
    mean, sd = exact_normal()
    draws = normal_fit.samples["mu"].flatten().double()
    assert abs(float(draws.mean()) - mean) < 0.2 * sd
    assert abs(float(draws.std()) / sd - 1) < 0.10
    assert normal_fit.settings["converged"] is True
    assert normal_fit.settings["steps_taken"] < normal_fit.settings["num_steps"]   # a maximum, not a count
    assert normal_fit.settings["stationary_at"] < normal_fit.settings["steps_taken"]


def test_khat_is_small_where_the_guide_family_is_exact(normal_fit):
    diagnosis = inference.diagnose(normal_fit)
    assert diagnosis.khat is not None and diagnosis.khat < 0.5
    assert diagnosis.converged and diagnosis.ok, str(diagnosis)
    assert "k-hat" in str(diagnosis)


def test_log_ratios_are_the_closed_form_densities(normal_fit):
    """log p(x, mu) - log q(mu) at every draw, computed here from the densities directly."""
    mu = normal_fit.samples["mu"].flatten().double()
    loc, scale = float(normal_fit.guide.locs.mu), float(normal_fit.guide.scales.mu)   # AutoNormal's parameters
    log_p = dist.Normal(0.0, PRIOR_SD).log_prob(mu) + dist.Normal(mu[:, None], 1.0).log_prob(X.double()).sum(-1)
    log_q = dist.Normal(loc, scale).log_prob(mu)
    np.testing.assert_allclose(importance.log_ratios(normal_fit).reshape(-1), (log_p - log_q).numpy(), rtol=1e-5,
                               atol=1e-3)


@pytest.mark.slow
def test_khat_names_a_mean_field_guide_on_a_correlated_posterior():
    """Closed form: for Gaussian p and q the ratios' Pareto shape is k = 1 - lambda_min(S_q^1/2 S_p^-1 S_q^1/2);
    the mean-field optimum (sds sqrt(1 - rho^2)) gives k = 1 - (1 + rho) = 0.995. The estimate from finite
    draws is biased low and wide (the tail is Pareto only up to a slowly varying factor): over sets of 1000
    draws it ranged 0.54-1.17 (4 of 32 sets below 0.7), of 4000 draws 0.70-1.13 (and 0.698 once), of 16000
    draws 0.79-0.94 (seeds 0-2; benchmarks/README.md); so 16000 draws here."""
    post = inference.fit_svi(correlated, None, num_samples=16000, progress=False)
    diagnosis = inference.diagnose(post)
    assert diagnosis.khat > 0.7
    assert not diagnosis.ok
    assert any("k-hat" in r and "the guide misses the posterior: do not trust its sds" in r for r in diagnosis.reasons)
    # the mean-field optimum's sds are the conditional sds sqrt(1 - rho^2) ~ 0.1 (Monte Carlo and optimiser
    # error well inside 25 %)
    sds = torch.stack([post.flat("z1").std(), post.flat("z2").std()]).double()
    np.testing.assert_allclose(sds.numpy(), math.sqrt(1 - RHO ** 2), rtol=0.25)
    with pytest.raises(ValueError, match="k-hat"):
        importance.reweighted(post)


def test_diagnose_says_when_the_optimisation_did_not_converge():
    post = inference.fit_svi(normal_model, X, num_steps=150, progress=False)
    diagnosis = inference.diagnose(post)
    assert post.settings["converged"] is False and diagnosis.converged is False
    assert any("did not converge" in r for r in diagnosis.reasons), diagnosis.reasons
    assert "NOT converged" in str(diagnosis)


# --- LOO corrected for the guide (Magnusson et al. 2019) -----------------------------------------------

SIGMA = 0.5


def regression(data):
    beta = pyro.sample("beta", dist.Normal(torch.zeros(2, dtype=torch.float64), 10.0).to_event(1))   # (2,)
    with pyro.plate("data", len(data["y"])):
        pyro.sample("y", dist.Normal(data["X"] @ beta, SIGMA), obs=data["y"])                         # (N,)


@pytest.fixture(scope="module")
def regression_fits():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 2, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -0.5], dtype=torch.float64) + SIGMA * torch.randn(300, generator=g, dtype=torch.float64)
    data = {"X": X, "y": y}
    precision = X.T @ X / SIGMA ** 2 + torch.eye(2, dtype=torch.float64) / 100
    mean = torch.linalg.solve(precision, X.T @ y / SIGMA ** 2)
    # a guide stopped at its start: centred on the posterior mean, 3x too wide (scale 0.1, posterior sd
    # 0.029): a poor guide, yet a valid importance-sampling proposal (it covers the posterior)
    wide = inference.fit_svi(regression, data, init={"beta": mean}, num_steps=1, converge=False, progress=False)
    nuts = inference.run_nuts(regression, data, num_chains=2, num_samples=1000, warmup_steps=300, seed=0,
                              progress=False)
    return wide, nuts, torch.linalg.inv(precision)


def test_corrected_loo_of_a_poor_guide_is_nuts_loo_and_the_uncorrected_is_not(regression_fits):
    wide, nuts, _ = regression_fits
    assert importance.khat(wide) < 0.5            # both estimates are valid importance sampling
    corrected, uncorrected, reference = (inference.loo(wide), inference.loo(wide, correct=False),
                                         inference.loo(nuts))
    assert corrected.attrs["draws"].startswith("guide, corrected")
    assert uncorrected.attrs["draws"] == "guide, uncorrected"
    assert reference.attrs["draws"] == "posterior"
    assert abs(corrected.elpd_loo - reference.elpd_loo) < 2 * reference.se

    def paired(a):   # sd of the sum of pointwise differences: the yardstick for two estimates of one elpd
        d = np.asarray(a.loo_i) - np.asarray(reference.loo_i)
        return d.sum(), math.sqrt(len(d) * d.var())

    diff, se = paired(corrected)
    assert abs(diff) < 3 * se + 0.05, (diff, se)
    diff, se = paired(uncorrected)
    assert diff < -5 * se, (diff, se)   # a too-wide guide blurs the predictions: lower elpd, far outside MC error


def test_select_marks_svi_rows_and_reweighted_draws_recover_the_posterior(regression_fits):
    wide, nuts, cov = regression_fits
    table = inference.select({"svi": wide, "nuts": nuts})
    assert table.loc["svi", "draws"].startswith("guide, corrected") and table.loc["nuts", "draws"] == "posterior"
    improved = importance.reweighted(wide, seed=1)
    assert improved.method == "svi+psis" and improved.settings["khat"] < 0.5
    # resampled draws: Monte Carlo sd of an sd estimate from ESS ~ psis_ess draws is sd / sqrt(2 ESS)
    ess = improved.settings["psis_ess"]
    exact_sd = cov.diagonal().sqrt().numpy()
    got = improved.flat("beta").double().std(0).numpy()
    np.testing.assert_allclose(got, exact_sd, rtol=4 / math.sqrt(2 * ess))
    assert (wide.flat("beta").double().std(0).numpy() > 2.5 * exact_sd).all()   # the guide itself is 3x too wide


# --- optim=: a user's optimiser -----------------------------------------------------------------------


def test_pyro_optim_scheduler_and_torch_factory_run_and_are_recorded():
    clipped = inference.fit_svi(normal_model, X, optim=pyro.optim.ClippedAdam({"lr": 0.05}), num_steps=300,
                                num_samples=10, progress=False)
    assert clipped.settings["lr"] == "ClippedAdam" and clipped.settings["steps_taken"] <= 300
    scheduled = inference.fit_svi(
        normal_model, X, num_steps=50, num_samples=10, converge=False, progress=False,
        optim=pyro.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 1e-4}, "gamma": 0.5}))
    assert scheduled.settings["steps_taken"] == 50 and scheduled.settings["lr"] == "ExponentialLR(SGD)"

    def factory(params):
        opt = torch.optim.SGD(params, lr=1e-3)
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)

    made = inference.fit_svi(normal_model, X, optim=factory, num_steps=20, num_samples=10, converge=False,
                             progress=False)
    assert made.settings["lr"] == "factory" and len(made.losses) == 20
    with pytest.raises(ValueError, match="lr"):
        inference.fit_svi(normal_model, X, optim=factory, lr=0.1, num_steps=5, progress=False)
    with pytest.raises(TypeError, match="optim"):
        inference.fit_svi(normal_model, X, optim="adam", num_steps=5, progress=False)
