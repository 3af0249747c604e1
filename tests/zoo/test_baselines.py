"""Classical baselines (zoo/baselines.py). Baum-Welch is tested through ``HiddenMarkovModel.em`` against
hmmlearn in tests/zoo/test_hmm.py."""

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from zoo.baselines import kmeans, kmeans_gaussians

# --- k-means ------------------------------------------------------------------------------------


def blobs(seed=0):
    """Three blobs 10 sd apart in features of very different scales (so standardization matters)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(90) % 3
    centers = torch.tensor([[0.0, 0.0], [10.0, 1000.0], [20.0, 0.0]], dtype=torch.float64)
    return centers[labels] + torch.randn(90, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 100.0]), labels


def test_kmeans_finds_separated_blobs_and_is_seeded():
    x, truth = blobs()
    centers, labels = kmeans(x, 3, seed=0)
    assert adjusted_rand_score(truth.numpy(), labels.numpy()) == 1.0
    for j in range(3):   # Lloyd's fixed point: every center the mean of its points
        np.testing.assert_allclose(centers[j].numpy(), x[labels == j].mean(0).numpy(), rtol=1e-10)
    again = kmeans(x, 3, seed=0)
    assert torch.equal(again[0], centers) and torch.equal(again[1], labels)


def test_kmeans_gaussians_spreads_are_the_clusters_sample_sd_with_a_floor():
    x, _ = blobs(1)
    spread = x.std(0)
    centers, scales, labels = kmeans_gaussians(x, 3, spread, seed=2)
    for j in range(3):
        sd = np.maximum(x[labels == j].numpy().std(0, ddof=1), 0.05 * spread.numpy())
        np.testing.assert_allclose(scales[j].numpy(), sd, rtol=1e-12)
    one = torch.tensor([[5.0, 5.0]], dtype=torch.float64)          # a single point: its cluster gets spread
    _, scales, _ = kmeans_gaussians(torch.cat([x[:10], one + 1e4]), 2, spread, seed=0)
    assert any(torch.equal(s, spread) for s in scales)
