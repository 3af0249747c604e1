"""Did the guide work? Pareto-smoothed importance sampling of an SVI posterior against the model.

Guide draws ``z_s ~ q`` carry importance ratios ``r_s = p(x, z_s) / q(z_s)``, proportional to
``p(z_s | x) / q(z_s)``. Their log values (:func:`log_ratios`) answer three questions:

- **k-hat** (Yao, Vehtari, Simpson, Gelman 2018, "Yes, but did it work?"): the shape of a generalized
  Pareto distribution fitted to the largest ratios (``az.psislw``). Below 0.5 the guide is close to the
  posterior and importance sampling converges fast; 0.5-0.7 usable with care; above 0.7 the guide misses
  posterior mass (too narrow, wrong correlations, missed modes): its sds are not to be trusted and
  reweighting cannot repair it.
- **reweighted draws** (:func:`reweighted`): where k-hat < 0.7, the PSIS weights turn guide draws into
  (weighted, here resampled) posterior draws: an improved posterior;
- **LOO corrected for the guide** (Magnusson, Andersen, Jonasson, Vehtari 2019): PSIS-LOO weights
  ``p(z | x_-i) / q(z)`` are ``r_s / p(x_i | z_s)``; :func:`loo_corrected` smooths those instead of
  ``1 / p(x_i | z_s)``, so SVI and NUTS rows of one table estimate the same elpd.

``log p(x, z)`` is the log joint of the form the guide fits (``Target.fits_marginal``: the marginal form
for zoo models whose guide covers only the global sites), enumerated sites summed out, evaluated by
:class:`inference.potential.Potential` (one trace per draw, Pyro's own contraction). ``log q(z)`` is
recorded when the draws are taken (``Posterior.log_q``).
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pyro
import torch

from inference import azcompat
from inference.posterior import Posterior
from inference.potential import Potential
from inference.thresholds import KHAT_MAX

log = logging.getLogger(__name__)

def log_ratios(posterior) -> np.ndarray | None:
    """``log p(x, z_s) - log q(z_s)`` per draw, shape (chain, draw), cached on the posterior; None (with
    the reason logged once) when the posterior holds no guide densities or the draws do not cover the
    latent sites of the form the guide fits."""
    cached = getattr(posterior, "_log_ratios", False)
    if cached is not False:
        return cached
    posterior._log_ratios = value = _log_ratios(posterior)
    return value


def _log_ratios(posterior) -> np.ndarray | None:
    if posterior.log_q is None:
        return None
    target, data = posterior.target, posterior.data
    try:
        marginal = set(posterior.samples) == set(target.info(data, marginal=True).latent) and \
            target.marginal_fn != target.model_fn
        info = target.info(data, marginal=marginal)
        with target.scope(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            potential = Potential(target.form(marginal), data, max_plate_nesting=info.max_plate_nesting,
                                  route="eager")   # Pyro's trace per draw: no build, any model
            missing = set(potential.names) - set(posterior.samples)
            if missing:
                raise ValueError(f"the draws hold no value of latent site(s) {sorted(missing)}")
            C, S = posterior.num_chains, posterior.num_draws
            flat = {k: posterior.samples[k].reshape(C * S, *posterior.samples[k].shape[2:]) for k in potential.names}
            log_p = np.empty(C * S)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)   # one draw at a time, tiny tensors: a thread pool only contends
            try:
                with torch.no_grad(), pyro.validation_enabled(False):
                    for i in range(C * S):
                        theta = torch.from_numpy(potential.flatten({k: v[i] for k, v in flat.items()}))
                        log_p[i] = potential(theta.numpy())[0] - _log_jacobian(potential, theta.to(potential.dtype))
            finally:
                torch.set_num_threads(threads)
    except Exception as e:  # noqa: BLE001 - no ratios: the diagnosis says so instead
        log.warning("k-hat: not computed for this posterior (%s)", str(e).splitlines()[0][:200] if str(e) else e)
        return None
    ratios = log_p.reshape(C, S) - posterior.log_q
    return ratios if np.isfinite(ratios).any() else None


def _log_jacobian(potential, theta: torch.Tensor) -> float:
    """log |det J| of the map from ``theta`` (unconstrained) to the sites' values."""
    total = 0.0
    for k, u in potential.unflatten(theta).items():
        t = potential.transforms[k]
        total += float(t.log_abs_det_jacobian(u, t(u)).sum())
    return total


def psis(posterior) -> tuple[np.ndarray, float] | None:
    """PSIS of the guide draws: ``(normalized smoothed log weights (chain*draw,), k-hat)``, or None."""
    ratios = log_ratios(posterior)
    if ratios is None:
        return None
    flat = ratios.reshape(-1)
    flat = np.where(np.isfinite(flat), flat, -np.inf)
    lw, k = azcompat.psislw(flat - flat[np.isfinite(flat)].max())
    return lw, float(k)


def khat(posterior) -> float | None:
    """Pareto k-hat of the guide's importance ratios (module docstring), or None when not computable."""
    result = psis(posterior)
    return None if result is None else result[1]


def reweighted(posterior, *, seed: int = 0, num_draws: int | None = None):
    """The posterior improved by PSIS: its draws resampled (with replacement) in proportion to their smoothed
    importance weights, as a new :class:`~inference.Posterior` (method ``"svi+psis"``). Refused with a
    ValueError where k-hat >= 0.7 (the weights cannot be trusted) or cannot be computed."""
    result = psis(posterior)
    if result is None:
        raise ValueError("posterior: no importance ratios (an SVI posterior with the guide's densities is needed)")
    lw, k = result
    if not k < KHAT_MAX:
        raise ValueError(f"posterior: Pareto k-hat {k:.2f} >= {KHAT_MAX}: the guide misses the posterior and "
                         "reweighting cannot repair it; use NUTS or a richer guide")
    n = num_draws or lw.size
    rng = np.random.default_rng(seed)
    index = torch.from_numpy(rng.choice(lw.size, size=n, replace=True, p=np.exp(lw - np.logaddexp.reduce(lw))))
    samples = {name: v.reshape(-1, *v.shape[2:])[index].unsqueeze(0) for name, v in posterior.samples.items()}
    return Posterior(posterior.target, posterior.data, samples, method="svi+psis", wall_time=posterior.wall_time,
                     losses=posterior.losses, guide=posterior.guide, coords=posterior.coords,
                     settings={**posterior.settings, "khat": round(k, 3), "psis_ess": round(ess(lw), 1)})


def ess(log_weights: np.ndarray) -> float:
    """Effective sample size of normalized log weights, 1 / sum w^2."""
    return float(np.exp(-np.logaddexp.reduce(2 * (log_weights - np.logaddexp.reduce(log_weights)))))


def loo_corrected(log_likelihood: np.ndarray, ratios: np.ndarray, *, scale: str = "log"):
    """PSIS-LOO of draws from an approximation q (Magnusson et al. 2019): ``log_likelihood`` (draws, points),
    ``ratios`` the log importance ratios log p(x, z) - log q(z) of the same draws. The leave-one-out
    weights are ``ratios - log_likelihood[:, i]``, Pareto-smoothed per point; the lppd behind ``p_loo``
    is the posterior (ratio-weighted) one. Returns an ``az.ELPDData`` as ``az.loo(pointwise=True)`` does."""
    ll = np.asarray(log_likelihood, dtype=float)
    r = np.asarray(ratios, dtype=float).reshape(-1)
    r = r - r.max()
    n_samples, n_points = ll.shape
    lw, k = azcompat.psislw((r[:, None] - ll).T)     # (points, draws)
    post_lw, _ = azcompat.psislw(r)                   # the full-data posterior weights
    loo_i = np.logaddexp.reduce(lw + ll.T, axis=1)
    lppd = float(np.logaddexp.reduce(post_lw[:, None] + ll, axis=0).sum())
    factor = {"log": 1.0, "negative_log": -1.0, "deviance": -2.0}[scale]
    elpd = float(loo_i.sum())
    good_k = min(1 - 1 / math.log10(n_samples), KHAT_MAX)
    return azcompat.elpd_data(elpd=factor * elpd, se=abs(factor) * float(np.sqrt(n_points * np.var(loo_i))),
                              p_loo=lppd - elpd, n_samples=n_samples, loo_i=factor * loo_i, pareto_k=k, scale=scale,
                              good_k=good_k)
