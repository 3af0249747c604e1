"""Gibbs sampling with a model's own conditionals: ``run_gibbs`` for models with ``gibbs_sweep``.

A zoo model that knows its full conditionals in closed form (the HMM: state paths by forward filtering,
backward sampling and conjugate Dirichlet rows; the GMM: assignments and conjugate weights and locations)
offers ``gibbs_sweep(data, values, rng) -> (values, block)`` (``zoo.base.ZooModel``). Per iteration,
:func:`run_gibbs` makes one sweep, then one NUTS transition of the block (the global sites without a
conjugate prior, e.g. Gaussian scales under a LogNormal prior) on its conditional log density given
everything the sweep drew, with Stan's warmup of that transition
(:class:`~inference.sampling.adaptation.WindowAdaptation`). The block's density is the model's closed
form: it is checked against Pyro's log density of ``model`` conditioned on the sweep's values (gradients,
and value differences between points) before sampling, as every closed form is.

Chains run in forked processes with per-chain seeds from one seed (as ``run_nuts``), each from the
model's ``initial_values``; the result is a :class:`~inference.posterior.Posterior` with method "gibbs",
draws of the global sites, and NUTS's per-draw statistics of the block.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pyro.poutine as poutine
import torch
from tqdm import tqdm

from inference.posterior import Posterior
from inference.potential import Potential
from inference.sampling import nuts
from inference.sampling.adaptation import WindowAdaptation, curvature
from inference.sampling.chains import check_chain_settings, num_workers, parallel
from inference.sampling.integrator import Point, evaluate
from inference.sampling.metric import make_metric
from inference.target import as_target, chain_seed, set_seed
from inference.tracing import mismatch

log = logging.getLogger(__name__)


def run_gibbs(model, data, *, num_samples: int = 1000, warmup_steps: int = 500, num_chains: int = 4, seed: int = 0,
              target_accept: float = 0.8, max_tree_depth: int = 10, chain_method: str = "parallel", coords=None,
              dims=None, progress: bool = True) -> Posterior:
    """Sample the posterior of a zoo ``model`` with ``gibbs_sweep`` given ``data`` by Gibbs sampling (see the
    module docstring). ``warmup_steps`` sweeps per chain are discarded (and adapt the block's NUTS step);
    the other settings are ``run_nuts``'s."""
    target_accept = check_chain_settings(num_samples, warmup_steps, num_chains, max_tree_depth, target_accept,
                                         chain_method)
    target = as_target(model)
    sweep = getattr(target.model, "gibbs_sweep", None)
    if not callable(sweep):
        raise ValueError(f"model: {target.name!r} has no gibbs_sweep (its conditionals in closed form); run_nuts "
                         "samples any model, discrete latents that cannot be enumerated by HMC-within-Gibbs")
    data = target.validate(data)
    start = time.perf_counter()
    _check_block(target, data, *sweep(data, target.initial_values(data, seed=chain_seed(seed, 0)),
                                      np.random.default_rng(seed)))

    def chain(c: int, position: int = 0):
        cseed = chain_seed(seed, c)
        set_seed(cseed)
        return _chain(target, data, sweep, cseed, num_samples=num_samples, warmup_steps=warmup_steps,
                      target_accept=target_accept, max_tree_depth=max_tree_depth, progress=progress,
                      desc=f"Gibbs chain {c + 1}/{num_chains}", position=position)

    workers = num_workers(num_chains, chain_method, data)
    results = parallel(chain, num_chains, workers) if workers > 1 else [chain(c) for c in range(num_chains)]
    chains, stats, adapted = zip(*results)
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    post = Posterior(target, data, samples, method="gibbs", wall_time=time.perf_counter() - start,
                     sample_stats={k: np.stack([s[k] for s in stats]) for k in stats[0]}, coords=coords, dims=dims,
                     adaptation={k: np.stack([a[k] for a in adapted]) for k in adapted[0]},
                     settings=dict(num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, seed=seed,
                                   target_accept=target_accept, workers=workers))
    log.info("Gibbs %s: %d chains x %d draws in %.1fs", target.name, num_chains, num_samples, post.wall_time)
    return post


class _Block:
    """The block's log density on a flat unconstrained vector; its function changes with every sweep."""

    def __init__(self, transforms, values):
        self.names, self.transforms = tuple(transforms), dict(transforms)
        self.shapes = {k: tuple(self.transforms[k].inv(values[k]).shape) for k in self.names}
        self.sizes = [math.prod(self.shapes[k]) for k in self.names]
        self.dtypes = {k: values[k].dtype for k in self.names}
        self.fn = None

    def flatten(self, values) -> np.ndarray:
        return np.concatenate([self.transforms[k].inv(values[k]).double().numpy().reshape(-1) for k in self.names])

    def unflatten(self, theta) -> dict[str, np.ndarray]:
        parts = np.split(np.asarray(theta), np.cumsum(self.sizes)[:-1])
        return {k: p.reshape(self.shapes[k]) for k, p in zip(self.names, parts)}

    def constrain(self, theta) -> dict[str, torch.Tensor]:
        return {k: self.transforms[k](torch.from_numpy(u)).to(self.dtypes[k]) for k, u in self.unflatten(theta).items()}

    def __call__(self, theta):
        value, grad = self.fn(self.unflatten(theta))
        return value, np.concatenate([np.asarray(grad[k], dtype=np.float64).reshape(-1) for k in self.names])


def _chain(target, data, sweep, seed: int, *, num_samples, warmup_steps, target_accept, max_tree_depth, progress,
           desc, position):
    """One chain: sweeps, each followed by a NUTS transition of the block (when the model returns one)."""
    rng = np.random.default_rng(seed)
    values = {k: torch.as_tensor(v) for k, v in target.initial_values(data, seed=seed).items()}
    sites = target.global_sites(data)
    draws: dict[str, list] = {k: [] for k in sites}
    stats: dict[str, list] = {}
    density = state = warmup = None
    step = metric = None
    with tqdm(total=warmup_steps + num_samples, desc=desc, disable=None if progress else True, leave=False,
              position=position) as bar:
        for i in range(warmup_steps + num_samples):
            values, block = sweep(data, values, rng)
            if block is not None:
                if density is None:
                    density = _Block(block[0], values)
                density.fn = block[1]
                state = _point(density, density.flatten(values) if state is None else state.theta)
                if warmup is None:
                    metric = make_metric("diag", 1 / curvature(density, state.theta))
                    warmup = WindowAdaptation(density, state, metric, warmup_steps, target_accept, rng)
                    step, metric = warmup.step_size, warmup.metric
                state, info = nuts.transition(density, state, step, metric, rng, max_tree_depth)
                values = {**values, **density.constrain(state.theta)}
                if i < warmup_steps:
                    step, metric = warmup.update(i, state, info["acceptance_rate"])
                    if i == warmup_steps - 1:
                        step, metric = warmup.final()
                else:
                    for k in (*nuts.STATS[1:], "diverging"):
                        stats.setdefault(k, []).append(info[k])
                    stats.setdefault("step_size", []).append(step)
            if i >= warmup_steps:
                for k in sites:
                    draws[k].append(values[k])
            bar.update()
    adapted = {"step_size": step, "inverse_metric": metric.inverse} if density is not None else {}
    return {k: torch.stack(v) for k, v in draws.items()}, {k: np.asarray(v) for k, v in stats.items()}, adapted


def _point(density, theta) -> Point:
    with np.errstate(all="ignore"):
        logp, grad = evaluate(density, theta)
    return Point(theta, None, grad, logp, None)


def _check_block(target, data, values, block) -> None:
    """The block's closed form against Pyro's log density of ``model`` conditioned on the sweep's values:
    the same gradients, and the same value differences, at the sweep's point and two near it; a model
    whose block does not match is an error in the model."""
    if block is None:
        return
    transforms, fn, conditioned = block
    reference = Potential(poutine.condition(target.model_fn, data=conditioned()), data, route="eager",
                          max_plate_nesting=target.info(data).max_plate_nesting, name=target.name)
    if set(reference.names) != set(transforms) or not all(   # the same sites, on the same unconstrained coordinates
            torch.allclose(reference.transforms[k].inv(values[k]), transforms[k].inv(values[k])) for k in transforms):
        raise ValueError(f"{target.name}.gibbs_sweep: the block covers {sorted(transforms)}, but the sites left are "
                         f"{sorted(reference.names)}, on the coordinates of biject_to(support)")
    density = _Block({k: transforms[k] for k in reference.names}, values)   # the reference's order
    density.fn = fn
    rng = np.random.default_rng(0)
    base = reference.flatten(values)
    points = [base, base + rng.normal(0, 0.1, base.size), base + rng.normal(0, 0.3, base.size)]
    ref0, got0 = reference.reference(points[0]), density(density.flatten(reference.constrain(points[0])))
    for theta in points:
        got = density(density.flatten(reference.constrain(theta)))
        ref = reference.reference(theta)
        why = mismatch((got[0] - got0[0] + ref0[0], got[1]), ref, reference.dtype)
        if why:
            raise RuntimeError(f"{target.name}.gibbs_sweep: the block's log density {why}; it does not match the model")
