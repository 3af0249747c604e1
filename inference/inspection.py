"""What a Pyro model is, found by tracing it once (:func:`inspect_model`): observed sites
(``pyro.deterministic`` sites are not observations), sites marked for enumeration, ``max_plate_nesting``,
the data plate (the outermost plate of the first observed site) and the global sites (latent, not
enumerated, outside the outermost plate of every observed site); which discrete sites an engine cannot
move; and a model's arguments in Pyro's calling convention as one data object (:class:`ModelArgs`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pyro
import pyro.poutine as poutine
import pyro.util
import torch
from pyro.distributions import Unit
from pyro.infer.autoguide.initialization import InitMessenger
from pyro.infer.inspect import site_is_deterministic
from pyro.poutine.util import site_is_subsample

from inference.initialization import sample_or_uniform

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
