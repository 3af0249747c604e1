"""inference.sampling.metric: the diagonal and dense metrics (kinetic energy, velocity, momentum) against
their closed forms, and the Welford estimates with Stan's regularisation against numpy."""

import numpy as np
import pytest

from inference.sampling.metric import DenseMetric, DiagonalMetric, Welford, make_metric

COV = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])   # the inverse metric M^-1


@pytest.mark.parametrize("metric", [DiagonalMetric(np.diag(COV)), DenseMetric(COV)], ids=["diag", "dense"])
def test_velocity_and_kinetic_energy_are_the_closed_forms(metric):
    inverse = COV if metric.kind == "dense" else np.diag(np.diag(COV))
    p = np.array([0.3, -1.2, 2.0])
    np.testing.assert_allclose(metric.velocity(p), inverse @ p, rtol=1e-14)
    assert metric.kinetic_energy(p) == pytest.approx(0.5 * p @ inverse @ p, rel=1e-14)


@pytest.mark.parametrize("metric", [DiagonalMetric(np.diag(COV)), DenseMetric(COV)], ids=["diag", "dense"])
def test_momentum_is_gaussian_with_covariance_the_mass_matrix(metric):
    """p ~ N(0, M), M the inverse of M^-1: over n = 20000 draws each entry of p p' / n lies within 4.5 sd
    of M (sd sqrt((M_ii M_jj + M_ij^2) / n) for Gaussian draws; 6 entries), and the kinetic energy,
    chi^2_d / 2, has mean d / 2 within 4.5 sd (sqrt(d / 2 / n))."""
    n, d = 20000, 3
    rng = np.random.default_rng(0)
    p = np.stack([metric.momentum(rng) for _ in range(n)])
    mass = np.linalg.inv(COV if metric.kind == "dense" else np.diag(np.diag(COV)))
    sd = np.sqrt((np.outer(np.diag(mass), np.diag(mass)) + mass**2) / n)
    assert np.all(np.abs(p.T @ p / n - mass) < 4.5 * sd)
    kinetic = np.array([metric.kinetic_energy(x) for x in p])
    assert abs(kinetic.mean() - d / 2) < 4.5 * np.sqrt(d / 2 / n)


def test_a_dense_metric_with_a_diagonal_inverse_is_the_diagonal_metric():
    variances = np.array([4.0, 0.25, 1e-3])
    diag, dense = DiagonalMetric(variances), make_metric("dense", variances)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(5):
        p = diag.momentum(a)
        np.testing.assert_allclose(dense.momentum(b), p, rtol=1e-13)
        np.testing.assert_allclose(dense.velocity(p), diag.velocity(p), rtol=1e-13)


@pytest.mark.parametrize("dense", [False, True], ids=["diag", "dense"])
def test_welford_and_stans_regularised_estimate_against_numpy(dense):
    x = np.random.default_rng(1).multivariate_normal(np.array([1.0, -2.0, 0.5]), COV, size=50) * 10.0
    welford = Welford(3, dense=dense)
    for row in x:
        welford.add(row)
    cov = np.cov(x.T) if dense else x.var(0, ddof=1)
    np.testing.assert_allclose(welford.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(welford.covariance(), cov, rtol=1e-12)
    n = len(x)   # Stan: (n / (n + 5)) cov + 1e-3 (5 / (n + 5)) I
    expected = n / (n + 5) * cov + 1e-3 * 5 / (n + 5) * (np.eye(3) if dense else 1.0)
    metric = welford.metric()
    assert metric.kind == ("dense" if dense else "diag")
    np.testing.assert_allclose(metric.inverse, expected, rtol=1e-12)


def test_a_window_of_a_chain_still_travelling_gets_nutpies_estimate_which_is_exact_for_a_gaussian():
    """For N(m, diag(s^2)) the gradient is -(x - m) / s^2, so nutpie's sqrt(var(x) / var(grad)) is s^2
    from ANY draws. Draws of the Gaussian itself keep Stan's estimate (the two agree); draws of a chain
    still travelling from far away to the mode (their variance off by orders of magnitude) get nutpie's."""
    s2, m = np.array([0.01, 1.0, 25.0]), np.array([3.0, -1.0, 0.0])
    rng = np.random.default_rng(0)
    travel = np.linspace(50.0, 0.0, 40)[:, None] * np.array([1.0, -1.0, 2.0])
    for x, stan in [(m + rng.standard_normal((40, 3)) * np.sqrt(s2), True),
                    (m + travel + rng.standard_normal((40, 3)) * np.sqrt(s2), False)]:
        welford = Welford(3)
        for row in x:
            welford.add(row, -(row - m) / s2)
        n = len(x)
        variance = x.var(0, ddof=1) if stan else s2
        np.testing.assert_allclose(welford.metric().inverse, n / (n + 5) * variance + 1e-3 * 5 / (n + 5),
                                   rtol=1e-10)
    assert np.all(x.var(0, ddof=1) > 10 * s2)   # what Stan's estimate would have taken for the variances


def test_bad_metrics_are_refused():
    with pytest.raises(ValueError, match="positive definite"):
        DenseMetric(np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        DenseMetric(np.ones(3))
    with pytest.raises(ValueError, match="positive variances"):
        DiagonalMetric(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="metric: expected one of diag, dense, got 'full'"):
        make_metric("full", np.ones(2))
