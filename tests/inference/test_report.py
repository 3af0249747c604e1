"""inference.report.heldout_nll: the held-out NLL paragraph of a minibatch fit."""

import math

import numpy as np
import pyro
import pytest

from inference.report import heldout_nll

pytestmark = pytest.mark.usefixtures("one_thread")


def test_heldout_nll_is_the_mean_importance_sampled_log_likelihood(digits_fit):
    """The report's held-out NLL and its se are minus the mean and the se of the model's own per-image
    estimate, recomputed here with numpy from an independent call (same seed, same draws)."""
    ds, fit = digits_fit
    x = fit.prepare(ds.splits["test"])
    pyro.set_rng_seed(3)
    post = fit.posterior(ds.splits["test"])
    held = heldout_nll(fit, post, "test")
    pyro.set_rng_seed(3)
    ll = fit.model.log_likelihood(x).numpy()
    np.testing.assert_allclose([held.nll, held.se], [-ll.mean(), ll.std(ddof=1) / math.sqrt(len(ll))], rtol=1e-5)
    assert held.n == 270 and "k = 5000" in held.text and "40 epochs" in held.text

