"""Stochastic variational inference for any Pyro model.

The loop is PyTorch-style (as in Pyro's ``examples/svi_torch.py``): the ELBO's module form
``elbo(model, guide)``, ``torch.optim.Adam`` over the parameters of the model/guide modules plus any
global ``pyro.param`` the guide declares, and a learning-rate schedule. :class:`Optimization` is that
step (with gradient clipping, NaN rollback and the progress bar), shared by :func:`fit_svi`, the
minibatch trainer (:mod:`inference.variational.train`) and the Lightning module (:mod:`inference.variational.lightning`).
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
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from pyro.infer.autoguide import (
    AutoDelta,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from pyro.infer.autoguide.initialization import InitMessenger
from tqdm import tqdm

from inference.initialization import init_to_median_any
from inference.inspection import ModelArgs, model_data, refuse_discrete
from inference.posterior import Posterior, sample_guide
from inference.potential import Potential
from inference.target import Target, as_target, set_seed
from inference.validation import check_setting
from inference.variational.convergence import TYPICAL_STEPS, optimize
from inference.variational.objectives import traced_loss

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


def make_guide(target: Target, guide, data, init=None, *, marginal: bool = False, warm_start: bool = False):
    """Resolve ``guide``: None or a callable (the target's guide: the model's own or the one the target was
    built with; AutoNormal when there is none), or a name in GUIDES.

    Autoguides start at ``init`` (constrained values), else the model's ``initial_values`` (seeded by a
    draw from the RNG that ``fit_svi`` seeds), else (``warm_start``, for "normal" and "mvn") the mode
    found by :func:`map_start` when it starts the guide better than the prior median, else the prior
    median. They are built on ``target.model_fn``, or on ``target.marginal_fn`` when ``marginal`` (MAP)."""
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
    if not values and warm_start and guide in ("normal", "mvn"):
        values = map_start(target, data, marginal=marginal)
    init = init_to_value(values=dict(values), fallback=init_to_median_any) if values else init_to_median_any
    hidden = poutine.block(model_fn, hide=list(info.enumerated)) if info.enumerated else model_fn
    return GUIDES[guide](hidden) if guide == "iaf" else GUIDES[guide](hidden, init_loc_fn=init)


#: the scale of a fresh autoguide (AutoNormal's and AutoMultivariateNormal's ``init_scale``)
INIT_SCALE = 0.1


def map_start(target: Target, data, *, marginal: bool = False, max_iter: int = 100,
              num_draws: int = 32) -> dict[str, torch.Tensor] | None:
    """A start for a Gaussian autoguide far better than the prior median when the posterior lies far from
    it: the mode of the model's log density on the guide's unconstrained coordinates (with the log
    Jacobians, enumerated sites summed out: :class:`inference.potential.Potential`), found by L-BFGS in at
    most ``max_iter`` iterations from the prior median. Used only when a guide of scale ``INIT_SCALE``
    centred there has a higher ELBO (``num_draws`` common draws) than one centred at the prior median: a
    mode that runs off to a boundary (the neck of a hierarchical funnel) steps aside. Returns constrained
    values per site, or None (with the reason logged)."""
    info = target.info(data, marginal=marginal)
    form = target.form(marginal)
    with target.scope(), warnings.catch_warnings(), pyro.validation_enabled(False):
        warnings.simplefilter("ignore")
        try:
            potential = Potential(form, data, max_plate_nesting=info.max_plate_nesting, route="eager")
            with torch.no_grad():
                median = poutine.trace(InitMessenger(init_to_median_any)(form)).get_trace(data)
            start = torch.from_numpy(potential.flatten({k: median.nodes[k]["value"] for k in potential.names}))
        except Exception as e:  # noqa: BLE001 - no start found: the default start, with the reason
            log.info("SVI start: prior median (no mode search: %s)", str(e).splitlines()[0][:200] if str(e) else e)
            return None
        theta = start.clone().to(potential.dtype).requires_grad_(True)
        search = torch.optim.LBFGS([theta], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            search.zero_grad()
            loss = -potential.log_density(theta)
            if torch.isfinite(loss):
                loss.backward()
            return loss

        try:
            search.step(closure)
        except Exception as e:  # noqa: BLE001
            log.info("SVI start: prior median (the mode search failed: %s)", e)
            return None
        eps = torch.randn(num_draws, potential.dim, generator=torch.Generator().manual_seed(0), dtype=potential.dtype)

        def elbo(loc):   # log q's terms that differ between the two starts cancel: same scale, same draws
            with torch.no_grad():
                return float(torch.stack([potential.log_density(loc + INIT_SCALE * e) for e in eps]).mean())

        found, default = elbo(theta.detach()), elbo(start.to(potential.dtype))
        if not math.isfinite(found) or found <= default:
            log.info("SVI start: prior median (the mode's ELBO %.4g is not above the median's %.4g)", found, default)
            return None
        log.info("SVI start: the mode (ELBO %.4g against %.4g at the prior median)", found, default)
        return potential.constrain(theta.detach().double().numpy())


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


def make_optimizer(optim, params: list[torch.Tensor], lr: float, lr_decay: float | None, num_steps: int):
    """``(optimizer, schedule)`` for :class:`Optimization`; ``schedule`` (or None) is stepped after every step.

    ``optim`` None: the zoo's Adam at ``lr``, decaying exponentially per step to ``lr * lr_decay`` at step
    ``num_steps`` (no decay when ``lr_decay`` is None). A ``pyro.optim`` optimiser (``pyro.optim.Adam``,
    ``ClippedAdam``, or a scheduler wrapper such as ``pyro.optim.ExponentialLR``, whose ``step()`` is then
    called after every step). Or a factory ``params -> torch optimiser`` or ``params -> (optimiser,
    scheduler)``."""
    if optim is None:
        optimizer = torch.optim.Adam(params, lr=lr)
        gamma = lr_decay ** (1.0 / max(1, num_steps)) if lr_decay else 1.0
        return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if isinstance(optim, PyroOptim):
        return _PyroOptimizer(optim, params), optim if isinstance(optim, PyroLRScheduler) else None
    if callable(optim) and not isinstance(optim, torch.optim.Optimizer):
        made = optim(params)
        optimizer, schedule = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
        if isinstance(optimizer, torch.optim.Optimizer) and (schedule is None or hasattr(schedule, "step")):
            return optimizer, schedule
        raise TypeError(f"optim: the factory must return a torch optimiser or (optimiser, scheduler), got "
                        f"{type(made).__name__}")
    raise TypeError("optim: expected a pyro.optim optimiser (e.g. pyro.optim.ClippedAdam({'lr': 0.01})) or a factory "
                    f"params -> torch optimiser (or (optimiser, scheduler)), got {type(optim).__name__}")


class _PyroOptimizer:
    """A ``pyro.optim`` optimiser with the two methods of a torch optimiser that the loop calls."""

    def __init__(self, optim: PyroOptim, params: list[torch.Tensor]):
        self.optim, self.params = optim, params

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.optim(self.params)


class Optimization:
    """The one optimisation step of :func:`fit_svi`, :func:`inference.variational.train.train` and
    :func:`inference.variational.lightning.train_lightning`, and the progress bar of the run.

    Adam on ``params``; the learning rate decays exponentially, per step, to ``lr * lr_decay`` at step
    ``num_steps`` (or ``optim``: :func:`make_optimizer`); gradients are clipped to norm ``clip_norm``
    (None: not clipped). A non-finite loss (or a distribution refusing a non-finite argument) restores the
    parameters of the last finite step and raises :class:`SVIDivergedError` naming them (``names``:
    ``id(tensor) -> name``) and carrying ``model`` and ``guide``; any other exception of the model or guide
    propagates unchanged.

    Recorded losses (``losses``, a list that a resumed run hands back in) are divided by ``per``
    (the minibatch trainer records them per data element); ``steps`` counts the steps taken.
    Use as a context manager: the bar (tqdm, ``desc``; none unless ``progress``) closes on exit.
    """

    def __init__(self, params, *, lr: float, lr_decay: float | None, num_steps: int, clip_norm: float | None,
                 model=None, guide=None, names: dict[int, str] | None = None, per: float = 1,
                 desc: str = "", progress: bool = True, optim=None):
        self.params = list(params)
        self.optimizer, self.schedule = make_optimizer(optim, self.params, lr, lr_decay, num_steps)
        self.clip_norm, self.per, self.num_steps = clip_norm, per, num_steps
        self.model, self.guide, self.names = model, guide, names or {}
        self.desc, self.progress, self.bar, self.postfix = desc, progress, None, {}
        self.losses: list[float] = []
        self.steps = 0
        self._last_good = [p.detach().clone() for p in self.params]

    @property
    def lr(self) -> float:
        """The current step size (of the first parameter group; NaN for a ``pyro.optim`` optimiser)."""
        groups = getattr(self.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else float("nan")

    def scale_lr(self, factor: float) -> None:
        """Multiply the step size of every parameter group by ``factor``."""
        for group in getattr(self.optimizer, "param_groups", []):
            group["lr"] *= factor

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
        if self.schedule is not None:
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


#: the zoo's step size of Adam at the first level (fit_svi's default ``lr``)
LR = 0.05


def fit_svi(model, data=None, *, model_args=None, model_kwargs=None, guide=None, elbo="auto",
            num_steps: int = 10000, lr: float | None = None,
            num_particles: int = 1, vectorize_particles: bool = False, seed: int = 0,
            num_samples: int = 1000, lr_decay: float = 0.01, clip_norm: float | None = None,
            init=None, coords=None, dims=None, loss_route: str = "auto", progress: bool = True,
            converge: bool = True, optim=None) -> Posterior:
    """Fit ``model`` to ``data`` by SVI and return a :class:`~inference.Posterior` of guide draws.

    :param model: a zoo model or a plain Pyro callable ``model(data)``; or, with ``model_args`` and/or
        ``model_kwargs`` instead of ``data``, a plain callable ``model(*model_args, **model_kwargs)``
        (its guide likewise); observed sites are found by tracing either way.
    :param coords, dims: as ``az.from_pyro``'s: ``{dim: values}`` and ``{variable: [dim, ...]}``.
    :param guide: None (the zoo model's own guide; AutoNormal for a plain callable), "delta" (MAP),
        "normal", "mvn", "iaf", or a Pyro guide callable. Autoguides built here hide enumerated sites.
        MAP maximizes the model's marginal form (``ZooModel.marginal_model``: local continuous latents
        integrated out where the model can), so it estimates the globals' marginal posterior mode;
        every other guide fits ``model``, or ``marginal_model`` when the guide draws exactly the marginal
        form's latent sites (``Target.fits_marginal``). The posterior holds a draw of every latent site
        the guide covers, local ones included.
    :param elbo: "auto" (TraceEnum_ELBO when the model has enumerated sites, else Trace_ELBO),
        "trace", "traceenum", or a Pyro ELBO instance.
    :param num_steps: the most steps taken (``converge``), or the steps taken (``converge=False``).
    :param converge: run until the iterates are stationary (:mod:`inference.variational.convergence`: R-hat of the
        iterates over windows, then the parameters averaged over the stationary window; Adam's step size
        halved at each stationary point, at most three step sizes), at most ``num_steps`` steps. False: exactly
        ``num_steps`` steps, the step size decaying exponentially to ``lr * lr_decay`` at the last one.
        Either way ``settings["converged"]`` records whether the last iterates were stationary, and
        ``settings["stationary_at"]`` where the averaging window began.
    :param lr: Adam's first step size (default ``LR`` = 0.05).
    :param optim: instead of the zoo's Adam, a ``pyro.optim`` optimiser (``pyro.optim.ClippedAdam({"lr":
        0.01})``; a scheduler wrapper such as ``pyro.optim.ExponentialLR`` is stepped after every step) or a
        factory ``params -> torch optimiser`` or ``params -> (optimiser, scheduler)``; its step size is
        its own (``lr`` must be None); with ``converge`` the run ends at the first stationary window.
    :param clip_norm: clip the gradient norm to this (default None: clipping shrinks the noisiest steps
        most, which biases where the iterates settle: a too wide guide; benchmarks/README.md).
    :param init: starting values (constrained) for an autoguide; default: the zoo model's
        data-driven ``initial_values``, else for "normal"/"mvn" the mode of the model's density when it
        starts the guide better (:func:`map_start`), else the prior median.
    :param num_samples: draws taken from the fitted guide (1 for "delta").
    :param loss_route: "auto", "compiled", "graph" or "pyro": how ``Trace_ELBO`` of a reparameterized
        guide is computed (:func:`inference.variational.objectives.traced_loss`; "auto" traces it when the run is
        long enough to pay and compiles it in the background when longer still, checking it against
        Pyro's ELBO while it runs). Other ELBOs always run as Pyro computes them. The route that
        produced the fit is ``settings["loss_route"]``.
    :raises SVIDivergedError: when the loss becomes NaN/inf (parameters rolled back first).
    """
    for name, value in (("num_steps", num_steps), ("num_samples", num_samples), ("num_particles", num_particles)):
        check_setting(value, name, kind="int", minimum=1)
    if optim is not None and lr is not None:
        raise ValueError(f"lr: the step size of optim={type(optim).__name__} is its own; got lr={lr!r} as well")
    lr = LR if lr is None and optim is None else lr
    if optim is None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if not isinstance(converge, bool):
        raise TypeError(f"converge: expected True or False, got {converge!r}")
    data = model_data(data, model_args, model_kwargs)
    target = as_target(model, guide=guide if callable(guide) else None, copy_model=True,
                       args_form=isinstance(data, ModelArgs))
    data = target.validate(data)
    set_seed(seed)
    method = "map" if guide == "delta" else "svi"
    with target.scope():   # parameters live in the target's own store
        guide_fn = make_guide(target, guide, data, init, marginal=method == "map", warm_start=converge)
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
        expected = min(num_steps, TYPICAL_STEPS) if converge else num_steps   # the route policy's input
        loss_fn, _ = traced_loss(loss_obj, model_fn, guide_fn, data, params, num_steps=expected, route=loss_route)
        names = _parameter_names([target.model, target.model_fn, guide_fn])
        with Optimization(params, lr=lr, lr_decay=None if converge else lr_decay, num_steps=num_steps,
                          clip_norm=clip_norm, model=target.source, guide=guide_fn, names=names,
                          desc=f"SVI {target.name}", progress=progress, optim=optim) as loop:
            mode = "fixed" if not converge else "levels" if optim is None else "single"
            report = optimize(loop, loss_fn, params, num_steps=num_steps, mode=mode)
            if not loss_fn.verify():   # the fast route disagreed at the end: again, on Pyro's ELBO, from here
                report = optimize(loop, loss_fn, params, num_steps=num_steps, mode=mode)
        losses = loop.losses
        log.info("SVI %s: %s; final loss %.4g", target.name, report.reason, losses[-1])   # diagnose says it
        samples, log_q = sample_guide(guide_fn, data, info.latent, 1 if method == "map" else num_samples,
                                      log_density=True)
    return Posterior(
        target, data, samples, method=method, wall_time=time.perf_counter() - start, losses=losses,
        guide=guide_fn, coords=coords, dims=dims, log_q=log_q,
        settings=dict(guide=guide if isinstance(guide, str) else "model's own" if guide is None else "custom",
                      elbo=type(loss_obj).__name__, num_steps=num_steps,
                      lr=lr if optim is None else _optim_name(optim), num_particles=num_particles,
                      seed=seed, loss_route=loss_fn.describe(), **report.settings()),
    )


def _optim_name(optim) -> str:
    """``ClippedAdam`` for ``pyro.optim.ClippedAdam(...)``, ``ExponentialLR(SGD)`` for a scheduler wrapper, a
    factory's function name, else the type's."""
    if isinstance(optim, PyroLRScheduler):
        return f"{optim.pt_scheduler_constructor.__name__}({optim.pt_optim_constructor.__name__})"
    if isinstance(optim, PyroOptim):
        return optim.pt_optim_constructor.__name__
    return getattr(optim, "__name__", type(optim).__name__)


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
