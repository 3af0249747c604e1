"""How inference sees a model: one object with the protocol of ``zoo.base.ZooModel``.

A zoo model already has it. Any other Pyro callable ``model(data)`` (optionally with its own
``guide(data)``) is wrapped once in :class:`PlainModel`, which implements the same protocol by
tracing, so nothing below ever asks which kind of model it got. A model written with Pyro's calling
convention, ``model(*args, **kwargs)`` (e.g. ``model(x, y=None)``), gets its arguments as one data
object, :class:`ModelArgs` (:func:`model_data`), and is called ``model(*data.args, **data.kwargs)``:
inference keeps passing one ``data`` around. Facts a model does not declare are
found by tracing it once (:func:`inspect_model`): observed sites (``pyro.deterministic`` sites are
not observations), sites marked for enumeration, ``max_plate_nesting``, the data plate (the
outermost plate of the first observed site) and the global sites (latent, not enumerated, outside
the outermost plate of every observed site).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import pyro.util
import torch
from pyro.distributions import Unit
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.infer.inspect import site_is_deterministic
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.util import site_is_subsample
from torch.distributions import transform_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Structure of a model on given data, found by tracing it once."""

    max_plate_nesting: int
    observed: tuple[str, ...]           # observed sites (``pyro.deterministic`` sites excluded)
    enumerated: tuple[str, ...]
    latent: tuple[str, ...]             # sampled latent sites, enumerated ones excluded
    global_sites: tuple[str, ...]       # as the model declares them, else latent sites outside every data plate
    data_plate: str | None              # outermost plate of the first observed site
    data_size: int | None
    shapes: dict[str, tuple[int, ...]]  # every sample and deterministic site
    deterministic: tuple[str, ...] = ()
    plates: dict[str, tuple[str, int, int] | None] | None = None   # observed site -> (plate, dim, size) or None
    discrete: dict[str, str] = field(default_factory=dict)   # latent discrete site not enumerated -> its distribution
    factors: dict[str, str] = field(default_factory=dict)    # pyro.factor site in a data plate -> observed site it joins


def discrete_problem(info: ModelInfo, who: str, alternative: str = "") -> str:
    """What is wrong when the model has latent discrete sites that are not enumerated (``info.discrete``),
    which ``who`` (NUTS, an autoguide) cannot draw, and what would work; "" when it has none."""
    if not info.discrete:
        return ""
    sites = ", ".join(f"{name!r} ({fn})" for name, fn in info.discrete.items())
    return (f"latent discrete site(s) {sites} not enumerated, and {who} cannot draw them: mark a finite-support "
            f"site for enumeration (infer={{'enumerate': 'parallel'}}){alternative}, or sample them with "
            "run_nuts's own engine (engine='zoo'), which moves them by Gibbs updates")


def refuse_discrete(info: ModelInfo, who: str, alternative: str = "") -> None:
    """A one-line ValueError for :func:`discrete_problem`, if any."""
    if problem := discrete_problem(info, who, alternative):
        raise ValueError(f"model: {problem}")


@dataclass(frozen=True, eq=False)
class ModelArgs:
    """The arguments of one call ``model(*args, **kwargs)`` (Pyro's convention: ``model_args`` and
    ``model_kwargs`` of ``initialize_model`` and ``Predictive``), as the one data object inference
    passes around. Its tensors (those of ``args`` and the values of ``kwargs``) are the data tensors."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def model_data(data=None, model_args=None, model_kwargs=None):
    """What inference passes to the model: ``data`` for the one-argument form ``model(data)``, or, when
    ``model_args`` or ``model_kwargs`` is given, :class:`ModelArgs` for ``model(*model_args,
    **model_kwargs)`` (one positional argument and no keywords is the one-argument form itself)."""
    if model_args is None and model_kwargs is None:
        return data
    if data is not None:
        raise ValueError("data: give the data either as data (for model(data)) or as model_args/model_kwargs "
                         "(for model(*args, **kwargs)), not both")
    if model_args is not None and not isinstance(model_args, (tuple, list)):
        raise TypeError(f"model_args: expected a tuple of the model's positional arguments, got "
                        f"{type(model_args).__name__}")
    if model_kwargs is not None and not (isinstance(model_kwargs, Mapping)
                                         and all(isinstance(k, str) for k in model_kwargs)):
        raise TypeError(f"model_kwargs: expected a dict of the model's keyword arguments, got "
                        f"{type(model_kwargs).__name__}")
    args, kwargs = tuple(model_args or ()), dict(model_kwargs or {})
    return args[0] if len(args) == 1 and not kwargs else ModelArgs(args, kwargs)


class CallWithArgs:
    """``fn(*args, **kwargs)`` as a callable of one :class:`ModelArgs`. Its ``__self__`` is ``fn``, as a
    bound method's is: where the parameters of a module are looked for (``inference.variational.svi``)."""

    def __init__(self, fn: Callable):
        self.__self__ = fn

    def __call__(self, data: ModelArgs):
        return self.__self__(*data.args, **data.kwargs)


def call_with_args(fn: Callable) -> CallWithArgs:
    """``fn`` called on :class:`ModelArgs` (idempotent)."""
    return fn if isinstance(fn, CallWithArgs) else CallWithArgs(fn)


def _trace(model_fn: Callable, data):
    """One trace of ``model_fn(data)`` for its structure: seeded (global RNG untouched), no gradients,
    latent values drawn from the prior (:func:`sample_or_uniform`: uniform on the unconstrained scale for
    a prior that cannot be sampled) in the model's dtype, and validation off: the structure of a model
    does not depend on whether that point is valid (e.g. positive but not ordered, where a support is
    wider than the values the prior gives)."""
    with torch.no_grad(), warnings.catch_warnings(), pyro.validation_enabled(False):
        warnings.simplefilter("ignore")
        seeded = poutine.seed(InitMessenger(sample_or_uniform)(model_fn), rng_seed=0)
        return poutine.trace(seeded).get_trace(data)


def inspect_model(model_fn: Callable, data, global_sites=None) -> ModelInfo:
    """Trace ``model_fn(data)`` once and describe it; ``global_sites`` overrides the discovered ones."""
    trace = _trace(model_fn, data)
    sites = [s for s in trace.nodes.values()
             if s["type"] == "sample" and not site_is_subsample(s) and not s["infer"].get("is_auxiliary")]
    deterministic = tuple(s["name"] for s in sites if site_is_deterministic(s))
    observed = tuple(s["name"] for s in sites if s["is_observed"] and s["name"] not in deterministic)
    enumerated = tuple(
        s["name"] for s in sites if not s["is_observed"] and s["infer"].get("enumerate") == "parallel"
    )
    latent = tuple(s["name"] for s in sites if not s["is_observed"] and s["name"] not in enumerated)
    discrete = {name: _describe(trace.nodes[name]["fn"]) for name in latent if _is_discrete(trace.nodes[name]["fn"])}
    nesting = [-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized]
    plates = {name: _outer_plate(trace.nodes[name]) for name in observed}
    first = plates[observed[0]] if observed else None
    data_plates = {p[0] for p in plates.values() if p is not None}
    factors = {}
    for site in trace.nodes.values():   # a factor in a data plate is part of its points' likelihood
        frames = {f.name for f in site.get("cond_indep_stack", ())}
        owner = next((name for name in observed if plates[name] and plates[name][0] in frames), None)
        if site["type"] == "sample" and _is_factor(site) and owner is not None:
            factors[site["name"]] = owner
    if global_sites is None:
        global_sites = tuple(name for name in latent
                             if not any(f.name in data_plates for f in trace.nodes[name]["cond_indep_stack"]))
    return ModelInfo(
        max_plate_nesting=max(nesting, default=0),
        observed=observed,
        enumerated=enumerated,
        latent=latent,
        global_sites=tuple(global_sites),
        data_plate=first[0] if first else None,
        data_size=first[2] if first else None,
        shapes={s["name"]: tuple(s["value"].shape) for s in sites},
        deterministic=deterministic,
        plates=plates,
        discrete=discrete,
        factors=factors,
    )


def _family(fn):
    """A distribution without the wrappers of ``.expand``, ``.to_event`` and masks."""
    while hasattr(fn, "base_dist") and type(fn).__name__ in ("Independent", "ExpandedDistribution", "MaskedDistribution"):
        fn = fn.base_dist
    return fn


def _is_factor(site) -> bool:
    """A ``pyro.factor`` site: an observed, auxiliary ``Unit`` distribution."""
    return bool(site["is_observed"] and site["infer"].get("is_auxiliary") and isinstance(_family(site["fn"]), Unit))


def _is_discrete(fn) -> bool:
    try:
        return bool(fn.support.is_discrete)
    except NotImplementedError:
        return False


def _describe(fn) -> str:
    """``Poisson, infinite support``: a distribution's family and whether it can be enumerated."""
    family = _family(fn)
    return f"{type(family).__name__}, {'finite' if family.has_enumerate_support else 'infinite'} support"


def _outer_plate(site) -> tuple[str, int, int] | None:
    frames = [f for f in site["cond_indep_stack"] if f.vectorized]
    if not frames:
        return None
    outer = min(frames, key=lambda f: f.dim)
    return outer.name, outer.dim, outer.size


def is_zoo_model(obj) -> bool:
    return callable(getattr(obj, "model", None)) and hasattr(obj, "global_sites") and hasattr(obj, "align")


class PlainModel:
    """A plain Pyro callable ``model(data)`` (and optionally its ``guide(data)``) with the protocol of
    ``zoo.base.ZooModel``, every fact found by tracing; with ``args_form=True``, a callable
    ``model(*args, **kwargs)`` called on :class:`ModelArgs` (:func:`call_with_args`):

    - ``global_sites = None``: discovered (latent sites outside every data plate);
    - ``log_likelihood``: per observed site, the site's log density at each point given every
      non-enumerated latent, enumerated sites summed out (:func:`pointwise_log_likelihood`);
    - ``align`` and ``validate``: the identity; no ``simulate`` (nothing to simulate from without
      knowing the size of the data).
    """

    global_sites = None
    dims: dict[str, list[str]] = {}

    def __init__(self, model: Callable, guide: Callable | None = None, *, args_form: bool = False):
        self.model = call_with_args(model) if args_form else model
        self.guide = guide
        self.name = getattr(model, "__name__", type(model).__name__)
        self._info: tuple[int, ModelInfo] | None = None

    def __repr__(self) -> str:
        return f"PlainModel({self.name})"

    def info(self, data) -> ModelInfo:
        if self._info is None or self._info[0] != id(data):
            self._info = (id(data), inspect_model(self.model, data))
        return self._info[1]

    def validate(self, data):
        return data

    def align(self, draws, reference=None):
        return dict(draws)

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{observed site: (*batch, *points)}``; ``params`` may carry leading batch dims (draws)."""
        info = self.info(data)
        given = {k: v for k, v in params.items() if k in info.latent}
        batch = _batch_shape(given, info.shapes)
        flat = {k: v.reshape(-1, *info.shapes[k]) for k, v in given.items()}
        n = math.prod(batch)
        missing = [k for k in info.latent if k not in given]
        if missing:
            log.warning("log-likelihood is conditional on prior draws of latent site(s) %s", missing)
        rows = [pointwise_log_likelihood(self.model, data, {k: v[i] for k, v in flat.items()}, info)
                for i in range(n)]
        return {k: torch.stack([r[k] for r in rows]).reshape(*batch, *rows[0][k].shape) for k in rows[0]}

    def initial_values(self, data, seed: int = 0):
        return None

    def coords(self, data) -> dict[str, list]:
        return {}

    def figures(self, data, posteriors, dataset=None) -> dict:
        return {}

    def config(self) -> dict:
        return {}


def _batch_shape(params: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple]) -> tuple[int, ...]:
    for k, v in params.items():
        return tuple(v.shape[:v.dim() - len(shapes[k])])
    return ()


class Target:
    """A model as inference uses it: the protocol object ``model`` (a zoo model, or a plain callable
    wrapped in :class:`PlainModel`) and its guide. ``copy_model=True`` deep-copies both together (fits
    never mutate what they were given).

    Two forms of one model (the same global sites, priors and marginal likelihood):

    - ``model_fn``, the generative story with every latent explicit: what SVI fits (unless the guide
      covers exactly the latent sites of the marginal form, :meth:`fits_marginal`) and what
      ``infer_discrete`` draws enumerated sites from;
    - ``marginal_fn``, local latents summed or integrated out in closed form (``marginal_model`` when
      the model has one, else ``model``): what NUTS samples, MAP maximizes and the posterior
      predictive replicates data from.

    Parameters the model and guide create live in this target's own parameter store
    (:meth:`scope`): two fits never share state, and nothing changes Pyro's global settings.

    ``args_form=True``: a plain model (and guide) written ``model(*args, **kwargs)``, given its
    arguments as :class:`ModelArgs` (:func:`model_data`).
    """

    def __init__(self, model, *, guide: Callable | None = None, copy_model: bool = False, args_form: bool = False):
        if isinstance(model, Target):
            guide = guide or model.guide
            args_form = args_form or model.args_form
            model = model.model
        if is_zoo_model(model):
            if args_form and not isinstance(model, PlainModel):
                raise TypeError(f"model_args: a zoo model is called as model(data); pass data=... to "
                                f"{getattr(model, 'name', type(model).__name__)!r}")
            spec = model
        elif callable(model):
            spec = PlainModel(model, args_form=args_form)
        else:
            raise TypeError(
                f"model: expected a zoo model or a Pyro callable model(data), got {type(model).__name__}"
            )
        if callable(guide) and args_form:
            guide = call_with_args(guide)
        guide = guide if callable(guide) else spec.guide
        self.args_form = args_form
        self.model, self.guide = copy.deepcopy((spec, guide)) if copy_model else (spec, guide)
        self.model_fn = self.model.model
        self.marginal_fn = getattr(self.model, "marginal_model", None) or self.model_fn
        self.name = getattr(self.model, "name", "") or type(self.model).__name__
        self.param_state = {"params": {}, "constraints": {}}
        self._in_scope = False
        self._info_cache: tuple[int, dict[bool, ModelInfo]] | None = None

    @property
    def source(self):
        """The model object (for a fit: the fitted copy)."""
        return self.model

    @contextmanager
    def scope(self):
        """Pyro's parameter store holding this target's parameters only (``ParamStoreDict.scope``): two
        fits of copies of one model (or two autoguides of one name) never share state. On exit, the
        parameters of plain ``pyro.param`` statements (not of a module) are also put into the store
        outside, where Pyro users look for them (``pyro.param(name)`` after a fit)."""
        if self._in_scope:   # already inside: nothing to switch
            yield
            return
        self._in_scope = True
        store = pyro.get_param_store()
        outside = store.get_state()
        store.clear()
        store.set_state(self.param_state)
        try:
            yield
        finally:   # also after an error: the parameters reached are kept
            self._in_scope = False
            self.param_state = store.get_state()
            store.clear()
            store.set_state(outside)
            # a module's parameters are torch.nn.Parameter objects; those of pyro.param statements are not
            plain = [k for k, p in self.param_state["params"].items() if not isinstance(p, torch.nn.Parameter)]
            store.set_state({"params": {k: self.param_state["params"][k] for k in plain},
                             "constraints": {k: self.param_state["constraints"][k] for k in plain}})

    # --- facts about the model ---------------------------------------------------------------
    def validate(self, data):
        return self.model.validate(data)

    def info(self, data, *, marginal: bool = False) -> ModelInfo:
        """Structure of ``model_fn`` (or, with ``marginal=True``, of ``marginal_fn``) on ``data``."""
        if self._info_cache is None or self._info_cache[0] != id(data):
            self._info_cache = (id(data), {})
        cache = self._info_cache[1]
        if marginal not in cache:
            if marginal and self.marginal_fn == self.model_fn:
                cache[marginal] = self.info(data)
            else:
                with self.scope():
                    cache[marginal] = inspect_model(self.form(marginal), data, self.model.global_sites)
        return cache[marginal]

    def form(self, marginal: bool) -> Callable:
        """``marginal_fn`` when ``marginal``, else ``model_fn``."""
        return self.marginal_fn if marginal else self.model_fn

    def fits_marginal(self, guide_fn: Callable, data) -> bool:
        """True when the model has a marginal form and ``guide_fn`` draws exactly its latent sites (the
        guide covers only the global sites): SVI then fits the marginal form, whose ELBO is the same
        as the explicit form's with the local latents summed or integrated out, at a lower cost.

        The guide is traced for every model, with the random state restored afterwards: a guide that
        initializes itself on its first call does so from the same random state whichever form is fit."""
        state = pyro.util.get_rng_state()
        try:
            # validation off: a guide that starts at invalid values fails at step 0, as a divergence
            with self.scope(), torch.no_grad(), warnings.catch_warnings(), pyro.validation_enabled(False):
                warnings.simplefilter("ignore")
                trace = poutine.trace(guide_fn).get_trace(data)
        finally:
            pyro.util.set_rng_state(state)
        drawn = {s["name"] for s in trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]
                 and not s["infer"].get("is_auxiliary") and not site_is_subsample(s)}
        return self.marginal_fn != self.model_fn and drawn == set(self.info(data, marginal=True).latent)

    def global_sites(self, data) -> tuple[str, ...]:
        return self.info(data).global_sites

    @property
    def dims(self) -> dict[str, list[str]]:
        return dict(getattr(self.model, "dims", {}) or {})

    def coords(self, data) -> dict[str, list]:
        return dict(self.model.coords(data))

    def initial_values(self, data, seed: int):
        return self.model.initial_values(data, seed=seed)

    def log_density(self, data):
        """The model's closed-form NUTS target ``(transforms, fn)`` (``ZooModel.log_density``), or None."""
        method = getattr(self.model, "log_density", None)
        return method(data) if method is not None else None

    def training_transform(self, data):
        method = getattr(self.model, "training_transform", None)
        return method(data) if method is not None else None

    # --- quantities ------------------------------------------------------------------------
    @property
    def frame_keys(self) -> tuple[str, ...]:
        """Entries of ``align``'s output that are a frame of reference, not quantities."""
        return tuple(getattr(self.model, "alignment_frame", ()) or ())

    def align(self, draws: Mapping[str, torch.Tensor], reference=None, *,
              with_frame: bool = False) -> dict[str, torch.Tensor]:
        """Identifiable quantities of ``draws`` (in ``reference``'s frame when given); the frame entries
        (``frame_keys``) are dropped unless ``with_frame``."""
        out = dict(self.model.align(draws, reference=reference))
        if not with_frame:
            for key in self.frame_keys:
                out.pop(key, None)
        return out

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pointwise log-likelihood per observed site, ``{site: (*batch, *points)}``, for draws with leading
        batch dims. Only non-enumerated latent sites are passed on to the model."""
        latent = set(self.info(data).latent) | set(self.info(data, marginal=True).latent)
        given = {k: v for k, v in params.items() if k in latent}
        with torch.no_grad(), self.scope():
            ll = self.model.log_likelihood(data, given)
        if torch.is_tensor(ll):
            observed = self.info(data, marginal=True).observed
            ll = {observed[0] if len(observed) == 1 else "joint": ll}
        return ll

    def observed_values(self, data) -> dict[str, torch.Tensor]:
        """The value of every observed site of the marginal form on ``data`` (what ``observed_data`` holds)."""
        with self.scope():
            trace = _trace(self.marginal_fn, data)
        return {k: trace.nodes[k]["value"] for k in self.info(data, marginal=True).observed}


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


def init_to_uniform_any(site=None, radius: float = 2.0):
    """Pyro's ``init_to_uniform`` (uniform in (-radius, radius) on the unconstrained scale) that also
    works for priors that cannot be sampled, such as ``ImproperUniform``; discrete sites are sampled."""
    if site is None:
        return init_to_uniform_any
    fn = site["fn"]
    if fn.support.is_discrete:
        return fn.sample().detach()
    t = transform_to(fn.support)
    try:
        prototype = fn.sample().detach()
        shape, dtype = t.inv(prototype).shape, prototype.dtype   # the model's dtype, not the default
    except NotImplementedError:
        shape, dtype = t.inverse_shape(fn.batch_shape + fn.event_shape), torch.get_default_dtype()
    value = t(torch.rand(shape, dtype=dtype) * (2 * radius) - radius).detach()
    value._pyro_custom_init = False
    return value


def sample_or_uniform(site=None):
    """A prior draw, or :func:`init_to_uniform_any` for a prior that cannot be sampled."""
    if site is None:
        return sample_or_uniform
    try:
        return site["fn"].sample().detach()
    except NotImplementedError:
        return init_to_uniform_any(site)


def init_to_median_any(site=None):
    """Pyro's ``init_to_median``, falling back to :func:`init_to_uniform_any` where it cannot sample."""
    if site is None:
        return init_to_median_any
    try:
        return init_to_median(site, fallback=None)
    except (NotImplementedError, ValueError):
        return init_to_uniform_any(site)


def as_target(model, *, guide: Callable | None = None, copy_model: bool = False, args_form: bool = False) -> Target:
    if isinstance(model, Target) and not copy_model and guide is None:
        return model
    return Target(model, guide=guide, copy_model=copy_model, args_form=args_form)


def num_observations(data) -> int:
    """How many observations ``data`` holds, the unit held-out scores are reported per: what the data
    type says (``data.num_observations``, e.g. time steps of ``zoo.hmm.Sequences``), else its rows."""
    count = getattr(data, "num_observations", None)
    return int(count) if count is not None else len(data)


def chain_seed(seed: int, index: int) -> int:
    """Independent, reproducible seeds per chain (or per stream) from one user seed."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def set_seed(seed: int) -> None:
    pyro.set_rng_seed(int(seed))
