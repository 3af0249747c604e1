"""Pyro's own NUTS kernel (``run_nuts(engine="pyro")``), the reference engine, through its public API only:
``initialize_model`` builds the potential (counted here, so the leapfrog steps of each draw are known), and
``NUTS(potential_fn=..., transforms=...)`` samples it with Pyro's own warm-up. Per draw: the step size,
whether it diverged (``diagnostics()``), the leapfrog steps and the tree depth they imply; the chain's
acceptance rate is Pyro's (``diagnostics()["acceptance rate"]``: the fraction of draws that moved).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from pyro.infer import NUTS
from pyro.infer.autoguide.initialization import init_to_value
from pyro.infer.mcmc.util import initialize_model
from tqdm import tqdm

from inference.initialization import init_to_uniform_any


def pyro_chain(model_fn, data, values, *, max_plate_nesting: int, warmup_steps: int, num_samples: int,
               target_accept: float, max_tree_depth: int, dense_mass: bool, jit: bool, desc: str, progress: bool,
               position: int = 0):
    """One chain of Pyro's NUTS kernel on ``model_fn(data)`` from ``values`` (constrained; the other sites
    as ``init_to_uniform_any``): constrained draws, per-draw statistics (with ``acceptance``, the chain's),
    and no adaptation record."""
    strategy = init_to_value(values=dict(values), fallback=init_to_uniform_any) if values else init_to_uniform_any
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        params, potential_fn, transforms, _ = initialize_model(
            model_fn, (data,), max_plate_nesting=max_plate_nesting, jit_compile=jit, skip_jit_warnings=True,
            init_strategy=strategy)
    calls = [0]

    def counted(z):
        calls[0] += 1
        return potential_fn(z)

    kernel = NUTS(potential_fn=counted, transforms=transforms, target_accept_prob=target_accept,
                  max_tree_depth=max_tree_depth, full_mass=dense_mass)
    kernel.initial_params = params
    kernel.setup(warmup_steps)
    draws: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    stats = {k: np.zeros(num_samples) for k in ("step_size", "n_steps", "tree_depth")}
    stats["diverging"] = np.zeros(num_samples, dtype=bool)
    n_div = 0
    bar = tqdm(total=warmup_steps + num_samples, desc=desc, disable=None if progress else True, leave=False,
               position=position)
    try:
        for i in range(warmup_steps + num_samples):
            calls[0] = 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
                params = kernel.sample(params)
            j = i - warmup_steps
            if j >= 0:
                for k, v in params.items():
                    t = transforms.get(k)
                    draws[k].append((t.inv(v) if t is not None else v).detach().clone())
                divs = len(kernel.diagnostics()["divergences"])
                stats["diverging"][j] = divs > n_div
                stats["step_size"][j] = kernel.step_size
                stats["n_steps"][j] = calls[0]
                stats["tree_depth"][j] = math.ceil(math.log2(calls[0] + 1)) if calls[0] else 0
                n_div = divs
            if i % 10 == 0 or i == warmup_steps + num_samples - 1:
                bar.set_postfix(phase="warmup" if j < 0 else "sample", step=f"{kernel.step_size:.3g}",
                                div=n_div)
            bar.update()
        stats["acceptance"] = round(float(kernel.diagnostics()["acceptance rate"]), 4)
    finally:
        bar.close()
        kernel.cleanup()
    return {k: torch.stack(v) for k, v in draws.items()}, stats, None
