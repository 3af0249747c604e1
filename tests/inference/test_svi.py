"""inference.svi: plain Pyro callables through every guide, ELBO choice, seeds, bad inputs, failures."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
from inference.target import inspect_model


def test_elbo_auto_picks_enumeration(y, plain_mixture, plain_regression):
    info = inspect_model(plain_mixture, y)
    assert isinstance(inference.svi.make_elbo("auto", info, 1, False), pyro.infer.TraceEnum_ELBO)
    x = torch.linspace(0, 1, 20)
    info2 = inspect_model(plain_regression, (x, 2 * x))
    assert type(inference.svi.make_elbo("auto", info2, 1, False)) is pyro.infer.Trace_ELBO
    with pytest.raises(ValueError, match="cannot sum out"):
        inference.svi.make_elbo("trace", info, 1, False)


@pytest.mark.parametrize("guide", ["delta", "normal", "mvn", "iaf"])
def test_plain_model_runs_through_every_guide(y, plain_mixture, guide):
    post = inference.fit_svi(plain_mixture, y, guide=guide, num_steps=300, lr=0.05, num_samples=200,
                             init={"w": torch.tensor([0.5, 0.5]), "loc": torch.tensor([-1.0, 1.0])},
                             progress=False)
    assert post.method == ("map" if guide == "delta" else "svi")
    assert post.samples["loc"].shape == ((1, 1, 2) if guide == "delta" else (1, 200, 2))
    locs = post.samples["loc"].mean((0, 1)).sort().values
    assert torch.allclose(locs, torch.tensor([-3.0, 3.0]), atol=0.6)
    assert "z" not in post.samples  # enumerated, hidden from the autoguide


def test_unknown_guide_and_bad_sizes(y, plain_mixture):
    with pytest.raises(ValueError, match="guide"):
        inference.fit_svi(plain_mixture, y, guide="laplace", num_steps=1, progress=False)
    with pytest.raises(ValueError, match="num_steps"):
        inference.fit_svi(plain_mixture, y, num_steps=0, progress=False)
    with pytest.raises(TypeError, match="model"):
        inference.fit_svi(42, y, progress=False)


def test_svi_is_reproducible():
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(80, seed=0)
    a = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=5, progress=False)
    b = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=5, progress=False)
    c = inference.fit_svi(m, x, num_steps=50, num_samples=20, seed=6, progress=False)
    assert a.losses == b.losses
    assert all(torch.equal(a.samples[k], b.samples[k]) for k in a.samples)
    assert a.losses != c.losses


def test_fit_does_not_mutate_the_model():
    m = zoo.get("gmm", n_components=2)
    x, _ = m.simulate(50, seed=0)
    post = inference.fit_svi(m, x, num_steps=20, num_samples=5, progress=False)
    assert len(list(m.parameters())) == 0          # the user's object is untouched
    assert len(list(post.model.parameters())) > 0  # the fitted copy holds the guide


def test_nan_loss_stops_with_step_and_restores_last_finite_parameters():
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 0.1), obs=data)

    def guide(data):
        loc = pyro.param("nan_test_loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, (2.0 - loc).sqrt()))   # NaN once loc passes 2

    pyro.clear_param_store()
    with pytest.raises(inference.SVIDivergedError, match=r"non-finite at step \d+") as err:
        inference.fit_svi(model, torch.tensor(10.0), guide=guide, num_steps=500, lr=0.1, lr_decay=1.0,
                          clip_norm=None, progress=False)
    assert err.value.step > 0 and np.isfinite(err.value.losses[-2]) and not np.isfinite(err.value.losses[-1])
    assert float(pyro.param("nan_test_loc").detach()) < 2.0
    pyro.clear_param_store()
