"""The pointwise log-likelihood of any Pyro model, enumerated sites summed out exactly (LOO, held-out
scores and the ``log_likelihood`` group of every Posterior stand on it)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from typing import Callable, Mapping

import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing

from inference.inspection import ModelInfo

def pointwise_log_likelihood(model_fn: Callable, data, params: Mapping[str, torch.Tensor],
                             info: ModelInfo) -> dict[str, torch.Tensor]:
    """log p(y_n | params) per point n of every observed site y, enumerated sites summed out exactly.

    The points of a site inside plates are the elements of its outermost plate (inner plates and event
    dims summed); outside any plate, every batch element is a point (as ArviZ's ``from_pyro``). Observed
    sites that share an enumerated site (directly or through a chain of them) are contracted together
    with Pyro's ``contract_to_tensor`` (sum over enumeration dims, product over every plate except the
    data plate) and reported as one variable named after its sites (``y1+y2``).

    A ``pyro.factor`` site inside a data plate is part of its points' likelihood (e.g. the likelihood of an
    observed covariate that is enumerated where it is missing): it is contracted with the enumerated sites
    it shares dims with, like an observed site, and joins the variable of the observed site(s) it shares
    them with, or else of the first observed site of its data plate (``ModelInfo.factors``); the name
    then carries it: ``y+x_lik``. A factor outside every data plate (a prior term) is not in it.

    A masked enumerated site keeps its prior, which sums to one over its values: padding adds nothing;
    except where a factor depends on its value, which then carries its probability (the imputation
    pattern: the site drawn with ``.mask(False)``, its log-probability added by ``pyro.factor``).
    """
    model = poutine.condition(model_fn, data=dict(params))
    if info.enumerated:
        model = poutine.enum(model, first_available_dim=-1 - info.max_plate_nesting)
    trace = poutine.trace(model).get_trace(data)
    points = (*info.observed, *info.factors)
    trace.compute_log_prob(lambda name, site: name in points or name in info.enumerated)
    if not info.enumerated:
        out = {}
        for name in info.observed:
            joined = [name, *(f for f, owner in info.factors.items() if owner == name)]
            out[_label(joined)] = sum(_points(trace.nodes[n]["log_prob"], info.plates[name]) for n in joined)
        return out
    for name in info.enumerated:   # unmasked prior of an enumerated site, unless a factor carries it
        site = trace.nodes[name]
        dim = site["infer"].get("_enumerate_dim")
        if dim is not None and any(trace.nodes[f]["log_prob"].dim() >= -dim and trace.nodes[f]["log_prob"].shape[dim] > 1
                                   for f in info.factors):
            continue
        fn = site["fn"]
        while isinstance(fn, MaskedDistribution):
            fn = fn.base_dist
        site["log_prob"] = site["unscaled_log_prob"] = fn.log_prob(site["value"]) * site["scale"]
    names = (*points, *info.enumerated)
    dtype = functools.reduce(torch.promote_types, [trace.nodes[n]["log_prob"].dtype for n in names])
    for name in names:   # one dtype (a site masked with False has a float32 log_prob of zeros whatever the model's)
        trace.nodes[name]["log_prob"] = trace.nodes[name]["log_prob"].to(dtype)
    try:
        trace.pack_tensors()
    except ValueError as e:
        raise ValueError(f"model: enumerated sites need every batch dim declared by a pyro.plate ({e})") from None
    symbol = trace.plate_to_symbol
    plate_symbols = set(symbol.values())
    dims = {name: set(trace.nodes[name]["packed"]["log_prob"]._pyro_dims) - plate_symbols for name in names}
    groups = _coupled(points, info.enumerated, dims)
    for group in [g for g in groups if not any(n in info.observed for n in g)]:   # factors alone: to their site
        groups.remove(group)
        next(g for g in groups if info.factors[group[0]] in g).extend(group)
    out = {}
    for group in groups:
        tree: OrderedDict = OrderedDict()
        for name in group:
            site = trace.nodes[name]
            ordinal = frozenset(symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
            tree.setdefault(ordinal, []).append(site["packed"]["log_prob"])
        observed = [n for n in group if n in info.observed]
        plate = info.plates[observed[0]]
        target = frozenset([symbol[plate[0]]]) if plate and plate[0] in symbol else frozenset()
        sum_dims = set().union(*(dims[n] for n in group))
        result = contract_to_tensor(tree, sum_dims, target_ordinal=target, ring=LogRing())
        size = plate[2] if plate else 1
        out[_label([*observed, *(n for n in group if n in info.factors)])] = (
            result.reshape(-1).expand(size) if result.numel() == 1 else result.reshape(-1))
    return out


def _label(names: list[str]) -> str:
    """The variable of sites whose points are one: ``y1+y2``, or ``x_0+...+x_9`` for more than three."""
    return "+".join(names) if len(names) <= 3 else f"{names[0]}+...+{names[-1]}"


def _points(log_prob: torch.Tensor, plate: tuple[str, int, int] | None) -> torch.Tensor:
    """A site's log density per point: its outermost plate's elements, else its batch elements."""
    if plate is None:
        return log_prob.reshape(1) if log_prob.dim() == 0 else log_prob
    _, dim, size = plate
    lp = log_prob.reshape((1,) * max(0, -dim - log_prob.dim()) + tuple(log_prob.shape))
    points = lp.movedim(dim, 0)
    points = points.reshape(points.shape[0], -1).sum(-1)
    return points.expand(size) if points.shape[0] == 1 else points


def _coupled(observed, enumerated, dims) -> list[list[str]]:
    """Observed sites (and data-plate factors) grouped with the enumerated sites they depend on (connected
    through shared enumeration dims); an observed site without enumeration dims is a group of its own."""
    groups: list[tuple[set[str], list[str]]] = []
    for name in (*enumerated, *observed):
        merged_dims, merged = set(dims[name]), [name]
        for g in [g for g in groups if g[0] & dims[name]]:
            groups.remove(g)
            merged_dims |= g[0]
            merged = g[1] + merged
        groups.append((merged_dims, merged))
    order = (*observed, *enumerated)
    return [sorted(g, key=order.index) for _, g in groups if any(n in observed for n in g)]
