"""Discrete latent sites that enumeration does not sum out: how each can move, and its conditional law.

**Classification** (:func:`classify`), once per site:

- ``enumerated``: marked for enumeration (``infer={"enumerate": "parallel"}``): summed out of the density
  NUTS samples;
- ``exact``: a finite support of at most :data:`MAX_EXACT` values (Bernoulli, Categorical, a Binomial of a
  small count): drawn from its exact conditional, every value weighed at once (as NumPyro's
  ``DiscreteHMCGibbs``);
- ``metropolis``: an integer support too large or infinite (Poisson, Geometric, NegativeBinomial, a Binomial
  of a large count): Metropolis-Hastings with an integer random walk;
- ``impossible``: neither (a discrete support that is neither integer-valued nor enumerable).

**Conditionals** (:class:`Conditionals`): log p(site = candidate, everything else) for a set of candidate
values per element, from Pyro's model. In one trace the site offers its candidates along an enumeration
dimension (:class:`_Offer`), every other latent site is at its value, sites marked for enumeration are
enumerated as usual, and Pyro's own contraction (``contract_to_tensor``) sums those out, keeping the
candidates and the site's plates: the elements of a plate of conditionally independent sites (the counts
of an N-mixture model) get their tables from one trace. That shortcut relies on the model broadcasting an
extra batch dimension the way Pyro's enumeration does (``N.sum(-1)``, not ``N.sum()``), so it is checked
against the reference, the model's log joint at each candidate value (Pyro's potential), when it is built
and while it runs (:class:`~inference.tracing.Guard`), and steps aside to the reference on a mismatch.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections import OrderedDict
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.ops.contract import contract_to_tensor
from pyro.ops.packed import unpack
from pyro.ops.rings import LogRing
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from torch.distributions import Independent

from inference.tracing import Guard, Mismatch, tolerance, trace_graph, unvalidated, worth_tracing

log = logging.getLogger(__name__)

#: the largest finite support drawn from its exact conditional; larger integer supports move by Metropolis-Hastings
MAX_EXACT = 1024
KINDS = ("enumerated", "exact", "metropolis", "impossible")
MOVED = ("exact", "metropolis")   # the kinds that Gibbs moves update


# --- classification ----------------------------------------------------------------------------------

def base_of(fn):
    """A distribution without its ``expand``, ``to_event`` and mask wrappers."""
    while isinstance(fn, (Independent, ExpandedDistribution, MaskedDistribution)):
        fn = fn.base_dist
    return fn


def integer_bounds(support) -> tuple | None:
    """``(lower, upper)`` (numbers or tensors, infinite where unbounded) of an integer-valued support of
    scalars, else None."""
    while hasattr(support, "base_constraint"):   # independent(...)
        support = support.base_constraint
    if not support.is_discrete or support.event_dim != 0:
        return None
    if type(support).__name__ == "_Boolean":
        return 0, 1
    return getattr(support, "lower_bound", -math.inf), getattr(support, "upper_bound", math.inf)


def support_values(fn) -> torch.Tensor | None:
    """The values of a finite support of at most :data:`MAX_EXACT` values, ``(K, *event_shape)`` of
    ``base_of(fn)`` (the union over elements where they differ, e.g. Binomials of several counts)."""
    base = base_of(fn)
    if base.has_enumerate_support:
        try:
            values = base.enumerate_support(expand=False)
            return values.reshape(values.shape[0], *base.event_shape) if values.shape[0] <= MAX_EXACT else None
        except (NotImplementedError, ValueError):   # e.g. Binomials of several counts
            pass
    bounds = integer_bounds(base.support)
    if bounds is None:
        return None
    low, high = float(torch.as_tensor(bounds[0]).min()), float(torch.as_tensor(bounds[1]).max())
    if not (math.isfinite(low) and math.isfinite(high)) or high - low + 1 > MAX_EXACT:
        return None
    return torch.arange(int(low), int(high) + 1).to(base.mean.dtype)


def classify(site: dict) -> str:
    """How a latent discrete site of a trace moves: one of :data:`KINDS` (see the module docstring)."""
    if site["infer"].get("enumerate") == "parallel":
        return "enumerated"
    if support_values(site["fn"]) is not None:
        return "exact"
    return "metropolis" if integer_bounds(base_of(site["fn"]).support) is not None else "impossible"


def discrete_sites(trace) -> dict[str, str]:
    """``{site: kind}`` for every latent discrete sample site of ``trace``."""
    return {name: classify(site) for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and not site["infer"].get("is_auxiliary") and _is_discrete(site["fn"])}


def _is_discrete(fn) -> bool:
    try:
        return bool(fn.support.is_discrete)
    except NotImplementedError:
        return False


def refuse_impossible(kinds: dict[str, str], who: str = "NUTS") -> None:
    """A one-line ValueError naming the discrete sites that can be neither enumerated nor Gibbs-updated."""
    bad = [k for k, kind in kinds.items() if kind == "impossible"]
    if bad:
        raise ValueError(f"model: latent discrete site(s) {bad} can be neither enumerated nor updated by Gibbs moves "
                         f"(a support that is neither finite nor integer-valued), so {who} cannot sample them")


def describe(kinds: dict[str, str], continuous) -> str:
    """One line: which sites move how."""
    parts = [f"NUTS: {list(continuous)}"]
    for kind, how in (("enumerated", "summed out"), ("exact", "exact conditional"),
                      ("metropolis", "Metropolis-Hastings random walk")):
        names = [k for k, v in kinds.items() if v == kind]
        if names:
            parts.append(f"{how}: {names}")
    return "HMC-within-Gibbs: " + "; ".join(parts)


# --- conditionals ------------------------------------------------------------------------------------

class _Candidates(TorchDistribution):
    """``base`` whose enumeration gives ``values`` (C, *batch_shape, *event_shape): the candidate values of a
    site per element, which Pyro's contraction weighs."""

    arg_constraints: dict = {}
    has_enumerate_support = True

    def __init__(self, base, values):
        self.base_dist, self.values = base, values
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base_dist.support

    def log_prob(self, value):
        return self.base_dist.log_prob(value)

    def enumerate_support(self, expand=True):
        return self.values


class _Offer(pyro.poutine.messenger.Messenger):
    """Puts :class:`_Candidates` at site ``name``, marked for parallel enumeration."""

    def __init__(self, name, values):
        super().__init__()
        self.name, self.values = name, values

    def _pyro_sample(self, msg):
        if msg["name"] == self.name:
            fn = msg["fn"]
            msg["fn"] = _Candidates(fn, self.values.expand(len(self.values), *fn.batch_shape, *fn.event_shape))
            msg["infer"] = {**msg["infer"], "enumerate": "parallel", "expand": True}


class Conditionals:
    """The conditional tables of a model's discrete sites (see the module docstring).

    :param reference: ``reference(continuous, held) -> float``, the model's log joint (up to a constant) with
        the latent sites at those values: the reference route, and what the shortcut is checked against.
        None: no checks (a start's repairs, before a reference exists).
    """

    def __init__(self, model_fn: Callable, data, *, max_plate_nesting: int, reference=None):
        self.model_fn, self.data, self.nesting, self.reference = model_fn, data, max_plate_nesting, reference
        self.guard = Guard("discrete moves", ("one value at a time", None))
        self.guard.add("one trace", None)
        self._graphs: dict = {}

    def plan(self, calls: int, sites: int) -> None:
        """Trace the tables into graphs when ``calls`` tables of a model of ``sites`` sample sites make it pay
        (:func:`inference.tracing.worth_tracing`), and only where they are checked against a reference."""
        if self.reference is not None and self.guard.route == "one trace" and worth_tracing(calls, sites):
            self.guard.add("graph", None)

    @property
    def vectorized(self) -> bool:
        return not self.guard.on_reference

    def trace(self, held: dict, continuous: dict, name: str | None = None, values=None):
        """A trace with every latent site at its value but ``name``, which offers ``values``; enumerated."""
        model = poutine.condition(self.model_fn, data={**continuous, **{k: v for k, v in held.items() if k != name}})
        if name is not None:
            model = _Offer(name, values)(model)
        with torch.no_grad(), pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return poutine.trace(poutine.enum(model, first_available_dim=-1 - self.nesting)).get_trace(self.data)

    def separable(self, site, held: dict, continuous: dict) -> bool:
        """Whether every term that depends on ``site`` (directly or through enumerated sites) lies inside its
        plates: then the elements of those plates are independent given everything else."""
        value = held[site.name]
        contraction = self._contraction(site, held, continuous, value.expand(2, *value.shape))
        if contraction is None:
            return False
        trace, tree, sum_dims, target, ordinal = contraction
        terms = [(o, t) for o, ts in tree.items() for t in ts]
        dims, grown = {target}, True
        while grown:
            grown = False
            for _, t in terms:
                mine = set(t._pyro_dims) & sum_dims
                if mine & dims and not mine <= dims:
                    dims |= mine
                    grown = True
        return all(o >= ordinal for o, t in terms if set(t._pyro_dims) & dims)

    def _contraction(self, site, held, continuous, candidates, strict: bool = False):
        """The enumerated trace offering ``candidates`` as Pyro's contraction takes it; None (stepped aside to
        the reference) where the model fails with the candidates' extra dimension (``strict``: raise)."""
        try:
            trace = prune_subsample_sites(self.trace(held, continuous, site.name, candidates))
            for node in trace.nodes.values():
                if node["type"] == "sample":   # support checks are data-dependent control flow (graphs)
                    node["fn"] = unvalidated(node["fn"])
            with torch.no_grad(), pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trace.compute_log_prob()
                trace.pack_tensors()
        except Exception as e:  # noqa: BLE001 - a model that does not broadcast the candidates' dimension
            if strict:
                raise
            self.guard.step_aside(f"site {site.name!r}: the model fails when it offers several values at once "
                                  f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            return None
        symbol = trace.plate_to_symbol
        node = trace.nodes[site.name]
        target = node["infer"]["_dim_to_symbol"][node["infer"]["_enumerate_dim"]]

        def ordinal(n):
            return frozenset(symbol[f.name] for f in n["cond_indep_stack"] if f.vectorized)

        tree, sum_dims = OrderedDict(), set()
        for n in trace.nodes.values():
            if n["type"] == "sample" and "log_prob" in n["packed"]:
                term = n["packed"]["log_prob"]
                tree.setdefault(ordinal(n), []).append(term)
                sum_dims |= set(term._pyro_dims) - set(symbol.values())
        return trace, tree, sum_dims, target, ordinal(node)

    def table(self, site, held: dict, continuous: dict, candidates: torch.Tensor, group: tuple,
              check: bool = False) -> torch.Tensor | None:
        """log p(site = candidates[c], everything else) per candidate and element, up to a constant per
        element: ``(C, *site.elements)``, for a move of the elements ``group`` (an index into the elements;
        the candidates differ only there), the same along axes whose elements are not independent.
        ``check``: check it against the reference before its route is used (else when the guard says; a new
        graph is checked at its first call). None: the route stepped aside before use (ask again); a
        route found wrong while it runs steps aside and raises :class:`~inference.tracing.Mismatch`
        (the draws so far came from a wrong conditional: the chain runs again)."""
        if not self.vectorized:
            return self._one_at_a_time(site, held, continuous, candidates)
        graph = None
        if self.guard.route == "graph":
            check = check or (site.name, len(candidates)) not in self._graphs
            graph = self._graph(site, held, continuous, candidates)
        if graph is not None:
            t = graph(candidates, *continuous.values(), *held.values())
        else:
            t = self._vectorized(site, held, continuous, candidates)
            if t is None:
                return None
        if self.reference is not None and (self.guard.due() or check):
            dtype = functools.reduce(torch.promote_types, [v.dtype for v in continuous.values()], torch.float32)
            why = self._disagreement(site, held, continuous, candidates, group, t, tolerance(dtype))
            if why:
                self.guard.step_aside(why)
                if not check:
                    raise Mismatch(why)
                return None
        return t

    def _vectorized(self, site, held, continuous, candidates, strict: bool = False) -> torch.Tensor | None:
        """The table from one enumerated trace and Pyro's contraction (None where the model fails)."""
        contraction = self._contraction(site, held, continuous, candidates, strict)
        if contraction is None:
            return None
        trace, tree, sum_dims, target, ordinal = contraction
        sizes = {d: n for ts in tree.values() for t in ts for d, n in zip(t._pyro_dims, t.shape)}
        result = contract_to_tensor(tree, sum_dims, target_ordinal=ordinal if site.separable else frozenset(),
                                    target_dims={target}, ring=LogRing(dim_to_size=sizes))
        dim = trace.nodes[site.name]["infer"]["_enumerate_dim"]
        t = unpack(result, trace.symbol_to_dim)
        t = t.reshape((1,) * (-dim - t.dim()) + tuple(t.shape))      # dims dim..-1: candidates first
        batch = len(site.fn.batch_shape)
        t = t.reshape(t.shape[0], *t.shape[t.dim() - batch:]).expand(len(candidates), *site.fn.batch_shape)
        t = t.reshape(*t.shape, *(1,) * (len(site.elements) - batch)).expand(len(candidates), *site.elements)
        floor = 0.5 * torch.finfo(t.dtype).min   # Pyro's contraction clamps -inf to the dtype's lowest number
        return torch.where(torch.isnan(t) | (t < floor), -math.inf, t.double())

    def _graph(self, site, held, continuous, candidates):
        """:meth:`_vectorized` traced into one graph of ATen operations (``make_fx``), once per site and number
        of candidates, the values and candidates its inputs; None where it cannot be traced."""
        key = (site.name, len(candidates))
        if key not in self._graphs:
            names, count = (tuple(continuous), tuple(held)), len(continuous)

            def fn(values, *tensors):
                return self._vectorized(site, dict(zip(names[1], tensors[count:])),
                                        dict(zip(names[0], tensors[:count])), values, strict=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._graphs[key] = trace_graph(fn, candidates, *continuous.values(), *held.values())
            except Exception as e:  # noqa: BLE001 - not traceable: this site's tables come from Pyro directly
                log.info("discrete moves: no graph for site %r (%s: %s)", site.name, type(e).__name__, str(e)[:200])
                self._graphs[key] = None
        return self._graphs[key]

    def _one_at_a_time(self, site, held, continuous, candidates) -> torch.Tensor:
        """The reference route: the log joint at each candidate value of the whole site (for a move of one
        element, where the candidates differ in that element only)."""
        joint = torch.tensor([self.reference(continuous, {**held, site.name: c}) for c in candidates],
                             dtype=torch.float64)
        return joint.reshape(-1, *(1,) * len(site.elements)).expand(len(candidates), *site.elements)

    def _disagreement(self, site, held, continuous, candidates, group, t, tol: float) -> str:
        """How the table differs from the reference's log joint (at the first, second and last candidate),
        or "": the table's differences between candidates, summed over the elements of ``group``, are the
        log joint's differences, within the fast routes' tolerance relative to the log joint."""
        picks = sorted({0, 1, len(candidates) - 1})
        joint = [self.reference(continuous, {**held, site.name: candidates[c]}) for c in picks]
        for c, ref in zip(picks[1:], joint[1:]):
            got = float((t[c][group] - t[picks[0]][group]).sum())
            expected = ref - joint[0]
            if not math.isfinite(expected) and not math.isfinite(got) or math.isinf(joint[0]):
                continue
            if not abs(got - expected) <= tol * max(1.0, abs(ref), abs(joint[0])):
                return (f"site {site.name!r}: log joint differences {got:.8g} where the reference gives {expected:.8g} "
                        "(does the model broadcast an extra batch dimension as Pyro's enumeration needs, e.g. "
                        "x.sum(-1) rather than x.sum()?)")
        return ""
