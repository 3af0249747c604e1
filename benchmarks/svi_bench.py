"""SVI benchmark: ``inference.fit_svi`` against NumPyro's SVI on the same GMM, guide, data and optimiser.

    python benchmarks/svi_bench.py            # the table in benchmarks/README.md ("SVI steps")
    python benchmarks/svi_bench.py --smoke    # tiny runs (CI)

The case is the GMM of ``nuts_bench.py`` (N = 1,000 points in D = 2, K = 3, float64): the zoo model's
marginal form (assignments summed out: ``MixtureSameFamily``) and its own mean-field guide
(Dirichlet weights, Normal locs, LogNormal scales), which is what ``fit_svi`` fits for this model. The
NumPyro twin has the same priors (the zoo's empirical-Bayes hyperparameters, computed once), the same
guide family started from the same parameter values, and the same optimiser: Adam with the learning
rate decaying exponentially from ``lr`` to ``lr * 0.01`` over the run, no gradient clipping
(``fit_svi(clip_norm=None)``). One particle per step, ``Trace_ELBO`` on both sides.

Engines, taking turns repeat after repeat (seeds 0, 1, ...):

- ``zoo``: ``fit_svi`` with its default loss route (the ELBO and its gradients traced once and compiled
  by Inductor, checked against Pyro's ``Trace_ELBO`` first);
- ``pyro``: ``fit_svi(loss_route="pyro")``: Pyro's ``Trace_ELBO`` at every step;
- ``numpyro``: ``SVI(...).run`` (one jitted step per iteration; ``progress_bar=False`` runs the loop
  inside XLA) in a fresh spawned process, so every repeat compiles; its time without compile is the
  wall time less the compile time JAX reports.

Per engine: wall seconds (set-up, compile and the steps; the zoo's also draws ``num_samples`` = 1 from the
guide), steps per second, and the mean loss over the last 10% of the steps (the same objective: the means
should agree within the noise of a one-particle ELBO). Writes ``benchmarks/svi_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from nuts_bench import THREADS, gmm_data, machine  # noqa: E402

ENGINES = ("zoo", "pyro", "numpyro")
LR, LR_DECAY = 0.01, 0.01


def zoo_inputs(seed: int) -> dict:
    """The data, the zoo's prior hyperparameters and the zoo guide's starting parameters (numpy)."""
    import pyro
    import zoo

    model = zoo.get("gmm", n_components=3)
    data = model.validate(torch.from_numpy(gmm_data()))
    center, spread = model.hyperparameters(data)
    pyro.set_rng_seed(seed)             # as fit_svi does before the guide builds its parameters
    with pyro.get_param_store().scope():
        model.guide(data)
        guide = {k: getattr(model, k).detach().double().numpy()
                 for k in ("q_weights_concentration", "q_locs_loc", "q_locs_scale", "q_scales_loc", "q_scales_scale")}
    return {"x": data.numpy(), "center": center.numpy(), "spread": spread.numpy(), "guide": guide}


def run_zoo(route: str, steps: int, seed: int) -> dict:
    import inference
    import zoo

    data = torch.from_numpy(gmm_data())
    start = time.perf_counter()
    post = inference.fit_svi(zoo.get("gmm", n_components=3), data, num_steps=steps, lr=LR, lr_decay=LR_DECAY,
                             clip_norm=None, num_samples=1, seed=seed, loss_route=route, converge=False, progress=False)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "steps_per_s": steps / wall, "final_loss": _tail_mean(post.losses),
            "route": post.settings["loss_route"]}


def _tail_mean(losses) -> float:
    losses = np.asarray(losses, dtype=float)
    return float(losses[-max(1, len(losses) // 10):].mean())


def run_numpyro(steps: int, seed: int) -> dict:
    """NumPyro in a fresh spawned process (a cold JAX every repeat)."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_numpyro_worker, args=(steps, seed, sender))
    proc.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "error", f"numpyro worker died (exit code {proc.exitcode})"
    proc.join()
    if status == "error":
        raise RuntimeError(payload)
    return payload


def _numpyro_worker(steps, seed, sender):
    import traceback

    try:
        sender.send(("ok", _numpyro(steps, seed)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        sender.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        sender.close()


def _numpyro(steps: int, seed: int) -> dict:
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=true "
                               f"intra_op_parallelism_threads={THREADS}")
    import jax
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    numpyro.enable_x64()
    inputs = zoo_inputs(seed)
    model, guide = numpyro_pair(inputs)
    x = jax.numpy.asarray(inputs["x"])
    schedule = lambda i: LR * LR_DECAY ** (i / steps)   # noqa: E731 - fit_svi's ExponentialLR, per step
    compile_s = [0.0]

    def on_event(event, seconds, **_):   # JAX's own account of its compile time (lowering + XLA)
        if event in ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration"):
            compile_s[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(on_event)
    start = time.perf_counter()
    result = SVI(model, guide, Adam(schedule), Trace_ELBO()).run(jax.random.PRNGKey(seed), steps, x,
                                                                   progress_bar=False)
    jax.block_until_ready(result.losses)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "steps_per_s": steps / wall, "warm_steps_per_s": steps / (wall - compile_s[0]),
            "compile_s": compile_s[0], "final_loss": _tail_mean(np.asarray(result.losses))}


def numpyro_pair(inputs: dict):
    """The NumPyro twin of the zoo GMM's marginal model and its own guide (``inputs``: :func:`zoo_inputs`)."""
    import math

    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    center, spread = (jnp.asarray(inputs[k]) for k in ("center", "spread"))
    init = {k: jnp.asarray(v) for k, v in inputs["guide"].items()}
    K = init["q_locs_loc"].shape[0]

    def model(x):
        weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(K)))
        with numpyro.plate("components", K):
            locs = numpyro.sample("locs", dist.Normal(center, 2 * spread).to_event(1))
            scales = numpyro.sample("scales", dist.LogNormal(jnp.log(spread) - math.log(2.0), 1.0).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            mixture = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scales).to_event(1))
            numpyro.sample("obs", mixture, obs=x)

    def guide(x):
        a = numpyro.param("q_weights_concentration", init["q_weights_concentration"], constraint=constraints.positive)
        m = numpyro.param("q_locs_loc", init["q_locs_loc"])
        s = numpyro.param("q_locs_scale", init["q_locs_scale"], constraint=constraints.positive)
        u = numpyro.param("q_scales_loc", init["q_scales_loc"])
        v = numpyro.param("q_scales_scale", init["q_scales_scale"], constraint=constraints.positive)
        numpyro.sample("weights", dist.Dirichlet(a))
        with numpyro.plate("components", K):
            numpyro.sample("locs", dist.Normal(m, s).to_event(1))
            numpyro.sample("scales", dist.LogNormal(u, v).to_event(1))

    return model, guide


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny runs (CI)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--pyro-steps", type=int, default=1000, help="Pyro's ELBO is slow: its own step count")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("svi_bench.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.steps, args.pyro_steps = 1, 1000, 50
    from importlib.util import find_spec

    if find_spec("numpyro") is None and "numpyro" in args.engines:
        print("svi_bench: needs numpyro and jax (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    torch.set_default_dtype(torch.float64)
    host = machine()
    print(host, flush=True)
    runs: dict[str, list[dict]] = {e: [] for e in args.engines}
    for repeat in range(args.repeats):
        for engine in args.engines:
            if engine == "numpyro":
                row = run_numpyro(args.steps, repeat)
            else:
                row = run_zoo("auto" if engine == "zoo" else "pyro",
                              args.steps if engine == "zoo" else args.pyro_steps, repeat)
            runs[engine].append(row)
            print(f"repeat {repeat} {engine:8s} " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                          for k, v in row.items()), flush=True)
    medians = {e: {k: statistics.median(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], float)}
               for e, rows in runs.items()}
    lines = ["| engine | steps | wall s | steps/s | final loss (mean of last 10%) |", "|---|---|---|---|---|"]
    for e, m in medians.items():
        steps = args.pyro_steps if e == "pyro" else args.steps
        label = {"zoo": f"zoo ({runs['zoo'][0]['route']})" if "zoo" in runs else "zoo",
                 "pyro": "Pyro's Trace_ELBO", "numpyro": "NumPyro (incl. compile)"}[e]
        lines.append(f"| {label}, n={len(runs[e])} | {steps} | {m['wall_s']:.1f} | {m['steps_per_s']:.0f} | "
                     f"{m['final_loss']:.2f} |")
        if e == "numpyro":
            lines.append(f"| NumPyro (no compile: {m['compile_s']:.1f} s less) | {steps} | | "
                         f"{m['warm_steps_per_s']:.0f} | |")
    ratios = {}
    if "zoo" in medians:
        for e, key in (("numpyro", "steps_per_s"), ("numpyro", "warm_steps_per_s"), ("pyro", "steps_per_s")):
            if e in medians:
                ratios[f"zoo/{e} {key}"] = medians["zoo"]["steps_per_s"] / medians[e][key]
    lines += ["", "; ".join(f"{k} = **{v:.2f}x**" for k, v in ratios.items())]
    print("\n".join(lines))
    args.out.write_text(json.dumps({"command": "python benchmarks/svi_bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
                                    "machine": host, "steps": args.steps, "pyro_steps": args.pyro_steps,
                                    "runs": runs, "medians": medians, "ratios": ratios}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
