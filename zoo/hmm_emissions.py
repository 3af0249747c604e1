"""The HMM's emission families, one small class each, picked by name from :data:`EMISSIONS`.

As hmmlearn's ``_emissions.py``: the hidden Markov chain is the same for every family, and each
family says, for its own parameters theta (S states; E the shape of one observation; x (N, *E) the
observed steps; V the size of the parameters' last axis)::

    prior(hyper, V, dtype)       the prior of each global site, batch (S,) under plate "states"
    guide(q), guide_params(...)  the mean-field guide factor of each site, and its starting parameters
    dist(p)                      x_t given state-indexed parameters: the model and the simulation
    log_prob(values, params)     log e_t(s) = log p(x_bt | z_bt = s) for every state, (*b, B, T, S)
    density(values, hyper, V)    the same in closed form on unconstrained numpy coordinates (NUTS),
                                 with the family's log prior + log |J| and its gradient, given the
                                 state marginals (the gradient of the forward algorithm)
    m_step(x, w, params)         Baum-Welch's M-step: the closed-form maximizer given weights w (N, S)
    check(observed, mask)        the support of the observations (a clear error naming the step)
    cluster(x, S, V, seed)       k-means starting values; signature(params): what relabelling matches

The simplex coordinates of the closed form (categorical ``emission_probs``, as the chain's rows) are in
:mod:`zoo.hmm_simplex`.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np
import pyro.distributions as dist
import scipy.special
import torch
import torch.nn.functional as F
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints
from torch.distributions.transforms import ExpTransform, SigmoidTransform, identity_transform
from torch.distributions.utils import clamp_probs

from zoo.base import check_setting
from zoo.baselines import kmeans, kmeans_gaussians
from zoo.data import reject
from zoo.hmm_simplex import LogRatioToSimplex, dirichlet_log_ratio, log_simplex

log = logging.getLogger("zoo.hmm")

#: the largest categorical vocabulary accepted (S x V emission probabilities per posterior draw)
MAX_SYMBOLS = 100_000
LOG_2PI = math.log(2 * math.pi)
_POSITIVE = constraints.positive


class Emission:
    """What every family shares; subclasses set the class attributes and the hooks (module docstring)."""

    sites: tuple[str, ...] = ()        # its global sites, after "initial" and "transition"
    event_dim = 0                      # rank of one observation: E = () or (D,)
    param_dim = 1                      # rank of one state's parameters
    axis: str | None = None            # the name of the parameters' last axis (InferenceData dims)
    letter, unit = "V", "keys"         # what the last axis of an observation is called in messages
    symbols = False                    # observations are symbols 0..V-1 (long), not numbers
    support = constraints.nonnegative_integer

    def __init__(self, dim: int | None = None, n_symbols: int | None = None):
        self.dim = check_setting(dim, "dim", kind="int", positive=True, allow_none=True)
        self.n_symbols = check_setting(n_symbols, "n_symbols", kind="int", positive=True, allow_none=True)
        if (self.n_symbols or 0) > MAX_SYMBOLS:
            raise ValueError(f"n_symbols: {self.n_symbols} symbols exceed the limit of {MAX_SYMBOLS}; recode the "
                             "symbols to 0..V-1 with V the number of distinct ones")

    def size(self, x) -> int:
        """V or D, the parameters' last axis, from the observed steps ``x`` (N, *E) or the settings."""
        return x.shape[-1] if x is not None and self.event_dim else self.dim or 1

    def event_shape(self, x) -> tuple[int, ...]:
        return (self.size(x),) if self.event_dim else ()

    def hyperparameters(self, x, dtype, fixed: bool = False) -> tuple:
        """Prior settings from the observed steps ``x`` (empirical Bayes), or fixed without them."""
        return ()

    def at_state(self, params, z):
        """Emission parameters of state ``z`` (any shape; enumerated values welcome)."""
        index = (..., z, slice(None)) if self.param_dim else (..., z)
        return {k: Vindex(params[k])[index] for k in self.sites}

    def log_prob(self, values, params):
        """log p(x_bt | z_bt = s) for every state: values (B, T, *E), params (*b, S, ...) -> (*b, B, T, S)."""
        pos = -2 - self.param_dim                                 # (*b, S, ...) -> (*b, 1, 1, S, ...)
        per_state = {k: params[k].unsqueeze(pos).unsqueeze(pos) for k in self.sites}
        return self.dist(per_state).log_prob(values.unsqueeze(2))  # (B, T, 1, *E) -> (*b, B, T, S)

    def check(self, observed, mask) -> None:
        """A ValueError naming the first observed step (N, *E) outside the support (``zoo.data.reject``)."""

    def features(self, x, V):
        """The observations as numbers to cluster and correlate (categorical symbols one-hot)."""
        return x

    def cluster(self, x, S: int, V: int, seed: int):
        """k-means++ of the observed steps (N, *E): emission parameters per cluster and labels (N,)."""
        dtype = x.dtype if x.is_floating_point() else torch.float64
        features = self.features(x, V).to(dtype).reshape(x.shape[0], -1)
        _, labels = kmeans(features, S, seed=seed)
        hard = F.one_hot(labels, S).to(dtype)                              # (N, S)
        return self.from_counts(hard.T @ features, hard.sum(0).unsqueeze(-1)), labels

    def signature(self, params):
        """Per state: emission mean (..., S, F) and spread (..., S, F), to match states across draws."""
        probs = params["emission_probs"]
        return probs, (probs * (1 - probs)).sqrt().clamp_min(0.05)


class Gaussian(Emission):
    """x_t ~ Normal(locs[z_t], scales[z_t]), diagonal, E = (D,); locs (S, D) ~ Normal(center, 2 spread),
    scales (S, D) ~ LogNormal(log(spread / 2), 1). ``center``, ``spread``: the observed steps' mean and
    sd per feature, or 0 and 1."""

    sites, event_dim, axis, support = ("locs", "scales"), 1, "feature", constraints.real
    letter, unit = "D", "features"

    def hyperparameters(self, x, dtype, fixed=False):
        D = x.shape[-1] if x is not None else self.dim or 1
        if x is None or fixed:
            return torch.zeros(D, dtype=dtype), torch.ones(D, dtype=dtype)
        spread = x.std(0) if x.shape[0] > 1 else torch.ones(D, dtype=dtype)
        return x.mean(0), torch.where(spread > 0, spread, torch.ones_like(spread))

    def prior(self, hyper, V, dtype):
        center, spread = hyper
        return {"locs": dist.Normal(center, 2 * spread).to_event(1),                          # (S, D)
                "scales": dist.LogNormal(spread.log() - math.log(2.0), 1.0).to_event(1)}        # (S, D)

    def guide(self, q):
        return {"locs": dist.Normal(q.q_locs_loc, q.q_locs_scale).to_event(1),
                "scales": dist.LogNormal(q.q_scales_loc, q.q_scales_scale).to_event(1)}

    def guide_params(self, emission, visits):
        locs, scales = emission["locs"], emission["scales"]
        return {"q_locs_loc": PyroParam(locs), "q_locs_scale": PyroParam(scales / visits.sqrt(), _POSITIVE),
                "q_scales_loc": PyroParam(scales.log()),
                "q_scales_scale": PyroParam((2 * visits).rsqrt().expand_as(scales).clone(), _POSITIVE)}

    def dist(self, p):
        return dist.Normal(p["locs"], p["scales"]).to_event(1)

    def density(self, values, hyper, V):
        x = values.astype(np.float64)
        center, spread = hyper

        def fn(u):
            locs, log_scales = u["locs"], u["scales"]                                      # (S, D) each
            z = (x[:, :, None, :] - locs) / np.exp(log_scales)                            # (B, T, S, D)
            log_e = (-0.5 * z**2 - log_scales).sum(-1) - 0.5 * z.shape[-1] * LOG_2PI       # (B, T, S)

            def prior(gamma):
                prior_scale, mean = 2 * spread, np.log(spread) - math.log(2.0)
                value = (-0.5 * ((locs - center) / prior_scale) ** 2 - np.log(prior_scale) - 0.5 * LOG_2PI).sum()
                value += (-0.5 * (log_scales - mean) ** 2 - 0.5 * LOG_2PI).sum()
                return value, {"locs": -(locs - center) / prior_scale**2
                               + np.einsum("bts,btsd->sd", gamma, z) / np.exp(log_scales),
                               "scales": -(log_scales - mean) + np.einsum("bts,btsd->sd", gamma, z**2 - 1)}
            return log_e, prior
        return {"locs": identity_transform, "scales": ExpTransform()}, fn

    def m_step(self, x, w, params):
        mean, sums, n = _weighted_mean(x, w)
        var = (w.T @ x**2 - 2 * mean * sums + mean**2 * n.unsqueeze(-1)) / n.clamp_min(1e-300).unsqueeze(-1)
        floor = 1e-6 * self.hyperparameters(x, x.dtype)[1] ** 2
        return {"locs": mean, "scales": torch.maximum(var, floor).sqrt()}

    def cluster(self, x, S, V, seed):
        locs, scales, _ = kmeans_gaussians(x, S, self.hyperparameters(x, x.dtype)[1], seed=seed)
        labels = dist.Normal(locs, scales).log_prob(x.unsqueeze(-2)).sum(-1).argmax(-1)   # the likeliest state
        return {"locs": locs, "scales": scales}, labels

    def signature(self, params):
        locs, scales = params["locs"], params["scales"]
        return torch.cat([locs, scales.log()], -1), torch.cat([scales, torch.ones_like(scales)], -1)


class Categorical(Emission):
    """x_t ~ Categorical(emission_probs[z_t]), E = (); emission_probs (S, V) ~ Dirichlet(1_V)."""

    sites, axis, symbols = ("emission_probs",), "symbol", True

    def size(self, x):
        if self.n_symbols is not None:
            return self.n_symbols
        if x is None:
            raise ValueError("n_symbols: the vocabulary size is needed to simulate categorical emissions")
        return int(x.max()) + 1

    def prior(self, hyper, V, dtype):
        return {"emission_probs": dist.Dirichlet(torch.ones(V, dtype=dtype))}                   # (S, V)

    def guide(self, q):
        return {"emission_probs": dist.Dirichlet(q.q_emission_probs)}

    def guide_params(self, emission, visits):
        return {"q_emission_probs": PyroParam(emission["emission_probs"] * visits + 1, _POSITIVE)}

    def dist(self, p):
        return dist.Categorical(p["emission_probs"])

    def density(self, values, hyper, V):
        x = values.astype(np.int64)
        one_hot = np.eye(V)[x]                                                             # (B, T, V)

        def fn(u):
            log_probs = log_simplex(u["emission_probs"])                                  # (S, V)

            def prior(gamma):
                grad = {}
                counts = np.einsum("bts,btv->sv", gamma, one_hot)                         # (S, V)
                return dirichlet_log_ratio(log_probs, 1 + counts, grad, "emission_probs"), grad
            return log_probs.T[x], prior                                                   # (B, T, S)
        return {"emission_probs": LogRatioToSimplex()}, fn

    def m_step(self, x, w, params):
        return {"emission_probs": _weighted_mean(F.one_hot(x, params["emission_probs"].shape[-1]).to(w.dtype), w)[0]}

    def check(self, observed, mask):
        reject((observed != observed.round()) | (observed < 0), observed, mask,
               "categorical symbols must be integers 0..V-1")
        if self.n_symbols is not None:
            reject(observed >= self.n_symbols, observed, mask,
                   f"symbol outside the vocabulary 0..{self.n_symbols - 1} (n_symbols={self.n_symbols})")
        V = self.size(observed)
        if V > MAX_SYMBOLS:
            raise ValueError(f"data: the largest symbol {V - 1} implies a vocabulary of {V} symbols, more than "
                             f"{MAX_SYMBOLS}; recode the symbols to 0..V-1 with V the number of distinct ones")
        if V > len(observed):
            _warn_vocabulary(V, len(observed))

    def features(self, x, V):
        return F.one_hot(x, V)

    def from_counts(self, sums, n):
        return {"emission_probs": (sums + 1) / (n + sums.shape[-1])}


class Poisson(Emission):
    """x_t ~ Poisson(rates[z_t]), E = (); rates (S,) ~ LogNormal(log mean, 1.5), ``mean`` the observed
    steps' mean count (at least 0.1), or 1."""

    sites, param_dim = ("rates",), 0

    def hyperparameters(self, x, dtype, fixed=False):
        return (torch.tensor(1.0, dtype=dtype) if x is None or fixed else x.mean().clamp_min(0.1),)

    def prior(self, hyper, V, dtype):
        return {"rates": dist.LogNormal(hyper[0].log(), 1.5)}                                   # (S,)

    def guide(self, q):
        return {"rates": dist.LogNormal(q.q_rates_loc, q.q_rates_scale)}

    def guide_params(self, emission, visits):
        rates = emission["rates"]
        return {"q_rates_loc": PyroParam(rates.log()),
                "q_rates_scale": PyroParam((rates * visits.squeeze(-1)).rsqrt(), _POSITIVE)}

    def dist(self, p):
        return dist.Poisson(p["rates"])

    def density(self, values, hyper, V):
        x = values.astype(np.float64)
        log_factorial = scipy.special.gammaln(x + 1)[..., None]                            # (B, T, 1)
        mean, sd = np.log(hyper[0]), 1.5

        def fn(u):
            log_rates = u["rates"]                                                         # (S,)

            def prior(gamma):
                value = (-0.5 * ((log_rates - mean) / sd) ** 2 - math.log(sd) - 0.5 * LOG_2PI).sum()
                return value, {"rates": -(log_rates - mean) / sd**2 + np.einsum("bts,bt->s", gamma, x)
                               - gamma.sum((0, 1)) * np.exp(log_rates)}
            return x[..., None] * log_rates - np.exp(log_rates) - log_factorial, prior     # (B, T, S)
        return {"rates": ExpTransform()}, fn

    def m_step(self, x, w, params):
        return {"rates": _weighted_mean(x.unsqueeze(-1), w)[0].squeeze(-1)}

    def check(self, observed, mask):
        reject((observed != observed.round()) | (observed < 0), observed, mask,
               "Poisson counts must be non-negative integers")

    def from_counts(self, sums, n):
        return {"rates": ((sums + 0.5) / (n + 1)).squeeze(-1)}

    def signature(self, params):
        rates = params["rates"].unsqueeze(-1)
        return rates, rates.sqrt().clamp_min(0.05)


class Bernoulli(Emission):
    """x_t ~ Bernoulli(emission_probs[z_t]) per key (multi-hot), E = (V,); emission_probs (S, V) ~ Beta(1, 1)."""

    sites, event_dim, axis = ("emission_probs",), 1, "feature"

    def prior(self, hyper, V, dtype):
        return {"emission_probs": dist.Beta(torch.ones(V, dtype=dtype), 1.0).to_event(1)}         # (S, V)

    def guide(self, q):
        return {"emission_probs": dist.Beta(q.q_emission_a, q.q_emission_b).to_event(1)}

    def guide_params(self, emission, visits):
        p = emission["emission_probs"]
        return {"q_emission_a": PyroParam(p * visits + 1, _POSITIVE),
                "q_emission_b": PyroParam((1 - p) * visits + 1, _POSITIVE)}

    def dist(self, p):
        return dist.Bernoulli(p["emission_probs"]).to_event(1)

    def log_prob(self, values, params):   # one matmul over keys instead of a (.., S, V) tensor
        p = clamp_probs(params["emission_probs"])                                   # (*b, S, V)
        weights = (p.log() - (-p).log1p()).unsqueeze(-3).transpose(-1, -2)         # (*b, 1, V, S)
        return values @ weights + (-p).log1p().sum(-1)[..., None, None, :]

    def density(self, values, hyper, V):
        x = values.astype(np.float64)

        def fn(u):
            logits = u["emission_probs"]                                                   # (S, V)
            log_p, log_q = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)            # log p, log(1 - p)

            def prior(gamma):   # Beta(1, 1) = 1: only log |J| = log p + log(1 - p)
                p = np.exp(log_p)
                return (log_p + log_q).sum(), {"emission_probs": 1 - 2 * p + np.einsum("bts,btv->sv", gamma, x)
                                               - gamma.sum((0, 1))[:, None] * p}
            return x @ log_p.T + (1 - x) @ log_q.T, prior                                  # (B, T, S)
        return {"emission_probs": SigmoidTransform()}, fn

    def m_step(self, x, w, params):
        return {"emission_probs": _weighted_mean(x, w)[0]}

    def check(self, observed, mask):
        reject((observed != 0) & (observed != 1), observed, mask, "Bernoulli observations must be 0 or 1")

    def from_counts(self, sums, n):
        return {"emission_probs": (sums + 0.5) / (n + 1)}


EMISSIONS: dict[str, type[Emission]] = {"gaussian": Gaussian, "categorical": Categorical, "poisson": Poisson,
                                        "bernoulli": Bernoulli}


def _weighted_mean(x, w):
    """Per state: the w-weighted mean of the rows of x (N, F), the weighted sums (S, F), the weights (S,)."""
    sums, n = w.T @ x, w.sum(0)
    return sums / n.clamp_min(1e-300).unsqueeze(-1), sums, n


@functools.lru_cache(maxsize=None)   # once per (V, N), although data are validated at several stages
def _warn_vocabulary(V: int, N: int) -> None:
    log.warning("vocabulary of %d symbols is larger than the %d observed steps: most emission probabilities are "
                "set by the prior alone (recode the symbols to 0..V-1?)", V, N)
