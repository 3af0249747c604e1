"""Fast routes of a Pyro computation, when to take them, and the checks that make them safe.

A model's log density (NUTS) or ELBO (SVI) can be computed three ways: by Pyro itself, the *reference*
(a trace and autograd at every call); by one graph of ATen operations traced once together with its
gradient (``make_fx``: the "graph" route); or by that graph compiled into C++ by Inductor ("compiled").
The fast routes drop Python, and with it whatever the tracer cannot see: Python control flow on a latent
value keeps the branch of the trace point; a numpy round trip (a custom ``autograd.Function`` computing in
numpy, a numba kernel) becomes a constant. So a fast route is used only where it is verified:

- when it is built, its value and gradient are checked against the reference at the point it was
  traced from AND at other points (other parameters, other random draws): :func:`mismatch`;
- while it runs, again at calls 1, 10, 100, 1000 and every ``CHECK_EVERY`` calls after, and at the end
  (:class:`Guard` counts the calls and says when);
- on a mismatch it steps aside, with a one-line warning, to the next slower route (compiled -> graph ->
  reference), and the caller records which route produced its result.

**The route policy** (one rule for NUTS, SVI and minibatch training: :func:`worth_tracing`,
:func:`worth_compiling`): a route is taken when the time it is expected to save over the run, calls
times the saving per call, exceeds what it costs to build. Tracing saves about half of Pyro's time per
call (Pyro's time grows with the sample sites it traces) and costs about a second; compiling saves the
Python dispatch of every ATen operation of the graph and costs a few seconds (less when Inductor's
on-disk cache holds the graph). In effect: trace SVI runs of more than a thousand or so steps; compile
when a C++ compiler exists and the run is more than a few thousand operations' worth of calls (a few
hundred gradients of a mixture model). The rule reads only counts (calls, sites, operations), never a
clock: the route, and so every number of a run, is the same each time it is run with the same seed.
The constants are measured in benchmarks/README.md ("Routes").

**PyTorch internals** are touched here and nowhere else: ``make_fx`` (torch.fx.experimental), Inductor's
``torch._inductor.compile`` with ``torch._guards.tracing`` and ``torch._subclasses.FakeTensorMode`` (so that
its on-disk FX graph cache serves a new process) and its vector-ISA probe (``valid_vec_isa_list``), and
a distribution's private ``_validate_args``.
tests/inference/test_tracing.py fails loudly when any of them changes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import warnings
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

#: calls at which a running fast route is checked against the reference, then every CHECK_EVERY calls
CHECK_AT = (1, 10, 100, 1000)
CHECK_EVERY = 5000
#: the route policy's constants (measured: benchmarks/README.md, "Routes"): Pyro's seconds per sample
#: site of the guide and step, the fraction of them the traced graph saves, the seconds it takes to
#: trace and check a graph, the seconds of Python dispatch per ATen operation and call that compiling
#: saves, and the seconds a compile costs
PYRO_SECONDS_PER_SITE = 8e-4
GRAPH_SAVING = 0.5
TRACE_SECONDS = 1.5
DISPATCH_SECONDS = 4e-6
COMPILE_SECONDS = 3.0
#: NUTS's expected gradient evaluations per iteration, for the policy (trees of depth 3 to 4)
LEAPFROGS_PER_ITERATION = 10


class Mismatch(RuntimeError):
    """A fast route disagrees with the reference."""


# --- the route policy -------------------------------------------------------------------------------

def worth_tracing(calls: int, sites: int) -> bool:
    """Whether tracing pays over ``calls`` steps of Pyro's ELBO of a guide with ``sites`` sample sites."""
    return calls * max(1, sites) * PYRO_SECONDS_PER_SITE * GRAPH_SAVING > TRACE_SECONDS


def worth_compiling(calls: int, operations: int, *, on_cpu: bool = True) -> bool:
    """Whether compiling pays over ``calls`` calls of a traced graph of ``operations`` ATen operations
    (never without a C++ compiler, never off the CPU)."""
    return on_cpu and has_compiler() and calls * operations * DISPATCH_SECONDS > COMPILE_SECONDS


def has_compiler() -> bool:
    """Whether Inductor can build C++ here (it needs a C++ compiler on PATH, or ``$CXX``)."""
    return bool(os.environ.get("CXX") and shutil.which(os.environ["CXX"])) or any(
        shutil.which(c) for c in ("g++", "c++", "clang++"))


# --- the agreement check ----------------------------------------------------------------------------

def tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of a fast route against the reference: 1e-6 in float64, 1e3 machine epsilons
    in float32 (the same operations in another order)."""
    return max(1e-6, 1e3 * torch.finfo(dtype).eps)


def mismatch(got: tuple, expected: tuple, dtype: torch.dtype) -> str:
    """How ``got = (value, gradients)`` differs from the reference's ``expected``, or "" when they agree:
    the value to :func:`tolerance` relative (of at least 1), each gradient to 10 times that (relative to
    its largest entry, at least 1). A non-finite reference value is not a point to compare at ("")."""
    value, grads = float(got[0]), got[1]
    ref_value, ref_grads = float(expected[0]), expected[1]
    if not math.isfinite(ref_value):
        return ""
    tol = tolerance(dtype)
    if not abs(value - ref_value) <= tol * max(1.0, abs(ref_value)):
        return f"value {value:.10g} where the reference gives {ref_value:.10g}"
    for g, e in zip(grads, ref_grads):
        g, e = _numpy(g), _numpy(e)
        scale = max(1.0, float(np.abs(e).max(initial=0.0)))
        worst = float(np.abs(g - e).max(initial=0.0))
        if not worst <= 10 * tol * scale:
            return f"gradient differs from the reference's by {worst:.3g}"
    return ""


def _numpy(x) -> np.ndarray:
    return x.detach().double().cpu().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=np.float64)


class Guard:
    """The routes of one computation, fastest first and the reference last, the one in use, and when
    to check it. ``add(name, fn)`` puts a route its builder has verified in front; ``due()`` counts a
    call and says whether this call is one to check (never on the reference); ``step_aside(why)`` moves
    to the next route with a one-line warning; ``describe()`` names the route in use and what happened
    on the way, for the result's settings."""

    def __init__(self, what: str, reference: tuple[str, Callable | None]):
        self.what, self.routes = what, [reference]
        self.calls = 0
        self.history: list[str] = []

    @property
    def route(self) -> str:
        return self.routes[0][0]

    @property
    def fn(self) -> Callable:
        return self.routes[0][1]

    @property
    def on_reference(self) -> bool:
        return len(self.routes) == 1

    def add(self, name: str, fn: Callable) -> None:
        self.routes.insert(0, (name, fn))

    def due(self) -> bool:
        self.calls += 1
        return not self.on_reference and (self.calls in CHECK_AT or self.calls % CHECK_EVERY == 0)

    def step_aside(self, why: str) -> None:
        old = self.routes.pop(0)[0]
        log.warning("%s: the %s route disagrees with the reference at call %d (%s); using the %s route",
                    self.what, old, self.calls, why, self.route)
        self.history.append(f"{old} until call {self.calls}: {why}")

    def describe(self) -> str:
        return self.route + (f" ({'; '.join(self.history)})" if self.history else "")


# --- tracing and compiling (PyTorch internals) -------------------------------------------------------

def trace_graph(fn: Callable, *example):
    """``fn`` traced once, down to ATen operations (autograd included), into a ``torch.fx.GraphModule``.
    Inside a tracing context that holds one fake-tensor mode: without one ``make_fx`` makes a new mode for
    each operation's metadata, and each new mode records the Python stack (about 1.5 ms an operation in
    Pyro's deep stacks, half of a trace's time)."""
    from torch._guards import TracingContext, tracing
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    with tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True))):
        return make_fx(fn, tracing_mode="real")(*example)


def unused_inputs(graph) -> list[int]:
    """Positions of the inputs a traced graph never reads: an output that should depend on one (a
    parameter, the point) but does not was computed where the tracer could not see."""
    inputs = [node for node in graph.graph.nodes if node.op == "placeholder"]
    return [i for i, node in enumerate(inputs) if not node.users]


def operations(graph) -> int:
    """The number of ATen operations a traced graph runs per call."""
    return sum(node.op == "call_function" for node in graph.graph.nodes)


MATRIX_PRODUCTS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}


def multiplies_matrices(graph) -> bool:
    """Whether a graph multiplies matrices: a network's layers, whose large elementwise work around them
    Inductor's vectorized C++ speeds up (benchmarks/README.md, "Routes"). Elsewhere it slows the small
    reductions of mixtures and costs a cold compile the vector-ISA probes (see :func:`compile_graph`)."""
    return any(getattr(node.target, "overloadpacket", None) in MATRIX_PRODUCTS for node in graph.graph.nodes)


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
    # No reordering for peak memory (graphs of a few MB): its validation once failed on the fenced tutorial
    # HMM in a full test run ("Cycle detected in memory planning graph", torch 2.13), never in isolation.
    settings = {"cpp.threads": 1, **simd, "fallback_random": fallback_random, "reorder_for_peak_memory": False}
    with config.patch(settings), tracing(context), warnings.catch_warnings(), _isa_probes(vectorize):
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\._inductor")   # its own deprecations
        graph = unroll_short_scans(fence_accumulating_scatters(identity_scatters(graph)))
        return torch._inductor.compile(graph, example)


@contextlib.contextmanager
def _isa_probes(wanted: bool):
    """Inductor proves every vector ISA the CPU reports, by compiling and loading a test program, before
    its first compile in a process: 8 s of a 13 s cold compile on 2 cores (benchmarks/README.md,
    "Routes"). An unvectorized compile uses none, so within it the list of valid ISAs is empty and
    nothing is proved. (Not ``cpp.vec_isa_ok=False``: AVX-512's answer is cached for the process, and a
    vectorized compile after would find AVX-512 invalid.)"""
    if wanted:
        yield
        return
    from torch._inductor import cpu_vec_isa

    valid = cpu_vec_isa.valid_vec_isa_list
    cpu_vec_isa.valid_vec_isa_list = list   # () -> []
    try:
        yield
    finally:
        cpu_vec_isa.valid_vec_isa_list = valid


# An operation of our own (``latent_zoo::index_put_accumulate``), defined at the dispatcher directly: a
# ``torch.library.custom_op`` adds an autograd wrapper that costs 11 us a call more (19 against 8), and the
# graph already holds its gradients.
_LIBRARY = torch.library.Library("latent_zoo", "DEF")
_LIBRARY.define("index_put_accumulate(Tensor self, Tensor?[] indices, Tensor values) -> Tensor")


@torch.library.impl(_LIBRARY, "index_put_accumulate", "CompositeExplicitAutograd")
def index_put_accumulate(self: torch.Tensor, indices: list[torch.Tensor | None], values: torch.Tensor) -> torch.Tensor:
    """``aten.index_put(self, indices, values, accumulate=True)`` as an operation of its own, which Inductor
    runs as it is instead of generating (and fusing) its code."""
    return torch.ops.aten.index_put.default(self, indices, values, True)


@torch.library.register_fake("latent_zoo::index_put_accumulate", lib=_LIBRARY)
def _(self, indices, values):
    return torch.empty_like(self)


def _rewritten(graph, matches: Callable, rewrite: Callable):
    """``graph`` itself when no node ``matches``, else a copy with ``rewrite(fx_graph, node)`` applied to each
    node that does (the traced graph stays as it was: it is the graph route)."""
    if not any(matches(n) for n in graph.graph.nodes):
        return graph
    graph = copy.deepcopy(graph)
    for node in [n for n in graph.graph.nodes if matches(n)]:
        rewrite(graph.graph, node)
    graph.recompile()
    return graph


def _accumulates(node) -> bool:
    """Whether ``node`` is an accumulating ``index_put`` (a scatter-add: the gradient of indexing by a tensor)."""
    return node.target is torch.ops.aten.index_put.default and node.args[3:4] == (True,)


_VIEWS = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.reshape.default,
          torch.ops.aten.unsqueeze.default}
_ZEROS = {torch.ops.aten.new_zeros.default, torch.ops.aten.zeros.default}


def _arange_length(node) -> int | None:
    """K when ``node`` is ``arange(K)`` (0, 1, ..., K - 1) seen through views that keep its order, else None."""
    while isinstance(node, torch.fx.Node) and node.target in _VIEWS:
        node = node.args[0]
    if not isinstance(node, torch.fx.Node):
        return None
    args = node.args
    if node.target is torch.ops.aten.arange.default and len(args) == 1:
        return args[0] if isinstance(args[0], int) else None
    if node.target is torch.ops.aten.arange.start and args[0] == 0 and isinstance(args[1], int):
        return args[1]
    if node.target is torch.ops.aten.arange.start_step and args[0] == 0 and args[2] == 1 and isinstance(args[1], int):
        return args[1]
    return None


def identity_scatters(graph):
    """``graph``, or a copy in which an accumulating ``index_put`` into zeros at the enumeration's indices,
    ``zeros(K, ...).index_put_([arange(K).view(K, 1, ...)], values, accumulate=True)`` (the gradient of
    indexing a parameter by an enumerated site: ``locs[z]``), is ``values`` reshaped: each row is written
    once, so the sum is the values themselves. No scatter left for Inductor to fuse wrongly
    (:func:`fence_accumulating_scatters`), and no kernel split around it."""
    def identity(node):
        if not _accumulates(node):
            return False
        zeros, indices, values = node.args[:3]
        if not (isinstance(zeros, torch.fx.Node) and zeros.target in _ZEROS and len(indices) == 1
                and isinstance(indices[0], torch.fx.Node) and isinstance(values, torch.fx.Node)):
            return False
        out, index, v = (n.meta.get("val") for n in (zeros, indices[0], values))
        if not all(isinstance(t, torch.Tensor) for t in (out, index, v)) or out.dim() == 0:
            return False
        k = _arange_length(indices[0])
        return (k == out.shape[0] == index.numel() and v.dtype == out.dtype
                and tuple(v.shape) == tuple(index.shape) + tuple(out.shape[1:]))

    def reshape(g, node):
        with g.inserting_before(node):
            plain = g.call_function(torch.ops.aten.reshape.default, (node.args[2], list(node.meta["val"].shape)))
        plain.meta = dict(node.meta)
        node.replace_all_uses_with(plain)
        g.erase_node(node)

    return _rewritten(graph, identity, reshape)


def fence_accumulating_scatters(graph):
    """``graph``, or a copy whose accumulating ``index_put`` (the gradient of indexing a tensor with a tensor,
    e.g. ``transition[x]`` with an enumerated ``x``) is :func:`index_put_accumulate`, out of Inductor's
    reach. Inductor (torch 2.13, CPU) fuses such a scatter with a kernel that reads its result, and the
    fused loop reads the buffer before it adds to it: the gradient of the enumerated HMM of Pyro's
    tutorial came out wrong by up to 1.5 (tests/inference/test_potential.py; upstream, the class of
    pytorch#171493)."""
    def fence(g, node):
        node.target, node.args = torch.ops.latent_zoo.index_put_accumulate.default, node.args[:3]

    return _rewritten(graph, _accumulates, fence)


#: the longest cumulative sum or product :func:`unroll_short_scans` writes out
SHORT_SCAN = 16


def unroll_short_scans(graph):
    """``graph``, or a copy whose cumulative sums and products along a short dimension (a stick-breaking
    simplex: K - 1 sticks) are written out as running sums or products of slices. Inductor has no C++ code
    for a scan, so it calls ATen's for each and splits its kernels there; written out, they fuse: fewer
    kernels to compile and to call (benchmarks/README.md, "Routes"). The same operations in the same
    order as ATen's loop, float32 accumulated in float64 as ATen does: the same numbers."""
    scans = {torch.ops.aten.cumsum.default: torch.ops.aten.add.Tensor,
             torch.ops.aten.cumprod.default: torch.ops.aten.mul.Tensor}
    accumulate = {torch.float64: None, torch.int64: None, torch.float32: torch.float64}
    convert = torch.ops.prims.convert_element_type.default

    def dtype(node):   # of the result: ``dtype=``, else the input's (booleans are counted in int64)
        x = node.args[0].meta["val"].dtype
        return node.kwargs.get("dtype") or (torch.int64 if x == torch.bool else x)

    def short(node):
        if node.target not in scans or len(node.args) != 2:
            return False
        x = node.args[0].meta.get("val")
        return (isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[node.args[1]] <= SHORT_SCAN
                and dtype(node) in accumulate)

    def write_out(g, node):
        x, dim = node.args
        result = dtype(node)
        work = accumulate[result] or result
        with g.inserting_before(node):
            running, out = None, []
            for i in range(x.meta["val"].shape[dim]):
                piece = g.call_function(torch.ops.aten.slice.Tensor, (x, dim, i, i + 1))
                if x.meta["val"].dtype != work:
                    piece = g.call_function(convert, (piece, work))
                running = piece if running is None else g.call_function(scans[node.target], (running, piece))
                out.append(running if work == result else g.call_function(convert, (running, result)))
            cat = g.call_function(torch.ops.aten.cat.default, (out, dim))
        cat.meta = dict(node.meta)
        node.replace_all_uses_with(cat)
        g.erase_node(node)

    return _rewritten(graph, short, write_out)


def unvalidated(fn):
    """A shallow copy of distribution ``fn`` (and of the distributions it wraps) with argument
    validation off. Priors built before sampling (``PyroSample``, a module attribute) keep the
    validation they were built with, and a support check is data-dependent control flow, which the
    tracer refuses; the supports are checked by the reference. ``_validate_args`` is private to
    torch.distributions: tests/inference/test_tracing.py fails if it changes."""
    if not isinstance(fn, torch.distributions.Distribution):
        return fn
    fn = copy.copy(fn)
    fn._validate_args = False
    if isinstance(getattr(fn, "base_dist", None), torch.distributions.Distribution):
        fn.base_dist = unvalidated(fn.base_dist)
    return fn


def flatten_data(data):
    """Tensor leaves of ``data`` (a tensor, a tuple/list/dict of tensors and other values, or the
    arguments of a call) and a function rebuilding ``data`` from new leaves: the leaves become inputs of a
    traced graph, so one graph serves new data of the same shapes."""
    if torch.is_tensor(data):
        return [data], lambda leaves: leaves[0]
    if hasattr(data, "args") and hasattr(data, "kwargs"):   # the arguments of a call (inference.inspection.ModelArgs)
        (args, rebuild_args), (kwargs, rebuild_kwargs) = flatten_data(data.args), flatten_data(data.kwargs)
        return args + kwargs, lambda leaves: type(data)(rebuild_args(leaves[:len(args)]),
                                                        rebuild_kwargs(leaves[len(args):]))
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


def on_cpu(leaves) -> bool:
    return all(t.device.type == "cpu" for t in leaves)
