"""What a user gets: the public API at its DEFAULT settings, each run a fresh process, beside NumPyro's defaults.

    python benchmarks/defaults_bench.py            # the "Defaults" table in benchmarks/README.md
    python benchmarks/defaults_bench.py --smoke    # tiny runs (CI)

Every run is a new Python process (imports included in its process time), on the same cores, taking
turns zoo / NumPyro repeat after repeat. The zoo runs three times per repeat: with nothing cached (a new
``TORCHINDUCTOR_CACHE_DIR`` and a new ``TMPDIR``, so that Inductor also builds its precompiled header
again, which it keeps per machine in the temporary directory: the very first run on a machine), with an
empty Inductor cache (a new ``TORCHINDUCTOR_CACHE_DIR``: the first run of a model, every graph compiled
cold) and with a warm one (a directory that an earlier run of the same case filled). NumPyro compiles in
every process (JAX keeps no compiled code across processes by default). Repeat ``r`` runs both engines
with seed ``r``: an ESS from one chain of 500 draws varies by 20-30% from seed to seed, so one seed per
engine would compare two random numbers.

Cases (models written once in plain Pyro and once in NumPyro, identical priors, data and run lengths):

- ``gmm1`` / ``gmm4``: a 3-component Gaussian mixture of N = 1,000 points in D = 2, float64, assignments
  enumerated (issue 18's model), 500 warmup + 500 draws, 1 chain / 4 chains;
- ``schools4``: eight schools, non-centered, 4 chains, 1,000 + 1,000 (``run_nuts``'s own defaults);
- ``svi``: ``benchmarks/svi_bench.py``'s case (the zoo GMM's marginal form and its own guide against the
  NumPyro twin, 3,000 steps), the zoo's ``fit_svi`` at its default loss route.

The zoo calls ``inference.run_nuts(model, data, num_samples=..., warmup_steps=..., num_chains=..., seed=r)``
and ``inference.fit_svi(...)`` with nothing else set. NumPyro runs ``MCMC(NUTS(model))`` with its defaults and,
for several chains, both ``chain_method="parallel"`` (XLA host devices, one per chain, on the same cores)
and ``"vectorized"``. Per run: the process's wall seconds, the fit's own wall seconds (the call, compile
included), the smallest bulk ESS of the identifiable quantities (mixture components sorted by their first
coordinate) and ESS/s of the fit. Writes ``benchmarks/defaults_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CASES = {"gmm1": ("gmm", 1, 500, 500), "gmm4": ("gmm", 4, 500, 500), "schools4": ("schools", 4, 1000, 1000),
         "svi": ("svi", 1, 0, 3000)}
SCHOOLS_Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SCHOOLS_SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


# --- the child processes ----------------------------------------------------------------------------
def pyro_models() -> dict:
    """The plain Pyro models of the cases (Pyro imported here: the NumPyro processes never load torch)."""
    import pyro
    import pyro.distributions as dist
    import torch

    def gmm(data):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3, dtype=data.dtype)))
        with pyro.plate("components", 3):
            locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=data.dtype), 10.0).to_event(1))
            scales = pyro.sample("scales", dist.LogNormal(torch.zeros(2, dtype=data.dtype), 1.0).to_event(1))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(weights), infer={"enumerate": "parallel"})
            pyro.sample("obs", dist.Normal(locs[z], scales[z]).to_event(1), obs=data)

    def schools(data):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=torch.float64)))
        with pyro.plate("schools", 8):
            eta = pyro.sample("eta", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
            pyro.sample("y", dist.Normal(mu + tau * eta, data["sigma"]), obs=data["y"])

    return {"gmm": gmm, "schools": schools}


def pyro_data(case: str):
    import torch

    from nuts_bench import gmm_data

    if case == "gmm":
        return torch.from_numpy(gmm_data())
    return {"y": torch.tensor(SCHOOLS_Y, dtype=torch.float64), "sigma": torch.tensor(SCHOOLS_SIGMA, dtype=torch.float64)}


def zoo_run(case: str, chains: int, warmup: int, draws: int, seed: int = 0) -> dict:
    import numpy as np
    import torch

    import inference
    from nuts_bench import gmm_data

    if case == "svi":
        import zoo

        m = zoo.get("gmm", n_components=3)
        x = m.validate(torch.from_numpy(gmm_data()))
        start = time.perf_counter()
        post = inference.fit_svi(m, x, num_steps=draws, lr=0.01, lr_decay=0.01, clip_norm=None, num_samples=1,
                                 seed=seed, progress=False)
        return {"fit_s": time.perf_counter() - start, "route": post.settings["loss_route"],
                "final_loss": float(np.mean(post.losses[-draws // 10:]))}
    start = time.perf_counter()
    post = inference.run_nuts(pyro_models()[case], pyro_data(case), num_samples=draws, warmup_steps=warmup,
                              num_chains=chains, seed=seed, progress=False)
    fit = time.perf_counter() - start
    samples = {k: v.numpy() for k, v in post.samples.items()}
    return {"fit_s": fit, "route": post.settings["potential"], "ess": min_ess(case, samples),
            "divergences": int(post.sample_stats["diverging"].sum())}


def numpyro_run(case: str, chains: int, warmup: int, draws: int, method: str, seed: int = 0) -> dict:
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(chains, 1)}"
    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    numpyro.enable_x64()
    from nuts_bench import gmm_data

    if case == "svi":
        import svi_bench

        result = svi_bench._numpyro(draws, seed)
        return {"fit_s": result["wall_s"], "final_loss": result["final_loss"]}
    if case == "gmm":
        from numpyro.contrib.funsor import config_enumerate

        args = (jnp.asarray(gmm_data()),)

        @config_enumerate
        def model(data):
            weights = numpyro.sample("weights", dist.Dirichlet(jnp.ones(3)))
            with numpyro.plate("components", 3):
                locs = numpyro.sample("locs", dist.Normal(jnp.zeros(2), 10.0).to_event(1))
                scales = numpyro.sample("scales", dist.LogNormal(jnp.zeros(2), 1.0).to_event(1))
            with numpyro.plate("data", data.shape[0]):
                z = numpyro.sample("z", dist.Categorical(weights))
                numpyro.sample("obs", dist.Normal(locs[z], scales[z]).to_event(1), obs=data)
    else:
        args = (jnp.asarray(SCHOOLS_Y), jnp.asarray(SCHOOLS_SIGMA))

        def model(y, sigma):
            mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
            tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
            with numpyro.plate("schools", 8):
                eta = numpyro.sample("eta", dist.Normal(0.0, 1.0))
                numpyro.sample("y", dist.Normal(mu + tau * eta, sigma), obs=y)
    start = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_warmup=warmup, num_samples=draws, num_chains=chains, chain_method=method,
                progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), *args, extra_fields=("diverging",))
    jax.block_until_ready(mcmc.get_samples())
    fit = time.perf_counter() - start
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    return {"fit_s": fit, "ess": min_ess(case, samples),
            "divergences": int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())}


def min_ess(case: str, samples: dict) -> float:
    """The smallest bulk ESS over the identifiable scalar quantities (mixture components sorted by the
    first coordinate of their locations, draw by draw)."""
    import arviz as az
    import numpy as np

    if case == "gmm":
        order = np.argsort(samples["locs"][..., 0], axis=-1)                       # (chain, draw, K)
        quantities = {"weights": np.take_along_axis(samples["weights"], order, -1),
                      "locs": np.take_along_axis(samples["locs"], order[..., None], -2),
                      "scales": np.take_along_axis(samples["scales"], order[..., None], -2)}
    else:
        quantities = {k: samples[k] for k in ("mu", "tau", "eta")}
    flat = [v.reshape(v.shape[0], v.shape[1], -1) for v in quantities.values()]
    return float(min(az.ess(np.ascontiguousarray(f[..., j])) for f in flat for j in range(f.shape[-1])))


def child(argv: list[str]) -> None:
    """``--child ENGINE CASE CHAINS WARMUP DRAWS SEED [METHOD]``: one run, its result as JSON on the last line."""
    import warnings

    warnings.filterwarnings("ignore")
    sys.path[:0] = [str(HERE), str(ROOT)]
    engine, case, chains, warmup, draws, seed, *method = argv
    chains, warmup, draws, seed = int(chains), int(warmup), int(draws), int(seed)
    result = (zoo_run(case, chains, warmup, draws, seed) if engine == "zoo"
              else numpyro_run(case, chains, warmup, draws, method[0], seed))
    print(json.dumps(result))


# --- the parent: fresh processes, taking turns --------------------------------------------------------
def run(engine: str, case: str, chains: int, warmup: int, draws: int, seed: int = 0, method: str = "",
        cache: str | None = None, tmp: str | None = None, cpus: str | None = None) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = cache
    if tmp is not None:
        env["TMPDIR"] = tmp
    command = [sys.executable, str(Path(__file__).resolve()), "--child", engine, case, str(chains), str(warmup),
               str(draws), str(seed), *([method] if method else [])]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    process = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {case}: exit {done.returncode}\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = process
    if "ess" in result:
        result["ess_per_s"] = result["ess"] / result["fit_s"]
        result["ess_per_process_s"] = result["ess"] / process
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny runs (CI)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpus", default="0,1", help="taskset CPU list for every process (same cores for all)")
    parser.add_argument("--out", type=Path, default=HERE / "defaults_bench.json")
    args = parser.parse_args(argv)
    from importlib.util import find_spec

    if find_spec("numpyro") is None:
        print("defaults_bench: needs numpyro, jax and funsor (pip install -e '.[bench]')", file=sys.stderr)
        return 2
    sys.path[:0] = [str(HERE), str(ROOT)]
    from nuts_bench import machine

    print(machine(), flush=True)
    results: dict[str, dict[str, list[dict]]] = {}
    warm = tempfile.mkdtemp(prefix="zoo-inductor-warm-")
    for name in args.cases:
        case, chains, warmup, draws = CASES[name]
        if args.smoke:
            warmup, draws = (0, 300) if case == "svi" else (50, 50)
        peers = ["numpyro"] if chains == 1 else ["numpyro-parallel", "numpyro-vectorized"]
        rows = results[name] = {k: [] for k in ("zoo-nothing-cached", "zoo-empty-cache", "zoo-warm-cache", *peers)}
        run("zoo", case, chains, warmup, draws, cache=warm, cpus=args.cpus)   # fills the warm cache
        for repeat in range(1 if args.smoke else args.repeats):
            with tempfile.TemporaryDirectory(prefix="zoo-nothing-cached-") as nothing:
                rows["zoo-nothing-cached"].append(run("zoo", case, chains, warmup, draws, repeat, cache=nothing,
                                                      tmp=nothing, cpus=args.cpus))
            with tempfile.TemporaryDirectory(prefix="zoo-inductor-empty-") as empty:
                rows["zoo-empty-cache"].append(run("zoo", case, chains, warmup, draws, repeat, cache=empty,
                                                   cpus=args.cpus))
            rows["zoo-warm-cache"].append(run("zoo", case, chains, warmup, draws, repeat, cache=warm, cpus=args.cpus))
            for peer in peers:
                method = peer.split("-")[1] if "-" in peer else "parallel"
                rows[peer].append(run("numpyro", case, chains, warmup, draws, repeat, method=method,
                                      cpus=args.cpus))
            print(f"{name} repeat {repeat}: " + ", ".join(
                f"{k} {v[-1]['fit_s']:.1f}s" + (f" ESS/s {v[-1]['ess_per_s']:.1f}" if "ess_per_s" in v[-1] else "")
                for k, v in rows.items()), flush=True)
    args.out.write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    print(table(results))
    return 0


def table(results: dict) -> str:
    """Medians over the repeats, and the zoo's ratios to NumPyro's (ESS/s for NUTS, time for SVI)."""
    lines = ["| case | run | fit s | process s | min ESS | ESS/s (fit) | zoo / NumPyro |", "|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        peer = rows.get("numpyro") or rows.get("numpyro-parallel")
        for run_name, runs in rows.items():
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
            if "ess_per_s" in med:
                ratio = med["ess_per_s"] / statistics.median(r["ess_per_s"] for r in peer)
            else:
                ratio = statistics.median(r["fit_s"] for r in peer) / med["fit_s"]
            lines.append(f"| {name} | {run_name} | {med['fit_s']:.1f} | {med['process_s']:.1f} | "
                         f"{med.get('ess', float('nan')):.0f} | {med.get('ess_per_s', float('nan')):.1f} | "
                         f"{ratio:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
