"""NUTS for any Pyro model, discrete latents summed out.

One sampler, :mod:`inference.sampling.nuts` (multinomial NUTS with Stan's warmup on a flat vector), for
every model. Its log density (:class:`inference.potential.Potential`) is the model's closed form when it
has one (``ZooModel.log_density``), else the model's own Pyro log joint with enumerated sites summed out,
traced once with its gradient and compiled when the run is long enough to pay: no Pyro trace and no
autograd per leapfrog step. Every route is checked against Pyro's potential before and while it runs;
a chain that finds its route wrong is run again on the next route, with a warning. A chain starts, as
Pyro's do, at the first of up to 100 draws where the log density is finite. Chains run in forked worker
processes (:mod:`inference.sampling.chains`) with per-chain seeds derived from one user seed; per-draw
statistics carry ArviZ's names (``energy``, ``lp``, ``diverging``, ``tree_depth``, ...). Enumerated sites
are recovered on request with ``infer_discrete`` (:mod:`inference.sampling.recovery`). Discrete sites that
are not enumerated are sampled by Gibbs moves between NUTS transitions (HMC-within-Gibbs,
:mod:`inference.sampling.hmc_within_gibbs`). Pyro's own NUTS kernel remains as ``engine="pyro"``, the
reference (:mod:`inference.sampling.pyro_engine`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from inference.inspection import ModelArgs, discrete_problem, model_data
from inference.posterior import Posterior
from inference.potential import MAX_TRIES, Potential
from inference.sampling import hmc_within_gibbs, nuts
from inference.sampling.chains import check_chain_settings, num_workers, parallel
from inference.sampling.pyro_engine import pyro_chain
from inference.sampling.recovery import discrete_draws
from inference.target import as_target, chain_seed, set_seed
from inference.tracing import LEAPFROGS_PER_ITERATION, Mismatch

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
    target_accept = check_chain_settings(num_samples, warmup_steps, num_chains, max_tree_depth, target_accept,
                                         chain_method)
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
        return pyro_chain(target.marginal_fn, data, values, max_plate_nesting=info.max_plate_nesting,
                          warmup_steps=warmup_steps, num_samples=num_samples, target_accept=target_accept,
                          max_tree_depth=max_tree_depth, dense_mass=dense_mass, jit=jit, desc=desc, progress=progress,
                          position=position)

    workers = num_workers(num_chains, chain_method, data)
    if workers > 1:
        results = parallel(chain, num_chains, workers)
    else:
        results = [chain(c) for c in range(num_chains)]
    chains, stats, adapted = zip(*results)
    routes = [s.pop("route", "pyro kernel") for s in stats]
    accepted = [s.pop("acceptance") for s in stats if "acceptance" in s]   # Pyro's kernel: one rate per chain
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
                      **({"acceptance_rate": accepted} if accepted else {}),
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
    # the discrete sites Gibbs moves update
    _, held = hmc_within_gibbs.initial(target.marginal_fn, data, max_plate_nesting=nesting)
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
                        chain, held = hmc_within_gibbs.sample(density, moves, start, seed=seed, callback=callback,
                                                              **options)
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
