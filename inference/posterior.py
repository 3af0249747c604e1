"""Posterior: the draws of one inference run and everything derived from them.

``samples`` holds tensors of shape ``(chain, draw, *site_shape)``. ``idata`` is an ArviZ
InferenceData built with ``az.from_dict`` (:mod:`inference.azcompat`) with groups

- ``posterior``: every sampled latent site (local ones too), the ``pyro.deterministic`` sites, and
  the model's identifiable quantities (``align``: relabeled mixtures, derived quantities), with
  named dims and coords;
- ``log_likelihood``: one variable per observed site (the model's own ``log_likelihood``: discrete
  latents summed out, local continuous latents integrated out where the model can), one value per
  element of the site's data plate (per batch element for a site outside any plate);
- ``posterior_predictive`` (replicated data from up to ``max_predictive_draws`` draws),
  ``observed_data`` (the observed sites' values), and ``sample_stats`` (``diverging`` and friends
  for NUTS).
"""

from __future__ import annotations

import logging
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide.initialization import InitMessenger

from inference.azcompat import from_dict
from inference.initialization import sample_or_uniform
from inference.target import Target, num_observations

log = logging.getLogger(__name__)


class Posterior:
    """Draws from one run of SVI, MAP, NUTS (or a classical baseline such as EM)."""

    max_predictive_draws = 500
    max_predictive_values = 5_000_000   # and at most this many replicated values in all (large data sets)

    def __init__(self, target: Target, data, samples: Mapping[str, torch.Tensor], *, method: str,
                 wall_time: float, sample_stats: Mapping[str, np.ndarray] | None = None,
                 losses: list[float] | None = None, guide=None, coords: Mapping[str, list] | None = None,
                 dims: Mapping[str, list[str]] | None = None, settings: Mapping[str, Any] | None = None,
                 adaptation: Mapping[str, np.ndarray] | None = None, log_q: np.ndarray | None = None):
        self.target = target
        self.data = data
        self.samples = {k: v.detach() for k, v in samples.items()}
        self.method = method
        self.wall_time = float(wall_time)
        self.sample_stats = dict(sample_stats or {})
        self.losses = list(losses or [])
        self.guide = guide
        self.coords = dict(coords or {})
        self.dims = {**target.dims, **(dims or {})}   # the model's, then the caller's (as az.from_pyro's dims)
        self.settings = dict(settings or {})
        self.adaptation = dict(adaptation or {})   # what a sampler's warmup adapted (NUTS: step_size, inverse_metric)
        #: log density of each draw under the guide that drew it, (chain, draw) (SVI); None otherwise
        self.log_q = None if log_q is None else np.asarray(log_q, dtype=float)

    @classmethod
    def point(cls, model, data, params: Mapping[str, torch.Tensor], *, method: str, wall_time: float,
              **kwargs) -> "Posterior":
        """A one-draw posterior holding a point estimate (MAP, EM, maximum likelihood)."""
        target = model if isinstance(model, Target) else Target(model)
        samples = {k: torch.as_tensor(v).reshape(1, 1, *torch.as_tensor(v).shape) for k, v in params.items()}
        return cls(target, data, samples, method=method, wall_time=wall_time, **kwargs)

    def __repr__(self) -> str:
        return (f"Posterior(method={self.method!r}, model={self.target.name!r}, chains={self.num_chains}, "
                f"draws={self.num_draws}, wall_time={self.wall_time:.1f}s)")

    # --- shapes ------------------------------------------------------------------------------
    # A model without latent draws to keep (an amortized model: only local latents) is one point,
    # its fitted parameters: 1 chain x 1 draw.
    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0] if self.samples else 1

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1] if self.samples else 1

    @property
    def model(self):
        """The (fitted) model object: a zoo model or the plain callable."""
        return self.target.source

    @cached_property
    def global_samples(self) -> dict[str, torch.Tensor]:
        return {k: self.samples[k] for k in self.target.global_sites(self.data) if k in self.samples}

    @cached_property
    def alignment(self) -> dict[str, torch.Tensor]:
        """The model's ``align`` output including its frame of reference (``alignment_frame``): what
        another posterior of the same model is aligned to (``align(draws, reference=post.alignment)``)."""
        return self.target.align(self.global_samples, with_frame=True)

    @cached_property
    def aligned(self) -> dict[str, torch.Tensor]:
        """Identifiable quantities (model's ``align``), shape ``(chain, draw, ...)`` each."""
        frame = set(self.target.frame_keys)
        return {k: v for k, v in self.alignment.items() if k not in frame}

    def flat(self, name: str) -> torch.Tensor:
        """Draws of a sample site or aligned quantity with chains concatenated: ``(chain*draw, ...)``."""
        x = self.aligned[name] if name in self.aligned else self.samples[name]
        return x.reshape(-1, *x.shape[2:])

    def mean(self, aligned: bool = True) -> dict[str, torch.Tensor]:
        src = self.aligned if aligned else self.global_samples
        return {k: v.mean((0, 1)) for k, v in src.items()}

    # --- derived groups ----------------------------------------------------------------------
    @cached_property
    def pointwise(self) -> dict[str, torch.Tensor]:
        """Pointwise log-likelihood of the fitted data per observed site, ``{site: (chain, draw, *points)}``."""
        return self.pointwise_of(self.data)

    def pointwise_of(self, data) -> dict[str, torch.Tensor]:
        """Pointwise log-likelihood of ``data`` (validated) per observed site under every draw."""
        ll = self.target.log_likelihood(data, self.samples)
        # one value per point, the same under every draw (an amortized model's estimate, which depends
        # on no draw of a global site, or a point estimate): repeated over (chain, draw)
        return {k: v.expand(self.num_chains, self.num_draws, *v.shape) if v.dim() == 1 or not self.samples
                else v.reshape(self.num_chains, self.num_draws, *v.shape[2:]) for k, v in ll.items()}

    @cached_property
    def log_likelihood(self) -> torch.Tensor:
        """Pointwise log-likelihood of the fitted data, (chain, draw, N): see :meth:`log_likelihood_of`."""
        return _joint(self.pointwise)

    def log_likelihood_of(self, data) -> torch.Tensor:
        """Pointwise log-likelihood of ``data`` (validated) under every draw, (chain, draw, N): one observed
        site's points; with several, their sum when they share the points (one data plate), else all
        their points one after the other."""
        return _joint(self.pointwise_of(data))

    @cached_property
    def deterministic(self) -> dict[str, torch.Tensor]:
        """``pyro.deterministic`` sites of the sampled form at every draw: ``{site: (chain, draw, ...)}``."""
        explicit = set(self.target.info(self.data).latent) <= set(self.samples)
        info = self.target.info(self.data, marginal=not explicit)
        if not info.deterministic:
            return {}
        form = self.target.form(not explicit)
        C, S = self.num_chains, self.num_draws
        flat = {k: v.reshape(C * S, *v.shape[2:]) for k, v in self.samples.items()}
        out: dict[str, list[torch.Tensor]] = {k: [] for k in info.deterministic}
        with self.target.scope(), torch.no_grad(), pyro.poutine.seed(rng_seed=0):
            for i in range(C * S):
                trace = pyro.poutine.trace(pyro.poutine.condition(form, data={k: v[i] for k, v in flat.items()}))
                nodes = trace.get_trace(self.data).nodes
                for k in out:
                    out[k].append(nodes[k]["value"])
        return {k: torch.stack(v).reshape(C, S, *v[0].shape) for k, v in out.items()}

    def posterior_predictive(self, max_draws: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """Replicated observations for evenly thinned draws: ``{site: (chain, draw', *data_shape)}``."""
        max_draws = max_draws or self.max_predictive_draws
        info = self.target.info(self.data, marginal=True)
        per_draw = max(1, sum(v.numel() for v in self.target.observed_values(self.data).values()))
        keep = min(max_draws, self.max_predictive_values // per_draw) // max(1, self.num_chains)
        keep = max(1, min(self.num_draws, keep))
        idx = torch.linspace(0, self.num_draws - 1, keep).round().long()
        draws = {k: v[:, idx].reshape(-1, *v.shape[2:]) for k, v in self.samples.items() if k in info.latent}
        with self.target.scope(), pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            # uncondition: the observed sites are drawn afresh, not copied from the data; InitMessenger:
            # improper priors get no prior draws
            model = InitMessenger(sample_or_uniform)(pyro.poutine.uncondition(self.target.marginal_fn))
            pred = Predictive(model, posterior_samples=draws, num_samples=None if draws else 1,
                              return_sites=list(info.observed))(self.data)
        return {k: v.reshape(self.num_chains, keep, *v.shape[1:]) for k, v in pred.items()}

    def predictive_log_density(self, data) -> torch.Tensor:
        """Log predictive density of (held-out) ``data`` per data point, log mean_s p(data_n | draw s): (N,).
        ``data`` that is the fitted data itself reuses the pointwise log-likelihood of ``idata``."""
        ll = self.log_likelihood if data is self.data else self.log_likelihood_of(self.target.validate(data))
        flat = ll.reshape(-1, ll.shape[-1])
        return torch.logsumexp(flat, 0) - math.log(flat.shape[0])

    @cached_property
    def idata(self):
        """ArviZ InferenceData (see the module docstring)."""
        info = self.target.info(self.data, marginal=True)
        dims = dict(self.dims)
        for site, plate in (info.plates or {}).items():   # dims are cut to each variable's rank
            if plate is not None:
                dims.setdefault(site, [plate[0]])
        for name in self.pointwise:   # a variable of several sites (y+x_lik): its first site's plate
            plate = (info.plates or {}).get(name.split("+")[0])
            if plate is not None:
                dims.setdefault(name, [plate[0]])
        posterior = {**self.samples, **self.deterministic, **self.aligned}
        groups: dict[str, Any] = {
            "posterior": {k: to_numpy(v) for k, v in posterior.items()},
            "log_likelihood": {k: to_numpy(v) for k, v in self.pointwise.items()},
        }
        try:
            groups["posterior_predictive"] = {k: to_numpy(v) for k, v in self.posterior_predictive().items()}
        except Exception as e:  # a model that cannot replicate its data still gets the other groups
            log.warning("posterior predictive skipped: %s", e)
        groups["observed_data"] = {k: to_numpy(v) for k, v in self.target.observed_values(self.data).items()}
        if self.sample_stats:
            groups["sample_stats"] = {k: np.asarray(v) for k, v in self.sample_stats.items()}
        attrs = {"inference_method": self.method, "model": self.target.name, "wall_time_s": self.wall_time,
                 **{f"setting_{k}": str(v) for k, v in self.settings.items()}}
        coords = {**self.target.coords(self.data), **self.coords}
        return from_dict(groups, coords=coords, dims=dims, attrs=attrs)

    def element_label(self, name: str, index: tuple) -> str:
        """ArviZ-style label of one scalar element, with coordinate names: ``locs[0, petal_length_cm]``."""
        if not index:
            return name
        dims = self.dims.get(name, [])
        coords = {**self.target.coords(self.data), **self.coords}
        parts = []
        for pos, j in enumerate(index):
            values = coords.get(dims[pos]) if pos < len(dims) else None
            parts.append(str(values[j]) if values is not None and j < len(values) else str(j))
        return f"{name}[{', '.join(parts)}]"

    def quantities_idata(self, quantities: Mapping[str, torch.Tensor] | None = None):
        """A posterior-only InferenceData of identifiable quantities (default ``aligned``): cheap,
        for summaries and plots that need no log-likelihood or predictive draws."""
        quantities = self.aligned if quantities is None else quantities
        return from_dict({"posterior": {k: to_numpy(v) for k, v in quantities.items()}},
                          coords={**self.target.coords(self.data), **self.coords}, dims=self.dims,
                          attrs={"inference_method": self.method})

    def to_netcdf(self, path, *, overwrite: bool = False) -> Path:
        """Write ``idata`` to a netCDF file; refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"path: {str(path)!r} exists; pass overwrite=True to replace it")
        self.idata.to_netcdf(str(path))
        return path


def heldout(posterior: Posterior, splits: Mapping[str, Any]) -> pd.DataFrame:
    """Held-out scores of ``posterior`` on every split ``{name: data}`` (e.g. a dataset's valid and test
    splits): one row per split with the data points, the observations they hold (time steps for
    sequences: ``inference.target.num_observations``), the total log predictive density ``lpd`` (sum
    over points of log mean_s p(x_n | draw s)), ``nll_per_observation`` = -lpd / observations, and its
    standard error over data points, sd(lpd_n) sqrt(N) / observations (NaN for one point). For an
    amortized model's one-point posterior lpd_n is the model's own estimate of log p(x_n) (the VAE's
    importance-sampled bound). ``attrs["csv"]`` names the report file, ``heldout.csv``."""
    rows = {}
    for split, data in splits.items():
        lpd = posterior.predictive_log_density(data).double()
        n_obs = num_observations(posterior.data if data is posterior.data else posterior.target.validate(data))
        se = float(lpd.std()) * math.sqrt(len(lpd)) / n_obs if len(lpd) > 1 else float("nan")
        rows[split] = {"points": len(lpd), "observations": n_obs, "lpd": float(lpd.sum()),
                       "nll_per_observation": -float(lpd.sum()) / n_obs, "se": se}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["points", "observations", "lpd",
                                                                  "nll_per_observation", "se"]).rename_axis("split")
    table.attrs["csv"] = "heldout.csv"
    return table


# --- helpers ------------------------------------------------------------------------------------


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def _joint(pointwise: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """One (chain, draw, N) array from per-site pointwise values (see ``Posterior.log_likelihood_of``)."""
    values = list(pointwise.values())
    if len({tuple(v.shape) for v in values}) == 1:
        return sum(values[1:], values[0]).flatten(2)
    return torch.cat([v.flatten(2) for v in values], -1)

def sample_guide(guide_fn, data, sites, num_samples: int, *, log_density: bool = False):
    """``num_samples`` draws of every one of ``sites`` the guide draws, as ``(1, num_samples, ...)`` tensors;
    with ``log_density``, also log q of each draw (the guide trace's ``log_prob_sum``), shape (1, num_samples)."""
    draws: dict[str, list[torch.Tensor]] = {k: [] for k in sites}
    log_q = []
    with torch.no_grad():
        for _ in range(num_samples):
            trace = poutine.trace(guide_fn).get_trace(data)
            for k in sites:
                if k in trace.nodes:
                    draws[k].append(trace.nodes[k]["value"].detach())
            if log_density:
                log_q.append(float(trace.log_prob_sum()))
    missing = [k for k, v in draws.items() if not v]
    if missing:
        log.warning("guide: draws no value of latent site(s) %s; the model draws them from their prior", missing)
    samples = {k: torch.stack(v).unsqueeze(0) for k, v in draws.items() if v}
    if not log_density:
        return samples
    return samples, (np.asarray(log_q)[None] if not missing else None)
