"""HMM benchmarks: the forward algorithm against hmmlearn, and NUTS ESS per second.

    python benchmarks/hmm_bench.py             # the figures in benchmarks/README.md
    python benchmarks/hmm_bench.py --quick     # a smoke run

1. Forward log-likelihood of one sequence of T = 10,000 steps with S = 8 Gaussian states (float64,
   one torch thread): ``HiddenMarkovModel.log_likelihood`` (the compiled forward recursion of
   ``zoo/kernels.py``) and, for reference, the tensor tree it uses on a GPU
   (``zoo.kernels.tree_log_prob``, here on the CPU) against hmmlearn's ``GaussianHMM.score`` (its
   compiled forward, "log" and "scaling" implementations) at the same parameters on the same data,
   in the same process; median of
   repeats, and the two values checked equal. Also the zoo forward pass plus its gradient, which
   is what SVI and NUTS pay per step.
2. NUTS (2 chains in parallel, 500 warmup + 1000 draws each) on a 2-state Gaussian HMM simulated
   with T = 100 and T = 1,000 steps, by both routes of ``inference.run_nuts`` on the same data and
   seed: the model's closed-form ``log_density`` (the default) and Pyro's trace of ``marginal_model``
   with jit (``closed_form=False``, the peer). Wall time (warmup and compilation included), the
   smallest bulk ESS over the identifiable quantities (after ``align``), ESS per second,
   divergences, ESS per 1000 gradient evaluations of the sampling phase (which does not depend on
   how loaded the machine is), and the largest |standardized mean difference| between the routes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def median_times(fns: dict, repeats: int) -> dict:
    """Median wall time of each callable; the callables take turns, so a busy machine slows all alike."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def forward_benchmark(T: int, S: int, repeats: int) -> dict:
    from hmmlearn.hmm import GaussianHMM

    import zoo
    from zoo.kernels import tree_log_prob

    g = np.random.default_rng(0)
    transition = g.dirichlet(np.ones(S), size=S) + 4 * np.eye(S)
    p = {"initial": torch.tensor(g.dirichlet(np.ones(S))),
         "transition": torch.tensor(transition / transition.sum(1, keepdims=True)),
         "locs": torch.tensor(np.sort(g.normal(0, 3, (S, 1)), 0)),
         "scales": torch.tensor(g.uniform(0.5, 1.5, (S, 1)))}
    m = zoo.get("hmm", n_states=S)
    x, _ = m.simulate(T, seed=1, params=p)
    seqs = m.validate(x)
    leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
    xs = x.numpy()
    with torch.no_grad():
        ours = float(m.log_likelihood(seqs, p))
    tree = [m.log_potentials(seqs, p), seqs.mask]
    fns = {"zoo_s": lambda: _no_grad(m.log_likelihood, seqs, p),
           "zoo_tree_s": lambda: _no_grad(tree_log_prob, *tree[0], tree[1]),
           "zoo_grad_s": lambda: torch.autograd.grad(m.log_likelihood(seqs, leaves).sum(), list(leaves.values()))}
    for impl in ("log", "scaling"):
        h = GaussianHMM(S, covariance_type="diag", init_params="", params="", implementation=impl)
        h.startprob_, h.transmat_ = p["initial"].numpy(), p["transition"].numpy()
        h.means_, h.covars_ = p["locs"].numpy(), p["scales"].numpy() ** 2
        assert abs(h.score(xs) - ours) < 1e-6 * max(1.0, abs(ours)), (impl, h.score(xs), ours)
        fns[f"hmmlearn_{impl}_s"] = lambda h=h: h.score(xs)
    out = {"T": T, "S": S, **median_times(fns, repeats)}
    out["log_likelihood"] = ours
    return out


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def nuts_benchmark(T: int, samples: int, warmup: int, seed: int = 0) -> dict:
    import inference

    results = {route: _nuts_run(T, samples, warmup, seed, route == "closed form")
               for route in ("closed form", "pyro trace")}
    table = inference.compare(results["closed form"].pop("posterior"), results["pyro trace"].pop("posterior"))
    return {"T": T, **results, "max_abs_smd": float(table["smd"].abs().max())}


def _nuts_run(T: int, samples: int, warmup: int, seed: int, closed_form: bool) -> dict:
    import arviz as az

    import inference
    import zoo

    truth = {"initial": torch.tensor([0.5, 0.5]), "transition": torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
             "locs": torch.tensor([[-1.0], [1.5]]), "scales": torch.tensor([[0.6], [1.0]])}
    m = zoo.get("hmm", n_states=2)
    x, _ = m.simulate(T, seed=seed, params=truth)
    post = inference.run_nuts(m, x, num_samples=samples, warmup_steps=warmup, num_chains=2, seed=seed,
                              closed_form=closed_form, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ess = az.ess(post.quantities_idata(), method="bulk")
    min_ess = min(float(np.nanmin(v.values)) for v in ess.data_vars.values())
    gradients = float(post.sample_stats["n_steps"].sum())   # potential evaluations while drawing (both chains)
    return {"posterior": post, "wall_s": post.wall_time, "min_ess_bulk": min_ess, "ess_per_s": min_ess / post.wall_time,
            "ess_per_1000_grads": 1000 * min_ess / gradients,
            "divergences": int(post.sample_stats["diverging"].sum()),
            "mean_leapfrog_steps": float(post.sample_stats["n_steps"].mean())}


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.machine()}, {cores} cores, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f} at the start")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and draws (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)  # hmmlearn's forward is single-threaded too
    repeats = 5 if args.quick else 30
    print(machine())
    f = forward_benchmark(10_000, 8, repeats)
    print(f"forward log-likelihood, one sequence, T={f['T']:,}, S={f['S']} Gaussian states (median of {repeats}):")
    print(f"  zoo log_likelihood           {1e3 * f['zoo_s']:8.2f} ms")
    print(f"  zoo log_likelihood + grad    {1e3 * f['zoo_grad_s']:8.2f} ms")
    print(f"  zoo tensor tree (GPU path)   {1e3 * f['zoo_tree_s']:8.2f} ms")
    for impl in ("log", "scaling"):
        t = f[f"hmmlearn_{impl}_s"]
        print(f"  hmmlearn score ({impl:7s})     {1e3 * t:8.2f} ms   zoo is {t / f['zoo_s']:.2f}x as fast")
    print(f"  (log-likelihood {f['log_likelihood']:.6f}, equal in both)")
    samples, warmup = (200, 200) if args.quick else (1000, 500)
    print(f"\nNUTS, 2-state Gaussian HMM, 2 chains x ({warmup} warmup + {samples} draws), chains in parallel:")
    for T in (100, 1000):
        out = nuts_benchmark(T, samples, warmup)
        for route in ("closed form", "pyro trace"):
            r = out[route]
            print(f"  T={T:5d} {route:11s}: {r['wall_s']:6.1f} s, min bulk ESS {r['min_ess_bulk']:7.1f}, "
                  f"{r['ess_per_s']:6.2f} ESS/s, {r['ess_per_1000_grads']:5.1f} ESS per 1000 gradients, "
                  f"{r['divergences']} divergences, {r['mean_leapfrog_steps']:.1f} leapfrog steps per draw")
        ratio = out["pyro trace"]["wall_s"] / out["closed form"]["wall_s"]
        print(f"    closed form is {ratio:.1f}x as fast; the two posteriors differ by at most "
              f"{out['max_abs_smd']:.3f} sd in any mean")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
