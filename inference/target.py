"""How inference sees a model: a zoo model (the protocol of ``zoo.base.ZooModel``) or any plain
Pyro callable ``model(data)``.

Nothing here knows which model it got. What a zoo model states (global sites, marginal
log-likelihood, alignment) is used as stated; for a plain callable the same facts are discovered
by tracing it once: observed sites, sites marked for enumeration, ``max_plate_nesting``, the data
plate (the outermost plate of the first observed site) and the global sites (latent,
not enumerated, outside the data plate).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.util import site_is_subsample
from torch.distributions import transform_to

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Structure of a model on given data, found by tracing it once."""

    max_plate_nesting: int
    observed: tuple[str, ...]
    enumerated: tuple[str, ...]
    latent: tuple[str, ...]            # sampled latent sites, enumerated ones excluded
    global_sites: tuple[str, ...]
    data_plate: str | None
    data_size: int | None
    shapes: dict[str, tuple[int, ...]]


def inspect_model(model_fn: Callable, data) -> ModelInfo:
    """Trace ``model_fn(data)`` once (seeded, leaving the global RNG untouched) and describe it.

    Latent values come from :func:`init_to_uniform_any`, which also works for improper priors.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seeded = poutine.seed(InitMessenger(init_to_uniform_any)(model_fn), rng_seed=0)
        trace = poutine.trace(seeded).get_trace(data)
    sites = [s for s in trace.nodes.values()
             if s["type"] == "sample" and not site_is_subsample(s) and not s["infer"].get("is_auxiliary")]
    observed = tuple(s["name"] for s in sites if s["is_observed"])
    enumerated = tuple(
        s["name"] for s in sites if not s["is_observed"] and s["infer"].get("enumerate") == "parallel"
    )
    latent = tuple(s["name"] for s in sites if not s["is_observed"] and s["name"] not in enumerated)
    nesting = [-f.dim for s in sites for f in s["cond_indep_stack"] if f.vectorized]
    data_plate = data_size = None
    if observed:
        frames = [f for f in trace.nodes[observed[0]]["cond_indep_stack"] if f.vectorized]
        if frames:
            outer = min(frames, key=lambda f: f.dim)
            data_plate, data_size = outer.name, outer.size
    global_sites = tuple(
        name for name in latent
        if not any(f.name == data_plate for f in trace.nodes[name]["cond_indep_stack"])
    )
    return ModelInfo(
        max_plate_nesting=max(nesting, default=0),
        observed=observed,
        enumerated=enumerated,
        latent=latent,
        global_sites=global_sites,
        data_plate=data_plate,
        data_size=data_size,
        shapes={s["name"]: tuple(s["value"].shape) for s in sites},
    )


def is_zoo_model(obj) -> bool:
    return callable(getattr(obj, "model", None)) and hasattr(obj, "global_sites") and hasattr(obj, "align")


class Target:
    """A model as inference uses it. ``copy=True`` deep-copies a zoo model (fits never mutate it).

    Two forms of one model (the same global sites, priors and marginal likelihood):

    - ``model_fn``, the generative story with every latent explicit (the zoo model's ``model``): what
      SVI fits with the model's own guide or an autoguide, and what ``infer_discrete`` draws
      enumerated sites from;
    - ``marginal_fn``, local latents summed or integrated out in closed form (the zoo model's
      ``marginal_model`` when it has one, else ``model``): what NUTS samples, MAP maximizes and the
      posterior predictive replicates data from. A zoo model whose own guide covers only its global
      sites may set ``svi_marginal = True`` so that SVI fits this form too.
    """

    def __init__(self, model, *, copy_model: bool = False):
        if isinstance(model, Target):
            model = model.source
        if is_zoo_model(model):
            self.zoo = copy.deepcopy(model) if copy_model else model
            self.model_fn = self.zoo.model
            self.marginal_fn = getattr(self.zoo, "marginal_model", None) or self.zoo.model
            self.svi_marginal = bool(getattr(self.zoo, "svi_marginal", False))
            self.name = getattr(self.zoo, "name", type(model).__name__)
        elif callable(model):
            self.zoo = None
            self.model_fn = self.marginal_fn = model
            self.svi_marginal = False
            self.name = getattr(model, "__name__", type(model).__name__)
        else:
            raise TypeError(
                f"model: expected a zoo model or a Pyro callable model(data), got {type(model).__name__}"
            )
        self.source = self.zoo if self.zoo is not None else model
        self._info_cache: tuple[int, dict[bool, ModelInfo]] | None = None

    # --- facts about the model ---------------------------------------------------------------
    def validate(self, data):
        return self.zoo.validate(data) if self.zoo is not None else data

    def info(self, data, *, marginal: bool = False) -> ModelInfo:
        """Structure of ``model_fn`` (or, with ``marginal=True``, of ``marginal_fn``) on ``data``."""
        if self._info_cache is None or self._info_cache[0] != id(data):
            self._info_cache = (id(data), {})
        cache = self._info_cache[1]
        if marginal not in cache:
            same = self.marginal_fn == self.model_fn
            cache[marginal] = self.info(data) if marginal and same else inspect_model(self.form(marginal), data)
        return cache[marginal]

    def form(self, marginal: bool) -> Callable:
        """``marginal_fn`` when ``marginal``, else ``model_fn``."""
        return self.marginal_fn if marginal else self.model_fn

    def global_sites(self, data) -> tuple[str, ...]:
        if self.zoo is not None:
            return tuple(self.zoo.global_sites)
        return self.info(data).global_sites

    def observed_name(self, data) -> str:
        if self.zoo is not None:
            return self.zoo.observed_site
        observed = self.info(data).observed
        return observed[0] if len(observed) == 1 else "joint"

    @property
    def dims(self) -> dict[str, list[str]]:
        return dict(getattr(self.zoo, "dims", {}) or {})

    def coords(self, data) -> dict[str, list]:
        return dict(self.zoo.coords(data)) if self.zoo is not None else {}

    @property
    def jit_compatible(self) -> bool:
        return bool(getattr(self.zoo, "jit_compatible", False))

    def initial_values(self, data, seed: int):
        return self.zoo.initial_values(data, seed=seed) if self.zoo is not None else None

    def log_density(self, data):
        """The zoo model's closed-form NUTS target ``(transforms, fn)`` (``ZooModel.log_density``), or None."""
        method = getattr(self.zoo, "log_density", None)
        return method(data) if method is not None else None

    def training_transform(self, data):
        return self.zoo.training_transform(data) if self.zoo is not None else None

    def default_guide(self):
        return self.zoo.guide if self.zoo is not None else None

    # --- quantities ------------------------------------------------------------------------
    @property
    def frame_keys(self) -> tuple[str, ...]:
        """Entries of ``align``'s output that are a frame of reference, not quantities."""
        return tuple(getattr(self.zoo, "alignment_frame", ()) or ())

    def align(self, draws: Mapping[str, torch.Tensor], reference=None, *,
              with_frame: bool = False) -> dict[str, torch.Tensor]:
        """Identifiable quantities of ``draws`` (in ``reference``'s frame when given); the frame entries
        (``frame_keys``) are dropped unless ``with_frame``."""
        if self.zoo is None:
            return dict(draws)
        out = dict(self.zoo.align(draws, reference=reference))
        if not with_frame:
            for key in self.frame_keys:
                out.pop(key, None)
        return out

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor], batch_ndim: int) -> torch.Tensor:
        """Pointwise marginal log-likelihood for draws with ``batch_ndim`` leading dims: (*batch, N)."""
        with torch.no_grad():
            if self.zoo is not None:
                return self.zoo.log_likelihood(data, params)
            batch = next(iter(params.values())).shape[:batch_ndim] if params else ()
            flat = {k: v.reshape(-1, *v.shape[batch_ndim:]) for k, v in params.items()}
            n = next(iter(flat.values())).shape[0] if flat else 1
            rows = [pointwise_log_likelihood(self.model_fn, data, {k: v[i] for k, v in flat.items()},
                                             self.info(data)) for i in range(n)]
            out = torch.stack(rows)
            return out.reshape(*batch, *out.shape[1:])


def pointwise_log_likelihood(model_fn: Callable, data, params: Mapping[str, torch.Tensor],
                             info: ModelInfo) -> torch.Tensor:
    """log p(data_n | params) per element n of the data plate, enumerated sites summed out exactly.

    The model is conditioned on ``params``; its observed sites and enumerated sites form a tensor
    tree that is contracted (sum over enumeration dims, product over every plate except the data
    plate) with Pyro's message-passing ``contract_to_tensor``. Latent sites that are neither given
    nor enumerated are drawn from their prior, which makes the result conditional on them.
    """
    model = poutine.condition(model_fn, data=dict(params))
    if info.enumerated:
        model = poutine.enum(model, first_available_dim=-1 - info.max_plate_nesting)
    trace = poutine.trace(model).get_trace(data)
    trace.compute_log_prob()
    trace.pack_tensors()
    missing = [n for n in info.latent if n not in params]
    if missing:
        log.warning("log-likelihood is conditional on prior draws of latent site(s) %s", missing)
    tree: OrderedDict = OrderedDict()
    sum_dims: set[str] = set()
    symbol = trace.plate_to_symbol
    for name in (*info.observed, *info.enumerated):
        site = trace.nodes[name]
        ordinal = frozenset(symbol[f.name] for f in site["cond_indep_stack"] if f.vectorized)
        tree.setdefault(ordinal, []).append(site["packed"]["log_prob"])
        if name in info.enumerated:
            sum_dims.update(set(site["packed"]["log_prob"]._pyro_dims) - set(symbol.values()))
    target = frozenset([symbol[info.data_plate]]) if info.data_plate in symbol else frozenset()
    result = contract_to_tensor(tree, sum_dims, target_ordinal=target, ring=LogRing())
    return result.reshape(-1)


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


def as_target(model, *, copy_model: bool = False) -> Target:
    return model if isinstance(model, Target) and not copy_model else Target(model, copy_model=copy_model)


def chain_seed(seed: int, index: int) -> int:
    """Independent, reproducible seeds per chain (or per stream) from one user seed."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def set_seed(seed: int) -> None:
    pyro.set_rng_seed(int(seed))
