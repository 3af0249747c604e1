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
the per-feature mean and sd of the data being fitted unless fixed with ``prior_center`` / ``prior_spread``
(simulation-based calibration needs a fixed prior), ``scale`` is the root mean of spread^2 (1 for
standardized data); without data they are 0 and 1. The noise is isotropic, so standardize features
measured in different units (the bundled ``wine`` dataset is standardized for that reason).

Two forms of the same model:

* **latent form** (:meth:`PPCA.model`, z explicit): what SVI fits, with the own guide
  (``zoo/ppca_guide.py``: a full-rank Gaussian over the globals, averaged over rotations of W, times
  the exact conditional p(z_n | x_n, globals) of :meth:`PPCA.posterior_z`) or with an autoguide.
* **marginal form** (:meth:`PPCA.marginal_model`, z integrated out): x_n ~ N(mean, W W^T + sigma^2 I)
  (``zoo/ppca_marginal.py``), what NUTS samples (D K + D + 1 dimensions instead of N K more) and MAP
  maximizes; :meth:`PPCA.log_likelihood` is its per-row density. ``marginalize=False``: the latent form.

Rotation: W enters the likelihood (and, without ARD, the prior) only through W W^T, so it is identified
only up to rotation. :meth:`PPCA.align` reports identifiable quantities: ``explained_variance`` (the K
leading eigenvalues of W W^T + sigma^2 I, as scikit-learn's ``explained_variance_``), ``noise_variance``
sigma^2, ``mean``, and ``subspace_angle``, the principal angles (degrees) between each draw's column
space of W and the ``principal_axes`` frame (leading eigenvectors of the posterior mean of W W^T, or
another posterior's, with ``reference=``); with ARD, ``ard_precision`` sorted.

Missing data: with ``missing="mask"`` NaN entries are left out of the likelihood; else NaN is an error.
Classical baselines (``zoo/baselines.py``): :meth:`PPCA.ml_solution`, :meth:`PPCA.ml_log_likelihood`
(closed-form ML and L*), :meth:`PPCA.em` (EM, with ARD and missing entries), :meth:`PPCA.impute`.
"""

from __future__ import annotations

import logging
from typing import Mapping

import pyro
import pyro.distributions as dist
import torch

from zoo import baselines
from zoo.base import ZooModel, as_matrix, check_setting
from zoo.ppca_guide import RotationAveragedGuide, haar
from zoo.ppca_marginal import MarginalNormal, marginal_log_prob, observed_marginal, zero_filled

log = logging.getLogger(__name__)

MISSING = (None, "mask")
ARD_SHAPE, ARD_RATE = 1.0, 0.01   # ard_precision ~ Gamma(ARD_SHAPE, ARD_RATE * scale^2)


class PPCA(ZooModel):
    """Bayesian probabilistic PCA, latent and marginal forms (see the module docstring).

    :param n_components: number of components K (1 <= K < D).
    :param ard: give every column of the loadings its own precision (Bishop's Bayesian PCA).
    :param missing: None (NaN is an error) or "mask" (NaN entries are left out of the likelihood).
    :param marginalize: NUTS and MAP use the marginal form (True, default) or the latent form.
    :param prior_center: fixed prior center of ``mean``, one number or one per feature (default: data mean).
    :param prior_spread: fixed prior spread per feature, > 0 (default: data standard deviation); also
        sets ``scale``, the prior scale of loadings and noise, to the root mean of its square.
    :param dim: feature dimension D for the generative story when no data is given.
    """

    name = "ppca"
    dims = {"loadings": ["feature", "component"], "noise_scale": [], "mean": ["feature"],
            "ard_precision": ["component"], "z": ["point", "component"], "obs": ["point", "feature"],
            "explained_variance": ["component"], "noise_variance": [], "subspace_angle": ["component"]}
    default_dataset = "wine"
    alignment_frame = ("principal_axes",)

    def __init__(self, n_components: int = 2, *, ard: bool = False, missing: str | None = None,
                 marginalize: bool = True, prior_center=None, prior_spread=None, dim: int = 3):
        super().__init__()
        self.n_components = check_setting(n_components, "n_components", kind="int", positive=True)
        self.ard = check_setting(ard, "ard", kind="bool")
        self.missing = check_setting(missing, "missing", kind="choice", choices=MISSING)
        self.marginalize = check_setting(marginalize, "marginalize", kind="bool")
        self.prior_center = check_setting(prior_center, "prior_center", shape=(0, 1), allow_none=True)
        self.prior_spread = check_setting(prior_spread, "prior_spread", shape=(0, 1), positive=True, allow_none=True)
        self.dim = check_setting(dim, "dim", kind="int", minimum=2)
        self.own_guide = None   # a RotationAveragedGuide, built from the data on the first call of guide

    @property
    def global_sites(self) -> tuple[str, ...]:
        return ("loadings", "noise_scale", "mean") + (("ard_precision",) if self.ard else ())

    # --- the story ---------------------------------------------------------------------------
    def hyperparameters(self, data=None):
        """``(center (D,), spread (D,), scale ())`` of the priors (see the module docstring)."""
        if data is None:
            D, dtype = self.dim, torch.get_default_dtype()
            center, var = torch.zeros(D, dtype=dtype), torch.ones(D, dtype=dtype)
        else:
            D, dtype = data.shape[-1], data.dtype
            center, var = baselines.observed_moments(data)
        if self.prior_center is not None:
            center = self._fixed("prior_center", D, dtype)
        if self.prior_spread is not None:
            var = self._fixed("prior_spread", D, dtype) ** 2
        return center, var.sqrt(), var.mean().sqrt()

    def _fixed(self, name, D, dtype):
        value = torch.as_tensor(getattr(self, name), dtype=dtype)
        if value.numel() not in (1, D):
            raise ValueError(f"{name}: has {value.numel()} entries but the data have D={D} columns; give one "
                             "number or D of them")
        return value.expand(D)

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
                filled, observed = zero_filled(data)
                return pyro.sample("obs", noise.mask(observed).to_event(1), obs=filled)     # (N, D)
            return pyro.sample("obs", noise.to_event(1), obs=data)                          # (N, D)

    def marginal_model(self, data=None, *, n: int | None = None):
        """Marginal form: x_n ~ N(mean, W W^T + sigma^2 I), z integrated out (the latent form when
        ``marginalize=False``)."""
        if not self.marginalize:
            return self.model(data, n=n)
        W, sigma, mean = self._sample_globals(data)
        N = data.shape[0] if data is not None else (n or 1)
        with pyro.plate("data", N, dim=-1):
            if data is not None and self.missing == "mask":
                filled, observed = zero_filled(data)
                return pyro.sample("obs", observed_marginal(observed, W, sigma, mean), obs=filled)  # (N, D)
            return pyro.sample("obs", MarginalNormal(mean, W, sigma), obs=data)               # (N, D)

    def guide(self, data=None, *, n: int | None = None):
        """The own guide (:class:`zoo.ppca_guide.RotationAveragedGuide`), built from ``data`` on the first call."""
        if data is None:
            raise ValueError("data: the PPCA guide is built from data; got None")
        if self.own_guide is None:
            self.own_guide = RotationAveragedGuide(self, data)
        return self.own_guide(data)

    def posterior_z(self, data, params: Mapping[str, torch.Tensor]):
        """The exact conditional p(z_n | x_n, W, sigma, mean) per row, NaN entries left out: ``loc``
        (*b, N, K), ``scale_tril`` (*b, N or 1, K, K) (the E-step, :func:`zoo.baselines.ppca_posterior_z`)."""
        return baselines.ppca_posterior_z(data, params)

    # --- the protocol ----------------------------------------------------------------------
    def validate(self, data):
        x = as_matrix(data, name="data", allow_nan=True)
        n_nan = int(torch.isnan(x).sum())
        if n_nan and self.missing != "mask":
            first = tuple(torch.isnan(x).nonzero()[0].tolist())
            raise ValueError(
                f"data: contains {n_nan} NaN value(s) (first at index {first}); PPCA treats NaN as missing only "
                "with missing='mask' (zoo.get('ppca', missing='mask'), or --option missing=mask), else "
                "remove or impute them first")
        (N, D), K = x.shape, self.n_components
        if N < 2:
            raise ValueError(f"data: PPCA needs at least 2 rows, got N={N}")
        if K >= D:
            raise ValueError(f"n_components: expected fewer components than features (K < D), got K={K} for "
                             f"D={D} features")
        observed = ~torch.isnan(x)
        few = (observed.sum(0) < 2).nonzero().flatten().tolist()
        if few:
            raise ValueError(f"data: column(s) {few} have fewer than 2 observed values; drop them")
        center, var = baselines.observed_moments(x)
        spread = torch.where(observed, (x - center).abs(), torch.zeros((), dtype=x.dtype)).amax(0)
        constant = (spread <= 1e-12 * (1 + center.abs())).nonzero().flatten().tolist()
        if constant:
            raise ValueError(f"data: column(s) {constant} are constant; PPCA's isotropic noise cannot fit a feature "
                             "without variance, drop them")
        if float(var.max() / var.min()) > 1e3:
            log.warning("feature variances differ by a factor %.3g: PPCA's noise is isotropic, consider "
                        "standardizing the features", float(var.max() / var.min()))
        self.hyperparameters(x)   # a fixed prior_center / prior_spread must fit D
        return x

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor], *, chunk: int = 256) -> torch.Tensor:
        """log p(x_n | W, sigma, mean) per row: the marginal Gaussian N(mean, W W^T + sigma^2 I) of the
        row's observed entries (z integrated out). Params may carry leading batch dims; (*b, N)."""
        return marginal_log_prob(data, params["loadings"], params["noise_scale"], params["mean"], chunk=chunk)

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
        """Draw ``n`` rows; parameters from the prior unless ``params`` fixes them (then D is taken from
        ``params["loadings"]``). Returns ``(data (n, D), truth)`` with the global sites and ``z``."""
        n = check_setting(n, "n", kind="int", minimum=1)
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
        params = self.ml_solution(baselines.mean_impute(data))
        K = self.n_components
        R = haar(K, data.dtype, generator=gen)
        jitter = 1 + 0.05 * torch.randn(K, generator=gen, dtype=data.dtype)
        values = dict(params, loadings=params["loadings"] @ R * jitter)
        if self.ard:
            values["ard_precision"] = baselines.ppca_ard_precision(values["loadings"])
        values["z"] = self.posterior_z(data, values)[0]
        return values

    def align(self, draws, reference=None):
        """Identifiable quantities of draws with leading dims (see the module docstring)."""
        W, sigma, mean = draws["loadings"], draws["noise_scale"], draws["mean"]
        D, K = W.shape[-2:]
        eig = torch.linalg.eigvalsh(W.transpose(-1, -2) @ W).flip(-1).clamp(min=0)  # (*b, K), descending
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
        out = {"explained_variance": eig + (sigma ** 2)[..., None], "noise_variance": sigma ** 2, "mean": mean,
               "subspace_angle": principal_angles(W, axes)}
        if self.ard and "ard_precision" in draws:
            out["ard_precision"] = draws["ard_precision"].sort(-1).values
        out["principal_axes"] = axes
        return out

    def coords(self, data) -> dict[str, list]:
        return {"component": list(range(self.n_components))}

    def ppc_statistics(self, values, data, params):
        """``eigenvalues``: the spectrum of the sample covariance (1/N, descending, all D of them), the
        entries missing in ``data`` left out of ``values`` too (mean-imputed per column)."""
        x = baselines.mean_impute(torch.where(torch.isnan(data), data, values))
        x = x - x.mean(0)
        return {"eigenvalues": torch.linalg.eigvalsh(x.T @ x / len(x)).flip(0).numpy()}

    def figures(self, data, posteriors, dataset=None):
        from zoo import plots

        return {"scree": plots.scree(self, data, posteriors, dataset),
                "latent": plots.latent_projection(self, data, posteriors, dataset)}

    # --- classical baselines (zoo/baselines.py) ---------------------------------------------
    def ml_solution(self, data) -> dict[str, torch.Tensor]:
        """Closed-form maximum likelihood of complete data (:func:`zoo.baselines.ppca_ml`)."""
        return baselines.ppca_ml(self._complete(data, "ml_solution"), self.n_components, ard=self.ard)

    def ml_log_likelihood(self, data) -> float:
        """The maximized log-likelihood L* of complete data (:func:`zoo.baselines.ppca_ml_log_likelihood`)."""
        return baselines.ppca_ml_log_likelihood(self._complete(data, "ml_log_likelihood"), self.n_components)

    def em(self, data, seed: int = 0, *, max_iter: int = 5000, tol: float = 1e-9) -> dict[str, torch.Tensor]:
        """Maximum likelihood by EM from a random start (``seed``), missing entries allowed with
        ``missing="mask"`` (:func:`zoo.baselines.ppca_em`)."""
        return baselines.ppca_em(self.validate(data), self.n_components, log_likelihood=self.log_likelihood,
                                 ard=self.ard, seed=seed, max_iter=max_iter, tol=tol)

    def impute(self, data, params) -> torch.Tensor:
        """``data`` with every NaN replaced by its posterior predictive mean, averaged over the draws of
        ``params``: a Posterior or a dict of global sites (:func:`zoo.baselines.ppca_impute`)."""
        params = getattr(params, "global_samples", params)
        return baselines.ppca_impute(as_matrix(data, name="data", allow_nan=True), params)

    def _complete(self, data, what):
        x = self.validate(data)
        if torch.isnan(x).any():
            raise ValueError(f"data: {what} needs complete data; use em() for data with missing entries")
        return x


def principal_angles(W: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Principal angles (degrees, ascending) between the column space of every ``W`` (*b, D, K) and
    the span of the orthonormal ``axes`` (D, K): arccos of the singular values of Q^T axes."""
    Q = torch.linalg.qr(W.double())[0]                                              # (*b, D, K)
    cos = torch.linalg.svdvals(Q.transpose(-1, -2) @ axes.double()).clamp(max=1.0)  # descending
    return torch.rad2deg(torch.arccos(cos)).to(W.dtype)
