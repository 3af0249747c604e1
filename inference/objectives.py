"""The objectives of variational inference and the importance weights they rest on.

**Importance weights and the IWAE bound.** For an amortized model (every latent site inside the data
plate), :func:`log_weights` gives ``log w[k, n] = log p(x_n, z_kn) - log q(z_kn | x_n)`` for k draws
from the guide, per element of the data plate. From them: the importance-weighted bound of Burda et al.
(2015), ``L_k = sum_n logmeanexp_k log w[k, n]`` (:class:`IWAE`, a differentiable loss that keeps the
plate's N / B subsample scale *outside* the log-mean-exp; Pyro's ``RenyiELBO(alpha=0)`` applies it
inside, which under subsampling is a different and wrong objective), the Monte Carlo ELBO per data
point (:func:`elbo_estimate`), and importance-sampling estimates of log p(x) with the weights'
effective sample size (:func:`importance_estimate`).

**The traced ELBO.** Pyro computes ``Trace_ELBO`` by tracing the guide and the model at every step: a fixed
cost in Python per step whatever the model's size (measured: benchmarks/README.md). For a guide whose sample sites are all reparameterized
(autoguides, the zoo's own guides) and a model without enumerated sites, the surrogate loss is
``log q(z) - log p(x, z)`` at ``z ~ q``, and its value and gradient with respect to every parameter
can be traced once, random draws included, into one ATen graph and compiled by Inductor, exactly
as :mod:`inference.potential` does for NUTS. Inductor is told to draw random numbers with ATen's
generator (``fallback_random``), so a seed gives the same draws with or without compilation.

Minibatches (``subsample=``): the indices the data plate covers are an input of the graph, like the
data and the parameters (:class:`FixedSubsample` puts the traced indices into the plate), so one
trace serves every batch of that size and every epoch's data; a batch of another size (the last
one of an epoch) runs Pyro's ELBO.

The traced loss is checked against Pyro's own ``Trace_ELBO`` (value and every gradient, from the same
random state, on the same batch) before it is used; any other pair, or a pair that fails the check,
keeps Pyro's ELBO, and the log says why.
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
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from pyro.util import get_rng_state, set_rng_state

from inference.potential import compile_graph, flatten_data, has_compiler, trace_graph

log = logging.getLogger(__name__)


# --- importance weights and the IWAE bound --------------------------------------------------------


def log_weights(model, guide, data, num_particles: int, *, max_plate_nesting: int, data_plate: str):
    """Importance log-weights per particle and element of the data plate, shape (k, B).

    ``log w[k, b] = log p(x_b, z_kb) - log q(z_kb | x_b)`` with the guide's draws (particles
    vectorized in a plate left of the model's plates), every site's terms summed over all dims but
    the data plate's, the plate's subsample scale N / B undone. Also returns that scale.
    Every latent site must lie inside the data plate (an amortized model); a global one raises.
    """
    particles = pyro.plate("_particles", num_particles, dim=-1 - max_plate_nesting)
    with particles:
        guide_trace = poutine.trace(guide).get_trace(data)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data)
    ndim = max_plate_nesting + 1
    total, scale = 0.0, 1.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frame = next((f for f in site["cond_indep_stack"] if f.name == data_plate), None)
            if frame is None:
                raise ValueError(f"elbo: the importance-weighted bound needs every site inside the data plate "
                                 f"{data_plate!r}; site {site['name']!r} is outside it (a global latent)")
            scale = frame.full_size / frame.size
            lp = site["log_prob"] / scale
            lp = lp.reshape((1,) * (ndim - lp.dim()) + tuple(lp.shape))
            keep = (0, ndim + frame.dim)
            other = [d for d in range(ndim) if d not in keep]
            if other:  # (sum over an empty dim list would sum everything)
                lp = lp.sum(other, keepdim=True)
            total = total + sign * lp.reshape(lp.shape[0], lp.shape[keep[1]])
    return total.expand(num_particles, -1), scale


class IWAE:
    """The importance-weighted bound as a differentiable loss ``loss(model, guide, data)``: minus
    ``N / B * sum_b logmeanexp_k log w[k, b]`` (see the module docstring); ``differentiable_loss`` is the
    same, named as Pyro's ELBOs name it."""

    def __init__(self, num_particles: int, max_plate_nesting: int, data_plate: str):
        self.num_particles, self.max_plate_nesting, self.data_plate = num_particles, max_plate_nesting, data_plate

    def differentiable_loss(self, model, guide, data):
        log_w, scale = log_weights(model, guide, data, self.num_particles,
                                   max_plate_nesting=self.max_plate_nesting, data_plate=self.data_plate)
        return -scale * (torch.logsumexp(log_w, 0) - math.log(self.num_particles)).sum()

    __call__ = differentiable_loss


#: the objectives of the minibatch trainer (``inference.train``)
OBJECTIVES = ("trace", "iwae")


def make_objective(elbo: str, num_particles: int, max_plate_nesting: int, data_plate: str):
    """The objective: an object whose ``differentiable_loss(model, guide, data)`` is the loss."""
    if elbo == "trace":
        return Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                          max_plate_nesting=max_plate_nesting)
    if elbo == "iwae":
        return IWAE(num_particles, max_plate_nesting, data_plate)
    raise ValueError(f"elbo: expected one of {', '.join(OBJECTIVES)}, got {elbo!r}")


def _chunked_log_weights(model, guide, data, k: int, chunk: int = 500, **kw) -> torch.Tensor:
    """(k, N) log-weights drawn ``chunk`` particles at a time (bounded memory for large k)."""
    return torch.cat([log_weights(model, guide, data, min(chunk, k - first), **kw)[0] for first in range(0, k, chunk)])


def elbo_estimate(model, guide, data, k: int, **kw) -> tuple[list[float], list[float]]:
    """Monte Carlo ELBO per data point, the mean of k log-weights, and its standard error."""
    log_w = _chunked_log_weights(model, guide, data, k, **kw)
    return log_w.mean(0).tolist(), (log_w.std(0) / math.sqrt(k)).tolist()


def importance_estimate(model, proposal, data, k: int, **kw) -> tuple[list[float], list[float]]:
    """Importance-sampling estimate of log p(x) per data point, ``logmeanexp`` of k log-weights drawn
    from ``proposal`` (the IWAE bound L_k when the proposal is the guide), and the weights' effective
    sample size ``(sum w)^2 / sum w^2``."""
    log_w = _chunked_log_weights(model, proposal, data, k, **kw)
    lse = torch.logsumexp(log_w, 0)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * log_w, 0))
    return (lse - math.log(k)).tolist(), ess.tolist()

#: with ``route="auto"``, Inductor compiles the loss for runs of at least this many steps
COMPILE_MIN_STEPS = 1000


class FixedSubsample(Messenger):
    """Make the plate ``name`` cover exactly ``indices`` (it then scales its sites by size / len(indices))."""

    def __init__(self, name: str, indices: torch.Tensor):
        super().__init__()
        self.name, self.indices = name, indices

    def _pyro_sample(self, msg):
        if msg["name"] == self.name and site_is_subsample(msg):
            msg["value"] = self.indices


class _KnownGradient(torch.autograd.Function):
    """A loss value whose gradient with respect to ``params`` was computed with it: ``backward`` hands
    it out, so the optimisation loop is the same whether or not the loss was compiled."""

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
                num_steps: int, route: str = "auto", subsample: tuple[str, torch.Tensor] | None = None,
                compile_min_steps: int = COMPILE_MIN_STEPS, graph_min_steps: int | None = None):
    """Pyro's loss computed by a traced graph, and the route taken: ``(loss_fn, "compiled" | "graph" | "pyro")``.

    Full batch: ``loss_fn()`` stands for ``loss_obj.differentiable_loss(model_fn, guide_fn, data)``.
    Minibatch, ``subsample=(plate name, example indices)``: ``loss_fn(x, indices)`` stands for that loss
    on data ``x`` (of ``data``'s shapes) with the plate fixed to ``indices`` (:class:`FixedSubsample`);
    the indices are a graph input, so any batch of the example's size runs the graph.

    :param route: "auto" ("compiled" for at least ``compile_min_steps`` steps with a C++ compiler and
        the data on the CPU, else "graph" for at least ``graph_min_steps`` steps when given, else
        "pyro"), "compiled", "graph" or "pyro" (Pyro's ELBO at every step).
    """
    if route not in ("auto", "compiled", "graph", "pyro"):
        raise ValueError(f"route: expected 'auto', 'compiled', 'graph' or 'pyro', got {route!r}")
    if route == "auto":
        on_cpu = all(t.device.type == "cpu" for t in flatten_data(data)[0])
        route = ("compiled" if num_steps >= compile_min_steps and has_compiler() and on_cpu
                 else "graph" if graph_min_steps is not None and num_steps >= graph_min_steps else "pyro")
    plate, example = subsample if subsample is not None else (None, None)

    def fixed(fn, indices):
        return FixedSubsample(plate, indices)(fn) if plate is not None else fn

    def pyro_loss(x=data, indices=example):
        return loss_obj.differentiable_loss(fixed(model_fn, indices), fixed(guide_fn, indices), x)

    why = _untraceable(loss_obj, fixed(guide_fn, example), data) if route != "pyro" else "asked for"
    if why:
        log.info("SVI loss: Pyro's %s at every step (%s)", type(loss_obj).__name__, why)
        return pyro_loss, "pyro"
    particles = loss_obj.num_particles

    def value_and_grads(*_):
        with torch.enable_grad():
            loss = reparameterized_elbo_loss(fixed(model_fn, example), fixed(guide_fn, example), data, particles)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        return (loss.detach(), *[g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])

    # the data's tensors and the indices are inputs of the graph (the same objects the closures use), not
    # constants: every batch runs one graph, and Inductor's cache serves another fit of the same shapes
    # (SBC, model choice, the next epoch) without recompiling
    leaves, _ = flatten_data(data)
    batch = [example] if plate is not None else []
    start = time.perf_counter()
    state = get_rng_state()
    try:
        with pyro.validation_enabled(False), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn = trace_graph(value_and_grads, *params, *leaves, *batch)
            if route == "compiled":
                fn = compile_graph(fn, [*(p.detach() for p in params), *leaves, *batch], fallback_random=True,
                                   vectorize=True)   # no enumerated contraction here (TraceEnum keeps Pyro's)
        _check(fn, pyro_loss, params, leaves, batch)
        if plate is not None and len(example) > 1:   # another batch: the indices were not baked into the graph
            _check(fn, lambda: pyro_loss(data, example.flip(0)), params, leaves, [example.flip(0)])
    except Exception as e:  # noqa: BLE001 - a pair that cannot be traced keeps Pyro's ELBO, with the reason
        log.warning("SVI loss: the %s route is not usable for this model and guide (%s: %s); using Pyro's ELBO",
                    route, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return pyro_loss, "pyro"
    finally:
        set_rng_state(state)   # the fit draws the same random numbers whichever route it takes
    log.info("SVI loss: %s route, built in %.1fs", route, time.perf_counter() - start)

    def loss_fn(x=data, indices=example):
        if plate is not None and len(indices) != len(example):
            return pyro_loss(x, indices)   # a batch of another size (an epoch's last): Pyro's ELBO
        inputs = leaves if x is data else flatten_data(x)[0]
        value, *grads = fn(*[p.detach() for p in params], *inputs, *([indices] if plate is not None else []))
        return _KnownGradient.apply(value, tuple(grads), *params)

    return loss_fn, route


def _untraceable(loss_obj, guide_fn, data) -> str:
    """Why the loss of this pair cannot be traced ("" when it can)."""
    if type(loss_obj) is not Trace_ELBO:
        return f"{type(loss_obj).__name__}, not Trace_ELBO"
    if loss_obj.vectorize_particles:
        return "vectorized particles"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = get_rng_state()
        trace = poutine.trace(guide_fn).get_trace(data)
        set_rng_state(state)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site) \
                and not getattr(site["fn"], "has_rsample", False):
            return f"guide site {name!r} is not reparameterized"
    return ""


def _check(fn, pyro_loss, params, leaves, batch) -> None:
    """The traced loss and gradients equal Pyro's from the same random state (to 1e-6 relative, 1e3
    machine epsilons for float32)."""
    state = get_rng_state()
    with torch.enable_grad():
        expected = pyro_loss()
        expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    set_rng_state(state)
    value, *grads = fn(*[p.detach() for p in params], *leaves, *batch)
    eps = max(1e-6, 1e3 * max(torch.finfo(p.dtype).eps for p in params))
    expected = expected.detach()
    if not abs(float(value) - float(expected)) <= eps * max(1.0, abs(float(expected))):
        raise RuntimeError(f"traced loss {float(value)!r} where Pyro's ELBO gives {float(expected)!r}")
    for p, g, e in zip(params, grads, expected_grads):
        e = torch.zeros_like(p) if e is None else e
        scale = max(1.0, float(e.abs().max()))
        if not float((g - e).abs().max()) <= 10 * eps * scale:
            raise RuntimeError(f"traced gradient differs from Pyro's by {float((g - e).abs().max()):.3g}")
