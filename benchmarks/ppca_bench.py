"""PPCA benchmarks (not tests): NUTS on the marginal vs the latent form, and EM vs scikit-learn's PCA.

    python benchmarks/ppca_bench.py nuts [--samples 1000 --warmup 500 --chains 2 --components 2]
    python benchmarks/ppca_bench.py em   [--repeats 5]

``nuts`` samples the same model on the same data (the bundled standardized wine data) twice with the
same settings and seed: ``marginalize=True`` (x ~ N(mean, W W^T + sigma^2 I), z integrated out: D K +
D + 1 dimensions) and ``marginalize=False`` (the latent form: N K more dimensions for z). It reports
wall time, gradient evaluations (leapfrog steps), divergences and the bulk ESS of the identifiable
quantities (``align``: leading eigenvalues, noise variance, mean, subspace angles), as ESS per second
and ESS per 1000 gradient evaluations (which does not depend on how loaded the machine is).

``em`` times ``PPCA.em`` (Tipping & Bishop's EM from a random start, to a log-likelihood gain below
1e-9 N per iteration), ``PPCA.ml_solution`` (closed form: one eigendecomposition) and scikit-learn's
``PCA(n_components=K).fit`` (full SVD) on the same data, median of ``--repeats`` runs, and the
log-likelihood each reaches against the closed-form maximum L*. scikit-learn's model is the ML
solution for the 1/(N-1) covariance, so its log-likelihood on the data is a little below L*.

Tables are printed as markdown; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import inference  # noqa: E402
import zoo  # noqa: E402
from zoo import datasets  # noqa: E402


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.machine()}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"load average {load:.1f} at the start")


def bench_nuts(args) -> list[dict]:
    x = datasets.load("wine").data.double()
    rows = []
    for marginalize in (True, False):
        m = zoo.get("ppca", n_components=args.components, marginalize=marginalize)
        post = inference.run_nuts(m, x, num_samples=args.samples, warmup_steps=args.warmup,
                                  num_chains=args.chains, seed=args.seed, progress=not args.quiet)
        d = inference.diagnose(post)
        ess = d.summary["ess_bulk"].astype(float)
        grads = float(post.sample_stats["n_steps"].sum())   # sampling phase only
        rows.append({
            "form": "marginal" if marginalize else "latent",
            "dimensions": sum(int(np.prod(v.shape[2:])) for v in post.samples.values()),
            "wall_s": post.wall_time,
            "grad_evals_per_draw": grads / (args.chains * args.samples),
            "divergences": d.divergences,
            "min_ess": float(ess.min()), "median_ess": float(ess.median()),
            "min_ess_per_s": float(ess.min()) / post.wall_time,
            "median_ess_per_s": float(ess.median()) / post.wall_time,
            "min_ess_per_1000_grads": 1000 * float(ess.min()) / grads,
            "max_rhat": float(d.summary["r_hat"].astype(float).max()),
        })
        print(f"  {rows[-1]['form']}: {post.wall_time:.1f}s", file=sys.stderr)
    return rows


def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def em_datasets():
    from sklearn.datasets import load_digits

    wine = datasets.load("wine").data.double()
    digits = load_digits().data
    digits = digits[:, digits.std(0) > 0]
    digits = (digits - digits.mean(0)) / digits.std(0)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(100, 10, generator=g, dtype=torch.float64) * torch.linspace(3, 1, 10, dtype=torch.float64)
    truth = {"loadings": W, "noise_scale": torch.tensor(1.0, dtype=torch.float64),
             "mean": torch.zeros(100, dtype=torch.float64)}
    sim, _ = zoo.get("ppca", n_components=10, dim=100).simulate(20000, seed=0, params=truth)
    return [("wine (standardized)", wine, 2), ("digits (61 non-constant pixels, standardized)",
                                               torch.as_tensor(digits), 10),
            ("simulated, N=20000, D=100", sim, 10)]


def bench_em(args) -> list[dict]:
    from sklearn.decomposition import PCA

    rows = []
    for name, x, K in em_datasets():
        m = zoo.get("ppca", n_components=K)
        x = m.validate(x)
        N = x.shape[0]
        best = m.ml_log_likelihood(x)
        t_em, em = _timed(lambda: m.em(x, seed=args.seed), args.repeats)
        t_ml, ml = _timed(lambda: m.ml_solution(x), args.repeats)
        t_sk, sk = _timed(lambda: PCA(n_components=K, svd_solver="full").fit(x.numpy()), args.repeats)
        rows.append({
            "data": name, "N": N, "D": x.shape[1], "K": K,
            "em_s": t_em, "closed_form_s": t_ml, "sklearn_pca_s": t_sk,
            "em_gap_per_row": (best - float(m.log_likelihood(x, em).sum())) / N,
            "closed_form_gap_per_row": (best - float(m.log_likelihood(x, ml).sum())) / N,
            "sklearn_gap_per_row": (best - float(sk.score(x.numpy())) * N) / N,
        })
        print(f"  {name}: em {t_em:.3f}s, sklearn {t_sk:.3f}s", file=sys.stderr)
    return rows


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("which", choices=["nuts", "em", "all"])
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--chains", type=int, default=2)
    p.add_argument("--components", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: tiny linear algebra is fastest so)")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {"machine": machine()}
    print(f"machine: {results['machine']}\n")
    if args.which in ("nuts", "all"):
        results["nuts"] = bench_nuts(args)
        print(f"NUTS on wine, K={args.components}, {args.chains} chains x {args.samples} draws "
              f"(+{args.warmup} warmup), seed {args.seed}:\n")
        print(markdown(results["nuts"]) + "\n")
    if args.which in ("em", "all"):
        results["em"] = bench_em(args)
        print(f"EM vs closed form vs scikit-learn PCA (median of {args.repeats}):\n")
        print(markdown(results["em"]) + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
