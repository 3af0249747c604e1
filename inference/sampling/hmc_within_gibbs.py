"""HMC-within-Gibbs: NUTS for the continuous sites, Gibbs moves for discrete sites enumeration does not sum out.

Per iteration, :func:`sample` makes one NUTS transition of the continuous sites given the discrete ones
(:func:`inference.sampling.nuts.transition`, on a :class:`~inference.potential.Potential` that holds the
discrete sites at their values), then one update of each discrete site given everything else
(:class:`Moves`), in the order of the model:

- an ``exact`` site (a small finite support, :mod:`inference.sampling.discrete`) is drawn from its exact
  conditional, every value of its support weighed at once (Gumbel-max on the conditional table);
- a ``metropolis`` site (an integer support too large or infinite) takes a Metropolis-Hastings step, the
  proposal a symmetric integer random walk, ±ceil(s |z|) with z standard normal, whose scale s, one per
  element, is adapted during warmup towards an acceptance of 0.44 (the best acceptance of a
  one-dimensional random walk: Roberts, Gelman & Gilks 1997) and then kept fixed.

The elements of a plate of conditionally independent sites move separately (each draws, or accepts, on its
own) from one conditional table; coupled elements move one after another. Warmup adapts NUTS's step size
and metric as :func:`inference.sampling.nuts.sample` does
(:class:`~inference.sampling.adaptation.WindowAdaptation`); the discrete moves are part of every iteration.
Per-draw statistics add ``acceptance_rate_<site>``, the mean acceptance probability of each
Metropolis-Hastings site's elements.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.poutine.util import site_is_subsample

from inference.initialization import init_to_uniform_any
from inference.sampling.adaptation import WindowAdaptation, curvature
from inference.sampling.discrete import (MOVED, Conditionals, base_of, classify, describe, discrete_sites,
                                         refuse_impossible, support_values)
from inference.sampling.integrator import Point, evaluate
from inference.sampling.metric import make_metric
from inference.sampling.nuts import STATS, Callback, Chain, transition
from inference.target import PlainModel

log = logging.getLogger(__name__)

TARGET_ACCEPT = 0.44
LADDER = 2 ** np.arange(21)   # the steps a start tries for an element whose value is impossible given the data


class _Site:
    """One discrete site as the moves see it: its kind, elements (the positions one move changes: scalars,
    or whole events of an enumerable distribution such as a one-hot vector), which element axes are plates,
    whether those elements are independent given the rest, and the random-walk scales."""

    def __init__(self, name: str, site: dict, kind: str):
        self.name, self.kind, self.fn = name, kind, site["fn"]
        value = site["value"].detach()
        self.support = support_values(self.fn) if kind == "exact" else None      # (K, *unit)
        unit = tuple(self.support.shape[1:]) if kind == "exact" else ()
        self.elements = tuple(value.shape[:value.dim() - len(unit)])
        batch = len(self.elements) - (self.fn.event_dim - len(unit))        # element axes that are batch axes
        self.plates = tuple(sorted({batch + f.dim for f in site["cond_indep_stack"]
                                    if f.vectorized and f.size > 1 and 0 <= batch + f.dim < batch}))
        self.separable = False
        self.start_scale = np.log(np.maximum(1.0, np.sqrt(np.abs(value.double().numpy()))))
        self.reset()

    def reset(self) -> None:
        """Random-walk scales back to where they start (a new chain): sqrt(|value|), at least 1."""
        self.log_scale = np.array(self.start_scale) if self.kind == "metropolis" else None
        self.adapted = 0                                                      # warmup updates so far

    def groups(self):
        """Index tuples into the elements, one per move: the plate axes at once where the elements are
        independent, else one element at a time."""
        free = self.plates if self.separable else ()
        for idx in np.ndindex(*[1 if a in free else s for a, s in enumerate(self.elements)]):
            yield tuple(slice(None) if a in free else i for a, i in enumerate(idx))


class Moves:
    """The Gibbs moves of a model's discrete sites ``names`` given the other latent sites.

    :param model_fn: the model (the form NUTS samples); :param data: its data;
    :param values: a value of every latent site, where the structure is read (shapes, plates, independence).
    :param reference: the model's log joint ``reference(continuous, held) -> float`` that the conditional
        tables are checked against (:class:`~inference.sampling.discrete.Conditionals`).
    :param calls: the iterations expected (whether tracing the tables into graphs pays).
    """

    def __init__(self, model_fn: Callable, data, names, values: dict, *, max_plate_nesting: int, reference=None,
                 calls: int = 0):
        self.model_fn, self.data = model_fn, data
        self.conditionals = Conditionals(model_fn, data, max_plate_nesting=max_plate_nesting, reference=reference)
        held = {k: values[k] for k in names}
        continuous = {k: v for k, v in values.items() if k not in held}
        trace = self.conditionals.trace(held, continuous)
        self.kinds = {k: classify(trace.nodes[k]) for k in names}
        self.sites = [_Site(k, trace.nodes[k], self.kinds[k]) for k in names]
        for site in self.sites:
            site.separable = self.conditionals.separable(site, held, continuous)
            if reference is not None:   # the shortcut checked at a move to a neighbouring value of every element
                value = held[site.name]
                self.conditionals.table(site, held, continuous, torch.stack([value, _neighbour(site, value)]),
                                        next(site.groups()), check=True)
        self._one_at_a_time_if_stepped_aside()
        self.conditionals.plan(calls * len(self.sites), sum(n["type"] == "sample" for n in trace.nodes.values()))

    @classmethod
    def holding(cls, model_fn: Callable, data, density, *, calls: int = 0) -> "Moves | None":
        """The moves of the discrete sites a :class:`~inference.potential.Potential` holds (None without any),
        their tables checked against its reference (Pyro's potential), announced in one log line."""
        if not density.held_names:
            return None

        def reference(continuous, held):   # the log joint (log |J| is the same at every held value)
            return density.reference(density.flatten(continuous), [held[k] for k in density.held_names])[0]

        continuous = density.constrain(density.flatten(density.prototypes))
        moves = cls(model_fn, data, density.held_names, {**continuous, **density.given},
                    max_plate_nesting=density.max_plate_nesting, reference=reference, calls=calls)
        log.info("%s", describe(moves.kinds, density.names))
        return moves

    def starter(self, density, values, rng: np.random.Generator) -> Callable:
        """For a chain's start (``inference.sampling.mcmc.start_point``): at a continuous point ``theta``, hold the
        discrete sites at ``values`` or a prior draw given it, impossible elements repaired."""
        def start(theta):
            continuous = density.constrain(theta)
            drawn = self.prior_draw(continuous, rng)
            held = {k: values[k] if values and k in values else drawn[k] for k in density.held_names}
            density.set_given(self.update(continuous, held, rng, repair=True)[0])
        return start

    def _summable(self, target, data) -> bool:
        """Whether the pointwise log-likelihood can sum these sites out: each has a small finite support and
        lies inside the data plate (a local latent, e.g. an assignment not marked for enumeration), and
        the model is a plain Pyro callable (a zoo model's log_likelihood is its own)."""
        local = not set(self.kinds) & set(target.info(data).global_sites)
        return local and all(k == "exact" for k in self.kinds.values()) and isinstance(target.model, PlainModel)

    def likelihood_target(self, target, data):
        """The target a posterior's pointwise log-likelihood comes from: where :meth:`_summable`, the same
        model with these sites marked for enumeration (its log-likelihood then sums them out exactly, as
        for enumerated sites); else ``target`` itself (conditional on their draws)."""
        if not self._summable(target, data):
            return target
        names, model_fn = set(self.kinds), target.model_fn

        def marked(*args, **kwargs):
            config = lambda site: {"enumerate": "parallel"} if site["name"] in names else {}  # noqa: E731
            return poutine.infer_config(model_fn, config)(*args, **kwargs)
        marked.__name__ = target.name
        return type(target)(marked)

    def settings(self, target, data) -> dict:
        """What a posterior's settings record of the moves: how each site moved, and what its pointwise
        log-likelihood is."""
        how = ("marginal: the discrete sites summed out" if self._summable(target, data)
               else f"conditional on the draws of {list(self.kinds)}")
        return {"gibbs": dict(self.kinds), "log_likelihood": how}

    def _one_at_a_time_if_stepped_aside(self) -> None:
        if not self.conditionals.vectorized:
            for site in self.sites:
                site.separable = False

    def prior_draw(self, continuous: dict, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The discrete sites drawn from the model given the ``continuous`` values (a chain's start)."""
        with torch.no_grad(), pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = poutine.seed(poutine.condition(self.model_fn, data=continuous), rng_seed=int(rng.integers(2**31)))
            trace = poutine.trace(model).get_trace(self.data)
        return {s.name: trace.nodes[s.name]["value"].detach() for s in self.sites}

    def update(self, continuous: dict, held: dict, rng: np.random.Generator, *, adapt: bool = False,
               repair: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One move of every discrete site (``held``: their values) given the ``continuous`` values: the new
        values, and ``{"acceptance_rate_<site>": mean acceptance}`` of the Metropolis-Hastings sites.
        ``adapt``: adapt the random-walk scales (warmup); ``repair``: instead of a Metropolis-Hastings step,
        move elements whose value is impossible to the best value of a ladder around it (a start)."""
        held, stats = dict(held), {}
        for site in self.sites:
            while True:
                value, accepted = held[site.name].clone(), []
                for group in site.groups():
                    move = self._exact if site.kind == "exact" else self._metropolis
                    out = move(site, value, group, held, continuous, rng, adapt, repair)
                    if out is None:                      # the shortcut stepped aside: this site again, by the reference
                        break
                    accepted.append(out)
                else:
                    break
                self._one_at_a_time_if_stepped_aside()
            held[site.name] = value
            if site.kind == "metropolis" and not repair:
                stats[f"acceptance_rate_{site.name}"] = float(np.mean(np.concatenate(accepted)))
            site.adapted += adapt
        return held, stats

    def _table(self, site, value, group, held, continuous, units):
        """The conditional table of the elements ``group`` over candidate ``units`` (C, *free, *unit) there,
        -inf outside the support, and where the candidates are inside it."""
        candidates = _placed(value, group, units)
        table = self.conditionals.table(site, held, continuous, candidates, group)
        if table is None:
            return None, None
        inside = base_of(site.fn).support.check(candidates)[(slice(None),) + group]
        return torch.where(inside, table[(slice(None),) + group], -math.inf).numpy(), inside

    def _exact(self, site, value, group, held, continuous, rng, adapt, repair):
        """Draw the elements ``group`` of ``value`` (in place) from their exact conditional."""
        support, current = site.support, value[group]                      # (K, *unit), (*free, *unit)
        unit = support.shape[1:]
        free = current.shape[:current.dim() - len(unit)]
        units = support.reshape(len(support), *(1,) * len(free), *unit).expand(len(support), *free, *unit)
        logits, _ = self._table(site, value, group, held, continuous, units)
        if logits is None:
            return None
        pick = np.argmax(logits + rng.gumbel(size=logits.shape), axis=0)   # Gumbel-max: a draw of the conditional
        keep = torch.as_tensor(np.asarray(np.isfinite(logits.max(0))))   # no possible value: stay
        drawn = support[torch.as_tensor(np.asarray(pick))].to(value.dtype)
        value[group] = torch.where(keep.reshape(tuple(free) + (1,) * len(unit)), drawn, current)
        return np.ones(0)

    def _metropolis(self, site, value, group, held, continuous, rng, adapt, repair):
        """A random-walk Metropolis-Hastings step of every element of ``group`` (in place); their acceptance
        probabilities."""
        current = value[group]
        scale = np.exp(site.log_scale[group])
        jump = np.sign(rng.uniform(-1, 1, current.shape)) * np.ceil(scale * np.abs(rng.standard_normal(current.shape)))
        steps = np.concatenate([[0], LADDER, -LADDER]) if repair else np.zeros(1)
        units = current + torch.as_tensor(steps).reshape(-1, *(1,) * current.dim()).to(current.dtype)
        if not repair:
            units = torch.cat([units, (current + torch.as_tensor(np.asarray(jump)).to(current.dtype))[None]])
        inside = base_of(site.fn).support.check(_placed(value, group, units))[(slice(None),) + group]
        units = torch.where(inside, units, current)                       # outside the support: never evaluated
        t, _ = self._table(site, value, group, held, continuous, units)
        if t is None:
            return None
        t = np.where(inside.numpy(), t, -np.inf)
        if repair:   # a start: elements whose value is impossible take the best value of the ladder
            best = units.gather(0, torch.as_tensor(np.asarray(np.argmax(t, 0)))[None].long())[0]
            value[group] = torch.where(torch.as_tensor(np.asarray(~np.isfinite(t[0]))), best, current)
            return np.ones(0)
        with np.errstate(invalid="ignore"):
            log_ratio = np.nan_to_num(t[1] - t[0], nan=-np.inf)             # symmetric proposal: the ratio of targets
        accept = np.log(rng.uniform(size=log_ratio.shape)) < log_ratio
        value[group] = torch.where(torch.as_tensor(np.asarray(accept)), units[1], current)
        probability = np.exp(np.minimum(log_ratio, 0.0))
        if adapt:   # Robbins-Monro on log s, gains decaying as (updates + 1)^-0.6
            site.log_scale[group] += (probability - TARGET_ACCEPT) * (site.adapted + 1) ** -0.6
        return np.atleast_1d(probability).reshape(-1)


def _placed(value, group, units):
    """``value`` repeated once per candidate, with the elements ``group`` set to ``units``."""
    out = value.expand(len(units), *value.shape).clone()
    out[(slice(None),) + group] = units.to(value.dtype)
    return out


def _neighbour(site, value):
    """``value`` with every element moved to a neighbouring value in its support (a check of the shortcut)."""
    if site.support is not None and site.support.dim() > 1:   # events, e.g. one-hot vectors
        return value.roll(1, -1)
    up, down = value + 1, value - 1
    check = base_of(site.fn).support.check
    return torch.where(check(up), up, torch.where(check(down), down, value))


def initial(model_fn: Callable, data, *, max_plate_nesting: int) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The discrete sites of ``model_fn`` on ``data`` (``{site: kind}``, a ValueError for impossible ones) and
    starting values of those Gibbs moves update: a prior draw, with elements whose value is impossible given
    the data moved to the best value of a ladder (:meth:`Moves.update` with ``repair``)."""
    with torch.no_grad(), pyro.validation_enabled(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trace = poutine.trace(poutine.seed(InitMessenger(init_to_uniform_any)(model_fn), rng_seed=0)).get_trace(data)
    kinds = discrete_sites(trace)
    refuse_impossible(kinds)
    held = {k: trace.nodes[k]["value"].detach() for k, kind in kinds.items() if kind in MOVED}
    if not held:
        return kinds, held
    continuous = {k: s["value"].detach() for k, s in trace.nodes.items()
                  if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s) and k not in kinds}
    moves = Moves(model_fn, data, tuple(held), {**continuous, **held}, max_plate_nesting=max_plate_nesting)
    return kinds, moves.update(continuous, held, np.random.default_rng(0), repair=True)[0]


# --- the sampler -------------------------------------------------------------------------------------

def sample(density, moves: Moves, start: np.ndarray, *, num_samples: int, warmup_steps: int, seed: int,
           target_accept: float = 0.8, max_tree_depth: int = 10, metric: str = "diag",
           callback: Callback | None = None) -> tuple[Chain, dict[str, torch.Tensor]]:
    """HMC-within-Gibbs draws (see the module docstring) from ``start`` (flat, unconstrained) and the held
    values of ``density``: the :class:`~inference.sampling.nuts.Chain` of the continuous sites (its
    statistics with ``acceptance_rate_<site>`` of the Metropolis-Hastings sites) and the draws of the
    discrete ones, ``{site: (num_samples, *shape)}``."""
    rng = np.random.default_rng(seed)
    for site in moves.sites:
        site.reset()
    state = _point(density, np.array(start, dtype=np.float64))
    if not np.isfinite(state.logp):
        raise ValueError(f"start: the log density is {state.logp} at the starting point")
    warmup = WindowAdaptation(density, state, make_metric(metric, 1 / curvature(density, state.theta)),
                              warmup_steps, target_accept, rng)
    step, metric = warmup.step_size, warmup.metric
    for i in range(warmup_steps):
        state, info = _iteration(density, moves, state, step, metric, rng, max_tree_depth, adapt=True)
        step, metric = warmup.update(i, state, info["acceptance_rate"], info["tree_depth"] >= max_tree_depth)
        if callback is not None:
            callback(i, step, info)
    step, metric = warmup.final()
    draws = np.empty((num_samples, state.theta.size))
    held: dict[str, list] = {k: [] for k in density.held_names}
    stats: dict[str, np.ndarray] = {}
    for j in range(num_samples):
        state, info = _iteration(density, moves, state, step, metric, rng, max_tree_depth)
        draws[j] = state.theta
        for k, v in density.given.items():
            held[k].append(v)
        for k, v in info.items():
            stats.setdefault(k, np.zeros(num_samples, dtype=bool if k == "diverging" else float))[j] = v
        if callback is not None:
            callback(warmup_steps + j, step, info)
    stats["step_size"] = np.full(num_samples, step)
    stats["reached_max_treedepth"] = stats["tree_depth"] >= max_tree_depth
    return Chain(draws, stats, step, metric), {k: torch.stack(v) for k, v in held.items()}


def _iteration(density, moves: Moves, state: Point, step, metric, rng, max_tree_depth, adapt=False):
    """One NUTS transition, then the discrete moves, and the state re-evaluated under the new discrete values."""
    state, info = transition(density, state, step, metric, rng, max_tree_depth)
    held, accepted = moves.update(density.constrain(state.theta), density.given, rng, adapt=adapt)
    density.set_given(held)
    state = _point(density, state.theta)
    info = {k: info[k] for k in (*STATS[1:], "diverging")}
    info["lp"] = state.logp                       # the log density at the draw, discrete moves included
    return state, {**info, **accepted}


def _point(density, theta: np.ndarray) -> Point:
    with np.errstate(all="ignore"):
        logp, grad = evaluate(density, theta)
    return Point(theta, None, grad, logp, None)
