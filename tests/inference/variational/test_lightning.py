"""inference.variational.lightning: data-parallel training on two CPU processes."""

import pytest
from pyro.infer import Trace_ELBO

import zoo
from inference.variational import train as training
from inference.variational.objectives import FixedSubsample
from zoo import datasets

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lightning_ddp_on_two_cpu_processes_trains():
    from inference.variational.lightning import train_lightning

    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=2, hidden=(32,))
    x = m.validate(ds.data[:600])
    valid = ds.splits["valid"][:200]
    fit = train_lightning(m, x, valid=valid, devices=2, epochs=4, batch_size=50, lr=3e-3, seed=0, progress=False)
    v = fit.history["valid"]
    assert len(v) == 4 and v[-1] > v[0]
    # the weights came back from the workers: the parent's ELBO on the validation set is the last one
    # Lightning reported (two independent single-draw estimates; per-image sd < 3 nats, so the
    # difference of the two means over 200 images has sd < 3 * sqrt(2 / 200) = 0.3)
    vx = fit.prepare(valid)
    mine = training.evaluate(lambda xx, idx: Trace_ELBO().differentiable_loss(
        FixedSubsample("data", idx)(fit.model.model), FixedSubsample("data", idx)(fit.model.guide), xx), vx, 50)
    assert abs(mine - v[-1]) < 0.9
    assert mine > training.evaluate(lambda xx, idx: Trace_ELBO().differentiable_loss(
        FixedSubsample("data", idx)(m.model), FixedSubsample("data", idx)(m.guide), xx), vx, 50) + 3

