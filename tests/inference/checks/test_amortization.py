"""inference.checks.amortization: the amortization gap of a trained VAE against a grid quadrature."""

import math

import numpy as np
import pytest
import torch

from inference.checks.amortization import amortization_gap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_amortization_gap_against_quadrature(digits_fit):
    """log p(x) from NUTS-guided importance sampling and the NUTS posterior means match a 2-D grid
    quadrature of the same decoder; the gaps are non-negative up to Monte Carlo error."""
    ds, fit = digits_fit
    x = fit.prepare(ds.splits["test"])[:3]
    gap = amortization_gap(fit.model, x, num_samples=400, warmup_steps=300, num_chains=2, svi_steps=400,
                           elbo_particles=2000, is_particles=2000, progress=False)
    m = fit.model
    grid = torch.linspace(-6, 6, 241)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)     # (G, 1, 2)
    with torch.no_grad():
        log_joint = (m.observation(z).log_prob(x) + m.prior().log_prob(z)).double()       # (G, 3)
    log_px = torch.logsumexp(log_joint, 0) + 2 * math.log(float(grid[1] - grid[0]))
    post = torch.softmax(log_joint, 0)
    mean = (post.unsqueeze(-1) * z.double()).sum(0)                                      # (3, 2)
    sd = ((post.unsqueeze(-1) * (z.double() - mean) ** 2).sum(0)).sqrt()
    t = gap.table.drop(index="mean")
    # IS with k = 2000 and ESS > 1000: se of log p_hat < 1 / sqrt(1000) = 0.03; quadrature error ~1e-4
    assert (t["log_px_ess"] > 1000).all()
    np.testing.assert_allclose(t["log_px"], log_px.numpy(), atol=0.1)
    nuts = gap.posteriors["nuts"].samples["z"].reshape(-1, 3, 2).double()
    # 800 draws, ESS >= 200 per coordinate: se of a mean <= sd / sqrt(200); 4 se
    assert ((nuts.mean(0) - mean).abs() < 4 * sd / math.sqrt(200)).all()
    for col, se in (("approximation_gap", t["elbo_optimized_se"] + 0.03),
                    ("amortization_gap", np.hypot(t["elbo_optimized_se"], t["elbo_amortized_se"]))):
        assert (t[col] > -4 * se).all(), t[[col]]
    np.testing.assert_allclose(t["total_gap"], t["approximation_gap"] + t["amortization_gap"], atol=1e-9)
    c = gap.comparisons[0]["amortized"]
    assert list(c.index) == ["z[0]", "z[1]"] and {"smd", "sd_ratio"} <= set(c.columns)

