"""The zoo's NUTS with a diagonal against a dense metric on correlated Gaussians (nutpie's diagonal and
low-rank-modified metrics beside them where nutpie is installed).

    PYTHONPATH=. python benchmarks/metric_bench.py               # seeds 0-4, 500 warmup + 1000 draws, 2 chains
    PYTHONPATH=. python benchmarks/metric_bench.py --repeats 2   # quicker

Targets (the same as tests/inference/sampling/test_nuts_dense.py): ``correlated2``, 2-D with unit
scales and correlation 0.99; ``random15``, 15-D, a random rotation of variances from 0.1 to 10. Per
target and sampler: ESS per gradient (the smallest bulk ESS over the coordinates per leapfrog step of
the sampling phase; median and range over the repeats), mean leapfrog steps per draw, and the wall time
per gradient of the whole run (warmup included), which holds the sampler's own overhead: the log
densities are numpy matrix-vector products of a few microseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.sampling import nuts  # noqa: E402


def targets() -> dict[str, np.ndarray]:
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(15, 15)))
    return {"correlated2": np.array([[1.0, 0.99], [0.99, 1.0]]),
            "random15": q @ np.diag(np.logspace(-1, 1, 15)) @ q.T}


def gaussian(cov):
    precision = np.linalg.inv(cov)

    def log_density(x):
        g = -precision @ x
        return 0.5 * float(x @ g), g
    return log_density


def zoo_run(cov, metric, seed, warmup, draws, chains):
    calls = [0]
    density = gaussian(cov)

    def counted(x):
        calls[0] += 1
        return density(x)

    start = time.perf_counter()
    runs = [nuts.sample(counted, np.random.default_rng([seed, c]).uniform(-2, 2, len(cov)), num_samples=draws,
                        warmup_steps=warmup, seed=10 * seed + c, metric=metric) for c in range(chains)]
    seconds = time.perf_counter() - start
    return np.stack([r.draws for r in runs]), np.stack([r.stats["n_steps"] for r in runs]), seconds / calls[0]


def nutpie_run(cov, low_rank, seed, warmup, draws, chains):
    import nutpie
    from nutpie.compiled_pyfunc import from_pyfunc

    d, density = len(cov), gaussian(cov)
    compiled = from_pyfunc(d, lambda: density, lambda *_: (lambda x: {"x": x}), [np.dtype("float64")], [(d,)],
                           ["x"], make_initial_point_fn=lambda s: np.random.default_rng(s).uniform(-2, 2, d))
    start = time.perf_counter()
    idata = nutpie.sample(compiled, draws=draws, tune=warmup, chains=chains, cores=1, seed=seed, progress_bar=False,
                          low_rank_modified_mass_matrix=low_rank)
    seconds = time.perf_counter() - start
    n_steps = idata.sample_stats["n_steps"].values
    total = n_steps.sum() + idata.warmup_sample_stats["n_steps"].values.sum()
    return idata.posterior["x"].values, n_steps, seconds / total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=2)
    args = parser.parse_args(argv)
    samplers = {"zoo diag": lambda *a: zoo_run(a[0], "diag", *a[1:]),
                "zoo dense": lambda *a: zoo_run(a[0], "dense", *a[1:])}
    try:
        import nutpie  # noqa: F401
        samplers.update({"nutpie diag": lambda *a: nutpie_run(a[0], False, *a[1:]),
                         "nutpie low-rank": lambda *a: nutpie_run(a[0], True, *a[1:])})
    except ImportError:
        print("nutpie not installed: the zoo's samplers only")
    print("| target | sampler | ESS / gradient (median, range) | leapfrog steps / draw | us / gradient |")
    print("| --- | --- | --- | --- | --- |")
    for name, cov in targets().items():
        results = {k: [] for k in samplers}
        for seed in range(args.repeats):   # every sampler in turn, repeat after repeat: the same load for all
            for label, run in samplers.items():
                draws, n_steps, per_grad = run(cov, seed, args.warmup, args.draws, args.chains)
                ess = min(float(az.ess(np.ascontiguousarray(draws[..., i]), method="bulk")) for i in range(len(cov)))
                results[label].append((ess / n_steps.sum(), n_steps.mean(), per_grad * 1e6))
        for label, rows in results.items():
            rows = np.array(rows)
            print(f"| {name} | {label} | {np.median(rows[:, 0]):.4f} ({rows[:, 0].min():.4f}-{rows[:, 0].max():.4f}) "
                  f"| {np.median(rows[:, 1]):.1f} | {np.median(rows[:, 2]):.0f} |")


if __name__ == "__main__":
    main()
