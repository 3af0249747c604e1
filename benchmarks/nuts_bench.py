"""NUTS benchmarks: the zoo's engine against NumPyro, Pyro's NUTS kernel and nutpie, side by side.

    python benchmarks/nuts_bench.py              # the table in benchmarks/README.md ("NUTS engine")
    python benchmarks/nuts_bench.py --smoke      # every engine on tiny runs (CI; mostly NumPyro's compile)

One command, one run: every case is run by every engine in turn, repeat after repeat (seeds 0, 1, ...),
so a busy machine slows all engines alike; the table reports medians over the repeats and ratios
within the run. Cases, identical in every engine (model, priors, data, starting values where the zoo
model has data-driven ones, warmup, draws, 4 chains):

- ``gmm``: ``zoo.get("gmm", n_components=3)`` on N = 1,000 simulated points in D = 2, assignments
  enumerated (NumPyro: ``config_enumerate``, summed out by funsor), the zoo's empirical-Bayes priors
  (centre and spread of the data) computed once and handed to NumPyro;
- ``schools``: eight schools, non-centered, written here once as a plain Pyro model and once in NumPyro;
- ``hmm100`` / ``hmm1000``: ``zoo.get("hmm", n_states=2)`` (its closed form) on T = 100 / 1,000
  simulated steps; NumPyro sums the states out with a ``lax.scan`` forward algorithm;
- ``gauss20`` (nutpie only): a 20-D correlated Gaussian as a numpy density.

Engines: ``zoo`` (``inference.run_nuts`` with its default potential: the closed form, else the traced
and compiled Pyro log joint; chains in forked processes), ``pyro`` (``run_nuts(engine="pyro",
jit=True)``: Pyro's own kernel), ``numpyro`` (``chain_method="vectorized"``, float64, XLA on the
same 2 cores; each repeat in a fresh process, so every run compiles; its time without compile is the
wall time less the compile time that JAX reports (``jax.monitoring``: lowering to MLIR and XLA's
compile; a second ``mcmc.run`` is no warm run: NumPyro 0.22 compiles its sampling loop again)) and
``nutpie`` (``from_pyfunc`` on the same numpy density that ``inference.sampling.nuts.sample`` gets; 2 threads).

Per case and engine: wall time (warmup, compile and chain start-up included), the smallest bulk ESS
over the identifiable quantities (ArviZ; mixtures and HMM states aligned with the zoo model's
``align``), ESS/s, ESS per 1000 gradient evaluations of the sampling phase (leapfrog steps), mean
acceptance, divergences, and the largest |standardized mean difference| of any quantity from
NumPyro's posterior ((mean - mean_numpyro) / sd_numpyro). Writes ``benchmarks/nuts_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CASES = ("gmm", "schools", "hmm100", "hmm1000")
ENGINES = ("zoo", "pyro", "numpyro", "nutpie")
NUTPIE_CASES = ("hmm100", "hmm1000", "gauss20")   # closed-form numpy densities only
CHAINS = 4
THREADS = 2   # cores for every engine: 2 zoo worker processes, XLA's intra-op pool, nutpie's threads
SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


# --- data, identical for every engine (float64) ----------------------------------------------------
def gmm_data(n: int = 1000, seed: int = 0) -> np.ndarray:
    """N points from 3 well-separated diagonal Gaussians in 2-D (weights 0.5, 0.3, 0.2)."""
    g = np.random.default_rng(seed)
    locs = np.array([[-3.0, 0.0], [0.0, 3.0], [3.0, -1.0]])
    scales = np.array([[0.8, 0.6], [0.5, 1.0], [1.0, 0.7]])
    z = g.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return locs[z] + scales[z] * g.standard_normal((n, 2))


def hmm_data(T: int, seed: int = 0) -> np.ndarray:
    """(T, 1): 2 states, transition [[0.9, 0.1], [0.2, 0.8]], emissions N(-1, 0.6), N(1.5, 1.0)."""
    g = np.random.default_rng(seed)
    transition = np.array([[0.9, 0.1], [0.2, 0.8]])
    z = np.empty(T, dtype=int)
    z[0] = g.integers(2)
    for t in range(1, T):
        z[t] = g.choice(2, p=transition[z[t - 1]])
    return (np.array([-1.0, 1.5])[z] + np.array([0.6, 1.0])[z] * g.standard_normal(T))[:, None]


def gauss20() -> tuple[np.ndarray, np.ndarray]:
    """Covariance of the 20-D Gaussian: AR(1) correlation 0.9, scales from 0.1 to 10; and its precision."""
    d = 20
    s = np.geomspace(0.1, 10.0, d)
    cov = s[:, None] * s * 0.9 ** np.abs(np.subtract.outer(np.arange(d), np.arange(d)))
    return cov, np.linalg.inv(cov)


def gauss20_density():
    _, precision = gauss20()

    def log_density(x):
        g = -precision @ x
        return 0.5 * float(x @ g), g
    return log_density


def eight_schools(data):
    """Eight schools, non-centered (a plain Pyro model; ``data = {"y": (8,), "sigma": (8,)}``)."""
    import pyro
    import pyro.distributions as dist

    # mu and tau have shape (1,), as in the NumPyro twin (a scalar site gives the same density)
    one = torch.ones(1, dtype=torch.float64)
    mu = pyro.sample("mu", dist.Normal(0 * one, 5.0).to_event(1))
    tau = pyro.sample("tau", dist.HalfCauchy(5 * one).to_event(1))
    with pyro.plate("schools", len(data["y"])):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("y", dist.Normal(theta, data["sigma"]), obs=data["y"])


def zoo_case(case: str):
    """``(model, data)`` of a case as the zoo runs it."""
    import zoo

    if case == "gmm":
        return zoo.get("gmm", n_components=3), torch.from_numpy(gmm_data())
    if case == "schools":
        return eight_schools, {"y": torch.tensor(SCHOOLS_Y, dtype=torch.float64),
                               "sigma": torch.tensor(SCHOOLS_SIGMA, dtype=torch.float64)}
    return zoo.get("hmm", n_states=2), torch.from_numpy(hmm_data(int(case[3:])))


def peer_inputs(case: str, seed: int) -> dict:
    """What NumPyro needs besides the model: the data, the zoo's prior hyperparameters and starting
    values (its chain 0 start: NumPyro starts every chain there), as numpy."""
    from inference.target import as_target, chain_seed

    model, data = zoo_case(case)
    target = as_target(model)
    data = target.validate(data)
    if case == "schools":
        return {"y": np.array(SCHOOLS_Y), "sigma": np.array(SCHOOLS_SIGMA), "init": None}
    init = {k: v.double().numpy() for k, v in target.initial_values(data, seed=chain_seed(seed, 0)).items()}
    center, spread = model.hyperparameters(data)
    x = data if case == "gmm" else data.values[0]   # the HMM: its one sequence (T, 1)
    return {"x": x.double().numpy(), "center": center.double().numpy(), "spread": spread.double().numpy(),
            "init": init}


# --- metrics --------------------------------------------------------------------------------------
def quantities(case: str, samples: dict, reference: dict | None = None) -> dict[str, torch.Tensor]:
    """Identifiable quantities ``(chain, draw, ...)``: the zoo model's ``align`` (in ``reference``'s frame
    when given), the sampled sites of eight schools, the coordinates of the Gaussian."""
    if case in ("schools", "gauss20"):   # (chain, draw, n): scalar sites as vectors of one
        return {k: v.reshape(*v.shape[:2], -1) for k, v in samples.items() if k in ("mu", "tau", "theta_tilde", "x")}
    from inference.target import as_target

    model, _ = zoo_case(case)
    return as_target(model).align(samples, reference=reference)


def min_bulk_ess(q: dict[str, torch.Tensor]) -> float:
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = az.ess(az.convert_to_dataset({k: v.double().numpy() for k, v in q.items()}), method="bulk")
    return min(float(np.nanmin(v.values)) for v in ess.data_vars.values())


def max_abs_smd(q: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """max over scalar quantities of |mean - mean_ref| / sd_ref."""
    worst = 0.0
    for k, r in ref.items():
        a, r = q[k].double().flatten(0, 1), r.double().flatten(0, 1)
        worst = max(worst, float(((a.mean(0) - r.mean(0)).abs() / r.std(0)).max()))
    return worst


def metrics(q: dict, wall: float, n_steps: np.ndarray, accept: np.ndarray, diverging: np.ndarray) -> dict:
    ess = min_bulk_ess(q)
    return {"wall_s": wall, "min_ess_bulk": ess, "ess_per_s": ess / wall,
            "ess_per_1000_grads": 1000 * ess / float(np.sum(n_steps)),
            "mean_accept": float(np.mean(accept)), "divergences": int(np.sum(diverging)),
            "leapfrog_per_draw": float(np.mean(n_steps))}


# --- the zoo's engine and Pyro's kernel (this process) ---------------------------------------------
def run_zoo(case: str, engine: str, warmup: int, draws: int, seed: int) -> tuple[dict, dict]:
    import inference

    model, data = zoo_case(case)
    post = inference.run_nuts(model, data, num_samples=draws, warmup_steps=warmup, num_chains=CHAINS, seed=seed,
                              engine=engine, jit=engine == "pyro", progress=False)
    s = post.sample_stats
    out = metrics(quantities(case, post.samples), post.wall_time, s["n_steps"], s["acceptance_rate"],
                  s["diverging"])
    out.update(potential=post.settings["potential"], compile_s=post.settings["compile_seconds"])
    if engine == "pyro":
        out.update(warmup=warmup, draws=draws)
    return out, post.samples


def run_zoo_flat(case: str, warmup: int, draws: int, seed: int) -> tuple[dict, dict]:
    """``inference.sampling.nuts.sample`` on the 20-D Gaussian, chains one after another in this process."""
    from inference.sampling import nuts
    from inference.target import chain_seed

    density = gauss20_density()
    start = time.perf_counter()
    runs = [nuts.sample(density, np.random.default_rng([seed, c]).uniform(-2, 2, 20), num_samples=draws,
                        warmup_steps=warmup, seed=chain_seed(seed, c)) for c in range(CHAINS)]
    wall = time.perf_counter() - start
    samples = {"x": torch.from_numpy(np.stack([r.draws for r in runs]))}
    stats = {k: np.stack([r.stats[k] for r in runs]) for k in ("n_steps", "acceptance_rate", "diverging")}
    out = metrics(samples, wall, stats["n_steps"], stats["acceptance_rate"], stats["diverging"])
    return {**out, "potential": "numpy", "compile_s": 0.0, "chains_in": "sequence (1 core)"}, samples


# --- NumPyro and nutpie, each repeat in a fresh spawned process ------------------------------------
def run_peer(kind: str, case: str, warmup: int, draws: int, seed: int) -> dict:
    """Run ``kind`` ("numpyro" or "nutpie") in a fresh process (a cold JAX; no threads of theirs in the
    process that forks the zoo's chains). Returns timings, draws (numpy) and per-draw statistics."""
    ctx = mp.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_peer_worker, args=(kind, case, warmup, draws, seed, sender))
    proc.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        status, payload = "error", f"{kind} worker died (exit code {proc.exitcode})"
    proc.join()
    if status == "error":
        raise RuntimeError(f"{kind} on {case}: {payload}")
    return payload


def _peer_worker(kind, case, warmup, draws, seed, sender):
    import traceback

    torch.set_default_dtype(torch.float64)
    try:
        fn = _numpyro if kind == "numpyro" else _nutpie
        sender.send(("ok", fn(case, warmup, draws, seed)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        sender.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        sender.close()


def _numpyro(case: str, warmup: int, draws: int, seed: int) -> dict:
    os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=true "
                               f"intra_op_parallelism_threads={THREADS}")
    import jax
    import numpyro
    from numpyro.infer import MCMC, NUTS, init_to_uniform, init_to_value

    numpyro.enable_x64()
    inputs = peer_inputs(case, seed)
    model, args = numpyro_model(case, inputs)
    init = init_to_value(values=inputs["init"]) if inputs["init"] is not None else init_to_uniform()
    mcmc = MCMC(NUTS(model, init_strategy=init), num_warmup=warmup, num_samples=draws, num_chains=CHAINS,
                chain_method="vectorized", progress_bar=False)
    compile_s = [0.0]

    def on_event(event, seconds, **_):   # JAX's own account of its compile time (lowering + XLA)
        if event in ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration"):
            compile_s[0] += seconds

    jax.monitoring.register_event_duration_secs_listener(on_event)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("num_steps", "accept_prob", "diverging"))
    jax.block_until_ready(mcmc.get_samples())
    wall = time.perf_counter() - start
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return {"cold_s": wall, "warm_s": wall - compile_s[0], "samples": samples, "n_steps": extra["num_steps"],
            "accept": extra["accept_prob"], "diverging": extra["diverging"]}


def numpyro_model(case: str, inputs: dict):
    """The NumPyro twin of a case's model and its arguments (same priors, same data)."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from jax import lax
    from jax.scipy.special import logsumexp
    from numpyro.contrib.funsor import config_enumerate

    if case == "schools":
        def schools(y, sigma):
            mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
            with numpyro.plate("schools", y.shape[0]):
                theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
                numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)
        return schools, (jnp.asarray(inputs["y"]), jnp.asarray(inputs["sigma"]))

    x, center, spread = (jnp.asarray(inputs[k]) for k in ("x", "center", "spread"))

    def emission_priors(S):   # inside the plate of components / states: (S, D) each
        locs = numpyro.sample("locs", dist.Normal(center, 2 * spread).to_event(1))
        scales = numpyro.sample("scales", dist.LogNormal(jnp.log(spread) - math.log(2.0), 1.0).to_event(1))
        return locs, scales

    if case == "gmm":
        @config_enumerate
        def gmm(x):
            K = 3
            weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(K)))
            with numpyro.plate("components", K):
                locs, scales = emission_priors(K)
            with numpyro.plate("data", x.shape[0]):
                a = numpyro.sample("assignment", dist.Categorical(weights))
                numpyro.sample("obs", dist.Normal(locs[a], scales[a]).to_event(1), obs=x)
        return gmm, (x,)

    def hmm(x):
        S = 2
        initial = numpyro.sample("initial", dist.Dirichlet(jnp.ones(S)))
        with numpyro.plate("states", S):
            transition = numpyro.sample("transition", dist.Dirichlet(jnp.ones((S, S))))
            locs, scales = emission_priors(S)
        log_e = dist.Normal(locs, scales).log_prob(x[:, None, :]).sum(-1)                    # (T, S)
        log_trans = jnp.log(transition)

        def step(alpha, e):
            return logsumexp(alpha[:, None] + log_trans, 0) + e, None
        alpha, _ = lax.scan(step, jnp.log(initial) + log_e[0], log_e[1:])
        numpyro.factor("obs", logsumexp(alpha))
    return hmm, (x,)


def _nutpie(case: str, warmup: int, draws: int, seed: int) -> dict:
    import nutpie
    from nutpie.compiled_pyfunc import from_pyfunc

    if case == "gauss20":
        density, start = gauss20_density(), np.zeros(20)
    else:
        from inference.sampling.mcmc import potential_of
        from inference.target import as_target, chain_seed

        model, data = zoo_case(case)
        target = as_target(model)
        data = target.validate(data)
        density = potential_of(target, data, "closed_form")
        start = density.flatten(target.initial_values(data, seed=chain_seed(seed, 0)))
    d = start.size

    def logp(x):
        value, grad = density(np.asarray(x, dtype=np.float64))
        return float(value), np.asarray(grad, dtype=np.float64)

    compiled = from_pyfunc(d, lambda: logp, lambda *_: (lambda x: {"theta": x}), [np.dtype("float64")], [(d,)],
                           ["theta"], make_initial_point_fn=lambda s: start + np.random.default_rng(s).uniform(-0.1, 0.1, d))
    t0 = time.perf_counter()
    idata = nutpie.sample(compiled, draws=draws, tune=warmup, chains=CHAINS, cores=THREADS, seed=seed,
                          progress_bar=False)
    wall = time.perf_counter() - t0
    theta = idata.posterior["theta"].values                                                   # (chain, draw, d)
    samples = ({"x": theta} if case == "gauss20" else
               {k: v.numpy() for k, v in density.constrain(theta).items()})
    s = idata.sample_stats
    return {"cold_s": wall, "samples": samples, "n_steps": s["n_steps"].values, "accept": s["mean_tree_accept"].values,
            "diverging": s["diverging"].values}


# --- one run --------------------------------------------------------------------------------------
def benchmark(cases, engines, *, repeats: int, warmup: int, draws: int, pyro: tuple[int, int, int],
              log=print, on_repeat=None) -> dict:
    """Every engine on every case, ``repeats`` times (seed = repeat); Pyro's kernel with its own
    ``(repeats, warmup, draws)``. Returns per-repeat metrics and their medians per case and engine;
    an engine that fails on a case is recorded with its error and the run goes on."""
    runs: dict = {}
    all_cases = (*cases, *(("gauss20",) if "nutpie" in engines else ()))
    for seed in range(repeats):
        for case in all_cases:
            results, drawn = {}, {}

            def attempt(label, fn):
                try:
                    results[label], drawn[label] = fn()
                except Exception as e:  # noqa: BLE001 - one failure must not lose the whole run
                    results[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[-1][:300]}"}

            if "numpyro" in engines and case != "gauss20":
                attempt("numpyro", lambda: _numpyro_result(case, warmup, draws, seed))
                if "warm" in results["numpyro"]:
                    results["numpyro warm"] = results["numpyro"].pop("warm")
            if "zoo" in engines:
                attempt("zoo", lambda: run_zoo_flat(case, warmup, draws, seed) if case == "gauss20"
                        else run_zoo(case, "zoo", warmup, draws, seed))
            if "pyro" in engines and case != "gauss20" and seed < pyro[0]:
                attempt("pyro", lambda: run_zoo(case, "pyro", pyro[1], pyro[2], seed))
            if "nutpie" in engines and case in NUTPIE_CASES:
                attempt("nutpie", lambda: _nutpie_result(case, warmup, draws, seed))
            if "numpyro" in drawn:   # every posterior against NumPyro's, relabeled to NumPyro's labeling
                reference = quantities(case, drawn["numpyro"])
                for label in ("zoo", "pyro", "nutpie"):
                    if label in drawn:
                        q = quantities(case, drawn[label], reference=reference)
                        results[label]["max_abs_smd"] = max_abs_smd(q, reference)
            for label, res in results.items():
                runs.setdefault(case, {}).setdefault(label, []).append(res)
                log(f"repeat {seed} {case:8s} {label:12s} " + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
        if on_repeat is not None:
            on_repeat(_summary(runs))
    return _summary(runs)


def _summary(runs: dict) -> dict:
    return {case: {label: {"median": _median(rs), "repeats": rs} for label, rs in by.items()}
            for case, by in runs.items()}


def _numpyro_result(case, warmup, draws, seed):
    p = run_peer("numpyro", case, warmup, draws, seed)
    samples = {k: torch.from_numpy(v) for k, v in p["samples"].items()}
    q = quantities(case, samples)
    cold = metrics(q, p["cold_s"], p["n_steps"], p["accept"], p["diverging"])
    warm = metrics(q, p["warm_s"], p["n_steps"], p["accept"], p["diverging"])
    return {**cold, "compile_s": p["cold_s"] - p["warm_s"], "warm": warm}, samples


def _nutpie_result(case, warmup, draws, seed):
    p = run_peer("nutpie", case, warmup, draws, seed)
    samples = {k: torch.from_numpy(v) for k, v in p["samples"].items()}
    return metrics(quantities(case, samples), p["cold_s"], p["n_steps"], p["accept"], p["diverging"]), samples


def _median(rows: list[dict]) -> dict:
    """Medians over the repeats that ran; the first error if none did."""
    ok = [row for row in rows if "error" not in row]
    if not ok:
        return rows[0]
    out = {}
    for k, v in ok[0].items():
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        out[k] = float(np.median([row[k] for row in ok if k in row])) if numeric else v
    return out


def ratios(results: dict) -> dict:
    """Per case: zoo against each peer, from the medians (ESS/s, and ESS per gradient for nutpie)."""
    out = {}
    for case, by in results.items():
        zoo = by.get("zoo", {}).get("median", {})
        if "error" in zoo or not zoo:
            continue
        r = {}
        for label, key in (("numpyro", "ess_per_s"), ("numpyro warm", "ess_per_s"), ("pyro", "ess_per_s"),
                           ("nutpie", "ess_per_s"), ("numpyro", "ess_per_1000_grads"),
                           ("nutpie", "ess_per_1000_grads")):
            if by.get(label, {}).get("median", {}).get(key, 0) > 0:
                r[f"zoo/{label} {key}"] = zoo[key] / by[label]["median"][key]
        out[case] = r
    return out


COLUMNS = (("wall s", "wall_s", "{:.1f}"), ("min bulk ESS", "min_ess_bulk", "{:.0f}"), ("ESS/s", "ess_per_s", "{:.1f}"),
           ("ESS/1000 grads", "ess_per_1000_grads", "{:.1f}"), ("steps/draw", "leapfrog_per_draw", "{:.1f}"),
           ("mean accept", "mean_accept", "{:.3f}"), ("div", "divergences", "{:.0f}"),
           ("max abs SMD vs NumPyro", "max_abs_smd", "{:.3f}"), ("compile s", "compile_s", "{:.1f}"))
LABELS = {"zoo": "zoo", "numpyro": "NumPyro (incl. compile)", "numpyro warm": "NumPyro (warm, no compile)",
          "pyro": "Pyro's kernel", "nutpie": "nutpie"}


def table(results: dict) -> str:
    """A Markdown table of the medians, then the ratios."""
    lines = ["| case | engine | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for case, by in results.items():
        for label in LABELS:
            if label not in by:
                continue
            m, n = by[label]["median"], sum("error" not in row for row in by[label]["repeats"])
            if "error" in m:
                lines.append(f"| {case} | {LABELS[label]} | failed: {m['error']} |" + " |" * (len(COLUMNS) - 1))
                continue
            cells = [fmt.format(m[key]) if isinstance(m.get(key), (int, float)) else "" for _, key, fmt in COLUMNS]
            extra = f" ({m['potential']})" if label == "zoo" else ""
            extra += f" [{m['warmup']:.0f} warmup + {m['draws']:.0f} draws]" if "draws" in m else ""
            lines.append(f"| {case} | {LABELS[label]}{extra}, n={n} | " + " | ".join(cells) + " |")
    lines.append("")
    for case, r in ratios(results).items():
        lines.append(f"- {case}: " + "; ".join(f"{k} = **{v:.2f}x**" for k, v in r.items()))
    return "\n".join(lines)


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            return f"no {package}"

    peers = ", ".join(installed(p) for p in ("numpyro", "jax", "nutpie", "pyro-ppl"))
    return (f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{peers}; load average {os.getloadavg()[0]:.1f} at the start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny runs of every engine (seconds; for CI)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--pyro", type=int, nargs=3, default=(1, 500, 500), metavar=("REPEATS", "WARMUP", "DRAWS"),
                        help="Pyro's kernel is slow: its own repeats, warmup and draws (default 1 500 500)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("nuts_bench.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.warmup, args.draws, args.pyro = 1, 40, 40, (1, 20, 20)
    missing = [p for p in ("numpyro", "jax", "funsor", "nutpie") if _absent(p)]
    if missing:
        print(f"nuts_bench: needs {', '.join(missing)} (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING)
    # float64 everywhere, as NumPyro with x64; the default dtype too: run_nuts draws the uniform start of
    # a plain model in the default dtype (issue 10, requirement 5), which breaks a float64 enumerated model
    torch.set_default_dtype(torch.float64)
    print(machine(), flush=True)
    print(f"{CHAINS} chains, {args.warmup} warmup + {args.draws} draws, medians of {args.repeats} repeats; "
          f"Pyro's kernel: {args.pyro[0]} repeat(s) of {args.pyro[1]} + {args.pyro[2]}")
    start, host = time.perf_counter(), machine()

    def write(results):   # after every repeat, so that a long run interrupted still leaves its medians
        report = {"command": "python benchmarks/nuts_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": host, "chains": CHAINS, "warmup": args.warmup, "draws": args.draws,
                  "repeats": args.repeats, "pyro_repeats_warmup_draws": list(args.pyro),
                  "total_s": time.perf_counter() - start, "results": results, "ratios": ratios(results)}
        args.out.write_text(json.dumps(report, indent=1, default=float))
        return report

    results = benchmark(args.cases, args.engines, repeats=args.repeats, warmup=args.warmup, draws=args.draws,
                        pyro=tuple(args.pyro), on_repeat=write)
    report = write(results)
    print(table(results))
    print(f"wrote {args.out} ({report['total_s']:.0f} s)")
    return 0


def _absent(package: str) -> bool:
    from importlib.util import find_spec

    return find_spec(package) is None


if __name__ == "__main__":
    raise SystemExit(main())
