"""PPCA's marginal density (zoo/ppca_marginal.py) against Pyro's LowRankMultivariateNormal and by sampling;
the masked per-row marginal is checked against scipy in test_ppca.py."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch

from zoo.ppca_marginal import MarginalNormal


def test_marginal_normal_is_the_low_rank_normal():
    g = torch.Generator().manual_seed(5)
    p = {"loadings": torch.randn(4, 1, 7, 3, generator=g, dtype=torch.float64),
         "noise_scale": 0.3 + torch.rand((4, 1), generator=g, dtype=torch.float64),
         "mean": torch.randn(4, 1, 7, generator=g, dtype=torch.float64)}
    x = torch.tensor(np.random.default_rng(2).normal(0, 2, (30, 7)))
    ours = MarginalNormal(p["mean"], p["loadings"], p["noise_scale"])
    ref = dist.LowRankMultivariateNormal(p["mean"], p["loadings"], (p["noise_scale"] ** 2)[..., None].expand(4, 1, 7))
    assert ours.batch_shape == (4, 1) and ours.event_shape == (7,)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.expand((4, 30)).log_prob(x), ref.expand((4, 30)).log_prob(x))
    one = {k: v[0, 0] for k, v in p.items()}
    pyro.set_rng_seed(0)
    draws = MarginalNormal(one["mean"], one["loadings"], one["noise_scale"]).sample((100000,))
    cov = one["loadings"] @ one["loadings"].T + one["noise_scale"] ** 2 * torch.eye(7, dtype=torch.float64)
    assert (torch.cov(draws.T) - cov).abs().max() < 0.1 and (draws.mean(0) - one["mean"]).abs().max() < 0.05
