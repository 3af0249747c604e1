"""NUTS for any Pyro model, discrete latents summed out.

One sampler, :mod:`inference.nuts` (multinomial NUTS with Stan's warmup on a flat vector), for every
model. Its log density is the model's closed form when it has one (``ZooModel.log_density``, checked
against the Pyro log joint first), else the model's own Pyro log joint with enumerated sites summed
out, traced once with its gradient and compiled (:class:`inference.potential.Potential`): no Pyro
trace and no autograd per leapfrog step. Chains run in forked worker processes with per-chain seeds
derived from one user seed; per-draw statistics carry ArviZ's names (``energy``, ``lp``,
``diverging``, ``tree_depth``, ...). Enumerated sites are recovered on request with
``infer_discrete``. Pyro's own NUTS kernel remains as ``engine="pyro"``, the reference.
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
from inference.potential import Potential, has_compiler
from inference.target import as_target, chain_seed, init_to_uniform_any, refuse_discrete, set_seed
from inference.validation import check_setting

log = logging.getLogger(__name__)


ENGINES = ("zoo", "pyro")
POTENTIALS = ("auto", "closed_form", "compiled", "graph", "eager")
#: with ``potential="auto"``, Inductor compiles the traced potential when the run has at least this
#: many NUTS iterations over all chains: enough leapfrog steps for the time saved per step to pay for
#: the compile (the measurements behind it: benchmarks/README.md, "Numbers behind the code")
COMPILE_MIN_ITERATIONS = 2000


def run_nuts(model, data, *, num_samples: int = 1000, warmup_steps: int = 1000, num_chains: int = 4,
             seed: int = 0, target_accept: float = 0.8, max_tree_depth: int = 10, dense_mass: bool = False,
             init: Mapping | Sequence[Mapping] | None = None, recover_discrete: bool = False,
             chain_method: str = "parallel", coords=None, engine: str = "zoo", potential: str = "auto",
             jit: bool = False, progress: bool = True) -> Posterior:
    """Sample the posterior of ``model`` given ``data`` with NUTS.

    :param model: a zoo model or a plain Pyro callable ``model(data)``.
    :param engine: "zoo" (default): :mod:`inference.nuts` on a flat vector, whose log density is the
        model's closed form (``ZooModel.log_density``) when it has one, else the model's own Pyro log
        joint traced and compiled once (:class:`inference.potential.Potential`). "pyro": Pyro's NUTS
        kernel on the traced model (the reference; also what ``dense_mass=True`` uses).
    :param potential: for ``engine="zoo"``: "auto" (the closed form if any, else "compiled" for runs of
        at least ``COMPILE_MIN_ITERATIONS`` iterations when a C++ compiler is present, else "graph"),
        "closed_form", "compiled" (Inductor), "graph" (the traced graph, no compile) or "eager".
    :param jit: ``torch.jit`` for Pyro's kernel (``engine="pyro"`` only).
    :param init: starting values (constrained), one dict for all chains or one per chain. Default:
        the zoo model's data-driven ``initial_values`` (seeded per chain), else uniform in (-2, 2)
        on the unconstrained scale.
    :param recover_discrete: also draw every enumerated site from its conditional posterior
        (``infer_discrete``, one draw per posterior draw).
    :param chain_method: "parallel" runs chains in forked worker processes, one per CPU core (on the
        CPU only); "sequential" runs them one after another. Results are identical either way.
    """
    for name, value, low in (("num_samples", num_samples, 1), ("warmup_steps", warmup_steps, 0),
                             ("num_chains", num_chains, 1), ("max_tree_depth", max_tree_depth, 1)):
        check_setting(value, name, kind="int", minimum=low)
    target_accept = check_setting(target_accept, "target_accept", kind="probability")
    if chain_method not in ("parallel", "sequential"):
        raise ValueError(f"chain_method: expected 'parallel' or 'sequential', got {chain_method!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if potential not in POTENTIALS:
        raise ValueError(f"potential: expected one of {', '.join(POTENTIALS)}, got {potential!r}")
    if init is not None and not isinstance(init, Mapping) and len(init) != num_chains:
        raise ValueError(f"init: expected one dict or {num_chains} dicts (one per chain), got {len(init)}")
    target = as_target(model)
    data = target.validate(data)
    info = target.info(data, marginal=True)   # NUTS samples the marginal form (zoo.base.ZooModel.marginal_model)
    refuse_discrete(info, "NUTS")
    if dense_mass:
        engine = "pyro"
    start = time.perf_counter()
    density = None
    if engine == "zoo":
        if potential in ("auto", "closed_form"):
            density = checked_log_density(target, data)
            if density is None and potential == "closed_form":
                raise ValueError(f"potential: 'closed_form', but {target.name} has no log_density")
        if density is None:
            route = potential_route(potential, (warmup_steps + num_samples) * num_chains)
            density = Potential(target.marginal_fn, data, max_plate_nesting=info.max_plate_nesting, route=route)

    def chain(c: int, position: int = 0):
        cseed = chain_seed(seed, c)
        set_seed(cseed)
        values = init if isinstance(init, Mapping) else init[c] if init is not None else None
        if values is None:
            values = target.initial_values(data, seed=cseed)
        desc = f"NUTS chain {c + 1}/{num_chains}"
        if density is not None:
            return _flat_chain(density, values, cseed, num_samples=num_samples, warmup_steps=warmup_steps,
                               target_accept=target_accept, max_tree_depth=max_tree_depth, desc=desc,
                               progress=progress, position=position)
        strategy = init_to_value(values=dict(values), fallback=init_to_uniform_any) if values else init_to_uniform_any
        kernel = NUTS(target.marginal_fn, target_accept_prob=target_accept, jit_compile=jit,
                      ignore_jit_warnings=True, max_plate_nesting=info.max_plate_nesting,
                      max_tree_depth=max_tree_depth, full_mass=dense_mass, init_strategy=strategy)
        return _run_chain(kernel, data, warmup_steps, num_samples, desc=desc, progress=progress, position=position)

    workers = _num_workers(num_chains, chain_method, data)
    if workers > 1:
        results = _parallel(chain, num_chains, workers)
    else:
        results = [chain(c) for c in range(num_chains)]
    chains, stats = zip(*results)
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    sample_stats = {k: np.stack([s[k] for s in stats]) for k in stats[0]}
    route = "pyro kernel" if density is None else getattr(density, "route", "closed form")
    posterior = Posterior(
        target, data, samples, method="nuts", wall_time=time.perf_counter() - start,
        sample_stats=sample_stats, coords=coords,
        settings=dict(num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, seed=seed,
                      target_accept=target_accept, engine=engine, dense_mass=dense_mass, workers=workers,
                      potential=route, compile_seconds=round(getattr(density, "compile_seconds", 0.0), 2)),
    )
    divergences = int(sample_stats["diverging"].sum())
    log.info("NUTS %s: %d chains x %d draws in %.1fs (%s), %d divergences", target.name, num_chains,
             num_samples, posterior.wall_time, route, divergences)
    if recover_discrete and target.info(data).enumerated:
        posterior.samples.update(discrete_draws(posterior, progress=progress))
    return posterior


def potential_route(potential: str, iterations: int) -> str:
    """The route of a traced potential: "auto" compiles for runs of ``COMPILE_MIN_ITERATIONS`` or more
    (all chains) when a C++ compiler is present, and runs the traced graph otherwise."""
    if potential not in ("auto", "closed_form"):
        return potential
    return "compiled" if iterations >= COMPILE_MIN_ITERATIONS and has_compiler() else "graph"


class ClosedForm:
    """A model's closed-form log density (``ZooModel.log_density``) on the flat vector that
    :mod:`inference.nuts` samples: the same interface as :class:`inference.potential.Potential`."""

    route = "closed form"
    compile_seconds = 0.0

    def __init__(self, transforms, fn, prototypes):
        self.names = tuple(transforms)
        self.transforms, self.fn, self.prototypes = transforms, fn, prototypes
        self.shapes = {k: tuple(transforms[k].inverse_shape(prototypes[k].shape)) for k in self.names}
        self.sizes = [math.prod(self.shapes[k]) for k in self.names]

    def unflatten(self, theta):
        splits = np.cumsum(self.sizes)[:-1]
        return {k: part.reshape(tuple(theta.shape[:-1]) + self.shapes[k])
                for k, part in zip(self.names, np.split(theta, splits, -1))}

    def flatten(self, values) -> np.ndarray:
        return np.concatenate([self.transforms[k].inv(torch.as_tensor(values[k], dtype=torch.float64))
                               .numpy().reshape(-1) for k in self.names])

    def constrain(self, draws: np.ndarray) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {k: self.transforms[k](torch.from_numpy(np.ascontiguousarray(v))).to(self.prototypes[k].dtype)
                    for k, v in self.unflatten(draws).items()}

    def __call__(self, theta):
        value, grad = self.fn(self.unflatten(theta))
        return value, np.concatenate([np.asarray(grad[k], dtype=np.float64).reshape(-1) for k in self.names])


def checked_log_density(target, data) -> ClosedForm | None:
    """The model's closed-form log density, or None when it has none.

    Checked first: it must cover the latent sites of the marginal model and equal its Pyro log joint
    plus the log Jacobians, at a draw from the prior, to 1e-6 (relative; 1000 machine epsilons for a
    float32 model); a model whose closed form disagrees with its own Pyro model is an error, not a
    silent change of target.
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
    return ClosedForm(transforms, fn, values)


def _prior_draw(target, data) -> dict[str, torch.Tensor]:
    """One draw of every latent site from the marginal model's prior (seeded, RNG left untouched)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = poutine.trace(poutine.seed(target.marginal_fn, rng_seed=0)).get_trace(data)
    return {k: s["value"] for k, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}


def _flat_chain(density, values, seed: int, **options):
    """One chain of :func:`inference.nuts.sample` on ``density`` (a :class:`ClosedForm` or a
    :class:`~inference.potential.Potential`); constrained draws in the model's dtype. The start is
    ``values`` where given, else uniform in (-2, 2) on the unconstrained scale."""
    rng = np.random.default_rng([seed, 1])
    given = {k: values[k] for k in density.names if values and k in values}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # one chain, many tiny tensors: a thread pool only contends (benchmarks/README.md)
    try:
        start = density.flatten({**density.prototypes, **given})
        first = 0
        for k, n in zip(density.names, density.sizes):
            if k not in given:
                start[first:first + n] = rng.uniform(-2, 2, n)
            first += n
        draws, stats = nuts.sample(density, start, seed=seed, **options)
    finally:
        torch.set_num_threads(threads)
    return density.constrain(draws), stats


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
            if status == "interrupt":   # Ctrl-C reached the worker first: the parent's own interrupt follows
                for _, other, _ in procs:
                    other.terminate()
                raise KeyboardInterrupt
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
    except KeyboardInterrupt:
        sender.send(("interrupt", None))
    except BaseException as e:  # report, do not hang the parent
        sender.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        sender.close()


def _run_chain(kernel, data, warmup_steps, num_samples, *, desc, progress, position=0):
    """One chain of Pyro's NUTS kernel (``engine="pyro"``, the reference). It touches three private
    members of the kernel: ``potential_fn`` (replaced to count leapfrog steps), ``_mean_accept_prob``
    and ``_adapter`` (in :func:`_curvature_metric`); tests/inference/test_mcmc.py's
    ``test_pyro_kernel_private_members_still_exist`` fails loudly when Pyro changes them."""
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
                mean_accept = float(kernel._mean_accept_prob)   # private (running mean): see the test below
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
