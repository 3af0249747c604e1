"""SVI that converges or says so (issue 19): ``fit_svi``'s defaults against the closed-form posterior.

Cases (plain Pyro models, as a user writes them):

- ``normal``: ``mu ~ Normal(0, prior_sd)``, ``obs ~ Normal(mu, 1)`` in a plate of N = 200 points drawn
  from N(3, 1) and shifted by ``shift``; the posterior is Normal in closed form. Reported: (mean - exact) /
  exact sd, sd / exact sd, steps taken, wall time, k-hat of the guide.
- ``correlated``: a 2-D Gaussian posterior of correlation -0.995 (unit sds) fitted with the default
  mean-field guide: k-hat and the verdict of ``inference.diagnose``.

Settings: ``defaults`` (``fit_svi(model, x)``), ``clip10`` (defaults with ``clip_norm=10``, the previous
default) and ``old`` (the previous defaults: 2000 fixed steps, Adam lr 0.01 decaying 100-fold, clipping 10).

    python -u benchmarks/svi_convergence.py            # seeds 0-2, writes benchmarks/svi_convergence.json
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

import inference

SETTINGS = {"defaults": {}, "clip10": {"clip_norm": 10.0},
            "old": {"converge": False, "num_steps": 2000, "lr": 0.01, "lr_decay": 0.01, "clip_norm": 10.0}}
CASES = {"prior 100, +40": (100.0, 40.0), "prior 10, +0": (10.0, 0.0)}


def normal_case(prior_sd: float, shift: float, N: int = 200):
    x = torch.randn(N, generator=torch.Generator().manual_seed(1)) + 3.0 + shift

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, prior_sd))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    precision = 1 / prior_sd ** 2 + N
    return model, x, float(x.sum()) / precision, precision ** -0.5


def correlated(data):
    z1 = pyro.sample("z1", dist.Normal(0.0, 1.0))
    pyro.sample("z2", dist.Normal(-0.995 * z1, math.sqrt(1 - 0.995 ** 2)))


def main(seeds=(0, 1, 2)) -> list[dict]:
    warnings.simplefilter("ignore")
    rows = []
    for case, (prior_sd, shift) in CASES.items():
        model, x, mean, sd = normal_case(prior_sd, shift)
        for setting, kwargs in SETTINGS.items():
            for seed in seeds:
                start = time.perf_counter()
                post = inference.fit_svi(model, x, seed=seed, progress=False, **kwargs)
                wall = time.perf_counter() - start
                d = post.samples["mu"].flatten().double()
                diagnosis = inference.diagnose(post)
                rows.append({"case": case, "setting": setting, "seed": seed, "smd": (float(d.mean()) - mean) / sd,
                             "sd_ratio": float(d.std()) / sd, "steps": post.settings.get("steps_taken"),
                             "converged": post.settings.get("converged"), "khat": diagnosis.khat, "wall_s": wall,
                             "verdict": diagnosis.verdict})
                print(json.dumps(rows[-1]), flush=True)
    for seed in seeds:
        start = time.perf_counter()
        post = inference.fit_svi(correlated, None, seed=seed, progress=False)
        diagnosis = inference.diagnose(post)
        rows.append({"case": "correlated -0.995", "setting": "defaults", "seed": seed,
                     "steps": post.settings["steps_taken"], "converged": post.settings["converged"],
                     "khat": diagnosis.khat, "wall_s": time.perf_counter() - start, "verdict": diagnosis.verdict,
                     "sd_z1": float(post.flat("z1").std())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    out = main(tuple(int(s) for s in sys.argv[1:]) or (0, 1, 2))
    Path(__file__).with_name("svi_convergence.json").write_text(json.dumps(out, indent=1) + "\n")
