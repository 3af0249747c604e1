"""ESS per second on Royle's (2004) N-mixture model: HMC-within-Gibbs against hand truncation + enumeration.

The model as a user writes it (``nmix``): N_i ~ Poisson(lam) animals at site i, y_it ~ Binomial(N_i, p)
counted at visit t. ``run_nuts`` samples it as it stands: NUTS for (lam, p), the counts N_i by random-walk
Metropolis-Hastings between NUTS transitions (:mod:`inference.sampling.hmc_within_gibbs`). What users do by hand
instead (``truncated``): N_i = max_t y_it + k_i, k_i ~ Categorical over 0..bound with the Poisson's log pmf as
logits, marked for enumeration, so that NUTS samples (lam, p) with the counts summed out (exact up to the
truncation).

Both run in the same process, alternately, ``--repeats`` times (the machine is shared: only the ratios
within a run mean anything). Reported per run: wall seconds and, of those, the seconds spent building the
log density's route (tracing, compiling: Inductor's on-disk cache serves the runs after the first), the
smallest bulk ESS over lam and p, ESS per second of sampling (wall minus route building), and the distance
of each posterior mean from the exact one (a grid over (lam, p), the counts summed to 200) in exact
posterior sds.

    PYTHONPATH=. nice -n 10 python benchmarks/nmixture_bench.py --sites 50 --visits 5 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import time

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import special, stats

import inference


def nmix(y):
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("sites", y.shape[0], dim=-2):
        N = pyro.sample("N", dist.Poisson(lam))
        with pyro.plate("visits", y.shape[1], dim=-1):
            pyro.sample("y", dist.Binomial(N, p), obs=y)


def truncated(bound: int):
    """The same model with N_i truncated by hand to max_t y_it + 0..bound (the counts below have no
    posterior mass) and enumerated: N_i = max_t y_it + k_i, k_i categorical with the Poisson's log pmf,
    its normalizer (which depends on lam) added back."""
    def nmix_truncated(y):
        lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        low = y.max(-1, keepdim=True).values                                  # (sites, 1)
        support = low.unsqueeze(-1) + torch.arange(bound + 1.0)               # (sites, 1, bound + 1)
        log_pmf = dist.Poisson(lam).log_prob(support)
        with pyro.plate("sites", y.shape[0], dim=-2):
            pyro.factor("unnormalized", log_pmf.logsumexp(-1))              # Categorical normalizes: undo it
            k = pyro.sample("k", dist.Categorical(logits=log_pmf), infer={"enumerate": "parallel"})
            with pyro.plate("visits", y.shape[1], dim=-1):
                pyro.sample("y", dist.Binomial(low + k.to(y.dtype), p), obs=y)
    return nmix_truncated


def exact(y: np.ndarray, bound: int = 200, n: int = 300) -> dict[str, tuple[float, float]]:
    """Posterior mean and sd of lam and p on a grid, each N_i summed from max_t y_it to ``bound``."""
    lam, p = np.linspace(0.01, 25, n)[:, None], np.linspace(0.001, 0.999, n)[None, :]
    counts = np.arange(bound)[:, None, None]
    log_post = stats.gamma.logpdf(lam, 2.0, scale=2.0) + stats.beta.logpdf(p, 2.0, 2.0)
    for row in y:
        terms = stats.poisson.logpmf(counts, lam) + stats.binom.logpmf(row, counts[..., None], p[..., None]).sum(-1)
        log_post = log_post + special.logsumexp(terms, axis=0)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    out = {}
    for name, grid in (("lam", np.broadcast_to(lam, w.shape)), ("p", np.broadcast_to(p, w.shape))):
        mean = (w * grid).sum()
        out[name] = (mean, np.sqrt((w * (grid - mean) ** 2).sum()))
    return out


def measure(model, y, truth, args, seed) -> dict:
    start = time.perf_counter()
    post = inference.run_nuts(model, y, num_samples=args.draws, warmup_steps=args.warmup, num_chains=args.chains,
                              seed=seed, progress=False)
    wall = time.perf_counter() - start
    ess = {k: float(az.ess(post.samples[k].double().reshape(args.chains, -1).numpy())) for k in truth}
    z = {k: (float(post.samples[k].double().mean()) - m) / s for k, (m, s) in truth.items()}
    sampling = wall - post.settings["compile_seconds"]          # without building the route
    return {"wall": wall, "sampling": sampling, "ess": min(ess.values()), "ess_per_s": min(ess.values()) / sampling,
            "z": z, "route": post.settings["potential"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=50)
    parser.add_argument("--visits", type=int, default=5)
    parser.add_argument("--lam", type=float, default=5.0)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--bound", type=int, default=60, help="the hand truncation of N_i")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    N = torch.poisson(torch.full((args.sites, 1), args.lam), generator=g)
    y = torch.binomial(N.expand(args.sites, args.visits), torch.full((args.sites, args.visits), args.p), generator=g)
    truth = exact(y.numpy())
    print(f"# {args.sites} sites x {args.visits} visits, lam={args.lam}, p={args.p}, max count {int(y.max())}, "
          f"{args.chains} chains x {args.draws} draws after {args.warmup}; load average {os.getloadavg()[0]:.1f}")
    print("| run | method | wall s (building the route) | min ESS (lam, p) | ESS/s of sampling | "
          "(mean - exact) / sd: lam, p |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for r in range(args.repeats):
        rows = {"HMC-within-Gibbs": measure(nmix, y, truth, args, seed=r),
                f"truncation at {args.bound} + enumeration": measure(truncated(args.bound), y, truth, args, seed=r)}
        for name, m in rows.items():
            print(f"| {r + 1} | {name} ({m['route']}) | {m['wall']:.1f} ({m['wall'] - m['sampling']:.1f}) | "
                  f"{m['ess']:.0f} | {m['ess_per_s']:.1f} | "
                  f"{m['z']['lam']:+.2f}, {m['z']['p']:+.2f} |")
        first, second = rows.values()
        ratios.append(first["ess_per_s"] / second["ess_per_s"])
    print(f"# ESS/s ratio HMC-within-Gibbs / truncation per run: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
