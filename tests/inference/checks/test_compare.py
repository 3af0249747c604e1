"""inference.checks.compare: standardized mean differences and sd ratios against numbers known by construction."""

import pytest
import torch

import inference
from inference.checks.compare import summary_line


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


def test_a_third_posterior_gets_columns_of_its_own_against_the_reference(fake_posterior):
    g = torch.Generator().manual_seed(2)
    a = {"w": torch.full((1, 4000, 2), 0.5), "loc": torch.randn(1, 4000, 2, generator=g) * 3 + 1}
    b = {"w": torch.full((2, 2000, 2), 0.5), "loc": torch.randn(2, 2000, 2, generator=g)}
    c = {"w": torch.full((2, 2000, 2), 0.5), "loc": torch.randn(2, 2000, 2, generator=g) * 0.5 - 2}
    table = inference.compare(fake_posterior(a), fake_posterior(b), fake_posterior(c), labels=("a", "b", "c"))
    two = inference.compare(fake_posterior(a), fake_posterior(b), labels=("a", "b"))
    assert table[two.columns].equals(two)                    # the pair's columns unchanged
    row = table.loc["loc[1]"]
    assert row["smd_c"] == pytest.approx((row["mean_c"] - row["mean_b"]) / row["sd_b"])
    assert row["smd_c"] == pytest.approx(-2.0, abs=0.1)      # 2 sd below, MC error ~ 0.03
    assert row["sd_ratio_c"] == pytest.approx(0.5, rel=0.05)
    assert "means differ" in row["verdict_c"] and "too small" in row["verdict_c"]
    assert table.attrs["labels"] == ("a", "b") and table.attrs["more"] == ("c",)
    assert "; c: 2/4 agree with b" in summary_line(table)      # w agrees (constant), loc does not
    with pytest.raises(ValueError, match="labels: expected 3 different labels"):
        inference.compare(fake_posterior(a), fake_posterior(b), fake_posterior(c), labels=("a", "b"))
