"""benchmarks/nuts_bench.py: its NumPyro twins are the zoo's models, its metrics are right, and its
smoke mode runs (skipped without the optional ``[bench]`` extra: numpyro, jax, funsor, nutpie)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "nuts_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("nuts_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_max_abs_smd_and_alignment_against_a_direct_computation():
    nb = _bench()
    g = torch.Generator().manual_seed(0)
    draws = {"weights": torch.distributions.Dirichlet(torch.tensor([5.0, 3.0, 2.0])).sample((2, 50)),
             "locs": torch.randn(2, 50, 3, 2, generator=g) * 0.1 + torch.tensor([[-3.0, 0.0], [0.0, 3.0], [3.0, -1.0]]),
             "scales": torch.rand(2, 50, 3, 2, generator=g) + 0.5}
    draws = {k: v.double() for k, v in draws.items()}
    reference = nb.quantities("gmm", draws)
    permuted = {k: v[:, :, [2, 0, 1]] for k, v in draws.items()}   # the same posterior, components relabeled
    assert nb.max_abs_smd(nb.quantities("gmm", permuted, reference=reference), reference) < 1e-12
    shifted = {**draws, "locs": draws["locs"] + 0.5}
    sd = reference["locs"].flatten(0, 1).std(0)
    expected = float((0.5 / sd).max())
    assert nb.max_abs_smd(nb.quantities("gmm", shifted, reference=reference), reference) == pytest.approx(expected)


@pytest.mark.parametrize("case", ["gmm", "schools", "hmm100"])
def test_numpyro_twin_has_the_zoo_log_joint(case):
    """At prior draws, NumPyro's log joint of its twin (enumerated sites summed out) equals the Pyro
    log joint of the zoo's model: the same priors, likelihood and data."""
    pytest.importorskip("numpyro")
    pytest.importorskip("funsor")
    import jax.numpy as jnp
    import numpyro
    import pyro.poutine as poutine
    from numpyro.contrib.funsor import enum, log_density as enum_log_density
    from pyro.infer import config_enumerate
    from pyro.infer.mcmc.util import TraceEinsumEvaluator

    from inference.target import as_target

    numpyro.enable_x64()
    nb = _bench()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, data = nb.zoo_case(case)
        target = as_target(model)
        data = target.validate(data)
        twin, args = nb.numpyro_model(case, nb.peer_inputs(case, seed=0))
        marginal = poutine.enum(config_enumerate(target.marginal_fn), first_available_dim=-2)
        for seed in range(3):
            prior = poutine.trace(poutine.seed(target.marginal_fn, rng_seed=seed)).get_trace(data)
            latent = {k: s["value"] for k, s in prior.nodes.items() if s["type"] == "sample"
                      and not s["is_observed"] and not s["fn"].has_enumerate_support and "_Subsample" not in type(s["fn"]).__name__}
            trace = poutine.trace(poutine.condition(marginal, data=latent)).get_trace(data)
            expected = float(TraceEinsumEvaluator(trace, True, 1).log_prob(trace))
            params = {k: jnp.asarray(v.reshape(()) if case == "schools" and k in ("mu", "tau") else v)
                      for k, v in latent.items()}
            got = float(enum_log_density(enum(twin, first_available_dim=-2), args, {}, params)[0])
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.slow
def test_smoke_mode(tmp_path):
    """The smoke mode on the HMM (T = 100, every engine) and the 20-D Gaussian (zoo and nutpie):
    about half a minute on 2 quiet cores, most of it NumPyro's compile."""
    for package in ("numpyro", "jax", "funsor", "nutpie"):
        pytest.importorskip(package)
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--cases", "hmm100", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"hmm100", "gauss20"}
    for case, engines in {"hmm100": ("zoo", "pyro", "numpyro", "numpyro warm", "nutpie"),
                          "gauss20": ("zoo", "nutpie")}.items():
        for engine in engines:
            m = results[case][engine]["median"]
            assert "error" not in m, (case, engine, m)
            assert m["min_ess_bulk"] > 0 and m["wall_s"] > 0 and 0 < m["mean_accept"] <= 1
    # the same posterior: 4 x 40 draws give a bulk ESS of at least ~40 per quantity, so a mean
    # differs by sqrt(1/40 + 1/40) = 0.22 sd or so by chance, the largest of 10 quantities rarely past 3x
    assert results["hmm100"]["zoo"]["median"]["max_abs_smd"] < 0.7
    assert "| hmm100 | zoo" in proc.stdout and "zoo/numpyro ess_per_s" in proc.stdout


def test_svi_bench_numpyro_twin_has_the_zoo_model_and_guide_densities():
    """benchmarks/svi_bench.py: at guide draws, NumPyro's log densities of its twin model and guide equal
    Pyro's of the zoo GMM's marginal model and own guide (same priors, data, guide family and start)."""
    pytest.importorskip("numpyro")
    import jax.numpy as jnp
    import pyro
    import pyro.poutine as poutine
    from numpyro.infer.util import log_density

    import numpyro

    import zoo

    numpyro.enable_x64()
    spec = importlib.util.spec_from_file_location("svi_bench", REPO / "benchmarks" / "svi_bench.py")
    sb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sb)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        inputs = sb.zoo_inputs(seed=0)
        twin_model, twin_guide = sb.numpyro_pair(inputs)
        model = zoo.get("gmm", n_components=3)
        data = torch.from_numpy(inputs["x"])
        with pyro.get_param_store().scope():
            for seed in range(3):
                guide = poutine.trace(poutine.seed(model.guide, rng_seed=seed)).get_trace(data)
                draw = {k: guide.nodes[k]["value"] for k in model.global_sites}
                joint = poutine.trace(poutine.condition(model.marginal_model, data=draw)).get_trace(data)
                values = {k: jnp.asarray(v.detach().numpy()) for k, v in draw.items()}
                x = jnp.asarray(inputs["x"])
                assert float(log_density(twin_model, (x,), {}, values)[0]) == pytest.approx(
                    float(joint.log_prob_sum()), rel=1e-9)
                assert float(log_density(twin_guide, (x,), {}, values)[0]) == pytest.approx(
                    float(guide.log_prob_sum()), rel=1e-9)
    finally:
        torch.set_default_dtype(previous)
