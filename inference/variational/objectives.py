"""The objectives of variational inference and the importance weights they rest on.

**Importance weights and the IWAE bound.** For an amortized model (every latent site inside the data
plate), :func:`log_weights` gives ``log w[k, n] = log p(x_n, z_kn) - log q(z_kn | x_n)`` for k draws
from the guide, per element of the data plate. From them: the importance-weighted bound of Burda et al.
(2015), ``L_k = sum_n logmeanexp_k log w[k, n]`` (:class:`IWAE`, a differentiable loss that keeps the
plate's N / B subsample scale *outside* the log-mean-exp; Pyro's ``RenyiELBO(alpha=0)`` applies it
inside, which under subsampling is a different and wrong objective), the Monte Carlo ELBO per data
point (:func:`elbo_estimate`), and importance-sampling estimates of log p(x) with the weights'
effective sample size (:func:`importance_estimate`).

The traced ``Trace_ELBO`` of a reparameterized guide is :mod:`inference.variational.traced_loss`.
"""

from __future__ import annotations

import logging
import math

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


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


#: the objectives of the minibatch trainer (``inference.variational.train``)
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

class FixedSubsample(Messenger):
    """Make the plate ``name`` cover exactly ``indices`` (it then scales its sites by size / len(indices))."""

    def __init__(self, name: str, indices: torch.Tensor):
        super().__init__()
        self.name, self.indices = name, indices

    def _pyro_sample(self, msg):
        if msg["name"] == self.name and site_is_subsample(msg):
            msg["value"] = self.indices
