"""The log density of any Pyro model on a flat unconstrained vector, for :mod:`inference.nuts`.

A model's latent sites (discrete ones summed out) are mapped to one flat vector ``theta`` by the
bijections of their supports, as Pyro's HMC does (``biject_to(support)``); the log density is the
model's log joint at the constrained values plus the log Jacobians, with enumerated sites summed
out by Pyro's own ``TraceEinsumEvaluator`` (the contraction Pyro's NUTS kernel uses).

Evaluated as Pyro evaluates it, every call re-runs the model under a trace and autograd: a fixed cost
in Python per leapfrog step whatever the model's size (measured: benchmarks/README.md). Here the value AND its gradient
are traced once, down to ATen operations, into one graph (``make_fx``), and that graph is compiled
by Inductor into C++: what remains per call is one function call on a few tensors. Three routes:

- ``"compiled"``: the graph compiled by Inductor (needs a C++ compiler; seconds to compile, cached
  on disk by Inductor across processes). Data tensors are inputs of the graph, not constants, so the
  compiled code is reused for new data of the same shapes.
- ``"graph"``: the traced graph run by PyTorch's interpreter (no compile time, no compiler needed).
- ``"eager"``: the model traced at every call (the reference the other two are checked against).

Every route is checked against Pyro's own potential (``initialize_model``'s ``potential_fn``) and
its autograd gradient at a few points before sampling; a graph that disagrees (e.g. a model whose
Python control flow depends on latent values, which a trace freezes) is not used.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import shutil
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

from inference.target import InitMessenger, init_to_uniform_any

log = logging.getLogger(__name__)

ROUTES = ("compiled", "graph", "eager")


class Potential:
    """``log p(theta)`` and its gradient for a model on given data, as numpy float64.

    :param model_fn: a Pyro callable ``model(data)`` (discrete latent sites are enumerated).
    :param max_plate_nesting: as Pyro's ``max_plate_nesting``.
    :param route: "compiled", "graph", "eager", or "auto" ("compiled" when a C++ compiler is found,
        else "graph"). A route that fails to build or to match Pyro's potential falls back to the next.
    """

    def __init__(self, model_fn: Callable, data, *, max_plate_nesting: int, route: str = "auto"):
        if route not in (*ROUTES, "auto"):
            raise ValueError(f"route: expected 'auto' or one of {', '.join(ROUTES)}, got {route!r}")
        self.data = data
        self.max_plate_nesting = max_plate_nesting
        self.model_fn = model_fn
        self.model = poutine.enum(config_enumerate(model_fn), first_available_dim=-1 - max_plate_nesting)
        with torch.no_grad(), pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seeded = poutine.seed(InitMessenger(init_to_uniform_any)(self.model), rng_seed=0)
            trace = poutine.trace(seeded).get_trace(data)
        latent = {name: site for name, site in trace.nodes.items()
                  if site["type"] == "sample" and not site["is_observed"] and type(site["fn"]).__name__ != "_Subsample"}
        self.enumerated = tuple(k for k, s in latent.items() if s["fn"].has_enumerate_support)
        sites = {k: s for k, s in latent.items() if k not in self.enumerated}
        if not sites:
            raise ValueError("model: has no continuous latent sites for NUTS to sample")
        self.names = tuple(sites)
        self.transforms = {k: biject_to(s["fn"].support) for k, s in sites.items()}
        self.prototypes = {k: s["value"].detach() for k, s in sites.items()}   # shapes and dtypes of the sites
        self.shapes = {k: tuple(self.transforms[k].inv(v).shape) for k, v in self.prototypes.items()}
        self.sizes = [math.prod(self.shapes[k]) for k in self.names]
        self.dtype = functools.reduce(torch.promote_types, [v.dtype for v in self.prototypes.values()])
        self.dim = sum(self.sizes)
        self._evaluator = TraceEinsumEvaluator(trace, bool(self.enumerated), max_plate_nesting)
        self.leaves, self._rebuild = flatten_data(data)
        self.route, self._fn = "eager", self._value_and_grad
        self.compile_seconds = 0.0
        if route == "auto":
            route = "compiled" if has_compiler() else "graph"
        for candidate in ROUTES[ROUTES.index(route):]:
            if candidate == "eager":
                break
            try:
                start = time.perf_counter()
                fn = self._build(candidate)
                self.compile_seconds = time.perf_counter() - start
                self._check(fn)
            except Exception as e:  # noqa: BLE001 - any failure to trace or compile falls back, with the reason
                log.warning("potential: the %s route is not usable for this model (%s: %s); falling back",
                            candidate, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                continue
            self.route, self._fn = candidate, fn
            break
        log.info("potential: %s route, %d coordinates, built in %.1fs", self.route, self.dim, self.compile_seconds)

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

    # --- the density -------------------------------------------------------------------------
    def log_density(self, theta: torch.Tensor, *leaves) -> torch.Tensor:
        """log p(constrained(theta), data) + log |det J|, enumerated sites summed out."""
        data = self._rebuild(leaves) if leaves else self.data
        values, log_det = {}, theta.new_zeros(())
        for k, u in self.unflatten(theta).items():
            y = self.transforms[k](u)
            values[k] = y
            log_det = log_det + self.transforms[k].log_abs_det_jacobian(u, y).sum()
        trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(data)
        for site in trace.nodes.values():
            if site["type"] == "sample":
                site["fn"] = _unvalidated(site["fn"])
        return self._evaluator.log_prob(trace) + log_det

    def _value_and_grad(self, theta: torch.Tensor, *leaves):
        theta = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            value = self.log_density(theta, *leaves)
            grad, = torch.autograd.grad(value, theta)
        return value.detach(), grad

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(log p, gradient)`` at a flat float64 vector, computed in the model's dtype."""
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value, grad = self._fn(torch.from_numpy(np.asarray(theta)).to(self.dtype), *self.leaves)
        return float(value), grad.double().numpy()

    # --- routes ------------------------------------------------------------------------------
    def _build(self, route: str):
        theta = torch.from_numpy(self.flatten(self.prototypes)).to(self.dtype)
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = trace_graph(self._value_and_grad, theta, *self.leaves)
            return compile_graph(graph, [theta, *self.leaves]) if route == "compiled" else graph

    def _check(self, fn, points: int = 3) -> None:
        """``fn`` must give Pyro's potential and gradient (negated) at the prototype and two points
        around it: to 1e-6 relative in float64, 1e3 machine epsilons in float32."""
        pe = pyro_potential(self.model_fn, self.data, self)
        rng = np.random.default_rng(0)
        base = self.flatten(self.prototypes)
        tol = max(1e-6, 1e3 * torch.finfo(self.dtype).eps)
        for i in range(points):
            theta = base + (rng.normal(0, 0.3, base.size) if i else 0)
            expected, expected_grad = pe(theta)
            if not math.isfinite(expected):
                continue
            with pyro.validation_enabled(False), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value, grad = fn(torch.from_numpy(theta).to(self.dtype), *self.leaves)
            value, grad = float(value), grad.double().numpy()
            scale = max(1.0, abs(expected))
            if not abs(value - expected) <= tol * scale:
                raise RuntimeError(f"log density {value!r} where Pyro's potential gives {expected!r}")
            gscale = max(1.0, float(np.abs(expected_grad).max()))
            if not np.abs(grad - expected_grad).max() <= tol * gscale * 10:
                raise RuntimeError(f"gradient differs from Pyro's by {np.abs(grad - expected_grad).max():.3g}")


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
                  for k, v in potential.unflatten(torch.from_numpy(theta)).items()}
        with torch.enable_grad():
            energy = potential_fn(params)
            grads = torch.autograd.grad(energy, list(params.values()), allow_unused=True)
        grad = np.concatenate([(-g if g is not None else torch.zeros_like(p)).reshape(-1).double().numpy()
                               for g, p in zip(grads, params.values())])
        return -float(energy.detach()), grad

    return fn


def has_compiler() -> bool:
    """Whether Inductor can build C++ here (it needs a C++ compiler on PATH, or ``$CXX``)."""
    import os

    return bool(os.environ.get("CXX") and shutil.which(os.environ["CXX"])) or any(
        shutil.which(c) for c in ("g++", "c++", "clang++"))


# --- the places where this module touches PyTorch internals ---------------------------------------
# ``make_fx`` lives in torch.fx.experimental, ``torch._inductor.compile`` is Inductor's entry for an
# ATen graph (run inside ``torch._guards.tracing`` so that its FX graph cache serves a new process),
# and ``_unvalidated`` sets a distribution's private ``_validate_args``;
# tests/inference/test_potential.py fails loudly when any of them changes.

def trace_graph(fn: Callable, *example):
    """``fn`` traced once, down to ATen operations (autograd included), into a ``torch.fx.GraphModule``."""
    from torch.fx.experimental.proxy_tensor import make_fx

    return make_fx(fn, tracing_mode="real")(*example)


def compile_graph(graph, example: list, *, fallback_random: bool = False, vectorize: bool = False):
    """An ATen graph compiled by Inductor into C++ for the CPU: single-threaded kernels (chains run in
    parallel processes), no vectorization unless ``vectorize`` (it slows the small reductions of
    enumerated models and speeds up the large elementwise work of networks, benchmarks/README.md).
    ``fallback_random``: random numbers from ATen's generator, as the graph draws them uncompiled."""
    import torch._inductor
    import torch._inductor.config as config

    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    # A tracing context with a (static) ShapeEnv, as torch.compile provides: without one Inductor
    # bypasses its FX graph cache ("No shape env") and every new process generates the code again.
    context = TracingContext(FakeTensorMode(shape_env=ShapeEnv()))
    simd = {} if vectorize else {"cpp.simdlen": 0}
    with config.patch({"cpp.threads": 1, **simd, "fallback_random": fallback_random}), tracing(context):
        return torch._inductor.compile(fence_accumulating_scatters(graph), example)


@torch.library.custom_op("latent_zoo::index_put_accumulate", mutates_args=())
def index_put_accumulate(self: torch.Tensor, indices: list[torch.Tensor | None], values: torch.Tensor) -> torch.Tensor:
    """``aten.index_put(self, indices, values, accumulate=True)`` as an operation of its own, which Inductor
    runs as it is instead of generating (and fusing) its code."""
    return torch.ops.aten.index_put.default(self, indices, values, True)


@index_put_accumulate.register_fake
def _(self, indices, values):
    return torch.empty_like(self)


def fence_accumulating_scatters(graph):
    """``graph``, or a copy whose accumulating ``index_put`` (the gradient of indexing a tensor with a tensor,
    e.g. ``transition[x]`` with an enumerated ``x``) is :func:`index_put_accumulate`, out of Inductor's
    reach. Inductor (torch 2.13, CPU) fuses such a scatter with a kernel that reads its result, and the
    fused loop reads the buffer before it adds to it: the gradient of the enumerated HMM of Pyro's
    tutorial came out wrong by up to 1.5 (tests/inference/test_potential.py; upstream, the class of
    pytorch#171493)."""
    def accumulating(node):
        return node.target is torch.ops.aten.index_put.default and node.args[3:4] == (True,)

    if not any(accumulating(n) for n in graph.graph.nodes):
        return graph
    graph = copy.deepcopy(graph)
    for node in [n for n in graph.graph.nodes if accumulating(n)]:
        node.target, node.args = torch.ops.latent_zoo.index_put_accumulate.default, node.args[:3]
    graph.recompile()
    return graph


def _unvalidated(fn):
    """A shallow copy of distribution ``fn`` (and of the distributions it wraps) with argument
    validation off. Priors built before sampling (``PyroSample``, a module attribute) keep the
    validation they were built with, and a support check is data-dependent control flow, which the
    tracer refuses; the supports are checked once, by Pyro's potential. ``_validate_args`` is
    private to torch.distributions: tests/inference/test_potential.py's PyroModule case fails if it changes."""
    if not isinstance(fn, torch.distributions.Distribution):
        return fn
    fn = copy.copy(fn)
    fn._validate_args = False
    if isinstance(getattr(fn, "base_dist", None), torch.distributions.Distribution):
        fn.base_dist = _unvalidated(fn.base_dist)
    return fn


def flatten_data(data):
    """Tensor leaves of ``data`` (a tensor, or a tuple/list/dict of tensors and other values) and a
    function rebuilding ``data`` from new leaves: the leaves become inputs of the traced graph."""
    if torch.is_tensor(data):
        return [data], lambda leaves: leaves[0]
    if isinstance(data, (tuple, list)) and not hasattr(data, "_fields"):
        idx = [i for i, v in enumerate(data) if torch.is_tensor(v)]

        def rebuild(leaves):
            out = list(data)
            for i, v in zip(idx, leaves):
                out[i] = v
            return type(data)(out)
        return [data[i] for i in idx], rebuild
    if isinstance(data, dict):
        keys = [k for k, v in data.items() if torch.is_tensor(v)]
        return [data[k] for k in keys], lambda leaves: {**data, **dict(zip(keys, leaves))}
    return [], lambda leaves: data
