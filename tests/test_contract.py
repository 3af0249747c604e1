"""The contract every registered model keeps (``zoo.base.ZooModel``), checked on tiny simulated data.

Parametrized over ``zoo.list_models()`` at collection time: a model added later (``zoo new``, a module in
``zoo/``, a plugin) is covered without editing this file. Each model is built with its defaults and shown
its bundled default dataset first (a model may size itself from data, as the VAE does), then:

- its module docstring tells the generative story and names every documented site with a shape;
- ``simulate`` is reproducible by seed, ``validate`` accepts its output and rejects ``None``;
- ``log_likelihood`` has shape ``(*batch, N)`` and a batch of draws gives what the draws give one by one;
- ``align`` keeps the leading ``(chain, draw)`` dims and is idempotent (aligning to its own output changes
  nothing);
- SVI (50 steps) and NUTS (1 chain, 50 + 50, tree depth <= 6) fit it; ``idata`` carries the global sites with their
  documented dims and the pointwise log-likelihood, and survives a netCDF round trip.

Settings are tiny on purpose: this is a contract, not a statistical test (each model's own test file checks
its numbers against independent references).
"""

from __future__ import annotations

import inspect
import re

import arviz as az
import numpy as np
import pyro
import pytest
import torch

import inference
import inference.target
import zoo
from zoo import datasets

MODELS = zoo.list_models()
N = 20   # simulated data points (rows, time steps, images)
SVI = dict(num_steps=50, num_samples=20, seed=0, progress=False)
NUTS = dict(num_chains=1, num_samples=50, warmup_steps=50, max_tree_depth=6, seed=0, progress=False)
#: (model, what) -> why it fails today; strict: the test says so when the cause is fixed (then delete it)
KNOWN_FAILURES: dict[tuple[str, str], str] = {}   # (model, method) -> why, for a strict xfail


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    """``(name, model, data, truth)`` for one registered model."""
    name = request.param
    model = zoo.get(name)
    model.validate(datasets.load(model.default_dataset).data)
    raw, truth = model.simulate(N, seed=0)
    return name, model, model.validate(raw), truth


@pytest.fixture(scope="module")
def fits(case):
    """SVI and NUTS posteriors of one model on its simulated data (None where a known failure)."""
    name, model, data, _ = case
    out = {}
    for what, fit in (("svi", lambda: inference.fit_svi(model, data, **SVI)),
                      ("nuts", lambda: inference.run_nuts(model, data, **NUTS))):
        try:
            out[what] = fit()
        except Exception as e:
            if (name, what) not in KNOWN_FAILURES:
                raise
            out[what] = e
    return out


def observed_sites(model, data):
    """The observed sites of the model's marginal form on ``data``, found by tracing (what ``idata`` names)."""
    return inference.target.as_target(model).info(data, marginal=True).observed


def global_draws(model, post):
    return {k: post.samples[k] for k in model.global_sites}


def test_docstring_tells_the_story_with_shapes(case):
    name, model, data, _ = case
    observed = observed_sites(model, data)
    assert observed, f"{name}: the model observes nothing on its simulated data"
    cls = type(model)
    module_doc = inspect.getmodule(cls).__doc__ or ""
    assert (cls.__doc__ or "").strip(), f"{name}: the class needs a docstring (its first line is `zoo list`'s)"
    assert re.search(r"generative story", module_doc, re.I), f"{name}: the module docstring tells the generative story"
    for site in (*model.global_sites, *observed, *model.dims):
        lines = [line for line in module_doc.splitlines() if re.search(rf"\b{re.escape(site)}\b", line)]
        assert lines, f"{name}: site or quantity {site!r} is not in the module docstring"
    for site in (*model.global_sites, *observed):
        assert any(re.search(rf"\b{re.escape(site)}\b.*\([\w ,*/+-]*\)", line) for line in module_doc.splitlines()), \
            f"{name}: the module docstring gives no shape such as (K, D) on a line naming {site!r}"


def test_simulate_and_validate(case):
    name, model, data, truth = case
    again, truth_again = model.simulate(N, seed=0)
    other, _ = model.simulate(N, seed=1)
    flat = lambda d: torch.cat([torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in d])  # noqa: E731
    as_list = lambda x: list(x) if isinstance(x, tuple) else [x]  # noqa: E731  (Sequences are tuples)
    assert torch.equal(flat(as_list(model.validate(again))), flat(as_list(data)))
    assert all(torch.equal(truth[k], truth_again[k]) for k in truth)
    assert not torch.equal(flat(as_list(model.validate(other))), flat(as_list(data)))
    assert set(model.global_sites) <= set(truth)
    with pytest.raises((ValueError, TypeError), match="data"):
        model.validate(None)


def test_log_likelihood_shape_and_batch(case, fits):
    name, model, data, truth = case
    single = {k: truth[k] for k in model.global_sites}
    pyro.set_rng_seed(0)
    ll = model.log_likelihood(data, single)
    assert ll.dim() == 1 and torch.isfinite(ll).all()
    if not model.global_sites:
        return   # nothing to batch over (an amortized model: the log-likelihood depends on the networks only)
    post = fits["svi"]
    draws = {k: v[0, :3] for k, v in global_draws(model, post).items()}   # (3, ...): three guide draws
    batched = model.log_likelihood(data, draws)
    assert batched.shape == (3, ll.shape[-1])
    one_by_one = torch.stack([model.log_likelihood(data, {k: v[i] for k, v in draws.items()}) for i in range(3)])
    torch.testing.assert_close(batched, one_by_one)
    two_dims = model.log_likelihood(data, {k: v.reshape(1, 3, *v.shape[1:]) for k, v in draws.items()})
    torch.testing.assert_close(two_dims, batched.unsqueeze(0))


def test_align_keeps_shapes_and_is_idempotent(case, fits):
    name, model, _, _ = case
    if not model.global_sites:
        pytest.skip(f"{name} has no global sites to align")
    draws = global_draws(model, fits["svi"])               # (1, S, ...)
    aligned = model.align(draws)
    assert aligned, f"{name}: align returned nothing"
    frame = set(getattr(model, "alignment_frame", ()))       # a frame of reference, not per-draw quantities
    for key, value in aligned.items():
        if key in frame:
            continue
        assert value.shape[:2] == (1, SVI["num_samples"]), f"{name}: align output {key!r} lost the (chain, draw) dims"
        if key in draws:
            assert value.shape == draws[key].shape, f"{name}: align changed the shape of {key!r}"
    again = model.align(draws, reference=aligned)
    for key in aligned:
        torch.testing.assert_close(again[key], aligned[key], msg=lambda m: f"{name}: align({key!r}) to itself: {m}")
    if set(model.global_sites) <= set(aligned):              # relabeling models: aligned draws are draws
        twice = model.align({k: aligned[k] for k in model.global_sites})
        for key in model.global_sites:
            torch.testing.assert_close(twice[key], aligned[key])


@pytest.mark.parametrize("what", ["svi", "nuts"])
def test_fit_gives_documented_inference_data(case, fits, what, tmp_path, request):
    name, model, data, _ = case
    if (name, what) in KNOWN_FAILURES:
        request.applymarker(pytest.mark.xfail(reason=KNOWN_FAILURES[(name, what)], strict=True))
    post = fits[what]
    if isinstance(post, Exception):
        raise post
    n_points = model.log_likelihood(data, {k: v[0, 0] for k, v in global_draws(model, post).items()}).shape[-1]
    idata = post.idata
    for site in model.global_sites:
        var = idata.posterior[site]
        assert var.shape[:2] == (post.num_chains, post.num_draws)
        assert tuple(var.shape[2:]) == tuple(post.samples[site].shape[2:])
        if site in model.dims:
            assert list(var.dims[2:]) == list(model.dims[site]), f"{name}: dims of {site!r}"
    observed = observed_sites(model, data)
    assert observed, f"{name}: the model observes nothing on its simulated data"
    for site in observed:
        ll = idata.log_likelihood[site]
        assert ll.shape == (post.num_chains, post.num_draws, n_points)
        assert np.isfinite(ll.values).all()
        if site in model.dims:
            assert ll.dims[2] == model.dims[site][0]

    path = tmp_path / f"{name}_{what}.nc"
    post.to_netcdf(path)
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        for var in idata[group].data_vars:
            np.testing.assert_array_equal(back[group][var].values, idata[group][var].values)


def test_check_passes(case):
    name, model, data, _ = case
    report = inference.check(model, data=data, seed=0)
    assert report.ok, str(report)
