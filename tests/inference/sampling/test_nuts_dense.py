"""inference.sampling.nuts with the dense metric against the diagonal one on correlated Gaussians, whose
mean and covariance are known: ESS per gradient, exact moments within Monte Carlo error, the adapted
metric against the true covariance; and against nutpie where it is installed."""

import arviz as az
import numpy as np
import pytest

from inference.sampling import adaptation, nuts

WARMUP, DRAWS, CHAINS = 500, 1000, 2


def correlated2():
    """2-D, unit scales, correlation 0.99."""
    return np.array([[1.0, 0.99], [0.99, 1.0]])


def random15():
    """15-D, a random rotation of variances from 0.1 to 10 (condition number 100)."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(15, 15)))
    return q @ np.diag(np.logspace(-1, 1, 15)) @ q.T


TARGETS = {"correlated2": correlated2(), "random15": random15()}


def gaussian(cov):
    precision = np.linalg.inv(cov)

    def log_density(x):
        g = -precision @ x
        return 0.5 * float(x @ g), g
    return log_density


def starts(d):
    return [np.random.default_rng([0, c]).uniform(-2, 2, d) for c in range(CHAINS)]


def ess_per_gradient(draws, n_steps):
    """The smallest bulk ESS over coordinates per leapfrog step of the sampling phase."""
    ess = min(float(az.ess(np.ascontiguousarray(draws[..., i]), method="bulk")) for i in range(draws.shape[-1]))
    return ess / n_steps.sum()


@pytest.fixture(scope="module")
def runs():
    out = {}
    for name, cov in TARGETS.items():
        for metric in ("diag", "dense"):
            chains = [nuts.sample(gaussian(cov), x, num_samples=DRAWS, warmup_steps=WARMUP, seed=c, metric=metric)
                      for c, x in enumerate(starts(len(cov)))]
            draws = np.stack([r.draws for r in chains])
            n_steps = np.stack([r.stats["n_steps"] for r in chains])
            out[name, metric] = dict(draws=draws, n_steps=n_steps, chains=chains,
                                     ess_per_gradient=ess_per_gradient(draws, n_steps))
    return out


@pytest.mark.parametrize("name, ratio", [("correlated2", 10), ("random15", 4)])
def test_dense_metric_has_a_higher_ess_per_gradient(runs, name, ratio):
    """Measured with these settings over seeds 0-7 (chain seeds 10 s + c): the dense/diagonal ratio of
    ESS per gradient is 21-32 on correlated2 (diagonal 0.011-0.016, dense 0.29-0.36) and 6.8-10 on
    random15 (diagonal 0.022-0.025, dense 0.17-0.24); the test asks for 10 and 4, below every seed's."""
    dense, diag = runs[name, "dense"]["ess_per_gradient"], runs[name, "diag"]["ess_per_gradient"]
    assert dense > ratio * diag, (dense, diag)


@pytest.mark.parametrize("metric", ["diag", "dense"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_both_metrics_recover_the_exact_mean_and_covariance(runs, name, metric):
    """In whitened coordinates z = L^-1 x (S = L L'), z ~ N(0, I): each mean within 4.5 Monte Carlo sd
    (sqrt(1 / ESS)) of 0 and each second moment E z_i z_j within 4.5 sd (sd of z_i z_j / sqrt(ESS of
    z_i z_j)) of the identity; for 15-D, 135 checks, a Bonferroni level of about 1e-3."""
    cov = TARGETS[name]
    z = runs[name, metric]["draws"] @ np.linalg.inv(np.linalg.cholesky(cov)).T
    d = len(cov)
    for i in range(d):
        ess = float(az.ess(np.ascontiguousarray(z[..., i]), method="mean"))
        assert abs(z[..., i].mean()) < 4.5 / np.sqrt(ess), (i, z[..., i].mean(), ess)
        for j in range(i, d):
            prod = z[..., i] * z[..., j]
            ess = float(az.ess(np.ascontiguousarray(prod), method="mean"))
            assert abs(prod.mean() - (i == j)) < 4.5 * prod.std() / np.sqrt(ess), (i, j, prod.mean(), ess)


@pytest.mark.parametrize("name", list(TARGETS))
def test_adapted_dense_metric_approximates_the_covariance(runs, name):
    """The metric is Stan's estimate from the last window's n draws. Whitened by the truth it is close to
    I: a covariance from n independent draws misses I by sqrt(d (d + 1) / n) in Frobenius norm (Wishart),
    and NUTS draws are fewer effective ones; over seeds 0-7 the ratio is at most 2.2 (d = 2) and 1.6
    (d = 15); the test allows 3. The diagonal metric cannot: its whitened eigenvalues span 100x."""
    cov = TARGETS[name]
    d = len(cov)
    a, b = adaptation.windows(WARMUP)[-1]
    whiten = np.linalg.inv(np.linalg.cholesky(cov))
    for chain in runs[name, "dense"]["chains"]:
        assert chain.metric.kind == "dense" and chain.step_size == chain.stats["step_size"][0]
        error = np.linalg.norm(whiten @ chain.metric.inverse @ whiten.T - np.eye(d))
        assert error < 3 * np.sqrt(d * (d + 1) / (b - a)), error
    for chain in runs[name, "diag"]["chains"]:
        eigenvalues = np.linalg.eigvalsh(whiten @ np.diag(chain.metric.inverse) @ whiten.T)
        assert eigenvalues.max() / eigenvalues.min() > 20


@pytest.mark.parametrize("name", list(TARGETS))
def test_against_nutpie(runs, name):
    """nutpie (where installed) on the same densities, starts, warmup and draws: its diagonal metric and
    its low-rank-modified one (which adapts the correlations) against ours. Measured over seeds 0-4:
    ESS per gradient nutpie diag 0.012-0.016 / 0.022-0.029 and low-rank 0.35-0.41 / 0.22-0.25 on
    correlated2 / random15, against ours above: the test asks ours for at least half of nutpie's. The
    means agree within 4.5 combined Monte Carlo sd."""
    nutpie = pytest.importorskip("nutpie")
    from nutpie.compiled_pyfunc import from_pyfunc

    cov = TARGETS[name]
    d, log_density = len(cov), gaussian(cov)

    def logp(x):
        value, grad = log_density(np.asarray(x, dtype=np.float64))
        return value, np.asarray(grad, dtype=np.float64)

    compiled = from_pyfunc(d, lambda: logp, lambda *_: (lambda x: {"x": x}), [np.dtype("float64")], [(d,)], ["x"],
                           make_initial_point_fn=lambda seed: starts(d)[seed % CHAINS])
    for metric, options in (("diag", {}), ("dense", {"low_rank_modified_mass_matrix": True})):
        idata = nutpie.sample(compiled, draws=DRAWS, tune=WARMUP, chains=CHAINS, cores=1, seed=0, progress_bar=False,
                              **options)
        theirs = idata.posterior["x"].values
        ours = runs[name, metric]
        assert ours["ess_per_gradient"] > 0.5 * ess_per_gradient(theirs, idata.sample_stats["n_steps"].values)
        for i in range(d):
            sd = np.sqrt(sum(cov[i, i] / float(az.ess(np.ascontiguousarray(x[..., i]), method="mean"))
                             for x in (theirs, ours["draws"])))
            assert abs(theirs[..., i].mean() - ours["draws"][..., i].mean()) < 4.5 * sd
