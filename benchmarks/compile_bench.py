"""Inductor two ways on the traced graph of a NUTS potential: ``inference.tracing.compile_graph`` (the explicit
``torch._inductor.compile`` under a tracing context, what the zoo runs) against
``torch.compile(graph, fullgraph=True, backend="inductor")`` with the same Inductor options.

    python benchmarks/compile_bench.py            # the "Compiling the traced graph" lines of benchmarks/README.md

Per potential (the GMM and eight schools of ``defaults_bench``), each route in a fresh process with an
empty Inductor cache ("cold"), then in another fresh process with the cache the first one filled ("warm"):
seconds to compile (``torch.compile``: its first call, which compiles), seconds per call afterwards (one
thread, median of repeated calls), Inductor's FX graph cache hits and misses, and the largest difference
of the outputs from the uncompiled graph. Both routes run in the same run, so their ratio holds under load.
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
CASES = ("gmm", "schools")
ROUTES = ("explicit", "torch.compile")


def measure(case: str, route: str) -> dict:
    import pyro
    import torch
    from torch._dynamo.utils import counters

    from defaults_bench import pyro_data, pyro_models
    from inference.potential import Potential
    from inference.tracing import compile_graph, fence_accumulating_scatters, trace_graph

    torch.set_num_threads(1)
    p = Potential(pyro_models()[case], pyro_data(case), max_plate_nesting=1, route="graph")
    theta = p.flatten(p.prototypes)
    example = [torch.from_numpy(theta), *p.leaves]
    with pyro.validation_enabled(False):
        graph = trace_graph(p._value_and_grad, *example)
    expected = graph(*example)
    start = time.perf_counter()
    if route == "explicit":
        fn = compile_graph(graph, example)
    else:
        fn = torch.compile(fence_accumulating_scatters(graph), fullgraph=True, backend="inductor", dynamic=False,
                           options={"cpp.threads": 1, "cpp.simdlen": 0, "fallback_random": False})
        fn(*example)   # compiles
    compile_s = time.perf_counter() - start
    got = fn(*example)
    times = []
    for _ in range(7):
        begin = time.perf_counter()
        for _ in range(300):
            fn(*example)
        times.append((time.perf_counter() - begin) / 300)
    error = max(float((a - b).abs().max()) for a, b in zip(got, expected))
    return {"compile_s": compile_s, "call_s": statistics.median(times), "max_abs_error": error,
            "fxgraph_hit": counters["inductor"]["fxgraph_cache_hit"],
            "fxgraph_miss": counters["inductor"]["fxgraph_cache_miss"]}


def main() -> int:
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
        return 0
    results = {}
    for case in CASES:
        for route in ROUTES:
            with tempfile.TemporaryDirectory() as cache:
                runs = {}
                for state in ("cold", "warm"):
                    done = subprocess.run([sys.executable, __file__, "--child", case, route], capture_output=True,
                                          text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache,
                                                          "PYTHONWARNINGS": "ignore"})
                    if done.returncode:
                        raise RuntimeError(done.stderr[-3000:])
                    runs[state] = json.loads(done.stdout.strip().splitlines()[-1])
            results[f"{case} {route}"] = runs
            print(case, route, json.dumps(runs), flush=True)
    (HERE / "compile_bench.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
