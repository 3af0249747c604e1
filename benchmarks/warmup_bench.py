"""Warmup that does not sink a chain into maximal trees: the zoo's warmup against Stan's on issue 18's GMM.

    PYTHONPATH=. python -u benchmarks/warmup_bench.py     # the "Warmup" table in benchmarks/README.md

The plain Pyro GMM of ``defaults_bench.py`` (N = 1,000, K = 3, D = 2, assignments enumerated), 500 warmup +
500 draws through ``inference.run_nuts`` (compiled potential, built once per variant), one chain per seed
0-7 and the four chains of seed 0, one after another. Two warmups: ``stan``, Stan's (the variance of each
window's draws, the start metric kept until the first window closes), and ``zoo``, the default (a window
whose draws disagree with their gradients takes nutpie's estimate, ``inference.sampling.metric``; a
saturated tree before the first window guesses the metric again, ``inference.sampling.adaptation``). Per
chain: wall seconds, gradients in warmup, warmup trees at the maximum depth, the smallest bulk ESS
(identifiable quantities), and the adapted step size.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def run(variant: str) -> dict:
    import defaults_bench

    import inference
    from inference.sampling import adaptation, metric, nuts

    metric.DISAGREEMENT = np.inf if variant == "stan" else 10.0
    update = adaptation.WindowAdaptation.update
    if variant == "stan":
        adaptation.WindowAdaptation.update = lambda self, i, state, acceptance, saturated=False: update(
            self, i, state, acceptance)
    trees = []
    transition = nuts.transition

    def counted(log_density, state, step, metric_, rng, max_depth=10):
        new, info = transition(log_density, state, step, metric_, rng, max_depth)
        trees.append((info["n_steps"], info["tree_depth"] >= max_depth))
        return new, info

    nuts.transition = counted
    model, data = defaults_bench.pyro_models()["gmm"], defaults_bench.pyro_data("gmm")
    rows = []
    try:
        for label, seed, chains in [*((f"seed {s}", s, 1) for s in range(8)), ("seed 0, 4 chains", 0, 4)]:
            trees.clear()
            start = time.perf_counter()
            post = inference.run_nuts(model, data, num_samples=500, warmup_steps=500, num_chains=chains, seed=seed,
                                      chain_method="sequential", potential="compiled", progress=False)
            wall = time.perf_counter() - start
            samples = {k: v.numpy() for k, v in post.samples.items()}
            per_chain = [trees[c * 1000:c * 1000 + 500] for c in range(chains)]
            rows.append({"run": label, "variant": variant, "wall_s": round(wall, 2),
                         "warmup_gradients": [int(sum(n for n, _ in t)) for t in per_chain],
                         "saturated_warmup_trees": [int(sum(s for _, s in t)) for t in per_chain],
                         "min_ess": round(defaults_bench.min_ess("gmm", samples)),
                         "step_size": [round(float(s), 3) for s in post.adaptation["step_size"]]})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        nuts.transition, adaptation.WindowAdaptation.update = transition, update
    return rows


if __name__ == "__main__":
    variants = sys.argv[1:] or ["stan", "zoo"]
    results = [row for v in variants for row in run(v)]
    (HERE / "warmup_bench.json").write_text(json.dumps(results, indent=1))
