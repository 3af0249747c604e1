"""The guides of ``fit_svi``: Pyro's autoguides by name (``GUIDES``) or the model's own, and the start of a
Gaussian autoguide at the mode of the model's log density when that is better than the prior median
(:func:`map_start`)."""

from __future__ import annotations

import logging
import math
import warnings

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import (
    AutoDelta,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)
from pyro.infer.autoguide.initialization import InitMessenger

from inference.initialization import init_to_median_any
from inference.inspection import refuse_discrete
from inference.potential import Potential
from inference.target import Target

log = logging.getLogger(__name__)


GUIDES = {
    "delta": AutoDelta,                 # MAP
    "normal": AutoNormal,               # mean-field Gaussian
    "mvn": AutoMultivariateNormal,      # full-rank Gaussian
    "iaf": AutoIAFNormal,               # inverse autoregressive flow
}


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
