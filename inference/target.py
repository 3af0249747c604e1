"""How inference sees a model: one object with the protocol of ``zoo.base.ZooModel``.

A zoo model already has it. Any other Pyro callable ``model(data)`` (optionally with its own
``guide(data)``) is wrapped once in :class:`PlainModel`, which implements the same protocol by
tracing, so nothing below ever asks which kind of model it got. A model written with Pyro's calling
convention, ``model(*args, **kwargs)`` (e.g. ``model(x, y=None)``), gets its arguments as one data
object, :class:`~inference.inspection.ModelArgs` (:func:`~inference.inspection.model_data`), and is
called ``model(*data.args, **data.kwargs)``: inference keeps passing one ``data`` around. Facts a model
does not declare are found by tracing it once (:mod:`inference.inspection`); its pointwise log-likelihood
is :mod:`inference.likelihood`'s, its start :mod:`inference.initialization`'s.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from contextlib import contextmanager
from typing import Callable, Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import pyro.util
import torch
from pyro.poutine.util import site_is_subsample

from inference.inspection import ModelInfo, _trace, call_with_args, inspect_model
from inference.likelihood import pointwise_log_likelihood

log = logging.getLogger(__name__)


def is_zoo_model(obj) -> bool:
    return callable(getattr(obj, "model", None)) and hasattr(obj, "global_sites") and hasattr(obj, "align")


class PlainModel:
    """A plain Pyro callable ``model(data)`` (and optionally its ``guide(data)``) with the protocol of
    ``zoo.base.ZooModel``, every fact found by tracing; with ``args_form=True``, a callable
    ``model(*args, **kwargs)`` called on :class:`ModelArgs` (:func:`call_with_args`):

    - ``global_sites = None``: discovered (latent sites outside every data plate);
    - ``log_likelihood``: per observed site, the site's log density at each point given every
      non-enumerated latent, enumerated sites summed out (:func:`inference.likelihood.pointwise_log_likelihood`);
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
    arguments as :class:`~inference.inspection.ModelArgs` (:func:`~inference.inspection.model_data`).
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
