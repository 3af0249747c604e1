"""Classical fits: closed-form maximum likelihood, EM, k-means and the like, one section per model.

They are the oracles the Bayesian fits are tested against and what ``zoo fit MODEL --method em`` runs.
Functions here take tensors validated by the model's thin methods (``PPCA.em``, ``HiddenMarkovModel.em``),
or the model object for what is model-specific (an emission family's M-step, its log potentials);
they return plain dicts of the model's site names, take an explicit ``seed`` where they draw, and
import no model.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Mapping

import torch
from tqdm import tqdm

from zoo.kernels import forward_log_prob

log = logging.getLogger(__name__)


# --- HMM ----------------------------------------------------------------------------------------


def baum_welch(hmm, seqs, params, *, max_iter: int, tol: float | None, progress: bool = True):
    """Baum-Welch: maximum-likelihood HMM parameters by expectation-maximization, from ``params``.

    ``hmm`` is a ``zoo.hmm.HiddenMarkovModel``, ``seqs`` validated ``Sequences``. E-step: expected state
    and transition counts, the gradients of the forward algorithm with respect to the log initial /
    log transition / log emission potentials (exact padding, so every direction is exact). M-step:
    normalized counts, and the emission family's closed form (``hmm.family.m_step``); a state never
    visited keeps its parameters. Stops when the log-likelihood per observation improves by less than
    ``tol`` (``None``: run ``max_iter`` iterations).
    """
    n_obs = float(seqs.lengths.sum())
    previous = -math.inf
    bar = tqdm(range(max_iter), desc="Baum-Welch", disable=not progress, leave=False)
    for it in bar:
        with torch.enable_grad():
            potentials = [p.detach().requires_grad_() for p in hmm.log_potentials(seqs, params)]
            ll = forward_log_prob(*potentials, seqs.mask, exact_padding=True).sum()
            counts_initial, counts_transition, gamma = torch.autograd.grad(ll, potentials)
        ll = float(ll.detach()) / n_obs
        bar.set_postfix(loglik_per_step=f"{ll:.5g}")
        if tol is not None and ll - previous < tol:
            break
        previous = ll
        w = gamma[seqs.mask]                                          # (N, S) state marginals of the observed steps
        seen = w.sum(0) > 0                                           # (S,)
        emission = hmm.family.m_step(seqs.values[seqs.mask], w, params)
        params = {"initial": counts_initial / counts_initial.sum(),
                  "transition": _normalize_rows(counts_transition, params["transition"]),
                  **{k: torch.where(seen.reshape(-1, *[1] * (v.dim() - 1)), v, params[k]) for k, v in emission.items()}}
    bar.close()
    log.info("Baum-Welch: %d iterations, log-likelihood per step %.6g", it + 1, ll)
    return params


def kmeans_start(hmm, seqs, seed: int):
    """An HMM read off k-means++ clusters of the observed steps (seeded): the emission parameters per
    cluster (``hmm.family.cluster``) and, from the cluster labels of consecutive steps, first-state
    counts + 1 (S,), transition counts + 1 (S, S) and visits + 1 per state (S, 1) (add-one smoothing)."""
    S, mask = hmm.n_states, seqs.mask
    x = seqs.values[mask]                                                   # (N, *E)
    emission, flat = hmm.family.cluster(x, S, hmm.family.size(x), seed)
    labels = torch.full(mask.shape, -1, dtype=torch.long)                   # (B, T), -1 on padding
    labels[mask] = flat
    dtype = next(iter(emission.values())).dtype
    first = torch.bincount(labels[:, 0], minlength=S).to(dtype) + 1
    pairs = (labels[:, :-1] >= 0) & (labels[:, 1:] >= 0)
    counts = torch.ones(S, S, dtype=dtype).index_put_((labels[:, :-1][pairs], labels[:, 1:][pairs]),
                                                       torch.ones((), dtype=dtype), accumulate=True)
    visits = torch.bincount(flat, minlength=S).to(dtype).unsqueeze(-1) + 1
    return emission, first, counts, visits


def _normalize_rows(counts: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    total = counts.sum(-1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1e-300), previous)


# --- k-means ------------------------------------------------------------------------------------


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 50):
    """k-means++ seeding and Lloyd iterations on standardized features. Returns (centers, labels)."""
    gen = torch.Generator().manual_seed(int(seed))
    scale = x.std(0) if x.shape[0] > 1 else torch.ones(x.shape[-1], dtype=x.dtype)
    z = x / torch.where(scale > 0, scale, torch.ones_like(scale))
    centers = z[torch.randint(0, z.shape[0], (1,), generator=gen)]
    for _ in range(1, k):
        d2 = torch.cdist(z, centers).min(-1).values ** 2
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        centers = torch.cat([centers, z[torch.multinomial(probs, 1, generator=gen)]])
    for _ in range(iterations):
        labels = torch.cdist(z, centers).argmin(-1)
        new = torch.stack([z[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(k)])
        if torch.allclose(new, centers):
            break
        centers = new
    labels = torch.cdist(z, centers).argmin(-1)
    return centers * torch.where(scale > 0, scale, torch.ones_like(scale)), labels


def kmeans_gaussians(x: torch.Tensor, k: int, spread: torch.Tensor, *, seed: int = 0):
    """:func:`kmeans` clusters as diagonal Gaussians: centers (k, D), per-cluster standard deviations
    (k, D) and labels (N,). A cluster of fewer than two points gets ``spread`` (D,), and every
    standard deviation is at least 5% of it (mixture and HMM starting values)."""
    centers, labels = kmeans(x, k, seed=seed)
    counts = torch.bincount(labels, minlength=k)
    scales = torch.stack([x[labels == j].std(0) if counts[j] > 1 else spread for j in range(k)])
    return centers, torch.maximum(torch.nan_to_num(scales, nan=1.0), 0.05 * spread), labels


# --- PPCA ------------------------------------------------------------------------------------------
# Probabilistic PCA (Tipping & Bishop 1999), x_n ~ N(mean, W W^T + sigma^2 I): x (N, D) with NaN for
# missing entries, loadings W (D, K), noise_scale sigma (), mean (D,), ard_precision alpha (K,).


def observed_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and variance (1/n) of the observed (non-NaN) entries of ``x`` (N, D); a column
    without variance gets variance 1."""
    observed = ~torch.isnan(x)
    count = observed.sum(0).clamp(min=1)
    zero = torch.zeros((), dtype=x.dtype)
    center = torch.where(observed, x, zero).sum(0) / count
    var = (torch.where(observed, x - center, zero) ** 2).sum(0) / count
    return center, torch.where(var > 0, var, torch.ones_like(var))


def mean_impute(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every NaN replaced by the mean of the observed entries of its column."""
    observed = ~torch.isnan(x)
    if bool(observed.all()):
        return x
    center = torch.where(observed, x, torch.zeros((), dtype=x.dtype)).sum(0) / observed.sum(0).clamp(min=1)
    return torch.where(observed, x, center.expand_as(x))


def ppca_ard_precision(loadings: torch.Tensor) -> torch.Tensor:
    """Bishop's (1999) re-estimate of the ARD precisions, alpha_k = D / ||w_k||^2 (at most 1e10)."""
    return (loadings.shape[-2] / (loadings ** 2).sum(-2).clamp(min=1e-12)).clamp(max=1e10)


def ppca_ml(x: torch.Tensor, n_components: int, *, ard: bool = False) -> dict[str, torch.Tensor]:
    """Closed-form maximum likelihood (Tipping & Bishop 1999) of complete ``x``: with the sample covariance
    S (1/N) and its eigenvalues l_1 >= ... >= l_D, sigma^2 = mean(l_{K+1..D}), W = U_K (L_K - sigma^2 I)^1/2,
    mean = sample mean. With ``ard``, also ``ard_precision`` = D / ||w_k||^2."""
    K = n_components
    mu = x.mean(0)
    S = (x - mu).T @ (x - mu) / x.shape[0]
    evals, evecs = torch.linalg.eigh(S.double())
    evals, evecs = evals.flip(0), evecs.flip(1)
    s2 = evals[K:].mean()
    W = evecs[:, :K] * (evals[:K] - s2).clamp(min=0).sqrt()
    out = {"loadings": W.to(x.dtype), "noise_scale": s2.sqrt().to(x.dtype), "mean": mu}
    if ard:
        out["ard_precision"] = ppca_ard_precision(out["loadings"])
    return out


def ppca_ml_log_likelihood(x: torch.Tensor, n_components: int) -> float:
    """The maximized log-likelihood of complete ``x``,
    L* = -N/2 [D log 2 pi + sum_{j<=K} log l_j + (D-K) log sigma^2_ML + D]."""
    x = x.double()
    N, D = x.shape
    K = n_components
    S = (x - x.mean(0)).T @ (x - x.mean(0)) / N
    evals = torch.linalg.eigvalsh(S).flip(0)
    s2 = evals[K:].mean()
    return float(-N / 2 * (D * math.log(2 * math.pi) + evals[:K].log().sum() + (D - K) * s2.log() + D))


def ppca_posterior_z(x: torch.Tensor, params: Mapping[str, torch.Tensor]):
    """The E-step: p(z_n | x_n, W, sigma, mean) = N(M^-1 W^T (x_n - mean), sigma^2 M^-1), M = W^T W + sigma^2 I,
    per row, NaN entries of ``x`` left out. ``params`` may carry leading batch dims; returns ``loc``
    (*b, N, K) and ``scale_tril`` (*b, N or 1, K, K)."""
    W, sigma, mean = params["loadings"], params["noise_scale"], params["mean"]
    K = W.shape[-1]
    eye = torch.eye(K, dtype=W.dtype)
    s2 = (sigma ** 2)[..., None, None, None]                                    # (*b, 1, 1, 1)
    observed = ~torch.isnan(x)
    dev = torch.where(observed, x - mean.unsqueeze(-2), torch.zeros((), dtype=x.dtype))  # (*b, N, D)
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


def ppca_em(x: torch.Tensor, n_components: int, *, log_likelihood: Callable, ard: bool = False, seed: int = 0,
            max_iter: int = 5000, tol: float = 1e-9) -> dict[str, torch.Tensor]:
    """Tipping & Bishop's EM for maximum likelihood, from a random start (``seed``).

    Complete data: W <- S W (sigma^2 I + M^-1 W^T S W)^-1 and sigma^2 <- tr(S - S W M^-1 W_new^T) / D,
    M = W^T W + sigma^2 I (eqs. 29-30). With ``ard`` the M-step adds sigma^2 A (A = diag(alpha)) to the
    expected second moments of z and re-estimates alpha_k = D / ||w_k||^2 (Bishop 1999; the Gamma
    hyperprior is ignored). With NaN entries the E-step uses each row's observed entries and the M-step
    regresses each feature on E[z] over its observed rows (EM for PPCA with missing values, Tipping &
    Bishop 1999 appendix; Ilin & Raiko 2010). Every 5 iterations ``log_likelihood(x, params)`` (per row)
    is evaluated; EM stops when it gains less than ``tol * N``. Returns the sites in ``x``'s dtype.
    """
    dtype = x.dtype
    x = x.double()
    gen = torch.Generator().manual_seed(int(seed))
    N, D = x.shape
    K = n_components
    observed = ~torch.isnan(x)
    complete = bool(observed.all())
    mu, var = observed_moments(x)
    scale = var.mean().sqrt()
    W = torch.randn(D, K, generator=gen, dtype=torch.float64) * scale
    s2 = scale ** 2
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
            W, s2, mu = _ppca_em_step_missing(x, observed, W, s2, mu, alpha)
        if ard:
            alpha = ppca_ard_precision(W).double()
        if it % 5 == 4 or it == max_iter - 1:
            ll = float(log_likelihood(x, {"loadings": W, "noise_scale": s2.sqrt(), "mean": mu}).sum())
            if ll - prev < tol * N and it > 10:
                break
            prev = ll
    log.info("PPCA EM: %d iterations in %.3fs, log-likelihood %.6g", it + 1, time.perf_counter() - start, prev)
    out = {"loadings": W.to(dtype), "noise_scale": s2.sqrt().to(dtype), "mean": mu.to(dtype)}
    if ard:
        out["ard_precision"] = alpha.to(dtype)
    return out


def _ppca_em_step_missing(x, observed, W, s2, mu, alpha):
    """One EM step with missing entries (per-row E-step, per-feature M-step). Shapes: x (N, D)."""
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


def ppca_impute(x: torch.Tensor, params: Mapping[str, torch.Tensor], *, chunk: int = 256) -> torch.Tensor:
    """``x`` with every NaN replaced by its predictive mean E[x_m | x_o] = mean_m + W_m E[z | x_o], averaged
    over the draws of ``params`` (global sites with optional leading draw dims: posterior draws, or one
    fit such as :func:`ppca_em`'s)."""
    observed = ~torch.isnan(x)
    batch = params["loadings"].shape[:-2]
    flat = {k: params[k].reshape(-1, *params[k].shape[len(batch):]) for k in ("loadings", "noise_scale", "mean")}
    total = torch.zeros_like(x)
    S = flat["loadings"].shape[0]
    with torch.no_grad():
        for i in range(0, S, chunk):
            p = {k: v[i:i + chunk] for k, v in flat.items()}
            zloc, _ = ppca_posterior_z(x, p)                                       # (s, N, K)
            recon = (p["loadings"].unsqueeze(-3) @ zloc.unsqueeze(-1)).squeeze(-1) + p["mean"].unsqueeze(-2)
            total = total + recon.sum(0)
    return torch.where(observed, x, total / S)
