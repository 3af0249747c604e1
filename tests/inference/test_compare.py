"""inference.compare: standardized mean differences and sd ratios against numbers known by construction."""

import pytest
import torch

import inference


def test_compare_computes_standardized_differences(fake_posterior):
    g = torch.Generator().manual_seed(1)
    a = {"w": torch.full((1, 4000, 2), 0.5), "loc": torch.randn(1, 4000, 2, generator=g) * 3 + 1}
    b = {"w": torch.full((2, 2000, 2), 0.5), "loc": torch.randn(2, 2000, 2, generator=g)}
    table = inference.compare(fake_posterior(a), fake_posterior(b), labels=("a", "b"))
    row = table.loc["loc[0]"]
    assert row["smd"] == pytest.approx((row["mean_a"] - row["mean_b"]) / row["sd_b"])
    assert row["smd"] == pytest.approx(1.0, abs=0.1)        # 1 sd apart, MC error ~ 0.03
    assert row["sd_ratio"] == pytest.approx(3.0, rel=0.05)
    assert "means differ" in row["verdict"] and "too large" in row["verdict"]
    assert table.attrs["labels"] == ("a", "b")
