"""Stochastic variational inference for any Pyro model.

The loop is PyTorch-style (as in Pyro's ``examples/svi_torch.py``): the ELBO's module form
``elbo(model, guide)``, ``torch.optim.Adam`` over the parameters of the model/guide modules plus any
global ``pyro.param`` the guide declares, and a learning-rate schedule. :class:`Optimization` is that
step (with gradient clipping, NaN rollback and the progress bar), shared by :func:`fit_svi`, the
minibatch trainer (:mod:`inference.train`) and the Lightning module (:mod:`inference.lightning`).
Zoo models are deep-copied first, so a fit never mutates the object it was given; the fitted copy is
``Posterior.model``.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from tqdm.auto import tqdm

from inference.objectives import traced_loss
from inference.posterior import Posterior
from inference.target import Target, as_target, init_to_median_any, refuse_discrete, set_seed

log = logging.getLogger(__name__)

GUIDES = {
    "delta": AutoDelta,                 # MAP
    "normal": AutoNormal,               # mean-field Gaussian
    "mvn": AutoMultivariateNormal,      # full-rank Gaussian
    "iaf": AutoIAFNormal,               # inverse autoregressive flow
}


class SVIDivergedError(RuntimeError):
    """The ELBO became NaN/inf (or the model failed on parameters that had become NaN/inf).

    The parameters are restored to their last finite values first: ``model`` (the fitted copy of a zoo
    model, else the callable), ``guide`` and ``params`` (``{name: tensor}``, the restored trainable
    tensors) hold them; ``step`` and ``losses`` tell where it happened. When the model raised, the
    exception is chained as ``__cause__``.
    """

    def __init__(self, step: int, losses: list[float], model, cause: str = "", *, guide=None, params=None):
        last = next((x for x in reversed(losses) if math.isfinite(x)), float("nan"))
        why = f" ({cause})" if cause else ""
        super().__init__(
            f"SVI loss became non-finite at step {step}{why} (last finite loss {last:.4g}); parameters were "
            "restored to their last finite values. Try a smaller lr, more particles, or a better init."
        )
        self.step, self.losses, self.model, self.guide, self.params = step, losses, model, guide, dict(params or {})


def make_guide(target: Target, guide, data, init=None, *, marginal: bool = False):
    """Resolve ``guide``: None or a callable (the target's guide: the model's own or the one the target was
    built with; AutoNormal when there is none), or a name in GUIDES.

    Autoguides start at ``init`` (constrained values), else the model's ``initial_values`` (seeded by a
    draw from the RNG that ``fit_svi`` seeds), else the prior median. They are built on ``target.model_fn``, or on ``target.marginal_fn`` when
    ``marginal`` (MAP)."""
    if guide is None or callable(guide):
        guide = target.guide or "normal"
    if callable(guide):
        return guide
    if guide not in GUIDES:
        raise ValueError(f"guide: expected a callable or one of {', '.join(GUIDES)}, got {guide!r}")
    info = target.info(data, marginal=marginal)
    refuse_discrete(info, f"the autoguide {guide!r}", ", or give a guide of your own that draws them")
    model_fn = target.form(marginal)
    values = init if init is not None else target.initial_values(data, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    init = init_to_value(values=dict(values), fallback=init_to_median_any) if values else init_to_median_any
    hidden = poutine.block(model_fn, hide=list(info.enumerated)) if info.enumerated else model_fn
    return GUIDES[guide](hidden) if guide == "iaf" else GUIDES[guide](hidden, init_loc_fn=init)


def make_elbo(elbo, info, num_particles: int, vectorize_particles: bool):
    if not isinstance(elbo, str):
        return elbo
    kwargs = dict(num_particles=num_particles, vectorize_particles=vectorize_particles,
                  max_plate_nesting=info.max_plate_nesting)
    if elbo == "auto":
        elbo = "traceenum" if info.enumerated else "trace"
    if elbo == "traceenum":
        return TraceEnum_ELBO(**kwargs)
    if elbo == "trace":
        if info.enumerated:
            raise ValueError(f"elbo: 'trace' cannot sum out enumerated site(s) {list(info.enumerated)}; use 'auto'")
        return Trace_ELBO(**kwargs)
    raise ValueError(f"elbo: expected 'auto', 'trace', 'traceenum' or a Pyro ELBO, got {elbo!r}")


def collect_parameters(loss_fn: Callable[[], torch.Tensor], modules) -> list[torch.Tensor]:
    """Run the loss once (creating lazy parameters) and gather every trainable tensor of ``modules`` and
    of the ``pyro.param`` statements the run met.

    Pass Pyro's ELBO module (``elbo(model, guide)``) among ``modules``: its ``parameters()`` are those of
    a model and a guide that are modules. What it cannot see is gathered here by hand: the module
    behind a bound method (``guide=m.guide``; the ELBO module registers module attributes only) and
    ``pyro.param`` statements (a classic guide's parameters live in Pyro's store, in no module)."""
    with poutine.trace(param_only=True) as capture:
        loss_fn()
    params = {}
    for module in modules:
        module = getattr(module, "__self__", module)   # a bound method (guide=m.guide): its module
        if isinstance(module, torch.nn.Module):
            params.update((id(p), p) for p in module.parameters() if p.requires_grad)
    for site in capture.trace.nodes.values():  # global pyro.param statements (classic style guides)
        value = site["value"]
        p = value.unconstrained() if hasattr(value, "unconstrained") else value
        if p.requires_grad and p.is_leaf:
            params[id(p)] = p
    return list(params.values())


class Optimization:
    """The one optimisation step of :func:`fit_svi`, :func:`inference.train.train` and
    :func:`inference.lightning.train_lightning`, and the progress bar of the run.

    Adam on ``params``; the learning rate decays exponentially, per step, to ``lr * lr_decay`` at step
    ``num_steps``; gradients are clipped to norm ``clip_norm`` (None: not clipped). A non-finite loss
    (or a distribution refusing a non-finite argument) restores the parameters of the last finite step
    and raises :class:`SVIDivergedError` naming them (``names``: ``id(tensor) -> name``) and carrying
    ``model`` and ``guide``; any other exception of the model or guide propagates unchanged.

    Recorded losses (``losses``, a list that a resumed run hands back in) are divided by ``per``
    (the minibatch trainer records them per data element); ``steps`` counts the steps taken.
    Use as a context manager: the bar (tqdm, ``desc``; none unless ``progress``) closes on exit.
    """

    def __init__(self, params, *, lr: float, lr_decay: float | None, num_steps: int, clip_norm: float | None,
                 model=None, guide=None, names: dict[int, str] | None = None, per: float = 1,
                 desc: str = "", progress: bool = True):
        self.params = list(params)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        gamma = lr_decay ** (1.0 / max(1, num_steps)) if lr_decay else 1.0
        self.schedule = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=gamma)
        self.clip_norm, self.per, self.num_steps = clip_norm, per, num_steps
        self.model, self.guide, self.names = model, guide, names or {}
        self.desc, self.progress, self.bar, self.postfix = desc, progress, None, {}
        self.losses: list[float] = []
        self.steps = 0
        self._last_good = [p.detach().clone() for p in self.params]

    def __enter__(self):
        self.bar = tqdm(total=self.num_steps, initial=self.steps, desc=self.desc, leave=False,
                        disable=None if self.progress else True)
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def step(self, loss_fn: Callable[[], torch.Tensor], backward: Callable | None = None) -> torch.Tensor:
        """One step on ``loss_fn()``; returns the loss (detached). ``backward(loss)`` replaces
        ``loss.backward()`` (Lightning's ``manual_backward``)."""
        self.optimizer.zero_grad()
        try:
            loss = loss_fn()
        except Exception as e:
            if not _nonfinite_unchecked(loss_fn):
                raise   # the model's or guide's own error: unchanged, with its traceback
            self.losses.append(float("nan"))   # a distribution refused a NaN/inf argument: the loss is non-finite
            raise self._diverged(str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from e
        value = float(loss.detach())
        self.losses.append(value / self.per)
        if not math.isfinite(value):
            raise self._diverged()
        with torch.no_grad():
            for p, good in zip(self.params, self._last_good):
                good.copy_(p)
        if backward is None:
            loss.backward()
        else:
            backward(loss)
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        self.schedule.step()
        self.steps += 1
        if self.bar is not None:
            self.bar.update()
            if self.steps % 25 == 1 or self.steps == self.num_steps:
                recent = self.losses[-25:]
                self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}", **self.postfix)
        return loss.detach()

    def _diverged(self, cause: str = "") -> SVIDivergedError:
        """Restore the last finite parameters and build the error that carries them."""
        with torch.no_grad():
            for p, good in zip(self.params, self._last_good):
                p.copy_(good)
        restored = {self.names.get(id(p), f"param_{i}"): p for i, p in enumerate(self.params)}
        return SVIDivergedError(self.steps, self.losses, self.model, cause, guide=self.guide, params=restored)


def fit_svi(model, data, *, guide=None, elbo="auto", num_steps: int = 2000, lr: float = 0.01,
            num_particles: int = 1, vectorize_particles: bool = False, seed: int = 0,
            num_samples: int = 1000, lr_decay: float = 0.01, clip_norm: float | None = 10.0,
            init=None, coords=None, loss_route: str = "auto", progress: bool = True) -> Posterior:
    """Fit ``model`` to ``data`` by SVI and return a :class:`~inference.Posterior` of guide draws.

    :param model: a zoo model or a plain Pyro callable ``model(data)``.
    :param guide: None (the zoo model's own guide; AutoNormal for a plain callable), "delta" (MAP),
        "normal", "mvn", "iaf", or a Pyro guide callable. Autoguides built here hide enumerated sites.
        MAP maximizes the model's marginal form (``ZooModel.marginal_model``: local continuous latents
        integrated out where the model can), so it estimates the globals' marginal posterior mode;
        every other guide fits ``model``, or ``marginal_model`` when the guide draws exactly the marginal
        form's latent sites (``Target.fits_marginal``). The posterior holds a draw of every latent site
        the guide covers, local ones included.
    :param elbo: "auto" (TraceEnum_ELBO when the model has enumerated sites, else Trace_ELBO),
        "trace", "traceenum", or a Pyro ELBO instance.
    :param lr: Adam learning rate; it decays exponentially to ``lr * lr_decay`` at the last step.
    :param clip_norm: gradient-norm clipping (None disables).
    :param init: starting values (constrained) for an autoguide; default: the zoo model's
        data-driven ``initial_values``, else the prior median.
    :param num_samples: draws taken from the fitted guide (1 for "delta").
    :param loss_route: "auto", "compiled", "graph" or "pyro": how ``Trace_ELBO`` of a reparameterized
        guide is computed (:func:`inference.objectives.traced_loss`; "auto" compiles it for runs of
        1000 steps or more). Other ELBOs always run as Pyro computes them.
    :raises SVIDivergedError: when the loss becomes NaN/inf (parameters rolled back first).
    """
    _check_positive("num_steps", num_steps)
    _check_positive("num_samples", num_samples)
    _check_positive("num_particles", num_particles)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    target = as_target(model, guide=guide if callable(guide) else None, copy_model=True)
    data = target.validate(data)
    set_seed(seed)
    method = "map" if guide == "delta" else "svi"
    with target.scope():   # parameters live in the target's own store
        guide_fn = make_guide(target, guide, data, init, marginal=method == "map")
        marginal = method == "map" or target.fits_marginal(guide_fn, data)
        info = target.info(data, marginal=marginal)
        model_fn = target.form(marginal)
        loss_obj = make_elbo(elbo, info, num_particles, vectorize_particles)

        loss_module = loss_obj(model_fn, guide_fn)   # Pyro's ELBO module: loss_module(data) is the loss

        def loss_fn():
            return loss_module(data)

        start = time.perf_counter()
        modules = [loss_module, target.model, guide_fn]   # and the modules of bound methods (m.model, m.guide)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was not registered in the param store.*")
            try:
                params = collect_parameters(loss_fn, modules)
            except Exception:
                if not _nonfinite_unchecked(loss_fn):
                    raise
                with pyro.validation_enabled(False):   # a non-finite loss at the start: step 0 reports it below
                    params = collect_parameters(loss_fn, modules)
        if not params:
            raise ValueError("guide: has no trainable parameters")
        loss_fn, loss_route = traced_loss(loss_obj, model_fn, guide_fn, data, params, num_steps=num_steps,
                                          route=loss_route)
        names = _parameter_names([target.model, target.model_fn, guide_fn])
        with Optimization(params, lr=lr, lr_decay=lr_decay, num_steps=num_steps, clip_norm=clip_norm,
                          model=target.source, guide=guide_fn, names=names, desc=f"SVI {target.name}",
                          progress=progress) as loop:
            for _ in range(num_steps):
                loop.step(loss_fn)
        losses = loop.losses
        log.info("SVI %s: %d steps, final loss %.4g", target.name, num_steps, losses[-1])
        samples = sample_guide(guide_fn, data, info.latent, 1 if method == "map" else num_samples)
    return Posterior(
        target, data, samples, method=method, wall_time=time.perf_counter() - start, losses=losses,
        guide=guide_fn, coords=coords,
        settings=dict(guide=guide if isinstance(guide, str) else "model's own" if guide is None else "custom",
                      elbo=type(loss_obj).__name__, num_steps=num_steps, lr=lr, num_particles=num_particles,
                      seed=seed, loss_route=loss_route),
    )


def _nonfinite_unchecked(loss_fn) -> bool:
    """Whether the loss, evaluated again without argument validation, is NaN/inf: then the exception
    was a distribution refusing a non-finite argument (a divergence), not the model's own error."""
    try:
        with pyro.validation_enabled(False), torch.no_grad():
            return not math.isfinite(float(loss_fn()))
    except Exception:
        return False


def _parameter_names(modules) -> dict[int, str]:
    """``id(tensor) -> name`` of module parameters and ``pyro.param`` store entries (unconstrained)."""
    names = {id(p): name for name, p in pyro.get_param_store().named_parameters()}
    for module in modules:
        module = getattr(module, "__self__", module)
        if isinstance(module, torch.nn.Module):
            names.update((id(p), name) for name, p in module.named_parameters())
    return names


def sample_guide(guide_fn, data, sites, num_samples: int) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of every one of ``sites`` the guide draws, as ``(1, num_samples, ...)`` tensors."""
    draws: dict[str, list[torch.Tensor]] = {k: [] for k in sites}
    with torch.no_grad():
        for _ in range(num_samples):
            trace = poutine.trace(guide_fn).get_trace(data)
            for k in sites:
                if k in trace.nodes:
                    draws[k].append(trace.nodes[k]["value"].detach())
    missing = [k for k, v in draws.items() if not v]
    if missing:
        log.warning("guide: draws no value of latent site(s) %s; the model draws them from their prior", missing)
    return {k: torch.stack(v).unsqueeze(0) for k, v in draws.items() if v}


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
