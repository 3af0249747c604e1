"""The constants of the route policy (inference/tracing.py), measured: what tracing and compiling cost
and save, per model, on this machine.

    python benchmarks/routes_bench.py          # the "Routes" table in benchmarks/README.md

For a few models (NUTS potentials of plain Pyro models, SVI losses of autoguides and of the zoo GMM's own
guide), each in a fresh process with an empty Inductor cache and then again with the cache it filled:
the ATen operations of the traced graph, the guide's sample sites (SVI), seconds per call of Pyro's
reference (its potential or ELBO, with gradients), of the traced graph and of the compiled graph (one
thread, medians of repeated calls), the seconds to trace and check the graph, and to compile it (cold,
then from the cache). Derived: the seconds of dispatch that compiling saves per operation and call
(``DISPATCH_SECONDS``), the fraction of Pyro's time the graph saves (``GRAPH_SAVING``), Pyro's seconds
per guide site and step (``PYRO_SECONDS_PER_SITE``). Writes ``benchmarks/routes_bench.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = ("gmm-potential", "schools-potential", "regression-svi", "gmm-svi")


def measure(case: str) -> dict:
    import numpy as np
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro.infer import Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    import zoo
    from defaults_bench import pyro_data, pyro_models
    from inference.variational.traced_loss import TracedLoss
    from inference.potential import Potential
    from inference.variational.optimization import collect_parameters
    from inference.tracing import compile_graph, operations, trace_graph
    from nuts_bench import gmm_data

    torch.set_num_threads(1)

    def per_call(fn, n=200):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(n // 5):
                fn()
            times.append((time.perf_counter() - start) / (n // 5))
        return statistics.median(times)

    out = {}
    if case.endswith("potential"):
        name = case.split("-")[0]
        model, data, nesting = pyro_models()[name], pyro_data(name), 1
        start = time.perf_counter()
        p = Potential(model, data, max_plate_nesting=nesting, route="graph")
        out["trace_s"] = time.perf_counter() - start
        theta = p.flatten(p.prototypes)
        example = [torch.from_numpy(theta), *p.leaves]
        with pyro.validation_enabled(False):
            graph = trace_graph(p._value_and_grad, *example)
        out["reference_s"] = per_call(lambda: p.reference(theta), 50)
        out["graph_s"] = per_call(lambda: graph(*example))
        out["operations"] = operations(graph)
        start = time.perf_counter()
        compiled = compile_graph(graph, example)
        out["compile_s"] = time.perf_counter() - start
        out["compiled_s"] = per_call(lambda: compiled(*example), 1000)
        return out
    if case == "regression-svi":
        rng = np.random.default_rng(0)
        X = torch.tensor(rng.normal(size=(200, 3)))
        y = X @ torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64) + 0.3 * torch.tensor(rng.normal(size=200))
        data = (X, y)

        def model(d):
            w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 1.0))
            with pyro.plate("n", len(d[1])):
                pyro.sample("y", dist.Normal(d[0] @ w, s), obs=d[1])
        guide, modules = AutoNormal(model), []
        modules = [guide]
    else:
        m = zoo.get("gmm", n_components=3)
        data = m.validate(torch.from_numpy(gmm_data()))
        model, guide, modules = m.marginal_model, m.guide, [m]
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO()
    params = collect_parameters(lambda: elbo.differentiable_loss(model, guide, data), [guide, *modules])
    loss = TracedLoss(elbo, model, guide, data, params, num_steps=10)
    tr = pyro.poutine.trace(guide).get_trace(data)
    out["sites"] = sum(1 for s in tr.nodes.values() if s["type"] == "sample")
    out["reference_s"] = per_call(loss.reference, 50)
    example = loss._inputs(None, None)
    start = time.perf_counter()
    loss.build("graph")
    out["trace_s"] = time.perf_counter() - start
    graph = loss.graph
    out["graph_s"] = per_call(lambda: loss.guard.fn(None, None))
    out["operations"] = operations(graph)
    start = time.perf_counter()
    compiled = compile_graph(graph, example, fallback_random=True, vectorize=True)
    out["compile_s"] = time.perf_counter() - start
    out["compiled_s"] = per_call(lambda: compiled(*example), 1000)
    return out


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        sys.path[:0] = [str(HERE), str(HERE.parent)]
        print(json.dumps(measure(sys.argv[2])))
        return 0
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    from nuts_bench import machine

    print(machine(), flush=True)
    results = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as cache:
            runs = []
            for state in ("cold", "cached"):
                done = subprocess.run([sys.executable, __file__, "--child", case], capture_output=True, text=True,
                                      env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONWARNINGS": "ignore"})
                if done.returncode:
                    raise RuntimeError(done.stderr[-3000:])
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = dict(runs[1], compile_cold_s=runs[0]["compile_s"], compile_cached_s=runs[1]["compile_s"])
        r["dispatch_per_op_s"] = (r["graph_s"] - r["compiled_s"]) / r["operations"]
        r["graph_saving"] = 1 - r["graph_s"] / r["reference_s"]
        if "sites" in r:
            r["pyro_per_site_s"] = r["reference_s"] / r["sites"]
        results[case] = r
        print(case, json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    (HERE / "routes_bench.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
