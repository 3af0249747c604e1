"""NUTS for any Pyro model, discrete latents summed out.

One sampler, :mod:`inference.sampling.nuts` (multinomial NUTS with Stan's warmup on a flat vector), for
every model. Its log density (:class:`inference.potential.Potential`) is the model's closed form when it
has one (``ZooModel.log_density``), else the model's own Pyro log joint with enumerated sites summed out,
traced once with its gradient and compiled when the run is long enough to pay: no Pyro trace and no
autograd per leapfrog step. Every route is checked against Pyro's potential before and while it runs;
a chain that finds its route wrong is run again on the next route, with a warning. A chain starts, as
Pyro's do, at the first of up to 100 draws where the log density is finite. Chains run in forked worker
processes with per-chain seeds
derived from one user seed; per-draw statistics carry ArviZ's names (``energy``, ``lp``,
``diverging``, ``tree_depth``, ...). Enumerated sites are recovered on request with
``infer_discrete``. Discrete sites that are not enumerated are sampled by Gibbs moves between NUTS
transitions (HMC-within-Gibbs, :mod:`inference.sampling.hmc_within_gibbs`). Pyro's own NUTS kernel remains as
``engine="pyro"``, the reference.
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

from inference.posterior import Posterior
from inference.potential import MAX_TRIES, Potential
from inference.sampling import hmc_within_gibbs, nuts
from inference.target import (ModelArgs, as_target, chain_seed, discrete_problem, init_to_uniform_any, model_data,
                              set_seed)
from inference.tracing import LEAPFROGS_PER_ITERATION, Mismatch
from inference.validation import check_setting

log = logging.getLogger(__name__)


ENGINES = ("zoo", "pyro")
POTENTIALS = ("auto", "closed_form", "compiled", "graph", "eager")


def run_nuts(model, data=None, *, model_args=None, model_kwargs=None, num_samples: int = 1000,
             warmup_steps: int = 1000, num_chains: int = 4,
             seed: int = 0, target_accept: float = 0.8, max_tree_depth: int = 10, dense_mass: bool = False,
             init: Mapping | Sequence[Mapping] | None = None, recover_discrete: bool = False,
             chain_method: str = "parallel", coords=None, dims=None, engine: str = "zoo",
             potential: str = "auto", jit: bool = False, progress: bool = True) -> Posterior:
    """Sample the posterior of ``model`` given ``data`` with NUTS.

    :param model: a zoo model or a plain Pyro callable ``model(data)``; or, with ``model_args`` and/or
        ``model_kwargs`` instead of ``data``, a plain callable ``model(*model_args, **model_kwargs)``.
    :param coords, dims: as ``az.from_pyro``'s: ``{dim: values}`` and ``{variable: [dim, ...]}``.
    :param engine: "zoo" (default): :mod:`inference.sampling.nuts` on a flat vector, whose log density is
        the model's closed form (``ZooModel.log_density``) when it has one, else the model's own Pyro log
        joint traced and compiled once (:class:`inference.potential.Potential`). "pyro": Pyro's NUTS
        kernel on the traced model (the reference).
    :param dense_mass: adapt a dense metric (the posterior covariance of the unconstrained vector)
        instead of a diagonal one: fewer leapfrog steps on strongly correlated posteriors, at O(d^2)
        per step. The adapted step size and inverse metric of each chain are in
        ``posterior.adaptation``.
    :param potential: for ``engine="zoo"``: "auto" (the closed form if any, else the traced graph,
        compiled by Inductor where the run is long enough to pay: :mod:`inference.tracing`),
        "closed_form", "compiled" (compiled before sampling), "graph" (the traced graph, never compiled)
        or "eager" (Pyro's potential at every step). The route that produced the draws is
        ``settings["potential"]``.
    :param jit: ``torch.jit`` for Pyro's kernel (``engine="pyro"`` only).
    :param init: starting values (constrained), one dict for all chains or one per chain. Default:
        the zoo model's data-driven ``initial_values`` (seeded per chain), else uniform in (-2, 2)
        on the unconstrained scale, drawn again (up to 100 times) until the log density is finite.
    :param recover_discrete: also draw every enumerated site from its conditional posterior
        (``infer_discrete``, one draw per posterior draw).
    :param chain_method: "parallel" runs chains in forked worker processes, one per CPU core (on the
        CPU only); "sequential" runs them one after another. Results are identical either way.

    Latent discrete sites not marked for enumeration move by Gibbs moves between NUTS transitions
    (:mod:`inference.sampling.hmc_within_gibbs`); their draws are in the posterior, and the pointwise log-likelihood
    sums them out where it can, else is conditional on them (``settings["log_likelihood"]``).
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
    data = model_data(data, model_args, model_kwargs)
    target = as_target(model, args_form=isinstance(data, ModelArgs))
    data = target.validate(data)
    info = target.info(data, marginal=True)   # NUTS samples the marginal form (zoo.base.ZooModel.marginal_model)
    if engine == "pyro" and (problem := discrete_problem(info, "Pyro's NUTS kernel")):
        raise ValueError(f"engine: {problem}")   # the zoo engine moves them (inference.sampling.discrete)
    start = time.perf_counter()
    density = moves = None
    if engine == "zoo":
        density = potential_of(target, data, potential, calls=(warmup_steps + num_samples) * LEAPFROGS_PER_ITERATION)
        moves = hmc_within_gibbs.Moves.holding(target.marginal_fn, data, density, calls=warmup_steps + num_samples)

    def chain(c: int, position: int = 0):
        cseed = chain_seed(seed, c)
        set_seed(cseed)
        values = init if isinstance(init, Mapping) else init[c] if init is not None else None
        if values is None:
            values = target.initial_values(data, seed=cseed)
        desc = f"NUTS chain {c + 1}/{num_chains}"
        if density is not None:
            return _flat_chain(density, values, cseed, num_samples=num_samples, warmup_steps=warmup_steps,
                               target_accept=target_accept, max_tree_depth=max_tree_depth,
                               metric="dense" if dense_mass else "diag", desc=desc, progress=progress,
                               position=position, moves=moves)
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
    chains, stats, adapted = zip(*results)
    routes = [s.pop("route", "pyro kernel") for s in stats]
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    sample_stats = {k: np.stack([s[k] for s in stats]) for k in stats[0]}
    route = ", ".join(dict.fromkeys(r.split(" (")[0] for r in routes))   # the route(s) the draws came from
    # the zoo engine's warmup: step size (chain,) and inverse metric (chain, d) or (chain, d, d)
    adaptation = {k: np.stack([a[k] for a in adapted]) for k in adapted[0]} if density is not None else {}
    posterior = Posterior(
        moves.likelihood_target(target, data) if moves else target, data, samples, method="nuts",
        wall_time=time.perf_counter() - start,
        sample_stats=sample_stats, coords=coords, dims=dims, adaptation=adaptation,
        settings=dict(num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains, seed=seed,
                      target_accept=target_accept, engine=engine, dense_mass=dense_mass, workers=workers,
                      potential=route, routes=routes,
                      compile_seconds=round(getattr(density, "compile_seconds", 0.0), 2),
                      **(moves.settings(target, data) if moves else {})),
    )
    divergences = int(sample_stats["diverging"].sum())
    log.info("NUTS %s: %d chains x %d draws in %.1fs (%s), %d divergences", target.name, num_chains,
             num_samples, posterior.wall_time, route, divergences)
    if recover_discrete and target.info(data).enumerated:
        posterior.samples.update(discrete_draws(posterior, progress=progress))
    return posterior


def potential_of(target, data, potential: str = "auto", calls: int = 0) -> Potential:
    """The log density NUTS samples for ``target`` on ``data`` (its marginal form): the model's closed form
    for "auto" and "closed_form" when it has one, else the route ``potential`` names; ``calls``, the
    expected gradient evaluations per chain, decides whether "auto" compiles."""
    closed_form = target.log_density(data) if potential in ("auto", "closed_form") else None
    if closed_form is None and potential == "closed_form":
        raise ValueError(f"potential: 'closed_form', but {target.name} has no log_density")
    nesting = target.info(data, marginal=True).max_plate_nesting
    _, held = hmc_within_gibbs.initial(target.marginal_fn, data, max_plate_nesting=nesting)   # discrete sites Gibbs moves update
    return Potential(target.marginal_fn, data, max_plate_nesting=nesting, given=held or None,
                     route="auto" if potential == "closed_form" else potential, closed_form=closed_form, calls=calls,
                     name=target.name)


def _flat_chain(density: Potential, values, seed: int, *, desc: str, progress: bool, position: int,
                moves: hmc_within_gibbs.Moves | None = None, **options):
    """One chain of :func:`inference.sampling.nuts.sample` on ``density``: constrained draws in the model's
    dtype, per-draw statistics (with the route that produced them) and the adapted step size and inverse
    metric (on the flat unconstrained vector, sites in ``density.names`` order).

    The start is ``values`` where given, else uniform in (-2, 2) on the unconstrained scale, drawn again
    until the log density is finite there (:func:`start_point`). After sampling, the route is checked
    at the last draw; a route found wrong before or then steps aside (:class:`~inference.tracing.Mismatch`)
    and the chain runs again, from the same seed, on the next route. With ``moves``, HMC-within-Gibbs
    (:func:`inference.sampling.hmc_within_gibbs.sample`), the discrete draws joining the others."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # one chain, many tiny tensors: a thread pool only contends (benchmarks/README.md)
    total = options["warmup_steps"] + options["num_samples"]
    held = {}
    try:
        while True:
            try:
                rng = np.random.default_rng([seed, 1])
                start = start_point(density, values, rng, discrete=moves and moves.starter(density, values, rng))
                with tqdm(total=total, desc=desc, disable=None if progress else True, leave=False,
                          position=position) as bar:
                    callback = nuts.progress(bar, options["warmup_steps"])
                    if moves is None:
                        chain = nuts.sample(density, start, seed=seed, callback=callback, **options)
                    else:
                        chain, held = hmc_within_gibbs.sample(density, moves, start, seed=seed, callback=callback, **options)
                density.verify(chain.draws[-1])
                break
            except Mismatch:
                continue   # the route stepped aside (with a warning): this chain again, on the next route
    finally:
        torch.set_num_threads(threads)
    stats = dict(chain.stats, route=density.guard.describe())
    adapted = {"step_size": chain.step_size, "inverse_metric": chain.metric.inverse}
    return {**density.constrain(chain.draws), **held}, stats, adapted


def start_point(density: Potential, values, rng: np.random.Generator, discrete=None) -> np.ndarray:
    """A starting point where the log density and its gradient are finite, as Pyro's ``initialize_model``
    finds one: the given ``values`` (constrained) and, for the other sites, uniform draws in (-2, 2) on the
    unconstrained scale, drawn again up to ``MAX_TRIES`` times. A point where the model raises counts as
    not finite (its exception is named if no point is found). ``discrete(theta)`` sets the held discrete
    sites at each point tried (:meth:`inference.sampling.hmc_within_gibbs.Moves.starter`)."""
    given = {k: values[k] for k in density.names if values and k in values}
    base = density.flatten({**density.prototypes, **given})
    free = np.concatenate([np.full(n, k not in given) for k, n in zip(density.names, density.sizes)])
    error = None
    for _ in range(MAX_TRIES if free.any() else 1):
        theta = base.copy()
        theta[free] = rng.uniform(-2, 2, int(free.sum()))
        try:
            if discrete:
                discrete(theta)
            value, grad = density(theta)
        except Mismatch:
            raise
        except Exception as e:  # noqa: BLE001 - the model refused this point: try another
            error = e
            continue
        if math.isfinite(value) and np.all(np.isfinite(grad)):
            return theta
    free_sites = [k for k in density.names if k not in given]
    where = (f"uniform draws in (-2, 2) on the unconstrained scale of {free_sites}" if free_sites
             else "the given init")
    cause = f"; the model raised {type(error).__name__}: {error}" if error is not None else ""
    raise ValueError(f"init: the log density is not finite at {where} ({MAX_TRIES if free.any() else 1} "
                     f"tried){cause}; pass init= with values inside the support")


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
            draws, stats, adapted = payload
            results[c] = ({k: torch.from_numpy(v) for k, v in draws.items()}, stats, adapted)
    return results


def _worker(chain, c, position, sender):
    torch.set_num_threads(1)
    try:
        draws, stats, adapted = chain(c, position)
        # numpy, not tensors: torch would share tensor memory through file descriptors that die with us
        sender.send(("ok", ({k: v.numpy() for k, v in draws.items()}, stats, adapted)))
    except KeyboardInterrupt:
        sender.send(("interrupt", None))
    except BaseException as e:  # report, do not hang the parent
        sender.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        sender.close()


def _run_chain(kernel, data, warmup_steps, num_samples, *, desc, progress, position=0):
    """One chain of Pyro's NUTS kernel (``engine="pyro"``, the reference). It touches three private
    members of the kernel: ``potential_fn`` (replaced to count leapfrog steps), ``_mean_accept_prob``
    and ``_adapter`` (in :func:`_curvature_metric`); tests/inference/sampling/test_mcmc.py's
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
    return {k: torch.stack(v) for k, v in draws.items()}, stats, None


def _curvature_metric(kernel) -> None:
    """Start Pyro's diagonal metric at the curvature of the potential at the starting point
    (:func:`inference.sampling.adaptation.curvature`), not at the identity.

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
