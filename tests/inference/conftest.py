"""Fixtures shared by the tests of inference.train, inference.report and inference.amortization."""

import pytest
import torch

import zoo
from inference.train import train
from zoo import datasets


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks: intra-op threads only add contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_fit():
    """A small VAE trained 40 epochs on the bundled digits (one thread), shared by every test that reads a fit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ds = datasets.load("digits")
        m = zoo.get("vae", latent_dim=2, hidden=(64,))
        x = m.validate(ds.data)
        fit = train(m, x, valid=ds.splits["valid"], epochs=40, batch_size=50, lr=3e-3, progress=False)
    finally:
        torch.set_num_threads(before)
    return ds, fit
