"""The log density of any Pyro model on a flat unconstrained vector, for :mod:`inference.sampling.nuts`.

A model's latent sites (discrete ones summed out) are mapped to one flat vector ``theta`` by the
bijections of their supports, as Pyro's HMC does (``biject_to(support)``); the log density is the
model's log joint at the constrained values plus the log Jacobians, with enumerated sites summed
out by Pyro's own ``TraceEinsumEvaluator`` (the contraction Pyro's NUTS kernel uses).

Evaluated as Pyro evaluates it (the "eager" route, the reference), every call re-runs the model under a
trace and autograd: a fixed cost in Python per leapfrog step whatever the model's size. The faster
routes (:mod:`inference.tracing`):

- ``"closed form"``: the model's own log density and gradient (``ZooModel.log_density``), when it has one;
- ``"graph"``: the value AND its gradient traced once, down to ATen operations, into one graph
  (``make_fx``), with the data as inputs of the graph;
- ``"compiled"``: that graph compiled by Inductor into C++; with ``route="auto"``, when the run is long
  enough to pay (the one policy of :mod:`inference.tracing`).

Each route is checked against Pyro's own potential (``initialize_model``'s ``potential_fn``) and its
autograd gradient at the point it was built from and at other points before it is used, and again while
it runs (:class:`inference.tracing.Guard`); a route that disagrees (a model whose Python control flow
depends on latent values, an operation in numpy that the tracer saw as a constant) steps aside.

**Held sites** (HMC-within-Gibbs, :mod:`inference.sampling.hmc_within_gibbs`): latent sites whose values are given
rather than sampled, ``given={site: value}`` (discrete sites that enumeration cannot sum out), make the
density a conditional one, log p(theta | held values). Their values are inputs of the graph, as the data
are, so one traced (compiled) graph serves every value :meth:`Potential.set_given` moves them to; the
check points use other values of them too, and the checks while it runs see the values of the moment.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
import warnings
from typing import Callable

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate
from pyro.infer.mcmc.util import TraceEinsumEvaluator, initialize_model
from torch.distributions import biject_to

from inference.initialization import init_to_uniform_any
from pyro.infer.autoguide.initialization import InitMessenger
from inference.tracing import (
    Guard,
    Mismatch,
    compile_graph,
    flatten_data,
    mismatch,
    on_cpu,
    operations,
    trace_graph,
    unused_inputs,
    unvalidated,
    worth_compiling,
)

log = logging.getLogger(__name__)

ROUTES = ("compiled", "graph", "eager")
#: how many points an initial point or a check point is looked for among (Pyro's initialize_model: 100)
MAX_TRIES = 100


def _quietly(fn: Callable) -> Callable:
    """``fn`` run with Pyro's validation off and warnings silenced: Pyro's potential and a closed form (a
    point outside the support is the sampler's to judge, by the value). The traced routes run ATen
    operations only and need neither (two context managers cost about 20 us a gradient)."""
    @functools.wraps(fn)
    def run(*args):
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args)
    return run


class Potential:
    """``log p(theta)`` and its gradient for a model on given data, as numpy float64, by the fastest
    route that agrees with Pyro's potential.

    :param model_fn: a Pyro callable ``model(data)`` (discrete latent sites are enumerated).
    :param max_plate_nesting: as Pyro's ``max_plate_nesting``.
    :param route: "compiled" (compiled now), "graph", "eager" (Pyro's potential at every call), or "auto"
        (the closed form when given, else the graph, compiled when ``calls`` make it
        pay). A route that fails to build or to agree with Pyro's potential falls back to the next.
    :param calls: the expected number of calls (the policy's input for "auto").
    :param closed_form: the model's ``(transforms, fn)`` (``ZooModel.log_density``): ``fn`` maps
        ``{site: unconstrained numpy value}`` to ``(log p, {site: gradient})`` (with held sites,
        ``fn(u, held)``, ``held`` their values as tensors). It must cover the latent sites and agree with
        the model; a closed form that does not is an error in the model.
    :param given: ``{site: value}`` of latent sites held at given values (see the module docstring).
    """

    def __init__(self, model_fn: Callable, data, *, max_plate_nesting: int, route: str = "auto",
                 calls: int = 0, closed_form=None, name: str = "model", given=None):
        if route not in (*ROUTES, "auto"):
            raise ValueError(f"route: expected 'auto' or one of {', '.join(ROUTES)}, got {route!r}")
        self.data, self.max_plate_nesting, self.model_fn = data, max_plate_nesting, model_fn
        self.held_names = tuple(given or ())
        self.held = [torch.as_tensor(given[k]).detach() for k in self.held_names]
        self._reference_held: dict[str, torch.Tensor] = {}   # what Pyro's potential conditions on, per call
        with torch.no_grad(), pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seeded = poutine.seed(InitMessenger(init_to_uniform_any)(self._model(self.given)), rng_seed=0)
            trace = poutine.trace(seeded).get_trace(data)
        latent = {k: s for k, s in trace.nodes.items()
                  if s["type"] == "sample" and not s["is_observed"] and type(s["fn"]).__name__ != "_Subsample"}
        self.enumerated = tuple(k for k, s in latent.items() if s["fn"].has_enumerate_support)
        sites = {k: s for k, s in latent.items() if k not in self.enumerated}
        discrete = [f"{k!r} ({type(s['fn']).__name__})" for k, s in sites.items() if s["fn"].support.is_discrete]
        if discrete:
            raise ValueError(f"model: latent discrete site(s) {', '.join(discrete)} cannot be summed out; NUTS "
                             "needs continuous latents, or discrete ones of finite support marked for enumeration "
                             "(infer={'enumerate': 'parallel'})")
        if not sites:
            raise ValueError("model: has no continuous latent sites for NUTS to sample")
        if closed_form is not None and set(closed_form[0]) != set(sites):
            raise ValueError(f"{name}.log_density: covers {sorted(closed_form[0])}, but the latent sites are "
                             f"{sorted(sites)}")
        self.names = tuple(sites)
        self.transforms = (dict(closed_form[0]) if closed_form is not None
                           else {k: biject_to(s["fn"].support) for k, s in sites.items()})
        self.prototypes = {k: s["value"].detach() for k, s in sites.items()}   # shapes and dtypes of the sites
        self.shapes = {k: tuple(self.transforms[k].inv(v).shape) for k, v in self.prototypes.items()}
        self.sizes = [math.prod(self.shapes[k]) for k in self.names]
        self.dtype = functools.reduce(torch.promote_types, [v.dtype for v in self.prototypes.values()])
        self.dim = sum(self.sizes)
        self._evaluator = TraceEinsumEvaluator(trace, bool(self.enumerated), max_plate_nesting)
        self.leaves, self._rebuild = flatten_data(data)
        self.compile_seconds = 0.0
        self._reference = None
        self._held_states = self._other_held(trace)
        self._checked_at = None   # the check points, found when a route is first checked
        self.guard = Guard(f"{name}: potential", ("eager", _quietly(self._value_and_grad)))
        if closed_form is not None:
            fn = _quietly(self._closed_form(closed_form[1]))
            why = self._disagreement(fn)
            if why:
                raise RuntimeError(f"{name}.log_density: {why}; the closed form does not match the model")
            self.guard.add("closed form", fn)
        elif route != "eager":
            self._build(route, calls)
        log.info("potential: %s route, %d coordinates, built in %.1fs", self.route, self.dim, self.compile_seconds)

    @property
    def route(self) -> str:
        """The route in use."""
        return self.guard.route

    # --- coordinates -------------------------------------------------------------------------
    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unconstrained values per site from a flat ``(..., dim)`` tensor."""
        parts = torch.split(theta, self.sizes, dim=-1)
        return {k: p.reshape(tuple(theta.shape[:-1]) + self.shapes[k]) for k, p in zip(self.names, parts)}

    def flatten(self, values: dict[str, torch.Tensor]) -> np.ndarray:
        """The flat unconstrained vector (float64) of constrained ``values``."""
        return torch.cat([self.transforms[k].inv(torch.as_tensor(values[k], dtype=self.prototypes[k].dtype))
                          .reshape(-1).double() for k in self.names]).numpy()

    def constrain(self, draws: np.ndarray) -> dict[str, torch.Tensor]:
        """Constrained values in the model's dtype from flat unconstrained draws ``(..., dim)``."""
        with torch.no_grad():
            u = self.unflatten(torch.from_numpy(np.ascontiguousarray(draws)))
            return {k: self.transforms[k](v).to(self.prototypes[k].dtype) for k, v in u.items()}

    # --- held sites ------------------------------------------------------------------------
    def _model(self, held: dict) -> Callable:
        """The model with the held sites conditioned on ``held`` (innermost: seen as observed before
        enumeration is configured) and every other finite discrete site enumerated."""
        inner = poutine.condition(self.model_fn, data=held) if held else self.model_fn
        return poutine.enum(config_enumerate(inner), first_available_dim=-1 - self.max_plate_nesting)

    def set_given(self, values) -> None:
        """Hold the held sites at ``values`` (``{site: value}``) from now on."""
        self.held = [torch.as_tensor(values[k], dtype=v.dtype).detach() for k, v in zip(self.held_names, self.held)]

    @property
    def given(self) -> dict[str, torch.Tensor]:
        """The values the held sites are held at."""
        return dict(zip(self.held_names, self.held))

    def _other_held(self, trace) -> list[list[torch.Tensor]]:
        """The held values and two others for the check points: each element moved by 1 and by 3 within
        its support (up where it can, else down)."""
        states = [self.held]
        for shift in (1, 3) if self.held_names else ():
            moved = []
            for k, v in zip(self.held_names, self.held):
                support = trace.nodes[k]["fn"].support
                up, down = v + shift, v - shift
                moved.append(torch.where(support.check(up), up, torch.where(support.check(down), down, v)).to(v.dtype))
            states.append(moved)
        return states

    # --- the density -------------------------------------------------------------------------
    def log_density(self, theta: torch.Tensor, *leaves) -> torch.Tensor:
        """log p(constrained(theta), data) + log |det J|, enumerated sites summed out, held sites at the
        values among ``leaves`` (after the data's)."""
        n = len(self.leaves)
        data = self._rebuild(leaves[:n]) if n and leaves else self.data
        held = dict(zip(self.held_names, leaves[n:] if leaves else self.held))
        values, log_det = {}, theta.new_zeros(())
        for k, u in self.unflatten(theta).items():
            y = self.transforms[k](u)
            values[k] = y
            log_det = log_det + self.transforms[k].log_abs_det_jacobian(u, y).sum()
        trace = poutine.trace(poutine.condition(self._model(held), data=values)).get_trace(data)
        for site in trace.nodes.values():
            if site["type"] == "sample":
                site["fn"] = unvalidated(site["fn"])
        return self._evaluator.log_prob(trace) + log_det

    def _value_and_grad(self, theta: torch.Tensor, *leaves):
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.log_density(theta, *leaves)
            grad, = torch.autograd.grad(value, theta)
        return value.detach(), grad

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(log p, gradient)`` at a flat float64 vector, computed in the model's dtype by the route in
        use; on the calls the guard picks, also by Pyro's potential, which it must agree with (else the
        route steps aside and :class:`~inference.tracing.Mismatch` is raised: draws made so far came
        from a wrong density)."""
        check = self.guard.due()
        out = self._call(self.guard.fn, theta)
        if check:
            why = mismatch(out, self.reference(theta), self.dtype)
            if why:
                self.guard.step_aside(why)
                raise Mismatch(why)
        return out

    def verify(self, theta: np.ndarray) -> None:
        """Check the route in use at ``theta`` (e.g. a chain's last draw) against Pyro's potential;
        on a mismatch it steps aside and :class:`~inference.tracing.Mismatch` is raised."""
        if self.guard.on_reference:
            return
        why = mismatch(self._call(self.guard.fn, theta), self.reference(theta), self.dtype)
        if why:
            self.guard.step_aside(why)
            raise Mismatch(why)

    def reference(self, theta: np.ndarray, held: list | None = None) -> tuple[float, np.ndarray]:
        """Pyro's own potential and its autograd gradient, negated: the reference of every route (held
        sites at ``held``, default: their values of the moment)."""
        self._reference_held.update(zip(self.held_names, self.held if held is None else held))
        if self._reference is None:
            model = poutine.condition(self.model_fn, data=self._reference_held) if self.held_names else self.model_fn
            self._reference = pyro_potential(model, self.data, self)
        try:
            return self._reference(theta)
        except (ValueError, RuntimeError):   # a point outside the support (validation): not a point to compare at
            return -math.inf, np.zeros(self.dim)

    # --- routes ------------------------------------------------------------------------------
    def _call(self, fn, theta: np.ndarray, held: list | None = None) -> tuple[float, np.ndarray]:
        """A route's function of torch ``(theta, *leaves)`` at a flat numpy vector, on this data (held sites
        at ``held``, default: their values of the moment)."""
        value, grad = fn(torch.from_numpy(np.asarray(theta)).to(self.dtype), *self.leaves,
                         *(self.held if held is None else held))
        return float(value), grad.double().numpy()

    def _closed_form(self, fn) -> Callable:
        """The model's closed form as a route: a function of torch ``(theta, *leaves)`` (its data are
        those it was made for)."""
        def call(theta, *leaves):
            u = {k: v.double().numpy() for k, v in self.unflatten(theta).items()}
            value, grad = fn(u, dict(zip(self.held_names, leaves[len(self.leaves):]))) if self.held_names else fn(u)
            return torch.tensor(float(value)), torch.from_numpy(np.concatenate(
                [np.asarray(grad[k], dtype=np.float64).reshape(-1) for k in self.names]))
        return call

    def with_data(self, data) -> "Potential":
        """The same potential on new data of the same shapes and dtypes, sharing the traced (and compiled)
        graph, whose inputs the data are: checked again against Pyro's potential on the new data, at the
        check points and while it runs (SBC, model choice: one build for many data sets). A closed form
        is bound to its data: ask the model for another."""
        if self.route == "closed form":
            raise ValueError("data: a closed-form potential is bound to its data; build one for the new data")
        leaves, rebuild = flatten_data(data)
        if [(t.shape, t.dtype) for t in leaves] != [(t.shape, t.dtype) for t in self.leaves]:
            raise ValueError("data: expected tensors of the shapes and dtypes the potential was built for, "
                             f"{[(tuple(t.shape), t.dtype) for t in self.leaves]}, got "
                             f"{[(tuple(t.shape), t.dtype) for t in leaves]}")
        new = copy.copy(self)
        new.data, new.leaves, new._rebuild, new._reference = data, leaves, rebuild, None
        new.guard = Guard(self.guard.what, self.guard.routes[-1])
        new._checked_at = None
        for name, fn in reversed(self.guard.routes[:-1]):
            why = new._disagreement(fn)
            if why:
                log.warning("%s: the %s route disagrees with the reference on the new data (%s)", self.guard.what,
                            name, why)
                break
            new.guard.add(name, fn)
        return new

    def _build(self, route: str, calls: int) -> None:
        """Trace the graph and add it as a route; compile it and add that too, for "compiled", and for
        "auto" where the policy says it pays. Each is checked first; one that fails is not added."""
        theta = torch.from_numpy(self.flatten(self.prototypes)).to(self.dtype)
        example = [theta, *self.leaves, *self.held]
        graph = self._try("graph", lambda: trace_graph(self._value_and_grad, *example), lambda g: g)
        if graph is not None and (route == "compiled" or route == "auto" and worth_compiling(
                calls, operations(graph), on_cpu=on_cpu(self.leaves))):
            self._try("compiled", lambda: compile_graph(graph, example), lambda _: graph)

    def _try(self, name: str, build, graph_of):
        """Build a route, check it (it must read the point, and agree with Pyro's potential at the check
        points) and add it; on any failure log why and add nothing. Returns what ``build`` made."""
        start = time.perf_counter()
        try:
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = build()
            why = ("the traced log density does not read the point" if 0 in unused_inputs(graph_of(fn))
                   else self._disagreement(fn))
            if why:
                raise Mismatch(why + " (Python control flow on a latent value, or an operation the tracer "
                               "cannot see such as numpy inside the model)")
        except Exception as e:  # noqa: BLE001 - any failure to trace or compile falls back, with the reason
            log.warning("potential: the %s route is not usable for this model (%s: %s); using the %s route",
                        name, type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", self.route)
            return None
        finally:
            self.compile_seconds += time.perf_counter() - start
        self.guard.add(name, fn)
        return fn

    @property
    def _points(self) -> list[tuple[np.ndarray, list, tuple]]:
        if self._checked_at is None:
            self._checked_at = self._check_points()
        return self._checked_at

    def _check_points(self) -> list[tuple[np.ndarray, list, tuple]]:
        """Up to three points where Pyro's potential is finite, with the held values there and its value and
        gradient: the point the graph is traced from, one near it and one drawn as NUTS draws its starts
        (uniform in (-2, 2)), searched among ``MAX_TRIES`` draws; held sites at their values and at others
        in turn (:meth:`_other_held`)."""
        rng = np.random.default_rng(0)
        base = self.flatten(self.prototypes)
        points = []
        for i in range(MAX_TRIES):
            theta = (base if i == 0 else base + rng.normal(0, 0.3, base.size) if i == 1
                     else rng.uniform(-2, 2, base.size))
            held = self._held_states[i % len(self._held_states)]
            ref = self.reference(theta, held)
            if math.isfinite(ref[0]) and np.all(np.isfinite(ref[1])):
                points.append((theta, held, ref))
                if len(points) == 3:
                    break
        if len(points) < 2:
            log.info("potential: Pyro's potential is finite at %d of %d points tried; routes are checked while "
                     "they run", len(points), MAX_TRIES)
        return points

    def _disagreement(self, fn, extra: np.ndarray | None = None) -> str:
        points = list(self._points) + ([(extra, self.held, self.reference(extra))] if extra is not None else [])
        for theta, held, ref in points:
            why = mismatch(self._call(fn, theta, held), ref, self.dtype)
            if why:
                return why
        return ""


def pyro_potential(model_fn, data, potential: "Potential"):
    """Pyro's own potential (``initialize_model``'s ``potential_fn``, public API) as ``theta -> (log p,
    gradient)`` in float64 numpy: the reference that every route is checked against."""
    inverse = {k: t.inv for k, t in potential.transforms.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, potential_fn, _, _ = initialize_model(
            model_fn, model_args=(data,), transforms=inverse, max_plate_nesting=potential.max_plate_nesting,
            init_strategy=init_to_uniform_any, initial_params=dict(potential.prototypes))

    def fn(theta: np.ndarray):
        params = {k: v.to(potential.prototypes[k].dtype).detach().requires_grad_(True)
                  for k, v in potential.unflatten(torch.from_numpy(np.asarray(theta, dtype=np.float64))).items()}
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            energy = potential_fn(params)
            grads = torch.autograd.grad(energy, list(params.values()), allow_unused=True)
        grad = np.concatenate([(-g if g is not None else torch.zeros_like(p)).reshape(-1).double().numpy()
                               for g, p in zip(grads, params.values())])
        return -float(energy.detach()), grad

    return fn
