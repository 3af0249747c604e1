"""PPCA's own guide over the global sites: rotation-averaged, started at the Laplace approximation and
learned in its whitened coordinates (the model and its story: ``zoo/ppca.py``).

The guide draws one unconstrained vector theta (the auxiliary site ``_ppca_globals``, (P,)) from a
full-rank Gaussian and maps it to the global sites with :class:`Layout`::

    theta = [loadings part, mean (D), log noise_scale, log ard_precision (K, with ARD)]

**Rotation.** Without ARD the posterior is invariant to W -> W R (R orthogonal): a ring of equally good
loadings that a Gaussian in W cannot follow. The guide therefore draws W = L Q with L lower-trapezoidal
(rows in a pivoted order, positive diagonal stored as logs: the loadings part of theta) and Q
Haar-uniform on O(K) (:func:`haar`), and scores W with the exact density of that construction,
q(W) = q(L) / J(L) (:func:`log_lq_jacobian`, from Bartlett's decomposition). The guide is then rotation
invariant like the posterior. With ARD the prior is not rotation invariant and the loadings part is W
itself (D K entries).

**Laplace whitening.** theta = theta0 + L0 u: theta0 is the posterior mode (L-BFGS on the marginal log
joint from the maximum-likelihood solution), L0 L0^T the inverse Hessian there, and the learned Gaussian
is over u, starting at N(0, I). Posterior sds differ by orders of magnitude between sites (log
noise_scale against the loadings), while Adam moves every parameter by about ``lr`` per step whatever
its gradient: in theta a step that suits the loadings is a large part of a posterior sd of log
noise_scale, and the single-sample gradient noise leaves the fitted guide off. In u, ``lr`` is a
fraction of a posterior sd in every direction (the numbers for the wine data: README.md, PPCA).

Why not Pyro's ``AutoLaplaceApproximation``: it works in the model's own unconstrained coordinates,
where (without ARD) the log joint is constant along the K(K-1)/2 rotation directions of W, so at a mode
the Hessian it inverts (``H.inverse()``, no floor) is singular along them, and elsewhere its Gaussian is
stretched along the tangent of the ring of rotations instead of averaging over it. It also finds the mode
by SVI on a Delta guide where the closed-form ML solution is at hand, and returns a frozen
``AutoMultivariateNormal``, whereas this guide goes on learning in the whitened coordinates. The Hessian
here is the same autograd Hessian, taken in the coordinates where the rotation is integrated out.

z is not learned: given the sampled globals the guide draws the exact conditional p(z_n | x_n, globals)
(``PPCA.posterior_z``), so SVI's error is confined to the globals.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from pyro.distributions import constraints

from zoo.baselines import mean_impute, ppca_ard_precision

EVENT_DIM = {"loadings": 2, "mean": 1, "ard_precision": 1, "noise_scale": 0}


class RotationAveragedGuide(PyroModule):
    """The guide of ``model`` (a ``PPCA``) built from ``data`` (N, D): the Laplace approximation
    N(theta0, L0 L0^T) in the buffers ``laplace_loc`` (P,) and ``laplace_tril`` (P, P), and the learned
    full-rank Gaussian N(q_loc, S S^T) of u = L0^-1 (theta - theta0), S = diag(q_scale) q_unit_tril (as
    ``AutoMultivariateNormal``). Call it with the data to draw the global sites and z."""

    def __init__(self, model, data):
        super().__init__()
        self.layout = Layout(model, data)
        theta = self.layout.laplace_mode()
        P = len(theta)
        self.register_buffer("laplace_loc", theta.detach().clone(), persistent=True)
        self.register_buffer("laplace_tril", self.layout.laplace_scale_tril(theta).detach().clone(), persistent=True)
        self.q_loc = PyroParam(torch.zeros(P, dtype=theta.dtype))
        self.q_scale = PyroParam(torch.ones(P, dtype=theta.dtype), constraints.softplus_positive)
        self.q_unit_tril = PyroParam(torch.eye(P, dtype=theta.dtype), constraints.unit_lower_cholesky)

    def forward(self, data):
        layout, model = self.layout, self.layout.model
        loc = self.laplace_loc + self.laplace_tril @ self.q_loc
        scale_tril = self.laplace_tril @ (self.q_scale.unsqueeze(-1) * self.q_unit_tril)
        theta = pyro.sample("_ppca_globals", dist.MultivariateNormal(loc, scale_tril=scale_tril),
                            infer={"is_auxiliary": True})                                   # (P,)
        rotation = haar(layout.K, theta.dtype) if layout.rotate else None
        values, log_dens = layout.unpack(theta, rotation)
        for name in model.global_sites:
            pyro.sample(name, dist.Delta(values[name], log_density=log_dens[name], event_dim=EVENT_DIM[name]))
        with pyro.plate("data", data.shape[0], dim=-1):
            z_loc, z_tril = model.posterior_z(data, values)
            pyro.sample("z", dist.MultivariateNormal(z_loc, scale_tril=z_tril))             # (N, K)


class Layout:
    """The unconstrained vector theta of the guide and its map to the global sites of ``model`` fitted
    to ``data`` (N, D). Without ARD the loadings part holds the lower-trapezoidal L (row order ``perm``,
    diagonal as logs) and W[perm] = L Q with Q orthogonal; with ARD it is W itself (D K entries)."""

    def __init__(self, model, data):
        self.model = model
        self.data = data
        self.N, self.D = data.shape
        self.K = model.n_components
        self.rotate = not model.ard
        self.ml = model.ml_solution(mean_impute(data))
        D, K = self.D, self.K
        if self.rotate:
            # pivot: rows of W_ML that pin down the rotation best come first (QR with column pivoting)
            from scipy.linalg import qr

            _, _, piv = qr(self.ml["loadings"].double().T.numpy(), pivoting=True, mode="economic")
            lead = [int(i) for i in piv[:K]]
            self.perm = torch.tensor(lead + [i for i in range(D) if i not in lead])
            self.inv_perm = torch.argsort(self.perm)
            self.rows, self.cols = torch.tril_indices(D, K)
            self.n_w = len(self.rows)
        else:
            self.n_w = D * K
        self.size = self.n_w + D + 1 + (K if model.ard else 0)

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
            dens["loadings"] = -log_diag.sum() - log_lq_jacobian(log_diag, K)
        else:
            values["loadings"] = part.reshape(D, K)
            dens["loadings"] = torch.zeros((), dtype=theta.dtype)
        if self.model.ard:
            log_alpha = rest[D + 1:]
            values["ard_precision"] = log_alpha.exp()
            dens["ard_precision"] = -log_alpha.sum()
        return values, dens

    def pack(self, values) -> torch.Tensor:
        W = values["loadings"]
        if self.rotate:
            Q, R = torch.linalg.qr(W[self.perm].T)                                   # Wp^T = Q R
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

    def log_density(self, theta, data):
        """log of the posterior density of theta given ``data`` (up to a constant), rotation integrated out."""
        values, dens = self.unpack(theta)
        return self.model.log_joint(data, values) - sum(dens.values())

    def laplace_mode(self, steps: int = 100) -> torch.Tensor:
        """The posterior mode of theta (L-BFGS in float64 from the ML solution), in the data's dtype."""
        init = dict(self.ml)
        if self.model.ard:
            scale = self.model.hyperparameters(self.data)[2]
            init["ard_precision"] = ppca_ard_precision(init["loadings"]).clamp(max=1e4 / float(scale ** 2))
        theta = self.pack(init).detach().double().clone().requires_grad_(True)
        data = self.data.double()
        opt = torch.optim.LBFGS([theta], lr=1, max_iter=steps, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure():
            opt.zero_grad()
            loss = -self.log_density(theta, data)
            loss.backward()
            return loss

        opt.step(closure)
        out = theta.detach()
        if not torch.isfinite(out).all():
            out = self.pack(init).detach().double()
        return out.to(self.data.dtype)

    def laplace_scale_tril(self, theta) -> torch.Tensor:
        """A Cholesky factor of the inverse Hessian of -log density at ``theta`` (float64; eigenvalues
        floored at 1e-8 of the largest), in the data's dtype."""
        data = self.data.double()
        H = torch.autograd.functional.hessian(lambda t: -self.log_density(t, data), theta.double())
        H = 0.5 * (H + H.T)
        try:
            evals, evecs = torch.linalg.eigh(H)
            floor = max(float(evals.max()) * 1e-8, 1e-6)
            cov = (evecs / evals.clamp(min=floor)) @ evecs.T
            tril = torch.linalg.cholesky(0.5 * (cov + cov.T))
        except (RuntimeError, torch.linalg.LinAlgError):  # pragma: no cover - fall back to a small diagonal
            tril = torch.eye(len(theta), dtype=torch.float64) * 0.05
        return tril.to(self.data.dtype)


def haar(K: int, dtype, generator=None) -> torch.Tensor:
    """A Haar-uniform random orthogonal K x K matrix (QR of a Gaussian matrix, signs fixed)."""
    A = torch.randn(K, K, dtype=dtype, generator=generator)
    Q, R = torch.linalg.qr(A)
    d = torch.sign(torch.diagonal(R))
    return Q * torch.where(d == 0, torch.ones_like(d), d)


def log_lq_jacobian(log_diag: torch.Tensor, K: int) -> torch.Tensor:
    """log J for W = L Q, Q Haar (probability measure) on O(K): dW = J(L) dL dQ with
    J = prod_k l_kk^(K-k) / (2^(nu_k/2 - 1) Gamma(nu_k/2)) * (2 pi)^(K(K+1)/4), nu_k = K - k + 1
    (k = 1..K), from Bartlett's decomposition of a Gaussian matrix."""
    k = torch.arange(K, dtype=log_diag.dtype)                                       # 0-based
    nu = K - k
    const = (-(nu / 2 - 1) * math.log(2) - torch.lgamma(nu / 2)).sum() + K * (K + 1) / 4 * math.log(2 * math.pi)
    return ((K - 1 - k) * log_diag).sum() + const
