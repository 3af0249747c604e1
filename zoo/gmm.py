"""Gaussian mixture model with diagonal covariances.

Generative story (K components, N points in D dimensions)::

    weights            ~ Dirichlet(concentration * 1_K)                      (K,)
    for k in 1..K:                                   plate "components"  (dim -1)
        locs[k]        ~ Normal(center, 2 * spread)                          (K, D)
        scales[k]      ~ LogNormal(log(spread / 2), 1)                       (K, D)
    for n in 1..N:                                   plate "data"        (dim -1)
        assignment[n]  ~ Categorical(weights)                                (N,)   enumerated
        obs[n]         ~ Normal(locs[assignment[n]], scales[assignment[n]])  (N, D)

Priors are weakly informative *on the scale of the data*: ``center`` and ``spread`` are the
per-feature mean and standard deviation of the data being fitted (an empirical-Bayes choice, as
scikit-learn's ``BayesianGaussianMixture`` makes for its mean and covariance priors), unless fixed
with ``prior_center`` / ``prior_spread``. Without data (``model(None)``, ``simulate``) they
default to 0 and 1. ``locs ~ Normal(center, 2 spread)`` covers the data's range with room to
spare; the median prior scale is half the data's spread, and the prior keeps scales away from 0,
where mixture likelihoods are degenerate. ``Dirichlet(1)`` is uniform on the simplex.

``assignment`` is enumerated (``config_enumerate``): ``TraceEnum_ELBO`` sums it out of ``model``
exactly, and ``infer_discrete`` draws it. ``marginal_model`` is the same story with the sum written
out (``MixtureSameFamily``): what NUTS samples and, with the own guide over the global sites only,
what SVI fits (``Trace_ELBO``, the same objective with less bookkeeping); ``log_likelihood`` is the
same sum per point.

Label switching: the likelihood is invariant to permuting components, so every posterior mode has
K! copies. :meth:`GaussianMixture.align` relabels each draw to a common reference by minimum-cost
matching of component locations (Hungarian algorithm), then orders the reference by the first
feature of the locations, so R-hat and SVI-vs-NUTS comparisons are meaningful.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from zoo.base import ZooModel, as_matrix, check_setting
from zoo.baselines import kmeans_gaussians
from zoo.conjugate import dirichlet, gaussian_components
from zoo.relabel import align_draws, permute_all


class GaussianMixture(ZooModel):
    """Bayesian Gaussian mixture with diagonal covariances (see the module docstring).

    :param n_components: number of components K (>= 1).
    :param concentration: symmetric Dirichlet concentration of ``weights``.
    :param prior_center: fixed prior center of ``locs`` per feature (default: data mean).
    :param prior_spread: fixed prior spread per feature (default: data standard deviation).
    :param dim: feature dimension D for the generative story when no data is given.
    :param init_seed: seed of the k-means++ fit the guide's parameters start from.
    """

    name = "gmm"
    global_sites = ("weights", "locs", "scales")
    dims = {
        "weights": ["component"],
        "locs": ["component", "feature"],
        "scales": ["component", "feature"],
        "assignment": ["point"],
        "obs": ["point", "feature"],
    }
    default_dataset = "iris-petals"

    def __init__(self, n_components: int = 3, *, concentration: float = 1.0,
                 prior_center=None, prior_spread=None, dim: int = 2, init_seed: int = 0):
        super().__init__()
        self.n_components = check_setting(n_components, "n_components", kind="int", positive=True)
        self.concentration = check_setting(concentration, "concentration", positive=True)
        self.prior_center = check_setting(prior_center, "prior_center", shape=(0, 1), allow_none=True)
        self.prior_spread = check_setting(prior_spread, "prior_spread", shape=(0, 1), positive=True, allow_none=True)
        self.dim = check_setting(dim, "dim", kind="int", positive=True)
        self.init_seed = check_setting(init_seed, "init_seed", kind="int")

    # --- priors ----------------------------------------------------------------------------
    def hyperparameters(self, data=None, dim=None, dtype=None):
        """``(center, spread)`` of the priors, each of shape (D,)."""
        if data is not None:
            dim, dtype = data.shape[-1], data.dtype
        dim, dtype = dim or self.dim, dtype or torch.get_default_dtype()
        if self.prior_center is not None:
            center = torch.as_tensor(self.prior_center, dtype=dtype).expand(dim)
        elif data is not None:
            center = data.mean(0)
        else:
            center = torch.zeros(dim, dtype=dtype)
        if self.prior_spread is not None:
            spread = torch.as_tensor(self.prior_spread, dtype=dtype).expand(dim)
        elif data is not None and data.shape[0] > 1:
            spread = data.std(0)
            spread = torch.where(spread > 0, spread, torch.ones_like(spread))
        else:
            spread = torch.ones(dim, dtype=dtype)
        return center, spread

    # --- the Pyro pair ---------------------------------------------------------------------
    def _globals(self, data):
        """The global sites drawn from their priors: weights (K,), locs (K, D), scales (K, D)."""
        K = self.n_components
        center, spread = self.hyperparameters(data)
        weights = pyro.sample(
            "weights", dist.Dirichlet(torch.full((K,), self.concentration, dtype=center.dtype))
        )                                                                             # (K,)
        with pyro.plate("components", K, dim=-1):
            locs = pyro.sample("locs", dist.Normal(center, 2 * spread).to_event(1))      # (K, D)
            scales = pyro.sample(
                "scales", dist.LogNormal(spread.log() - math.log(2.0), 1.0).to_event(1)
            )                                                                         # (K, D)
        return weights, locs, scales

    @config_enumerate
    def model(self, data=None, *, n: int | None = None):
        """The generative story. ``data`` is (N, D); with ``data=None`` draw ``n`` points."""
        weights, locs, scales = self._globals(data)
        N = data.shape[0] if data is not None else (n or 1)
        with pyro.plate("data", N, dim=-1):
            assignment = pyro.sample("assignment", dist.Categorical(weights))          # (N,)
            return pyro.sample(
                "obs",
                dist.Normal(Vindex(locs)[..., assignment, :], Vindex(scales)[..., assignment, :]).to_event(1),
                obs=data,
            )                                                                         # (N, D)

    def marginal_model(self, data=None, *, n: int | None = None):
        """The same story with ``assignment`` summed out: obs[n] ~ sum_k weights[k] N(locs[k], scales[k])."""
        weights, locs, scales = self._globals(data)
        N = data.shape[0] if data is not None else (n or 1)
        with pyro.plate("data", N, dim=-1):
            mixture = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scales).to_event(1))
            return pyro.sample("obs", mixture, obs=data)                              # (N, D)

    def guide(self, data=None, *, n: int | None = None):
        """Mean-field guide over the global sites; ``assignment`` is left to enumeration.

        q(weights) = Dirichlet(a), q(locs) = Normal(m, s), q(scales) = LogNormal(u, v).
        Parameters are created on the first call, from a k-means++ fit of the data (seeded with ``init_seed``).
        """
        if "q_weights_concentration" not in self._pyro_params:
            self._init_guide(data)
        pyro.sample("weights", dist.Dirichlet(self.q_weights_concentration))             # (K,)
        with pyro.plate("components", self.n_components, dim=-1):
            pyro.sample("locs", dist.Normal(self.q_locs_loc, self.q_locs_scale).to_event(1))           # (K, D)
            pyro.sample("scales", dist.LogNormal(self.q_scales_loc, self.q_scales_scale).to_event(1))  # (K, D)

    def _init_guide(self, data):
        if data is None:
            raise ValueError("data: the GMM guide is initialized from data; got None")
        init = self.initial_values(data, seed=self.init_seed)
        N = data.shape[0]
        self.q_weights_concentration = PyroParam(init["weights"] * N + 1.0, constraints.positive)
        self.q_locs_loc = PyroParam(init["locs"])
        self.q_locs_scale = PyroParam(init["scales"] / math.sqrt(N) + 1e-3, constraints.positive)
        self.q_scales_loc = PyroParam(init["scales"].log())
        self.q_scales_scale = PyroParam(torch.full_like(init["scales"], 0.1), constraints.positive)

    # --- the protocol ----------------------------------------------------------------------
    def validate(self, data):
        x = as_matrix(data, name="data")
        for name in ("prior_center", "prior_spread"):
            size = np.size(getattr(self, name)) if getattr(self, name) is not None else 1
            if size not in (1, x.shape[1]):
                raise ValueError(f"{name}: has {size} entries but the data have D={x.shape[1]} columns; give one "
                                 "number or D of them")
        if x.shape[0] < self.n_components:
            raise ValueError(
                f"n_components: {self.n_components} components exceed the number of data points N={x.shape[0]}"
            )
        return x

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(x_n | weights, locs, scales) = logsumexp_k [log w_k + sum_d log N(x_nd | loc_kd, scale_kd)]."""
        x = data.unsqueeze(-2)                                   # (N, 1, D)
        locs = params["locs"].unsqueeze(-3)                      # (*b, 1, K, D)
        scales = params["scales"].unsqueeze(-3)                  # (*b, 1, K, D)
        component = dist.Normal(locs, scales).log_prob(x).sum(-1)  # (*b, N, K)
        return torch.logsumexp(component + params["weights"].log().unsqueeze(-2), dim=-1)  # (*b, N)

    def responsibilities(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """p(assignment_n = k | x_n, params), shape (*b, N, K)."""
        x = data.unsqueeze(-2)
        component = dist.Normal(params["locs"].unsqueeze(-3), params["scales"].unsqueeze(-3)).log_prob(x).sum(-1)
        return torch.softmax(component + params["weights"].log().unsqueeze(-2), dim=-1)

    def simulate(self, n: int, seed: int = 0, params: Mapping[str, torch.Tensor] | None = None):
        """Draw ``n`` points. Parameters come from the prior unless ``params`` fixes them.

        Returns ``(data (n, D), truth)`` where ``truth`` holds the global sites and ``assignment``.
        """
        n = check_setting(n, "n", kind="int", positive=True)
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            model = self.model if params is None else pyro.poutine.condition(self.model, data=dict(params))
            trace = pyro.poutine.trace(model).get_trace(None, n=n)
        truth = {k: trace.nodes[k]["value"].detach() for k in (*self.global_sites, "assignment")}
        return trace.nodes["obs"]["value"].detach(), truth

    def gibbs_sweep(self, data, values: Mapping[str, torch.Tensor], rng: np.random.Generator):
        """One Gibbs sweep (``inference.run_gibbs``; :mod:`zoo.conjugate`): the assignments from their exact
        conditional (the responsibilities, Gumbel-max), then weights ~ Dirichlet(concentration + counts)
        and the locs from their Normal conditional given the scales; the scales (LogNormal prior, not
        conjugate) are the block left to NUTS, their conditional density given the rest."""
        center, spread = (h.double().numpy() for h in self.hyperparameters(data))
        x = data.double().numpy()                                                  # (N, D)
        weights, locs, scales = (values[k].double().numpy() for k in self.global_sites)
        logits = np.log(weights) - (0.5 * ((x[:, None] - locs) / scales) ** 2 + np.log(scales)).sum(-1)   # (N, K)
        z = np.argmax(logits + rng.gumbel(size=logits.shape), axis=-1)
        weights = dirichlet(rng, self.concentration + np.bincount(z, minlength=self.n_components))
        locs, block = gaussian_components(rng, x, z, scales, center, spread)
        new = {k: torch.as_tensor(v, dtype=data.dtype) for k, v in (("weights", weights), ("locs", locs),
                                                                    ("scales", scales))}
        return new, (*block, lambda: {"assignment": torch.as_tensor(z), "weights": new["weights"], "locs": new["locs"]})

    def initial_values(self, data, seed: int = 0) -> dict[str, torch.Tensor]:
        """k-means++ then Lloyd iterations: weights, centers and per-cluster spreads."""
        K = self.n_components
        centers, scales, labels = kmeans_gaussians(data, K, self.hyperparameters(data)[1], seed=seed)
        counts = torch.bincount(labels, minlength=K).to(data.dtype)
        weights = (counts + 1) / (counts.sum() + K)
        return {"weights": weights, "locs": centers, "scales": scales}

    def align(self, draws, reference=None):
        """Relabel every draw to a common labeling (see the module docstring; :func:`zoo.relabel.align_draws`)."""
        batch = draws["locs"].shape[:-2]
        flat = {k: draws[k].reshape(-1, *draws[k].shape[len(batch):]) for k in self.global_sites}
        ref = None if reference is None else {k: reference[k].reshape(-1, *flat[k].shape[1:])
                                              for k in ("locs", "scales")}
        out = align_draws(flat, lambda p: (p["locs"], p["scales"]), permute_all, ref)
        return {k: out[k].reshape(*batch, *out[k].shape[1:]) for k in self.global_sites}

    def coords(self, data) -> dict[str, list]:
        return {"component": list(range(self.n_components))}

    def ppc_statistics(self, values, data, params):
        """Points assigned to their most probable component under ``params``: ``cluster_size`` (fraction
        of the points, largest cluster first) and ``cluster_spread`` (sd of a cluster's points, averaged
        over features, in the same order; 0 for a cluster of fewer than 2 points)."""
        labels = self.responsibilities(values, params).argmax(-1)                # (N,)
        counts = torch.bincount(labels, minlength=self.n_components)
        order = torch.argsort(counts, descending=True, stable=True)
        spread = [values[labels == k].std(0).mean() if counts[k] > 1 else torch.zeros(()) for k in order]
        return {"cluster_size": (counts[order] / len(values)).numpy(), "cluster_spread": torch.stack(spread).numpy()}

    def figures(self, data, posteriors, dataset=None):
        from zoo import plots

        return {"clusters": plots.mixture_clusters(self, data, posteriors, dataset)}
