"""SBC: seconds per replicate, the traced graph per replicate (before) against one compiled graph shared.

    python benchmarks/sbc_bench.py                    # the figures in benchmarks/README.md
    python benchmarks/sbc_bench.py --replicates 4     # a smoke run

The case of issue 20: a 1-D two-component GMM with a fixed prior (``prior_center=0, prior_spread=1``),
60 points per simulated data set, NUTS with one chain of 300 warmup + 300 draws. Two plans of
``inference.sbc`` on the same replicates (same seeds, same simulated data):

- ``graph``: every replicate traces the model's log density and runs the traced graph (what the route
  rule chose for one replicate's 600 iterations, i.e. what every replicate did before);
- ``shared``: the default now: the route rule applied to all replicates together compiles the graph,
  and Inductor's cache serves it to every replicate after the first (each still traces the model and
  checks the graph against Pyro's potential on its own data).

Replicates of the two plans alternate, so both see the same load. The first compile, with an empty
Inductor cache (``TORCHINDUCTOR_CACHE_DIR`` set to a new folder before torch is imported), is reported
apart. Wall and CPU seconds of this process per replicate (simulate, fit, thin, rank).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sbc-bench-inductor-")   # a cold cache

import numpy as np  # noqa: E402
import torch  # noqa: E402

import zoo  # noqa: E402
from inference.checks.sbc import check_inputs, replicate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    m = zoo.get("gmm", n_components=2, dim=1, prior_center=0.0, prior_spread=1.0)
    fit = {"num_samples": 300, "warmup_steps": 300}
    kw = dict(num_simulations=40, num_observations=60)
    plans = {"graph": check_inputs(m, fit_kwargs={**fit, "potential": "graph"}, **kw),
             "shared": check_inputs(m, fit_kwargs=fit, **kw)}
    assert plans["shared"].fit_kwargs["potential"] == "compiled", plans["shared"].fit_kwargs
    print(f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, one thread; "
          f"load average before: {os.getloadavg()[0]:.1f}")
    wall: dict[str, list[float]] = {k: [] for k in plans}
    cpu: dict[str, list[float]] = {k: [] for k in plans}
    for i in range(args.replicates + 1):   # replicate 0 of "shared" compiles into the empty cache
        for name, plan in plans.items():
            w, c = time.perf_counter(), time.process_time()
            replicate(plan, i)
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
            print(f"replicate {i} {name}: {wall[name][-1]:.2f} s wall, {cpu[name][-1]:.2f} s CPU", flush=True)
    print(f"first compile (empty cache): {wall['shared'][0]:.1f} s wall, {cpu['shared'][0]:.1f} s CPU")
    for kind, values in (("wall", wall), ("CPU", cpu)):
        g, s = np.median(values["graph"][1:]), np.median(values["shared"][1:])
        print(f"median {kind} s per replicate over {args.replicates}: graph {g:.2f}, shared {s:.2f}, "
              f"ratio {g / s:.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
