"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) of zoo and plain Pyro models.

If parameters are drawn from the prior, theta ~ p(theta), data from the model, y ~ p(y | theta), and
the fit returns draws from the exact posterior p(theta | y), then theta is itself a draw from that
posterior, so its rank among L independent posterior draws is uniform on {0, ..., L}. Every departure
from uniformity is a failure of the fit (or of the code): a U-shaped rank histogram means posteriors
that are too narrow, a hump too wide, a slope a biased location.

:func:`sbc` repeats this ``num_simulations`` times for any model with ``simulate(n, seed) -> (data,
truth)``, or any plain Pyro model given its arguments (``model_args``/``model_kwargs``: parameters and
observed sites drawn from the model's prior on those arguments, the draws taking the place of the
observed values), and a prior that does not depend on the data (checked: SBC tests the joint that the
simulation draws from):

1. replicate i is seeded from ``(seed, i)`` alone (``inference.target.chain_seed``), so the result does
   not depend on ``n_jobs`` or on where it runs;
2. data and truth come from ``model.simulate(num_observations, seed_i)`` (or the prior draw), the fit
   from ``run_nuts`` or ``fit_svi`` with ``fit_kwargs``;
3. ranks are taken on the model's identifiable quantities (``align``; label switching would make raw
   ranks meaningless): the posterior's ``aligned`` draws, and the truth aligned with the posterior's
   own frame (``align(truth, reference=posterior.alignment)``);
4. the draws are thinned to about their effective sample size (stride ceil(draws / min ESS), bulk and
   tail, over all quantities), so that they are nearly independent as the rank argument needs;
5. ties (a discrete or constant quantity) are broken at random, and the rank r among L draws is also
   reported as a randomized fractional rank u = (r + V) / (L + 1), V ~ U(0, 1): exactly U(0, 1) under
   calibration whatever L is, so replicates with different L (different ESS) pool into one test.

The verdict per scalar quantity is Pearson's chi-square test of u binned into equal bins (at least 5
expected per bin), with the mean and sd of u for the direction of a failure (sd above 1/sqrt(12) =
0.289: posteriors too narrow). :meth:`SBCResult.plot` draws the ECDF of u minus the uniform CDF with
simultaneous 94% bands (Säilynoja, Bürkner & Vehtari 2022; ``az.plot_ecdf``).

Replicates run through joblib (``n_jobs``), in batches of about a quarter of each worker's share; on a
cluster, inside ``joblib.parallel_backend("dask")`` with a ``dask.distributed.Client`` (extra ``[dist]``).
NUTS's log density is compiled when all replicates together run long enough (:func:`sbc_route`): the
replicates share one compiled graph, and each is still checked against Pyro's potential on its own
data. The API follows simuk's ``SBC`` where it fits: ``num_simulations``, ``seed``, keyword arguments
for the fit, a plot of ECDF differences.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyro.poutine as poutine
import torch
from joblib import Parallel, delayed, effective_n_jobs
from tqdm import tqdm

from inference import azcompat
from inference.checks.sbc_result import SBCResult
from inference.inspection import ModelArgs, _trace, model_data
from inference.sampling.mcmc import potential_of, run_nuts
from inference.target import Target, as_target, chain_seed
from inference.tracing import LEAPFROGS_PER_ITERATION, flatten_data
from inference.validation import check_setting
from inference.variational.svi import fit_svi

log = logging.getLogger(__name__)

METHODS = ("nuts", "svi")


def sbc(model, *, model_args=None, model_kwargs=None, num_simulations: int = 100, num_observations: int = 50,
        method: str = "nuts", fit_kwargs: Mapping[str, Any] | None = None, seed: int = 0, n_jobs: int = 1,
        progress: bool = True) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model`` (see the module docstring).

    :param model: a zoo model with ``simulate(n, seed)`` and global latent sites, whose prior does not
        depend on the data (an empirical-Bayes prior is refused: fix its hyperparameters); or a plain
        Pyro model given its arguments (``model_args``/``model_kwargs``, or ``model_kwargs`` alone, as
        ``model(x, y=None)`` is called with ``model_args=(x,), model_kwargs={"y": y}``): each replicate
        draws the parameters and the observed sites from the model's prior on those arguments, and the
        draws take the place of the observed values (covariates stay as given).
    :param num_observations: ``n`` passed to a zoo model's ``simulate`` (data points, or time steps).
    :param method: "nuts" (``run_nuts``: default one chain, sequential) or "svi" (``fit_svi``).
    :param fit_kwargs: keyword arguments of the fit (e.g. ``num_samples``, ``warmup_steps``, ``guide``).
    :param n_jobs: joblib workers (-1: all cores); the backend is joblib's active one (``loky``
        processes, or ``dask`` inside ``joblib.parallel_backend("dask")``); replicates go to the workers in
        batches. Same ``seed``, same result, whatever ``n_jobs``.
    """
    plan = check_inputs(model, model_args=model_args, model_kwargs=model_kwargs, num_simulations=num_simulations,
                        num_observations=num_observations, method=method, fit_kwargs=fit_kwargs, seed=seed,
                        n_jobs=n_jobs)
    start = time.perf_counter()
    bar = tqdm(total=num_simulations, desc=f"SBC {plan.target.name} {method}", disable=None if progress else True,
               leave=False)
    results = []
    with bar:
        if n_jobs == 1:
            for i in range(num_simulations):
                results.append(replicate(plan, i))
                bar.update()
        else:
            size = math.ceil(num_simulations / (4 * effective_n_jobs(n_jobs)))   # ~4 batches per worker
            batches = [range(i, min(num_simulations, i + size)) for i in range(0, num_simulations, size)]
            for batch in Parallel(n_jobs=n_jobs, return_as="generator")(delayed(replicates)(plan, b) for b in batches):
                results += batch
                bar.update(len(batch))
    names = list(results[0]["ranks"])
    target = plan.target
    result = SBCResult(
        model=target.name, method=method,
        ranks={k: np.stack([r["ranks"][k] for r in results]) for k in names},
        pit={k: np.stack([r["pit"][k] for r in results]) for k in names},
        truth={k: np.stack([r["truth"][k] for r in results]) for k in names},
        stats={k: np.array([r["stats"][k] for r in results]) for k in results[0]["stats"]},
        settings=dict(model_config=", ".join(f"{k}={v}" for k, v in getattr(target.model, "config", dict)().items()),
                      num_simulations=num_simulations, num_observations=num_observations, seed=seed,
                      n_jobs=n_jobs, **{f"fit_{k}": v for k, v in plan.fit_kwargs.items()}))
    log.info("SBC %s %s: %d simulations in %.1fs", target.name, method, num_simulations, time.perf_counter() - start)
    return result


@dataclass
class Plan:
    """What every replicate needs, checked once by :func:`check_inputs` (and sent to the workers)."""

    target: Target
    method: str
    fit_kwargs: dict
    seed: int
    num_observations: int
    arguments: Any = None                     # a plain model's arguments (data, or ModelArgs); None: simulate
    slots: dict[str, int] = field(default_factory=dict)   # observed site -> its value's index among their tensors

    def simulate(self, seed: int) -> tuple[Any, dict[str, torch.Tensor]]:
        """``(data, truth)``: a zoo model's ``simulate(num_observations, seed)`` (validated), or a draw of a
        plain model's prior predictive on its arguments, the observed values replaced by the draw's."""
        if self.arguments is None:
            data, truth = self.target.model.simulate(self.num_observations, seed=seed)
            return self.target.validate(data), truth
        with self.target.scope(), torch.no_grad(), warnings.catch_warnings(), poutine.seed(rng_seed=seed):
            warnings.simplefilter("ignore")
            trace = poutine.trace(poutine.uncondition(self.target.model_fn)).get_trace(self.arguments)
        leaves, rebuild = flatten_data(self.arguments)
        for name, slot in self.slots.items():
            leaves[slot] = trace.nodes[name]["value"]
        return rebuild(leaves), {k: trace.nodes[k]["value"] for k in self.target.global_sites(self.arguments)}


def check_inputs(model, *, model_args=None, model_kwargs=None, num_simulations: int = 100, num_observations: int = 50,
                 method: str = "nuts", fit_kwargs: Mapping[str, Any] | None = None, seed: int = 0,
                 n_jobs: int = 1) -> Plan:
    """The checks :func:`sbc` makes before any fit (so a command can make them before other long work):
    returns the :class:`Plan` of the replicates, or raises a one-line error naming the argument (``model``
    for a model SBC cannot calibrate: no ``simulate`` nor arguments to simulate on, no global latent
    sites, a prior that depends on the data)."""
    arguments = model_data(None, model_args, model_kwargs)
    target = as_target(model, args_form=isinstance(arguments, ModelArgs))
    if arguments is None and getattr(target.model, "simulate", None) is None:
        raise ValueError(f"model: SBC needs a zoo model with simulate(n, seed) -> (data, truth), or a plain model "
                         f"given its arguments (model_args/model_kwargs); {target.name!r} has neither")
    check_setting(method, "method", kind="choice", choices=METHODS)
    check_setting(num_simulations, "num_simulations", kind="int", minimum=2)
    check_setting(num_observations, "num_observations", kind="int", minimum=1)
    if check_setting(n_jobs, "n_jobs", kind="int", minimum=-math.inf) == 0:
        raise ValueError(f"n_jobs: expected a non-zero integer (-1 for all cores), got {n_jobs!r}")
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in ("seed", "progress"):
        if reserved in fit_kwargs:
            raise ValueError(f"fit_kwargs: {reserved!r} is set by sbc (per replicate); pass sbc(..., {reserved}=...)")
    plan = Plan(target, method, fit_kwargs, seed, num_observations)
    if arguments is not None:
        plan.arguments = target.validate(arguments)
        plan.slots = observed_slots(target, plan.arguments)
    check_fixed_prior(plan)
    if method == "nuts":
        plan.fit_kwargs = {**sbc_route(plan, num_simulations), **fit_kwargs}
    return plan


def observed_slots(target: Target, arguments) -> dict[str, int]:
    """Where the value of every observed site is among the tensors of the model's arguments (the tensor
    itself, as ``obs=y`` passes it), for a plain model simulated from its arguments."""
    info = target.info(arguments)
    leaves, _ = flatten_data(arguments)
    with target.scope():
        trace = _trace(target.model_fn, arguments)
    slots = {}
    for name in info.observed:
        found = [i for i, leaf in enumerate(leaves) if trace.nodes[name]["value"] is leaf]
        if not found:
            raise ValueError(f"model_args: the value of observed site {name!r} is not one of the tensors among the "
                             "model's arguments (pass it as an argument, obs=y, to be replaced by simulated data)")
        slots[name] = found[0]
    return slots


def sbc_route(plan: Plan, num_simulations: int) -> dict:
    """NUTS's potential route by the one cost rule (:mod:`inference.tracing`) applied to the whole
    calibration, since the replicates share one traced graph and one compiled one (same shapes, data as
    inputs: Inductor's cache serves every replicate after the first, each checked on its own data). The
    potential is built here once, on the first replicate's data, which also fills the cache before the
    workers start. Empty when the fit's keywords choose the route, or when the model has a closed form."""
    kw = {**{k: p.default for k, p in inspect.signature(run_nuts).parameters.items()}, "num_chains": 1,
          **plan.fit_kwargs}
    if "potential" in plan.fit_kwargs or kw["engine"] != "zoo" or kw["dense_mass"]:
        return {}
    data, _ = plan.simulate(chain_seed(plan.seed, 0))
    if plan.target.log_density(data) is not None:
        return {}
    calls = num_simulations * kw["num_chains"] * (kw["warmup_steps"] + kw["num_samples"]) * LEAPFROGS_PER_ITERATION
    return {"potential": potential_of(plan.target, data, "auto", calls=calls).route}


def replicates(plan: Plan, indices) -> list[dict[str, dict]]:
    """A batch of replicates, run in one worker."""
    return [replicate(plan, i) for i in indices]


def replicate(plan: Plan, index: int) -> dict[str, dict]:
    """One SBC replicate, seeded from ``(seed, index)`` only: simulate, fit, thin, rank."""
    s = chain_seed(plan.seed, index)
    data, truth = plan.simulate(s)
    begin = time.perf_counter()
    if plan.method == "nuts":
        kw = {"num_chains": 1, "chain_method": "sequential", **plan.fit_kwargs}
        post = run_nuts(plan.target, data, seed=s, progress=False, **kw)
    else:
        post = fit_svi(plan.target, data, seed=s, progress=False, **plan.fit_kwargs)
    wall = time.perf_counter() - begin
    if post.num_chains * post.num_draws < 2:
        raise ValueError(f"fit_kwargs: SBC ranks the truth among posterior draws; got "
                         f"{post.num_chains * post.num_draws} draw")
    sites = post.target.global_sites(post.data)
    true = post.target.align({k: torch.as_tensor(truth[k])[None, None] for k in sites}, reference=post.alignment)
    draws = {k: v.detach().double().cpu().numpy() for k, v in post.aligned.items()}   # (chain, draw, ...)
    stride, min_ess = thinning(draws)
    rng = np.random.default_rng(np.random.SeedSequence([int(plan.seed), int(index), 1]))
    ranks, pit, truths = {}, {}, {}
    for name, d in draws.items():
        kept = d[:, ::stride].reshape(-1, *d.shape[2:])                       # (L, ...)
        t = true[name].detach().double().cpu().numpy().reshape(d.shape[2:])
        below, ties = (kept < t).sum(0), (kept == t).sum(0)
        ranks[name] = below + rng.integers(0, ties + 1)                         # ties broken at random
        pit[name] = (ranks[name] + rng.uniform(size=t.shape)) / (len(kept) + 1)
        truths[name] = t
    divergences = int(np.sum(post.sample_stats.get("diverging", 0)))
    return {"ranks": ranks, "pit": pit, "truth": truths,
            "stats": {"num_draws": len(kept), "min_ess": min_ess, "divergences": divergences, "wall_time": wall}}


def thinning(draws: Mapping[str, np.ndarray]) -> tuple[int, float]:
    """The stride that thins every chain to about the smallest effective sample size (bulk or tail)
    over all scalar quantities, and that ESS. Constant quantities (no ESS) are ignored."""
    total = None
    ess = []
    for d in draws.values():
        flat = d.reshape(d.shape[0], d.shape[1], -1)
        total = d.shape[0] * d.shape[1]
        for j in range(flat.shape[-1]):
            x = np.ascontiguousarray(flat[..., j])
            if np.ptp(x) == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ess += [float(azcompat.ess(x, method="bulk")), float(azcompat.ess(x, method="tail"))]
    ess = [e for e in ess if np.isfinite(e)]
    if not ess or total is None:
        return 1, float("nan")
    low = min(ess)
    return max(1, math.ceil(total / max(low, 1.0))), low


def check_fixed_prior(plan: Plan) -> None:
    """Refuse a model whose prior depends on the data: the log prior of the same parameters (the first
    replicate's truth) under two simulated data sets must agree. SBC checks the posterior of the joint
    that the simulation draws from; a prior re-centred on each data set (empirical Bayes) is another joint."""
    target = plan.target
    nothing = ValueError(f"model: {target.name!r} has no global latent sites; SBC has nothing to calibrate")
    declared = target.model.global_sites   # a zoo model declares them; a plain model's are found by tracing
    if declared is not None and not declared:
        raise nothing
    runs = [plan.simulate(chain_seed(plan.seed, i)) for i in range(2)]
    sites = tuple(declared if declared is not None else target.global_sites(runs[0][0]))
    if not sites:
        raise nothing
    truth = {k: torch.as_tensor(runs[0][1][k]) for k in sites}
    values = []
    for data, _ in runs:
        with torch.no_grad(), target.scope():
            trace = poutine.trace(poutine.condition(target.marginal_fn, data=truth)).get_trace(data)
        values.append(sum(float(trace.nodes[k]["fn"].log_prob(trace.nodes[k]["value"]).sum()) for k in sites))
    if not math.isclose(values[0], values[1], rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(
            f"model: the prior of {target.name!r} depends on the data (log prior of the same parameters "
            f"{values[0]:.6g} under one simulated data set, {values[1]:.6g} under another: an empirical-Bayes "
            "prior); SBC needs the prior that simulate draws from, so fix the model's prior hyperparameters")
