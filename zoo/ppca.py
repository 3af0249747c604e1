"""Probabilistic PCA (Tipping & Bishop 1999), optionally with ARD (Bishop 1999) and missing entries.

Generative story (N rows, D features, K < D components)::

    mean               ~ Normal(center, 2 * spread)                         (D,)
    loadings  W        ~ Normal(0, scale)                                   (D, K)
    noise_scale sigma  ~ HalfNormal(scale)                                  ()
    for n in 1..N:                                   plate "data"  (dim -1)
        z[n]           ~ Normal(0, I_K)                                     (N, K)
        obs[n]         ~ Normal(W z[n] + mean, sigma^2 I_D)                 (N, D)

With ``ard=True`` every column of W has its own precision (automatic relevance determination)::

    ard_precision alpha ~ Gamma(1, 0.01 * scale^2)                          (K,)
    loadings[:, k]      ~ Normal(0, 1 / sqrt(alpha_k))                      (D, K)

so columns the data do not need are switched off (alpha_k large, W[:, k] near 0).

Priors are weakly informative on the scale of the data (as for the GMM): ``center`` and ``spread`` are
the per-feature mean and standard deviation of the data being fitted and ``scale`` is the root mean
feature variance (1 for standardized data); without data they are 0 and 1. PPCA's noise is isotropic,
so features should be on comparable scales: standardize data measured in different units (the bundled
``wine`` dataset is standardized for that reason).

Two forms of the same model
---------------------------
* **latent form** (:meth:`PPCA.model`): z is explicit. SVI uses it. The model's own guide is a
  full-rank Gaussian over the global sites (on the unconstrained scale) times an **amortized** guide
  over z: q(z_n | x_n) is the exact Gaussian conditional p(z_n | x_n, W, mean, sigma) =
  N(M^-1 W^T (x_n - mean), sigma^2 M^-1), M = W^T W + sigma^2 I, computed (not learned) from the
  sampled globals, so the guide over z has no amortization gap and SVI's error is confined to the
  globals. Autoguides (``guide="normal" | "mvn" | "iaf"``) fit the latent form with one Gaussian
  per point (per-point guides over z).
* **marginal form** (:meth:`PPCA.marginal_model`): z integrated out analytically,
  x_n ~ N(mean, W W^T + sigma^2 I) (:class:`MarginalNormal`, evaluated through K x K matrices). NUTS
  samples it by default (D K + D + 1 dimensions instead of N K more) and MAP maximizes it;
  :meth:`PPCA.log_likelihood` is its per-row log density. ``marginalize=False`` makes NUTS and MAP
  use the latent form instead (for the benchmark and the test that switching form leaves the
  posterior of W, sigma, mean unchanged).

Rotation
--------
The likelihood depends on W only through W W^T, so W R fits as well as W for every orthogonal R
(and, without ARD, the prior is rotation invariant too): W is identified only up to rotation.
:meth:`PPCA.align` therefore maps draws to identifiable quantities -- the K leading eigenvalues of the
model covariance W W^T + sigma^2 I (``explained_variance``, as scikit-learn's ``PCA.explained_variance_``),
``noise_variance`` sigma^2, ``mean`` and the principal subspace as principal angles (degrees) between
each draw's column space of W and a reference subspace (``subspace_angle``). The reference, the
``principal_axes`` frame, is the leading eigenvectors of the posterior mean of W W^T; another
posterior is aligned to it with ``align(draws, reference=...)``, so SVI and NUTS are measured from the
same subspace. With ARD, ``ard_precision`` is reported sorted (most relevant column first).

The own guide respects the rotation: without ARD it draws W = L Q with L lower-trapezoidal (rows in a
pivoted order, positive diagonal; a full-rank Gaussian in L, log-diagonal) and Q Haar-uniform on O(K),
and scores W with the exact density of that construction (the Jacobian of W = L Q, as in Bartlett's
decomposition). The guide is then rotation invariant like the posterior, and a Gaussian need not
approximate a ring of equally good rotations. With ARD the prior is not rotation invariant and the
guide is a full-rank Gaussian in W itself.

Missing data
------------
With ``missing="mask"``, NaN entries are left out of the likelihood: the latent form masks them, the
marginal form uses the marginal of the observed coordinates of every row (an exact per-row Gaussian).
:meth:`PPCA.impute` fills them with their posterior predictive mean. Without it NaN is an error.

Classical baselines: :meth:`PPCA.ml_solution` and :meth:`PPCA.ml_log_likelihood` (the closed-form
maximum-likelihood solution and its log-likelihood L*), and :meth:`PPCA.em` (Tipping & Bishop's EM,
with Bishop's ARD re-estimation when ``ard=True`` and per-row E-steps for missing entries).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from pyro.distributions import TorchDistribution, constraints

from zoo.base import ZooModel, as_matrix, check_positive_int, check_setting

log = logging.getLogger(__name__)

MISSING = (None, "mask")
ARD_SHAPE, ARD_RATE = 1.0, 0.01   # ard_precision ~ Gamma(ARD_SHAPE, ARD_RATE * scale^2)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class PPCA(ZooModel):
    """Bayesian probabilistic PCA, latent and marginal forms (see the module docstring).

    :param n_components: number of components K (1 <= K < D).
    :param ard: give every column of the loadings its own precision (Bishop's Bayesian PCA).
    :param missing: None (NaN is an error) or "mask" (NaN entries are left out of the likelihood).
    :param marginalize: NUTS and MAP use the marginal form (True, default) or the latent form.
    :param dim: feature dimension D for the generative story when no data is given.
    """

    name = "ppca"
    dims = {
        "loadings": ["feature", "component"],
        "noise_scale": [],
        "mean": ["feature"],
        "ard_precision": ["component"],
        "z": ["point", "component"],
        "obs": ["point", "feature"],
        "explained_variance": ["component"],
        "noise_variance": [],
        "subspace_angle": ["component"],
    }
    default_dataset = "wine"
    alignment_frame = ("principal_axes",)

    def __init__(self, n_components: int = 2, *, ard: bool = False, missing: str | None = None,
                 marginalize: bool = True, dim: int = 3):
        super().__init__()
        self.n_components = check_setting(n_components, "n_components", kind="int", positive=True)
        self.ard = check_setting(ard, "ard", kind="bool")
        self.missing = check_setting(missing, "missing", kind="choice", choices=MISSING)
        self.marginalize = check_setting(marginalize, "marginalize", kind="bool")
        self.dim = check_positive_int(dim, "dim", minimum=2)

    @property
    def global_sites(self) -> tuple[str, ...]:
        return ("loadings", "noise_scale", "mean") + (("ard_precision",) if self.ard else ())

    # --- priors ----------------------------------------------------------------------------
    def hyperparameters(self, data=None):
        """``(center (D,), spread (D,), scale ())`` of the priors, from the data's observed entries."""
        if data is None:
            D, dtype = self.dim, torch.get_default_dtype()
            return torch.zeros(D, dtype=dtype), torch.ones(D, dtype=dtype), torch.ones((), dtype=dtype)
        observed = ~torch.isnan(data)
        count = observed.sum(0).clamp(min=1)
        filled = torch.where(observed, data, torch.zeros((), dtype=data.dtype))
        center = filled.sum(0) / count
        var = (torch.where(observed, data - center, torch.zeros((), dtype=data.dtype)) ** 2).sum(0) / count
        var = torch.where(var > 0, var, torch.ones_like(var))
        return center, var.sqrt(), var.mean().sqrt()

    def _sample_globals(self, data):
        D = data.shape[-1] if data is not None else self.dim
        K = self.n_components
        center, spread, scale = self.hyperparameters(data)
        mean = pyro.sample("mean", dist.Normal(center, 2 * spread).to_event(1))                  # (D,)
        if self.ard:
            alpha = pyro.sample("ard_precision", dist.Gamma(
                torch.full((K,), ARD_SHAPE, dtype=center.dtype), ARD_RATE * scale ** 2).to_event(1))  # (K,)
            w_scale = alpha.rsqrt().unsqueeze(-2).expand(*alpha.shape[:-1], D, K)
        else:
            w_scale = scale.expand(D, K)
        loadings = pyro.sample("loadings", dist.Normal(torch.zeros_like(w_scale), w_scale).to_event(2))  # (D, K)
        sigma = pyro.sample("noise_scale", dist.HalfNormal(scale))                                # ()
        return loadings, sigma, mean

    # --- the two forms ---------------------------------------------------------------------
    def model(self, data=None, *, n: int | None = None):
        """Latent form. ``data`` is (N, D) (NaN entries allowed with ``missing="mask"``); with
        ``data=None`` draw ``n`` rows."""
        W, sigma, mean = self._sample_globals(data)
        N = data.shape[0] if data is not None else (n or 1)
        K = self.n_components
        with pyro.plate("data", N, dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=mean.dtype), 1.0).expand([K]).to_event(1))  # (N, K)
            loc = (W.unsqueeze(-3) @ z.unsqueeze(-1)).squeeze(-1) + mean.unsqueeze(-2)       # (N, D)
            noise = dist.Normal(loc, sigma[..., None, None])
            if data is not None and self.missing == "mask":
                observed = ~torch.isnan(data)
                filled = torch.where(observed, data, torch.zeros((), dtype=data.dtype))
                return pyro.sample("obs", noise.mask(observed).to_event(1), obs=filled)     # (N, D)
            return pyro.sample("obs", noise.to_event(1), obs=data)                          # (N, D)

    def marginal_model(self, data=None, *, n: int | None = None):
        """Marginal form: x_n ~ N(mean, W W^T + sigma^2 I), z integrated out (see the module docstring)."""
        if not self.marginalize:
            return self.model(data, n=n)
        return self._marginal(data, n=n)

    def _marginal(self, data=None, *, n: int | None = None):
        W, sigma, mean = self._sample_globals(data)
        N = data.shape[0] if data is not None else (n or 1)
        with pyro.plate("data", N, dim=-1):
            if data is not None and self.missing == "mask":
                observed = ~torch.isnan(data)
                return pyro.sample("obs", _observed_marginal(observed, W, sigma, mean), obs=_fill(data, observed))
            return pyro.sample("obs", MarginalNormal(mean, W, sigma), obs=data)               # (N, D)

    # --- the own guide -----------------------------------------------------------------------
    def guide(self, data=None, *, n: int | None = None):
        """Full-rank Gaussian over the globals (rotation-averaged without ARD) times the exact
        conditional q(z_n | x_n) (see the module docstring). Initialized at the Laplace approximation
        around the posterior mode, found from the maximum-likelihood solution."""
        if data is None:
            raise ValueError("data: the PPCA guide is built from data; got None")
        if "q_loc" not in self._pyro_params:
            self._init_guide(data)
        layout = self._layout
        # theta = theta0 + L0 u, u ~ N(q_loc, diag(q_scale) q_unit_tril ...): a full-rank Gaussian in theta
        # whose parameters are in units of the Laplace approximation's posterior sd (see _init_guide)
        loc = self.laplace_loc + self.laplace_tril @ self.q_loc
        scale_tril = self.laplace_tril @ (self.q_scale.unsqueeze(-1) * self.q_unit_tril)
        theta = pyro.sample("_ppca_globals", dist.MultivariateNormal(loc, scale_tril=scale_tril),
                            infer={"is_auxiliary": True})                                   # (P,)
        rotation = _haar(layout.K, theta.dtype) if layout.rotate else None
        values, log_dens = layout.unpack(theta, rotation)
        for name in self.global_sites:
            event_dim = {"loadings": 2, "mean": 1, "ard_precision": 1}.get(name, 0)
            pyro.sample(name, dist.Delta(values[name], log_density=log_dens[name], event_dim=event_dim))
        with pyro.plate("data", data.shape[0], dim=-1):
            loc, scale_tril = self.posterior_z(data, values)
            pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))              # (N, K)

    def _init_guide(self, data):
        """Start at the Laplace approximation N(theta0, L0 L0^T) around the posterior mode and learn the
        guide in its whitened coordinates u = L0^-1 (theta - theta0), starting from N(0, I).

        Posterior sds differ by orders of magnitude between sites (on the wine data, 0.016 for
        log noise_scale against ~1 for loadings), while Adam moves every parameter by about ``lr`` per
        step whatever its gradient: in theta, a step of lr = 0.01 is more than half a posterior sd of
        log noise_scale and the single-sample gradient noise leaves the fitted guide off by a
        quarter of an sd. In u, ``lr`` is a fraction of a posterior sd for every direction."""
        layout = _Layout(self, data)
        theta = layout.laplace_mode()
        self._layout = layout
        P = len(theta)
        self.register_buffer("laplace_loc", theta.detach().clone(), persistent=True)
        self.register_buffer("laplace_tril", layout.laplace_scale_tril(theta).detach().clone(), persistent=True)
        self.q_loc = PyroParam(torch.zeros(P, dtype=theta.dtype))
        # scale_tril = diag(q_scale) @ q_unit_tril, as AutoMultivariateNormal
        self.q_scale = PyroParam(torch.ones(P, dtype=theta.dtype), constraints.softplus_positive)
        self.q_unit_tril = PyroParam(torch.eye(P, dtype=theta.dtype), constraints.unit_lower_cholesky)

    def posterior_z(self, data, params: Mapping[str, torch.Tensor]):
        """The exact conditional p(z_n | x_n, W, sigma, mean) = N(loc, scale_tril scale_tril^T), per row:
        ``loc`` (*b, N, K), ``scale_tril`` (*b, N or 1, K, K). NaN entries of ``data`` are left out."""
        W, sigma, mean = params["loadings"], params["noise_scale"], params["mean"]
        K = W.shape[-1]
        eye = torch.eye(K, dtype=W.dtype)
        s2 = (sigma ** 2)[..., None, None, None]                                    # (*b, 1, 1, 1)
        observed = ~torch.isnan(data)
        dev = torch.where(observed, data - mean.unsqueeze(-2), torch.zeros((), dtype=data.dtype))  # (*b, N, D)
        if bool(observed.all()):
            Wn = W.unsqueeze(-3)                                                     # (*b, 1, D, K)
        else:
            Wn = W.unsqueeze(-3) * observed.unsqueeze(-1).to(W.dtype)                # (*b, N, D, K)
        M = Wn.transpose(-1, -2) @ Wn + s2 * eye                                   # (*b, N|1, K, K)
        chol = torch.linalg.cholesky(M)
        rhs = (Wn.transpose(-1, -2) @ dev.unsqueeze(-1))                            # (*b, N, K, 1)
        loc = torch.cholesky_solve(rhs, chol).squeeze(-1)                           # (*b, N, K)
        # cov = sigma^2 M^-1; a Cholesky factor of M^-1 is L^-T (upper), so use the lower factor of M^-1
        scale_tril = torch.linalg.cholesky(torch.cholesky_inverse(chol)) * s2.sqrt()
        return loc, scale_tril

    # --- the protocol ----------------------------------------------------------------------
    def validate(self, data):
        x = as_matrix(data, name="data", allow_nan=True)
        n_nan = int(torch.isnan(x).sum())
        if n_nan and self.missing != "mask":
            first = tuple(torch.isnan(x).nonzero()[0].tolist())
            raise ValueError(
                f"data: contains {n_nan} NaN value(s) (first at index {first}); PPCA treats NaN as missing only "
                "with missing='mask' (zoo.get('ppca', missing='mask'), or --option missing=mask), else "
                "remove or impute them first"
            )
        N, D = x.shape
        K = self.n_components
        if N < 2:
            raise ValueError(f"data: PPCA needs at least 2 rows, got N={N}")
        if K >= D:
            raise ValueError(
                f"n_components: expected fewer components than features (K < D), got K={K} for D={D} features"
            )
        observed = ~torch.isnan(x)
        counts = observed.sum(0)
        few = (counts < 2).nonzero().flatten().tolist()
        if few:
            raise ValueError(f"data: column(s) {few} have fewer than 2 observed values; drop them")
        center, _, _ = self.hyperparameters(x)
        spread = torch.where(observed, (x - center).abs(), torch.zeros((), dtype=x.dtype)).amax(0)
        constant = (spread <= 1e-12 * (1 + center.abs())).nonzero().flatten().tolist()
        if constant:
            raise ValueError(
                f"data: column(s) {constant} are constant; PPCA's isotropic noise cannot fit a feature "
                "without variance, drop them"
            )
        var = self.hyperparameters(x)[1] ** 2
        if float(var.max() / var.min()) > 1e3:
            log.warning("feature variances differ by a factor %.3g: PPCA's noise is isotropic, consider "
                        "standardizing the features", float(var.max() / var.min()))
        return x

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor], *, chunk: int = 256) -> torch.Tensor:
        """log p(x_n | W, sigma, mean) per row: the marginal Gaussian N(mean, W W^T + sigma^2 I) of the
        row's observed entries (z integrated out). Params may carry leading batch dims; (*b, N)."""
        W, sigma, mean = params["loadings"], params["noise_scale"], params["mean"]
        batch = W.shape[:-2]
        observed = ~torch.isnan(data)
        if bool(observed.all()):
            return MarginalNormal(mean.unsqueeze(-2), W.unsqueeze(-3), sigma.unsqueeze(-1)).log_prob(data)
        # per-row factors: (*b, N, D, K) memory; go through the draws in chunks
        flat = [t.reshape(-1, *t.shape[len(batch):]) for t in (W, sigma, mean)]
        out = []
        for i in range(0, flat[0].shape[0], chunk):
            w, s, m = (t[i:i + chunk] for t in flat)
            d = _observed_marginal(observed, w.unsqueeze(-3), s, m.unsqueeze(-2))
            out.append(d.log_prob(_fill(data, observed)))
        return torch.cat(out).reshape(*batch, data.shape[0])

    def log_prior(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(globals) of the model's priors (hyperparameters from ``data``); params may be batched."""
        center, spread, scale = self.hyperparameters(data)
        W = params["loadings"]
        lp = dist.Normal(center, 2 * spread).log_prob(params["mean"]).sum(-1)
        if self.ard:
            alpha = params["ard_precision"]
            lp = lp + dist.Gamma(torch.full_like(alpha, ARD_SHAPE), ARD_RATE * scale ** 2).log_prob(alpha).sum(-1)
            w_scale = alpha.rsqrt().unsqueeze(-2)
        else:
            w_scale = scale
        lp = lp + dist.Normal(torch.zeros((), dtype=W.dtype), w_scale).log_prob(W).sum((-1, -2))
        return lp + dist.HalfNormal(scale).log_prob(params["noise_scale"])

    def log_joint(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(x, globals) with z integrated out: the marginal form's log density (no Pyro tracing)."""
        return self.log_prior(data, params) + self.log_likelihood(data, params).sum(-1)

    def simulate(self, n: int, seed: int = 0, params: Mapping[str, torch.Tensor] | None = None):
        """Draw ``n`` rows; parameters from the prior unless ``params`` fixes them.

        Returns ``(data (n, D), truth)`` with the global sites and ``z``. With ``params``, D is taken
        from ``params["loadings"]``.
        """
        n = check_positive_int(n, "n")
        model = self
        if params is not None:
            D = params["loadings"].shape[-2]
            if D != self.dim or params["loadings"].shape[-1] != self.n_components:
                model = PPCA(params["loadings"].shape[-1], ard=self.ard, missing=None, dim=D)
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            fn = model.model if params is None else pyro.poutine.condition(model.model, data=dict(params))
            trace = pyro.poutine.trace(fn).get_trace(None, n=n)
        truth = {k: trace.nodes[k]["value"].detach() for k in (*model.global_sites, "z") if k in trace.nodes}
        return trace.nodes["obs"]["value"].detach(), truth

    def initial_values(self, data, seed: int = 0) -> dict[str, torch.Tensor]:
        """The maximum-likelihood solution (columns of missing entries mean-imputed first), rotated by a
        random orthogonal matrix and jittered by 5% per ``seed``, plus E[z | x] under it."""
        gen = torch.Generator().manual_seed(int(seed))
        filled = _mean_impute(data)
        params = self.ml_solution(filled)
        K = self.n_components
        R = _haar(K, data.dtype, generator=gen)
        jitter = 1 + 0.05 * torch.randn(K, generator=gen, dtype=data.dtype)
        W = params["loadings"] @ R * jitter
        values = {"loadings": W, "noise_scale": params["noise_scale"], "mean": params["mean"]}
        if self.ard:
            values["ard_precision"] = _ard_from_loadings(W)
        values["z"] = self.posterior_z(data, values)[0]
        return values

    def align(self, draws, reference=None):
        """Identifiable quantities of draws with leading dims (see the module docstring)."""
        W, sigma, mean = draws["loadings"], draws["noise_scale"], draws["mean"]
        batch = W.shape[:-2]
        D, K = W.shape[-2:]
        gram = W.transpose(-1, -2) @ W                                              # (*b, K, K)
        eig = torch.linalg.eigvalsh(gram).flip(-1).clamp(min=0)                      # descending
        s2 = sigma ** 2
        if reference is not None:
            if "principal_axes" not in reference:
                raise ValueError("reference: expected the output of PPCA.align (Posterior.alignment), "
                                 "which carries 'principal_axes'")
            axes = reference["principal_axes"].double()
        else:
            cov = (W.double() @ W.double().transpose(-1, -2)).reshape(-1, D, D).mean(0)
            vecs = torch.linalg.eigh(cov)[1].flip(-1)[:, :K]                          # (D, K)
            sign = torch.sign(vecs[vecs.abs().argmax(0), torch.arange(K)])           # largest entry positive
            axes = vecs * torch.where(sign == 0, torch.ones_like(sign), sign)
        out = {
            "explained_variance": eig + s2[..., None],
            "noise_variance": s2,
            "mean": mean,
            "subspace_angle": principal_angles(W, axes),
        }
        if self.ard and "ard_precision" in draws:
            out["ard_precision"] = draws["ard_precision"].sort(-1).values
        out["principal_axes"] = axes
        assert out["explained_variance"].shape == (*batch, K)
        return out

    def coords(self, data) -> dict[str, list]:
        return {"component": list(range(self.n_components))}

    def ppc_statistics(self, values, data, params):
        """``eigenvalues``: the spectrum of the sample covariance (1/N, descending, all D of them), the
        entries missing in ``data`` left out of ``values`` too (mean-imputed per column)."""
        x = torch.where(torch.isnan(data), data, values)
        x = _mean_impute(x) - _mean_impute(x).mean(0)
        return {"eigenvalues": torch.linalg.eigvalsh(x.T @ x / len(x)).flip(0).numpy()}

    def figures(self, data, posteriors, dataset=None):
        from zoo import plots

        return {"scree": plots.scree(self, data, posteriors, dataset),
                "latent": plots.latent_projection(self, data, posteriors, dataset)}

    # --- classical baselines ------------------------------------------------------------------
    def ml_solution(self, data) -> dict[str, torch.Tensor]:
        """Closed-form maximum likelihood (Tipping & Bishop 1999): with the sample covariance S (1/N)
        and its eigenvalues l_1 >= ... >= l_D, sigma^2 = mean(l_{K+1..D}), W = U_K (L_K - sigma^2 I)^1/2,
        mean = sample mean. (With ``ard=True``, also ``ard_precision`` = D / ||w_k||^2.)"""
        x = self._complete(data, "ml_solution")
        K = self.n_components
        mu = x.mean(0)
        S = (x - mu).T @ (x - mu) / x.shape[0]
        evals, evecs = torch.linalg.eigh(S.double())
        evals, evecs = evals.flip(0), evecs.flip(1)
        s2 = evals[K:].mean()
        W = evecs[:, :K] * (evals[:K] - s2).clamp(min=0).sqrt()
        out = {"loadings": W.to(x.dtype), "noise_scale": s2.sqrt().to(x.dtype), "mean": mu}
        if self.ard:
            out["ard_precision"] = _ard_from_loadings(out["loadings"])
        return out

    def ml_log_likelihood(self, data) -> float:
        """The maximized log-likelihood L* = -N/2 [D log 2 pi + sum_{j<=K} log l_j + (D-K) log sigma^2_ML + D]."""
        x = self._complete(data, "ml_log_likelihood").double()
        N, D = x.shape
        K = self.n_components
        S = (x - x.mean(0)).T @ (x - x.mean(0)) / N
        evals = torch.linalg.eigvalsh(S).flip(0)
        s2 = evals[K:].mean()
        return float(-N / 2 * (D * math.log(2 * math.pi) + evals[:K].log().sum() + (D - K) * s2.log() + D))

    def em(self, data, seed: int = 0, *, max_iter: int = 5000, tol: float = 1e-9) -> dict[str, torch.Tensor]:
        """Tipping & Bishop's EM for maximum likelihood, from a random start (``seed``).

        Complete data: W <- S W (sigma^2 I + M^-1 W^T S W)^-1 and sigma^2 <- tr(S - S W M^-1 W_new^T) / D,
        M = W^T W + sigma^2 I (eqs. 29-30). With ``ard=True`` the M-step adds sigma^2 A (A = diag(alpha))
        to the expected second moments of z and re-estimates alpha_k = D / ||w_k||^2 (Bishop 1999; the
        Gamma hyperprior is ignored). With NaN entries (``missing="mask"``) the E-step uses each row's
        observed entries and the M-step regresses each feature on E[z] over its observed rows (EM for
        PPCA with missing values, Tipping & Bishop 1999 appendix; Ilin & Raiko 2010). Stops when the
        log-likelihood gains less than ``tol * N`` in an iteration; returns the constrained sites.
        """
        x = self.validate(data)
        dtype = x.dtype
        x = x.double()
        gen = torch.Generator().manual_seed(int(seed))
        N, D = x.shape
        K = self.n_components
        observed = ~torch.isnan(x)
        complete = bool(observed.all())
        _, _, scale = self.hyperparameters(x)
        W = torch.randn(D, K, generator=gen, dtype=torch.float64) * scale
        s2 = scale ** 2
        mu = self.hyperparameters(x)[0]
        alpha = torch.zeros(K, dtype=torch.float64)
        eye = torch.eye(K, dtype=torch.float64)
        if complete:
            mu = x.mean(0)
            xc = x - mu
            S = xc.T @ xc / N
        prev = -math.inf
        start = time.perf_counter()
        for it in range(max_iter):
            if complete:
                M = W.T @ W + s2 * eye
                Minv = torch.linalg.inv(M)
                SW = S @ W
                Ezz = s2 * Minv + Minv @ W.T @ SW @ Minv                               # (1/N) sum E[z z^T]
                W_new = SW @ Minv @ torch.linalg.inv(Ezz + s2 * torch.diag(alpha) / N)
                s2 = (torch.trace(S) - 2 * torch.trace(SW @ Minv @ W_new.T)
                      + torch.trace(Ezz @ W_new.T @ W_new)) / D
                W = W_new
            else:
                W, s2, mu = _em_step_missing(x, observed, W, s2, mu, alpha)
            if self.ard:
                alpha = _ard_from_loadings(W).double()
            if it % 5 == 4 or it == max_iter - 1:
                params = {"loadings": W, "noise_scale": s2.sqrt(), "mean": mu}
                ll = float(self.log_likelihood(x, params).sum())
                if ll - prev < tol * N and it > 10:
                    break
                prev = ll
        log.info("PPCA EM: %d iterations in %.3fs, log-likelihood %.6g", it + 1, time.perf_counter() - start, prev)
        out = {"loadings": W.to(dtype), "noise_scale": s2.sqrt().to(dtype), "mean": mu.to(dtype)}
        if self.ard:
            out["ard_precision"] = alpha.to(dtype)
        return out

    # --- missing entries ----------------------------------------------------------------------
    def impute(self, data, params) -> torch.Tensor:
        """``data`` with every NaN replaced by its posterior predictive mean.

        ``params``: a Posterior (its global draws are used) or a dict of global sites with optional
        leading draw dims. Per draw, E[x_m | x_o] = mean_m + W_m E[z | x_o]; the result averages over draws.
        """
        if hasattr(params, "global_samples"):
            params = params.global_samples
        x = as_matrix(data, name="data", allow_nan=True)
        observed = ~torch.isnan(x)
        W = params["loadings"]
        batch = W.shape[:-2]
        flat = {k: v.reshape(-1, *v.shape[len(batch):]) for k, v in params.items() if k in self.global_sites}
        total = torch.zeros_like(x)
        S = flat["loadings"].shape[0]
        with torch.no_grad():
            for i in range(0, S, 256):
                p = {k: v[i:i + 256] for k, v in flat.items()}
                zloc, _ = self.posterior_z(x, p)                                       # (s, N, K)
                recon = (p["loadings"].unsqueeze(-3) @ zloc.unsqueeze(-1)).squeeze(-1) + p["mean"].unsqueeze(-2)
                total = total + recon.sum(0)
        return torch.where(observed, x, total / S)

    def _complete(self, data, what):
        x = self.validate(data)
        if torch.isnan(x).any():
            raise ValueError(f"data: {what} needs complete data; use em() for data with missing entries")
        return x


# --- pieces ------------------------------------------------------------------------------------


class MarginalNormal(TorchDistribution):
    """N(loc, W W^T + sigma^2 I) over vectors of length D: PPCA's marginal, with z integrated out.

    ``log_prob`` works through the K x K matrix M = W^T W + sigma^2 I (Woodbury and the matrix
    determinant lemma): log|C| = (D - K) log sigma^2 + log|M| and
    (x - loc)^T C^-1 (x - loc) = (|x - loc|^2 - |L^-1 W^T (x - loc)|^2) / sigma^2 with M = L L^T.
    The same value as ``LowRankMultivariateNormal(loc, W, sigma^2 1)``, in about half the time.
    ``loc`` (*b, D), ``loadings`` (*b, D, K), ``noise_scale`` (*b).
    """

    arg_constraints = {"loc": constraints.real_vector, "noise_scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, loadings, noise_scale, validate_args=None):
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], loadings.shape[:-2], noise_scale.shape)
        self.loc, self.loadings, self.noise_scale = loc, loadings, noise_scale
        super().__init__(batch_shape, loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(MarginalNormal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.loadings, new.noise_scale = self.loc, self.loadings, self.noise_scale
        super(MarginalNormal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        W, s2 = self.loadings, self.noise_scale ** 2
        D, K = W.shape[-2:]
        M = W.transpose(-1, -2) @ W + s2[..., None, None] * torch.eye(K, dtype=W.dtype)
        L = torch.linalg.cholesky(M)                                                 # (*b, K, K)
        dev = value - self.loc                                                       # (..., D)
        proj = (dev.unsqueeze(-2) @ W).squeeze(-2)                                    # (..., K)
        a = torch.linalg.solve_triangular(L, proj.unsqueeze(-1), upper=False).squeeze(-1)
        maha = ((dev ** 2).sum(-1) - (a ** 2).sum(-1)) / s2
        logdet = (D - K) * s2.log() + 2 * torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
        out = -0.5 * (D * math.log(2 * math.pi) + logdet + maha)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))

    def rsample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        K = self.loadings.shape[-1]
        z = torch.randn(*shape[:-1], K, dtype=self.loc.dtype, device=self.loc.device)
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self.loadings @ z.unsqueeze(-1)).squeeze(-1) + self.noise_scale[..., None] * eps


def principal_angles(W: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column space of every ``W`` (*b, D, K) and
    the span of the orthonormal ``axes`` (D, K): arccos of the singular values of Q^T axes."""
    Q = torch.linalg.qr(W.double())[0]                                              # (*b, D, K)
    cos = torch.linalg.svdvals(Q.transpose(-1, -2) @ axes.double()).clamp(max=1.0)  # descending
    return torch.rad2deg(torch.arccos(cos)).to(W.dtype)


def _fill(data, observed):
    return torch.where(observed, data, torch.zeros((), dtype=data.dtype))


def _observed_marginal(observed, W, sigma, mean):
    """Per-row marginal of the observed entries as one LowRankMultivariateNormal over all D entries,
    to be evaluated at the data with missing entries filled by 0: rows of W zeroed, mean 0 and variance
    1 / (2 pi) at missing entries, which then contribute exactly log N(0 | 0, 1 / 2 pi) = 0.
    ``W`` (*b, 1 or N, D, K), ``sigma`` (*b), ``mean`` (*b, 1, D) or (D,); batch shape (*b, N)."""
    mask = observed.to(W.dtype)                                                     # (N, D)
    Wn = W * mask.unsqueeze(-1)                                                     # (*b, N, D, K)
    s2 = (sigma ** 2)[..., None, None]                                              # (*b, 1, 1)
    cov_diag = torch.where(observed, s2, torch.full((), 1 / (2 * math.pi), dtype=W.dtype))  # (*b, N, D)
    return dist.LowRankMultivariateNormal(mean * mask, Wn, cov_diag)


def _mean_impute(data):
    observed = ~torch.isnan(data)
    if bool(observed.all()):
        return data
    center = torch.where(observed, data, torch.zeros((), dtype=data.dtype)).sum(0) / observed.sum(0).clamp(min=1)
    return torch.where(observed, data, center.expand_as(data))


def _ard_from_loadings(W):
    return (W.shape[-2] / (W ** 2).sum(-2).clamp(min=1e-12)).clamp(max=1e10)


def _haar(K: int, dtype, generator=None) -> torch.Tensor:
    """A Haar-uniform random orthogonal K x K matrix (QR of a Gaussian matrix, signs fixed)."""
    A = torch.randn(K, K, dtype=dtype, generator=generator)
    Q, R = torch.linalg.qr(A)
    d = torch.sign(torch.diagonal(R))
    return Q * torch.where(d == 0, torch.ones_like(d), d)


def _em_step_missing(x, observed, W, s2, mu, alpha):
    """One EM step with missing entries (per-row E-step, per-feature M-step). Shapes: x (N, D)."""
    N, D = x.shape
    K = W.shape[1]
    eye = torch.eye(K, dtype=x.dtype)
    m = observed.to(x.dtype)
    dev = torch.where(observed, x - mu, torch.zeros((), dtype=x.dtype))
    Wn = W.unsqueeze(0) * m.unsqueeze(-1)                                           # (N, D, K)
    Minv = torch.linalg.inv(Wn.transpose(-1, -2) @ Wn + s2 * eye)                   # (N, K, K)
    Ez = (Minv @ (Wn.transpose(-1, -2) @ dev.unsqueeze(-1))).squeeze(-1)             # (N, K)
    Cov = s2 * Minv                                                                 # (N, K, K)
    Ezz = Cov + Ez.unsqueeze(-1) * Ez.unsqueeze(-2)                                  # (N, K, K)
    # mean: per feature over its observed rows, with the current loadings
    xf = torch.where(observed, x, torch.zeros((), dtype=x.dtype))
    mu = ((xf - Ez @ W.T) * m).sum(0) / m.sum(0)
    # loadings: per feature d, a ridge regression of x_nd - mu_d on E[z_n] over observed rows
    A = torch.einsum("nd,nkl->dkl", m, Ezz) + s2 * torch.diag(alpha)                # (D, K, K)
    b = torch.einsum("nd,nk->dk", m * (xf - mu), Ez)                                  # (D, K)
    W = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)                            # (D, K)
    resid = (xf - mu - Ez @ W.T) * m
    trace = torch.einsum("dk,nkl,dl->nd", W, Cov, W) * m
    s2 = (resid ** 2 + trace).sum() / m.sum()
    return W, s2, mu


_EVENT = {"loadings": 2, "mean": 1, "ard_precision": 1, "noise_scale": 0}


class _Layout:
    """The unconstrained vector theta of the own guide and its map to the global sites.

    theta = [loadings part, mean (D), log noise_scale, log ard_precision (K, with ARD)]. Without ARD
    the loadings part holds the lower-trapezoidal L (row order ``perm``, diagonal as logs) and
    W[perm] = L Q with Q orthogonal; with ARD it is W itself (D K entries).
    """

    def __init__(self, model: PPCA, data):
        self.model = model
        self.data = data
        self.N, self.D = data.shape
        self.K = model.n_components
        self.rotate = not model.ard
        self.dtype = data.dtype
        ml = model.ml_solution(_mean_impute(data))
        D, K = self.D, self.K
        if self.rotate:
            # pivot: rows of W_ML that pin down the rotation best come first (QR with column pivoting)
            from scipy.linalg import qr

            _, _, piv = qr(ml["loadings"].double().T.numpy(), pivoting=True, mode="economic")
            lead = [int(i) for i in piv[:K]]
            self.perm = torch.tensor(lead + [i for i in range(D) if i not in lead])
            self.inv_perm = torch.argsort(self.perm)
            self.rows, self.cols = torch.tril_indices(D, K)
            self.n_w = len(self.rows)
        else:
            self.n_w = D * K
        self.size = self.n_w + D + 1 + (K if model.ard else 0)
        self.ml = ml

    # theta <-> sites
    def unpack(self, theta, rotation=None):
        """Sites and, per site, log |d theta / d site| (the Delta log-densities of the guide)."""
        D, K = self.D, self.K
        part, rest = theta[:self.n_w], theta[self.n_w:]
        mean, log_sigma = rest[:D], rest[D]
        values = {"mean": mean, "noise_scale": log_sigma.exp()}
        dens = {"mean": torch.zeros((), dtype=theta.dtype), "noise_scale": -log_sigma}
        if self.rotate:
            diag = self.rows == self.cols
            entries = torch.where(diag, part.exp(), part)
            L = torch.zeros(D, K, dtype=theta.dtype).index_put((self.rows, self.cols), entries)
            Wp = L if rotation is None else L @ rotation
            values["loadings"] = Wp[self.inv_perm]
            log_diag = part[diag]
            dens["loadings"] = -log_diag.sum() - _log_lq_jacobian(log_diag, K)
        else:
            values["loadings"] = part.reshape(D, K)
            dens["loadings"] = torch.zeros((), dtype=theta.dtype)
        if self.model.ard:
            log_alpha = rest[D + 1:]
            values["ard_precision"] = log_alpha.exp()
            dens["ard_precision"] = -log_alpha.sum()
        return values, dens

    def pack(self, values) -> torch.Tensor:
        D, K = self.D, self.K
        W = values["loadings"]
        if self.rotate:
            Wp = W[self.perm]
            Q, R = torch.linalg.qr(Wp.T)                                              # Wp^T = Q R
            sign = torch.sign(torch.diagonal(R))
            L = (R * torch.where(sign == 0, torch.ones_like(sign), sign).unsqueeze(-1)).T  # (D, K) lower
            entries = L[self.rows, self.cols]
            diag = self.rows == self.cols
            part = torch.where(diag, entries.clamp(min=1e-8).log(), entries)
        else:
            part = W.reshape(-1)
        pieces = [part, values["mean"], values["noise_scale"].log().reshape(1)]
        if self.model.ard:
            pieces.append(values["ard_precision"].log())
        return torch.cat(pieces)

    def log_density(self, theta):
        """log of the posterior density of theta (up to a constant), rotation integrated out."""
        values, dens = self.unpack(theta)
        return self.model.log_joint(self.data, values) - sum(dens.values())

    def laplace_mode(self, steps: int = 100) -> torch.Tensor:
        init = dict(self.ml)
        if self.model.ard:
            init["ard_precision"] = _ard_from_loadings(init["loadings"]).clamp(max=1e4 / float(self.model.hyperparameters(self.data)[2] ** 2))
        theta = self.pack(init).detach().double().clone().requires_grad_(True)
        data = self.data
        self.data = data.double()
        opt = torch.optim.LBFGS([theta], lr=1, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            loss = -self.log_density(theta)
            loss.backward()
            return loss

        try:
            opt.step(closure)
        finally:
            self.data = data
        out = theta.detach()
        if not torch.isfinite(out).all():
            out = self.pack(init).detach().double()
        return out.to(self.dtype)

    def laplace_scale_tril(self, theta) -> torch.Tensor:
        data = self.data
        self.data = data.double()
        try:
            H = torch.autograd.functional.hessian(lambda t: -self.log_density(t), theta.double())
        finally:
            self.data = data
        H = 0.5 * (H + H.T)
        try:
            evals, evecs = torch.linalg.eigh(H)
            floor = max(float(evals.max()) * 1e-8, 1e-6)
            cov = (evecs / evals.clamp(min=floor)) @ evecs.T
            tril = torch.linalg.cholesky(0.5 * (cov + cov.T))
        except (RuntimeError, torch.linalg.LinAlgError):  # pragma: no cover - fall back to a small diagonal
            tril = torch.eye(len(theta), dtype=torch.float64) * 0.05
        return tril.to(self.dtype)


def _log_lq_jacobian(log_diag: torch.Tensor, K: int) -> torch.Tensor:
    """log J for W = L Q, Q Haar (probability measure) on O(K): dW = J(L) dL dQ with
    J = prod_k l_kk^(K-k) / (2^(nu_k/2 - 1) Gamma(nu_k/2)) * (2 pi)^(K(K+1)/4), nu_k = K - k + 1
    (k = 1..K), from Bartlett's decomposition of a Gaussian matrix."""
    k = torch.arange(K, dtype=log_diag.dtype)                                       # 0-based
    nu = K - k
    const = (-(nu / 2 - 1) * math.log(2) - torch.lgamma(nu / 2)).sum() + K * (K + 1) / 4 * math.log(2 * math.pi)
    return ((K - 1 - k) * log_diag).sum() + const
