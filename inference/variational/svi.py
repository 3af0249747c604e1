"""Stochastic variational inference for any Pyro model.

The ELBO's module form ``elbo(model, guide)`` on a guide of :mod:`inference.variational.guides`, optimised by
the one loop of :mod:`inference.variational.optimization` until its iterates are stationary
(:mod:`inference.variational.convergence`).
Zoo models are deep-copied first, so a fit never mutates the object it was given; the fitted copy is
``Posterior.model``.
"""

from __future__ import annotations

import logging
import time
import warnings

import pyro
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from inference.inspection import ModelArgs, model_data
from inference.posterior import Posterior, sample_guide
from inference.target import as_target, set_seed
from inference.validation import check_setting
from inference.variational.convergence import TYPICAL_STEPS, optimize
from inference.variational.traced_loss import traced_loss

from inference.variational.guides import make_guide
from inference.variational.optimization import (Optimization, collect_parameters, nonfinite_unchecked, optim_name,
                                                parameter_names)

log = logging.getLogger(__name__)

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
        guide is computed (:func:`inference.variational.traced_loss.traced_loss`; "auto" traces it when the run is
        long enough to pay and compiles it when longer still, checking it against
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
                if not nonfinite_unchecked(loss_fn):
                    raise
                with pyro.validation_enabled(False):   # a non-finite loss at the start: step 0 reports it below
                    params = collect_parameters(loss_fn, modules)
        if not params:
            raise ValueError("guide: has no trainable parameters")
        expected = min(num_steps, TYPICAL_STEPS) if converge else num_steps   # the route policy's input
        loss_fn, _ = traced_loss(loss_obj, model_fn, guide_fn, data, params, num_steps=expected, route=loss_route)
        names = parameter_names([target.model, target.model_fn, guide_fn])
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
                      lr=lr if optim is None else optim_name(optim), num_particles=num_particles,
                      seed=seed, loss_route=loss_fn.describe(), **report.settings()),
    )
