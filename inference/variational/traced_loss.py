"""The traced ELBO.

Pyro computes ``Trace_ELBO`` by tracing the guide and the model at every step: a fixed
cost in Python per step whatever the model's size (measured: benchmarks/README.md). For a guide whose sample sites are all reparameterized
(autoguides, the zoo's own guides) and a model without enumerated sites, the surrogate loss is
``log q(z) - log p(x, z)`` at ``z ~ q``, and its value and gradient with respect to every parameter
can be traced once, random draws included, into one ATen graph and compiled by Inductor, exactly
as :mod:`inference.potential` does for NUTS. Inductor is told to draw random numbers with ATen's
generator (``fallback_random``), so a seed gives the same draws with or without compilation.

Minibatches (``subsample=``): the indices the data plate covers are an input of the graph, like the
data and the parameters (:class:`~inference.variational.objectives.FixedSubsample` puts the traced indices
into the plate), so one
trace serves every batch of that size and every epoch's data; a batch of another size (the last
one of an epoch) runs Pyro's ELBO.

The traced loss is checked against Pyro's own ``Trace_ELBO`` (value and every gradient, from the same
random state) before it is used, at the current parameters, at perturbed ones with other draws and on
another batch, and again while it runs (:class:`TracedLoss`, :mod:`inference.tracing`); any other pair,
or a pair that fails a check, keeps Pyro's ELBO, and the log says why.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state

from inference.tracing import (
    Guard,
    Mismatch,
    compile_graph,
    flatten_data,
    mismatch,
    multiplies_matrices,
    on_cpu,
    operations,
    trace_graph,
    unused_inputs,
    worth_compiling,
    worth_tracing,
)
from inference.variational.objectives import FixedSubsample

log = logging.getLogger(__name__)


class _KnownGradient(torch.autograd.Function):
    """A loss value whose gradient with respect to ``params`` was computed with it: ``backward`` hands
    it out, so the optimisation loop is the same whether or not the loss was compiled. The value also
    carries them as ``known_gradients`` (``(params, grads)``), which the loop hands to the optimiser
    without a pass of autograd (:meth:`inference.variational.optimization.Optimization.step`)."""

    @staticmethod
    def forward(ctx, value, grads, *params):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, upstream):
        return (None, None, *[upstream * g for g in ctx.grads])


def reparameterized_elbo_loss(model_fn: Callable, guide_fn: Callable, data, num_particles: int = 1) -> torch.Tensor:
    """``Trace_ELBO``'s surrogate loss for a fully reparameterized guide: mean over particles of
    ``log q(z) - log p(data, z)`` with ``z`` drawn from the guide."""
    loss = 0.0
    for _ in range(num_particles):
        guide_trace = poutine.trace(guide_fn).get_trace(data)
        model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(data)
        loss = loss + guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    return loss / num_particles


def traced_loss(loss_obj, model_fn: Callable, guide_fn: Callable, data, params: list[torch.Tensor], *,
                num_steps: int, route: str = "auto", subsample: tuple[str, torch.Tensor] | None = None):
    """Pyro's loss computed by the fastest route that agrees with it: ``(loss_fn, route)``, the
    :class:`TracedLoss` and the route it starts on ("compiled", "graph" or "pyro").

    Full batch: ``loss_fn()`` stands for ``loss_obj.differentiable_loss(model_fn, guide_fn, data)``.
    Minibatch, ``subsample=(plate name, example indices)``: ``loss_fn(x, indices)`` stands for that loss
    on data ``x`` (of ``data``'s shapes) with the plate fixed to ``indices`` (:class:`FixedSubsample`);
    the indices are a graph input, so any batch of the example's size runs the graph.

    :param num_steps: the planned number of steps (the route policy's input, and the last check).
    :param route: "auto" (Pyro's ELBO for runs too short for tracing to pay, else the traced graph,
        compiled when the run is long enough: :mod:`inference.tracing`), "compiled"
        (compiled now), "graph" or "pyro" (Pyro's ELBO at every step).
    """
    if route not in ("auto", "compiled", "graph", "pyro"):
        raise ValueError(f"route: expected 'auto', 'compiled', 'graph' or 'pyro', got {route!r}")
    loss = TracedLoss(loss_obj, model_fn, guide_fn, data, params, num_steps=num_steps, subsample=subsample)
    why, sites = _untraceable(loss_obj, loss.fixed(guide_fn, loss.example), data) if route != "pyro" else ("asked for", 0)
    if not why and route == "auto" and not worth_tracing(num_steps, sites):
        why = f"a run of {num_steps} steps is too short for tracing to pay"
    if why:
        log.info("SVI loss: Pyro's %s at every step (%s)", type(loss_obj).__name__, why)
        return loss, "pyro"
    loss.build(route)
    return loss, loss.route


class TracedLoss:
    """A loss of a model/guide pair by the fastest route that agrees with Pyro's ELBO (see
    :func:`traced_loss`), checked against it when built (at the current parameters and random state, at
    perturbed parameters with other random draws, on another batch) and while it runs (the calls of
    :class:`~inference.tracing.Guard`) and when the caller asks, at the end (:meth:`verify`). On a
    mismatch it steps aside to the next route from the current parameters, with a warning.
    ``describe()`` names the route that produced the fit."""

    def __init__(self, loss_obj, model_fn, guide_fn, data, params, *, num_steps: int, subsample=None):
        self.loss_obj, self.model_fn, self.guide_fn, self.data = loss_obj, model_fn, guide_fn, data
        self.params, self.num_steps = list(params), num_steps
        self.plate, self.example = subsample if subsample is not None else (None, None)
        self.leaves = flatten_data(data)[0]
        self.dtype = torch.float32 if any(p.dtype == torch.float32 for p in self.params) else torch.float64
        self.guard = Guard("SVI loss", ("pyro", None))
        self.compile_seconds = 0.0
        self.graph = None   # the traced graph, once built

    @property
    def route(self) -> str:
        return self.guard.route

    def describe(self) -> str:
        return self.guard.describe()

    def fixed(self, fn, indices):
        return FixedSubsample(self.plate, indices)(fn) if self.plate is not None else fn

    def pyro_loss(self, x=None, indices=None):
        x, indices = (self.data if x is None else x), (self.example if indices is None else indices)
        return self.loss_obj.differentiable_loss(self.fixed(self.model_fn, indices), self.fixed(self.guide_fn, indices), x)

    def reference(self, x=None, indices=None):
        """Pyro's loss and its gradient with respect to every parameter (detached)."""
        with torch.enable_grad():
            loss = self.pyro_loss(x, indices)
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return loss.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]

    # --- routes ----------------------------------------------------------------------------------
    def _inputs(self, x, indices):
        inputs = self.leaves if x is None or x is self.data else flatten_data(x)[0]
        return [*(p.detach() for p in self.params), *inputs, *([indices] if self.plate is not None else [])]

    def _route(self, graph):
        def fn(x, indices):
            value, *grads = graph(*self._inputs(x, indices))
            return value, grads
        return fn

    def build(self, route: str) -> None:
        """Trace the loss and its gradients into one graph, check it, and compile it (for
        ``route="compiled"``, and for "auto" when the run is long enough to pay)."""
        particles = self.loss_obj.num_particles
        model_fn, guide_fn = self.fixed(self.model_fn, self.example), self.fixed(self.guide_fn, self.example)

        def value_and_grads(*_):
            with torch.enable_grad():
                loss = reparameterized_elbo_loss(model_fn, guide_fn, self.data, particles)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            return (loss.detach(), *[g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params)])

        # the parameters, the data's tensors and the indices are inputs of the graph (the same objects the
        # closures use, which is how the tracer knows them), not constants: every batch runs one graph, and
        # Inductor's cache serves another fit of the same shapes
        example = self._inputs(None, self.example)
        start = time.perf_counter()
        state = get_rng_state()
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                graph = trace_graph(value_and_grads, *self.params, *example[len(self.params):])
            fn = self._route(graph)
            why = self._unread(graph) or self._disagreement(fn)
            if why:
                raise Mismatch(why + " (Python control flow on a latent value, or an operation the tracer cannot "
                               "see such as numpy inside the model)")
        except Exception as e:  # noqa: BLE001 - a pair that cannot be traced keeps Pyro's ELBO, with the reason
            log.warning("SVI loss: the graph route is not usable for this model and guide (%s: %s); using Pyro's ELBO",
                        type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
            return
        finally:
            set_rng_state(state)   # the fit draws the same random numbers whichever route it takes
        self.guard.add("graph", fn)
        self.graph = graph
        if route == "compiled" or route == "auto" and worth_compiling(self.num_steps, operations(graph),
                                                                      on_cpu=on_cpu(self.leaves)):
            try:   # no enumerated contraction here (TraceEnum keeps Pyro's): vectorized C++ for networks
                compiled = self._route(compile_graph(graph, example, fallback_random=True,
                                                     vectorize=multiplies_matrices(graph)))
                why = self._disagreement(compiled)
                if why:
                    raise Mismatch(why)
                self.guard.add("compiled", compiled)
            except Exception as e:  # noqa: BLE001
                log.warning("SVI loss: the compiled route is not usable for this model and guide (%s: %s); "
                            "using the graph", type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
        self.compile_seconds = time.perf_counter() - start
        log.info("SVI loss: %s route, built in %.1fs", self.route, self.compile_seconds)

    # --- checks ----------------------------------------------------------------------------------
    def _unread(self, graph) -> str:
        """The parameters the graph never reads although Pyro's loss has a gradient for them."""
        unread = [i for i in unused_inputs(graph) if i < len(self.params)]
        if unread:
            state = get_rng_state()
            try:
                _, grads = self.reference()
            finally:
                set_rng_state(state)
            unread = [i for i in unread if bool(grads[i].abs().max() > 0)]
        return f"the traced loss does not read parameter(s) {unread}, which Pyro's loss depends on" if unread else ""

    def _compare(self, fn, x, indices) -> str:
        """``fn`` against Pyro's ELBO from the same random state; the state is left where ``fn`` left it."""
        state = get_rng_state()
        value, grads = fn(x, indices)
        after = get_rng_state()
        set_rng_state(state)
        try:
            expected = self.reference(x, indices)
        finally:
            set_rng_state(after)
        return mismatch((value, grads), expected, self.dtype)

    def _disagreement(self, fn) -> str:
        """``fn`` against Pyro's ELBO at the build points: the current parameters and random state; the
        parameters perturbed (by 10 % of their size and 0.01), with other random draws; another batch."""
        state = get_rng_state()
        saved = [p.detach().clone() for p in self.params]
        generator = torch.Generator().manual_seed(0)
        try:
            why = self._compare(fn, None, self.example)
            if not why:
                with torch.no_grad():
                    for p in self.params:
                        noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
                        p.add_(0.1 * (p.abs() + 0.1) * noise)
                torch.manual_seed(1)
                why = self._compare(fn, None, self.example)
            if not why and self.plate is not None and len(self.example) > 1:   # the indices were not baked in
                with torch.no_grad():
                    for p, v in zip(self.params, saved):
                        p.copy_(v)
                why = self._compare(fn, None, self.example.flip(0))
        finally:
            with torch.no_grad():
                for p, v in zip(self.params, saved):
                    p.copy_(v)
            set_rng_state(state)
        return why

    # --- the loss ----------------------------------------------------------------------------------
    def __call__(self, x=None, indices=None):
        indices = self.example if indices is None else indices
        if self.plate is not None and len(indices) != len(self.example):
            return self.pyro_loss(x, indices)   # a batch of another size (an epoch's last): Pyro's ELBO
        check = self.guard.due()
        if self.guard.on_reference:
            return self.pyro_loss(x, indices)
        if check and not self.verify(x, indices):
            self.guard.calls -= 1   # this call again, on the next route
            return self(x, indices)
        value, grads = self.guard.fn(x, indices)
        loss = _KnownGradient.apply(value, tuple(grads), *self.params)
        loss.known_gradients = (self.params, grads)
        return loss

    def verify(self, x=None, indices=None) -> bool:
        """Check the route in use against Pyro's ELBO at the current parameters (from the current random
        state, which is left as it was); False when it disagreed and stepped aside."""
        if self.guard.on_reference:
            return True
        state = get_rng_state()
        try:
            why = self._compare(self.guard.fn, x, self.example if indices is None else indices)
        finally:
            set_rng_state(state)
        if why:
            self.guard.step_aside(why)
        return not why


def _untraceable(loss_obj, guide_fn, data) -> tuple[str, int]:
    """Why the loss of this pair cannot be traced ("" when it can), and the guide's sample sites."""
    if type(loss_obj) is not Trace_ELBO:
        return f"{type(loss_obj).__name__}, not Trace_ELBO", 0
    if loss_obj.vectorize_particles:
        return "vectorized particles", 0
    with torch.no_grad(), warnings.catch_warnings(), pyro.validation_enabled(False):   # a NaN is step 0's to report
        warnings.simplefilter("ignore")
        state = get_rng_state()
        trace = poutine.trace(guide_fn).get_trace(data)
        set_rng_state(state)
    sites = [(name, site) for name, site in trace.nodes.items()
             if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)]
    for name, site in sites:
        if not getattr(site["fn"], "has_rsample", False):
            return f"guide site {name!r} is not reparameterized", 0
    return "", len(sites)
