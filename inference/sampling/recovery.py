"""Enumerated discrete sites recovered after sampling: each drawn from its conditional posterior given each
posterior draw (Pyro's ``infer_discrete``), or its MAP configuration."""

from __future__ import annotations

import pyro.poutine as poutine
import torch
from pyro.infer import infer_discrete
from tqdm import tqdm

from inference.posterior import Posterior


def discrete_draws(posterior: Posterior, *, temperature: int = 1, progress: bool = True) -> dict[str, torch.Tensor]:
    """Draw every enumerated site given each posterior draw (``infer_discrete``), ``(chain, draw, ...)``.

    ``temperature=1`` samples from the conditional posterior; ``temperature=0`` gives the MAP
    (Viterbi-like) configuration per draw.
    """
    target, data = posterior.target, posterior.data
    info = target.info(data)   # the explicit story: discrete latents as sample sites
    C, S = posterior.num_chains, posterior.num_draws
    flat = {k: v.reshape(C * S, *v.shape[2:]) for k, v in posterior.samples.items() if k in info.latent}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in info.enumerated}
    with torch.no_grad():
        for i in tqdm(range(C * S), desc="infer_discrete", disable=None if progress else True,
                      leave=False):
            conditioned = poutine.condition(target.model_fn, data={k: v[i] for k, v in flat.items()})
            decoded = infer_discrete(conditioned, first_available_dim=-1 - info.max_plate_nesting,
                                     temperature=temperature)
            trace = poutine.trace(decoded).get_trace(data)
            for k in info.enumerated:
                out[k].append(trace.nodes[k]["value"])
    return {k: torch.stack(v).reshape(C, S, *v[0].shape) for k, v in out.items()}
