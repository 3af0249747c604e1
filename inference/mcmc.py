"""NUTS for any Pyro model, discrete latents summed out.

Each chain is Pyro's NUTS kernel driven by a small loop of our own, which gives per-draw
statistics (``diverging``, step size, acceptance, number of leapfrog steps), per-chain seeds
derived from one user seed, per-chain starting values, and a progress bar. Sites marked for
enumeration are summed out by the kernel's potential (``TraceEnum`` contraction); their posterior
is recovered on request with ``infer_discrete``.

The kernel's potential is Pyro's: the model traced at every leapfrog step, and autograd. A zoo
model that can give its log density in closed form (``ZooModel.log_density``: unconstrained
coordinates, exact gradient, numpy) is sampled by the same algorithm written for a flat vector
(:mod:`inference.nuts`) instead, after a check that the closed form equals the Pyro log joint; for
a small model such as a 2-state HMM, where Pyro's overhead of a few milliseconds per leapfrog step
is nearly all the cost, that is an order of magnitude faster (``benchmarks/hmm_bench.py``).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import os
import time
import traceback
import warnings
from typing import Mapping, Sequence

import numpy as np
import pyro.poutine as poutine
import torch
from pyro.infer import NUTS, infer_discrete
from pyro.infer.autoguide.initialization import init_to_value
from pyro.ops.integrator import potential_grad
from tqdm import tqdm

from inference import nuts
from inference.posterior import Posterior
from inference.target import as_target, chain_seed, init_to_uniform_any, set_seed

log = logging.getLogger(__name__)


def run_nuts(model, data, *, num_samples: int = 1000, warmup_steps: int = 1000, num_chains: int = 4,
             seed: int = 0, target_accept: float = 0.8, jit: bool | None = None, max_tree_depth: int = 10,
             dense_mass: bool = False, init: Mapping | Sequence[Mapping] | None = None,
             recover_discrete: bool = False, chain_method: str = "parallel", coords=None,
             closed_form: bool = True, progress: bool = True) -> Posterior:
    """Sample the posterior of ``model`` given ``data`` with NUTS.

    :param model: a zoo model or a plain Pyro callable ``model(data)``.
    :param jit: compile the potential with ``torch.jit`` (default False).
    :param init: starting values (constrained), one dict for all chains or one per chain. Default:
        the zoo model's data-driven ``initial_values`` (seeded per chain), else uniform in (-2, 2)
        on the unconstrained scale.
    :param recover_discrete: also draw every enumerated site from its conditional posterior
        (``infer_discrete``, one draw per posterior draw).
    :param chain_method: "parallel" runs chains in forked worker processes, one per CPU core (on the
        CPU only); "sequential" runs them one after another. Results are identical either way.
    :param closed_form: when the zoo model has a ``log_density``, sample it with the closed-form
        sampler of :mod:`inference.nuts` (diagonal metric; ``dense_mass`` uses Pyro's kernel). False:
        Pyro's kernel on the traced model, as for any other model.
    """
    for name, value, low in (("num_samples", num_samples, 1), ("warmup_steps", warmup_steps, 0),
                             ("num_chains", num_chains, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept: expected a probability in (0, 1), got {target_accept!r}")
    if chain_method not in ("parallel", "sequential"):
        raise ValueError(f"chain_method: expected 'parallel' or 'sequential', got {chain_method!r}")
    if init is not None and not isinstance(init, Mapping) and len(init) != num_chains:
        raise ValueError(f"init: expected one dict or {num_chains} dicts (one per chain), got {len(init)}")
    target = as_target(model)
    data = target.validate(data)
    info = target.info(data, marginal=True)   # NUTS samples the marginal form (zoo.base.ZooModel.marginal_model)
    jit = bool(jit)
    density = checked_log_density(target, data) if closed_form and not dense_mass else None

    def chain(c: int, position: int = 0):
        cseed = chain_seed(seed, c)
        set_seed(cseed)
        values = init if isinstance(init, Mapping) else init[c] if init is not None else None
        if values is None:
            values = target.initial_values(data, seed=cseed)
        desc = f"NUTS chain {c + 1}/{num_chains}"
        if density is not None:
            return _closed_form_chain(density, values, cseed, num_samples=num_samples, warmup_steps=warmup_steps,
                                      target_accept=target_accept, max_tree_depth=max_tree_depth, desc=desc,
                                      progress=progress, position=position)
        strategy = init_to_value(values=dict(values), fallback=init_to_uniform_any) if values else init_to_uniform_any
        kernel = NUTS(target.marginal_fn, target_accept_prob=target_accept, jit_compile=jit,
                      ignore_jit_warnings=True, max_plate_nesting=info.max_plate_nesting,
                      max_tree_depth=max_tree_depth, full_mass=dense_mass, init_strategy=strategy)
        return _run_chain(kernel, data, warmup_steps, num_samples, desc=desc, progress=progress, position=position)

    start = time.perf_counter()
    workers = _num_workers(num_chains, chain_method, data)
    if workers > 1:
        results = _parallel(chain, num_chains, workers)
    else:
        results = [chain(c) for c in range(num_chains)]
    chains, stats = zip(*results)
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    sample_stats = {k: np.stack([s[k] for s in stats]) for k in stats[0]}
    posterior = Posterior(
        target, data, samples, method="nuts", wall_time=time.perf_counter() - start,
        sample_stats=sample_stats, coords=coords,
        settings=dict(num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, seed=seed,
                      target_accept=target_accept, jit=jit, dense_mass=dense_mass, workers=workers,
                      potential="closed form" if density is not None else "pyro trace"),
    )
    divergences = int(sample_stats["diverging"].sum())
    log.info("NUTS %s: %d chains x %d draws in %.1fs, %d divergences", target.name, num_chains,
             num_samples, posterior.wall_time, divergences)
    if recover_discrete and target.info(data).enumerated:
        posterior.samples.update(discrete_draws(posterior, progress=progress))
    return posterior


def checked_log_density(target, data):
    """The model's closed-form log density as ``(transforms, fn, prototypes)``, or None when it has none.

    Checked first: it must cover the latent sites of the marginal model and equal its Pyro log joint
    plus the log Jacobians, at a draw from the prior, to 1e-6 (relative; 1000 machine epsilons for a
    float32 model); a model whose closed form disagrees with its own Pyro model is an error, not a
    silent change of target. ``prototypes`` are that draw: the shape and dtype of every site.
    """
    density = target.log_density(data)
    if density is None:
        return None
    transforms, fn = density
    latent = target.info(data, marginal=True).latent
    if set(transforms) != set(latent):
        raise ValueError(f"{target.name}.log_density: covers {sorted(transforms)}, but the latent sites are "
                         f"{sorted(latent)}")
    with torch.no_grad():
        values = {k: v for k, v in _prior_draw(target, data).items() if k in transforms}   # the model's dtype
        u = {k: transforms[k].inv(v.double()) for k, v in values.items()}
        trace = poutine.trace(poutine.condition(target.marginal_fn, data=values)).get_trace(data)
        expected = float(trace.log_prob_sum()) + sum(
            float(transforms[k].log_abs_det_jacobian(u[k], values[k].double()).sum()) for k in u)
    got = fn({k: v.numpy() for k, v in u.items()})[0]
    tolerance = max(1e-6, 1e3 * max(torch.finfo(v.dtype).eps for v in values.values()))
    if not abs(got - expected) <= tolerance * max(1.0, abs(expected)):
        raise RuntimeError(f"{target.name}.log_density: {got!r} at a prior draw, but the Pyro log joint "
                           f"there is {expected!r}; the closed form does not match the model")
    return transforms, fn, values


def _prior_draw(target, data) -> dict[str, torch.Tensor]:
    """One draw of every latent site from the marginal model's prior (seeded, RNG left untouched)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = poutine.trace(poutine.seed(target.marginal_fn, rng_seed=0)).get_trace(data)
    return {k: s["value"] for k, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}


def _closed_form_chain(density, values, seed: int, **options):
    """One chain of :func:`inference.nuts.sample` on the flattened closed form; constrained draws in
    the model's dtype."""
    transforms, fn, prototypes = density
    names = tuple(transforms)
    shapes = {k: tuple(transforms[k].inverse_shape(prototypes[k].shape)) for k in names}   # unconstrained
    sizes = [math.prod(shapes[k]) for k in names]
    splits = np.cumsum(sizes)[:-1]

    def unflatten(theta):
        return {k: part.reshape(*theta.shape[:-1], *shapes[k]) for k, part in zip(names, np.split(theta, splits, -1))}

    def log_density(theta):
        value, grad = fn(unflatten(theta))
        return value, np.concatenate([np.asarray(grad[k], dtype=np.float64).reshape(-1) for k in names])

    rng = np.random.default_rng([seed, 1])   # given values, else uniform in (-2, 2) on the unconstrained scale
    start = np.concatenate([
        transforms[k].inv(torch.as_tensor(values[k], dtype=torch.float64)).numpy().reshape(-1)
        if values and k in values else rng.uniform(-2, 2, n) for k, n in zip(names, sizes)])
    draws, stats = nuts.sample(log_density, start, seed=seed, **options)
    with torch.no_grad():
        constrained = {k: transforms[k](torch.from_numpy(np.ascontiguousarray(v))).to(prototypes[k].dtype)
                       for k, v in unflatten(draws).items()}
    return constrained, stats


def _num_workers(num_chains: int, chain_method: str, data) -> int:
    if chain_method == "sequential" or num_chains == 1 or "fork" not in mp.get_all_start_methods():
        return 1
    on_gpu = any(t.is_cuda for t in _tensors(data)) or (torch.cuda.is_available() and torch.cuda.is_initialized())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if on_gpu else max(1, min(num_chains, cores))


def _tensors(data):
    if torch.is_tensor(data):
        return [data]
    values = data.values() if isinstance(data, Mapping) else data if isinstance(data, (list, tuple)) else []
    return [v for v in values if torch.is_tensor(v)]


def _parallel(chain, num_chains: int, workers: int):
    """Run ``chain(c, position)`` for every chain in forked processes, ``workers`` at a time.

    Forking (not spawning) means the model needs no pickling; each worker uses one torch thread, as
    PyTorch's own DataLoader workers do. Results come back through pipes.
    """
    ctx = mp.get_context("fork")
    results = [None] * num_chains
    for first in range(0, num_chains, workers):
        batch = list(range(first, min(num_chains, first + workers)))
        procs = []
        for position, c in enumerate(batch):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, args=(chain, c, position, sender), daemon=True)
            proc.start()
            sender.close()
            procs.append((c, proc, receiver))
        for c, proc, receiver in procs:
            try:
                status, payload = receiver.recv()
            except EOFError:
                status, payload = "error", f"worker for chain {c} died (exit code {proc.exitcode})"
            proc.join()
            if status == "error":
                for _, other, _ in procs:
                    other.terminate()
                raise RuntimeError(f"NUTS chain {c} failed: {payload}")
            draws, stats = payload
            results[c] = ({k: torch.from_numpy(v) for k, v in draws.items()}, stats)
    return results


def _worker(chain, c, position, sender):
    torch.set_num_threads(1)
    try:
        draws, stats = chain(c, position)
        # numpy, not tensors: torch would share tensor memory through file descriptors that die with us
        sender.send(("ok", ({k: v.numpy() for k, v in draws.items()}, stats)))
    except BaseException as e:  # report, do not hang the parent
        sender.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        sender.close()


def _run_chain(kernel, data, warmup_steps, num_samples, *, desc, progress, position=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        kernel.setup(warmup_steps, data)
    if warmup_steps:
        _curvature_metric(kernel)
    calls = [0]
    potential = kernel.potential_fn

    def counted(z):
        calls[0] += 1
        return potential(z)

    kernel.potential_fn = counted
    params = kernel.initial_params
    draws: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    stats = {k: np.zeros(num_samples) for k in ("step_size", "acceptance_rate", "n_steps", "tree_depth")}
    stats["diverging"] = np.zeros(num_samples, dtype=bool)
    prev_mean, n_div = 0.0, 0
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
                    t = kernel.transforms.get(k)
                    draws[k].append((t.inv(v) if t is not None else v).detach().clone())
                divs = len(kernel.diagnostics()["divergences"])
                mean_accept = float(getattr(kernel, "_mean_accept_prob", float("nan")))  # running mean
                stats["diverging"][j] = divs > n_div
                stats["step_size"][j] = kernel.step_size
                stats["acceptance_rate"][j] = (j + 1) * mean_accept - j * prev_mean
                stats["n_steps"][j] = calls[0]
                stats["tree_depth"][j] = math.ceil(math.log2(calls[0] + 1)) if calls[0] else 0
                n_div, prev_mean = divs, mean_accept
            if i % 10 == 0 or i == warmup_steps + num_samples - 1:
                bar.set_postfix(phase="warmup" if j < 0 else "sample", step=f"{kernel.step_size:.3g}",
                                div=n_div)
            bar.update()
    finally:
        bar.close()
        kernel.cleanup()
    return {k: torch.stack(v) for k, v in draws.items()}, stats


def _curvature_metric(kernel) -> None:
    """Start Pyro's diagonal metric at the curvature of the potential at the starting point
    (:func:`inference.nuts.curvature`), not at the identity.

    Stan's schedule, which Pyro follows, keeps the unit metric for the first 100 warmup iterations;
    on a posterior whose scales differ by 10x that costs trees of 30+ leapfrog steps. Warmup
    re-estimates the metric from draws as before.
    """
    z = {k: v.detach() for k, v in kernel.initial_params.items()}
    names = tuple(sorted(z))
    if not names:
        return
    dtype = z[names[0]].dtype
    sizes = [z[k].numel() for k in names]

    def log_density(theta):
        parts = torch.as_tensor(theta, dtype=dtype).split(sizes)
        grads, potential = potential_grad(kernel.potential_fn, {k: p.reshape(z[k].shape) for k, p in zip(names, parts)})
        return -float(potential), -torch.cat([grads[k].reshape(-1) for k in names]).double().numpy()

    start = torch.cat([z[k].reshape(-1) for k in names]).double().numpy()
    inverse = torch.as_tensor(1 / nuts.curvature(log_density, start, eps=torch.finfo(dtype).eps), dtype=dtype)
    dense = kernel.mass_matrix_adapter.inverse_mass_matrix[names].dim() == 2
    kernel.mass_matrix_adapter.inverse_mass_matrix = {names: inverse.diag() if dense else inverse}
    kernel._adapter.reset_step_size_adaptation(z)   # a step size for the new metric


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
