"""Init strategies that work for every prior: Pyro's ``init_to_uniform`` and ``init_to_median`` with a
fallback for priors that cannot be sampled (``ImproperUniform``), and prior draws with the same fallback."""

from __future__ import annotations

import torch
from pyro.infer.autoguide.initialization import init_to_median
from torch.distributions import transform_to


def init_to_uniform_any(site=None, radius: float = 2.0):
    """Pyro's ``init_to_uniform`` (uniform in (-radius, radius) on the unconstrained scale) that also
    works for priors that cannot be sampled, such as ``ImproperUniform``; discrete sites are sampled."""
    if site is None:
        return init_to_uniform_any
    fn = site["fn"]
    if fn.support.is_discrete:
        return fn.sample().detach()
    t = transform_to(fn.support)
    try:
        prototype = fn.sample().detach()
        shape, dtype = t.inv(prototype).shape, prototype.dtype   # the model's dtype, not the default
    except NotImplementedError:
        shape, dtype = t.inverse_shape(fn.batch_shape + fn.event_shape), torch.get_default_dtype()
    value = t(torch.rand(shape, dtype=dtype) * (2 * radius) - radius).detach()
    value._pyro_custom_init = False
    return value


def sample_or_uniform(site=None):
    """A prior draw, or :func:`init_to_uniform_any` for a prior that cannot be sampled."""
    if site is None:
        return sample_or_uniform
    try:
        return site["fn"].sample().detach()
    except NotImplementedError:
        return init_to_uniform_any(site)


def init_to_median_any(site=None):
    """Pyro's ``init_to_median``, falling back to :func:`init_to_uniform_any` where it cannot sample."""
    if site is None:
        return init_to_median_any
    try:
        return init_to_median(site, fallback=None)
    except (NotImplementedError, ValueError):
        return init_to_uniform_any(site)
