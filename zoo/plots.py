"""Model-specific report figures: the ``figures`` hooks of the zoo's models (the generic figures, and the
helpers these share with them, live in ``inference.reporting.plots``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Ellipse

from inference.reporting.plots import aligned_means, image_grid, interval


def mixture_clusters(model, data, posteriors, dataset=None):
    """Data coloured by posterior cluster, with each posterior's components (2-sd ellipses)."""
    from sklearn.metrics import adjusted_rand_score

    means, ref = aligned_means(posteriors)
    draws = {k: v.reshape(-1, *v.shape[2:]) for k, v in ref.aligned.items()}
    keep = torch.linspace(0, draws["locs"].shape[0] - 1, min(400, draws["locs"].shape[0])).round().long()
    resp = model.responsibilities(data, {k: v[keep] for k, v in draws.items()}).mean(0)   # (N, K)
    cluster = resp.argmax(-1).numpy()
    x = data.numpy()
    names = (dataset.feature_names if dataset is not None and dataset.feature_names else
             [f"feature {d}" for d in range(x.shape[1])])
    has_labels = dataset is not None and dataset.labels is not None and len(dataset.labels) == len(x)
    fig, axes = plt.subplots(1, 2 if has_labels else 1, figsize=(11 if has_labels else 6, 4.8), squeeze=False)
    ax = axes[0, 0]
    K = model.n_components
    colors = plt.cm.tab10(np.arange(K) % 10)
    styles = ["--", "-", ":", "-."]
    if x.shape[1] == 1:
        ax.hist(x[:, 0], bins=40, density=True, color="0.8")
        grid = np.linspace(x.min() - 1 * x.std(), x.max() + 1 * x.std(), 400)
        for i, (label, m) in enumerate(means.items()):
            dens = sum(float(m["weights"][k]) * np.exp(-0.5 * ((grid - float(m["locs"][k, 0])) / float(m["scales"][k, 0])) ** 2)
                       / (float(m["scales"][k, 0]) * np.sqrt(2 * np.pi)) for k in range(K))
            ax.plot(grid, dens, styles[i % 4], color="k", label=f"{label.upper()} mixture density")
        ax.set_xlabel(names[0])
    else:
        ax.scatter(x[:, 0], x[:, 1], c=colors[cluster], s=14, alpha=0.75, edgecolors="none")
        for i, (label, m) in enumerate(means.items()):
            for k in range(K):
                loc, sc = m["locs"][k, :2].numpy(), m["scales"][k, :2].numpy()
                ax.add_patch(Ellipse(loc, 4 * sc[0], 4 * sc[1], fill=False, ls=styles[i % 4], lw=1.6,
                                     color=colors[k], label=f"{label.upper()}" if k == 0 else None))
                ax.plot(*loc, "x", color=colors[k], ms=8)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.legend(loc="best", fontsize=8)
    title = f"{K}-component mixture, points coloured by posterior cluster ({list(means)[-1].upper()})"
    if x.shape[1] > 2:
        title += f"\nfirst 2 of {x.shape[1]} features shown"
    ax.set_title(title, fontsize=10)
    if has_labels:
        ari = adjusted_rand_score(dataset.labels, cluster)
        ax2 = axes[0, 1]
        label_names = dataset.label_names or [str(v) for v in np.unique(dataset.labels)]
        for j, name in enumerate(label_names):
            sel = dataset.labels == j
            ax2.scatter(x[sel, 0], x[sel, 1] if x.shape[1] > 1 else np.zeros(sel.sum()), s=14, alpha=0.75,
                        label=name, edgecolors="none")
        ax2.set_xlabel(names[0])
        if x.shape[1] > 1:
            ax2.set_ylabel(names[1])
        ax2.legend(fontsize=8)
        ax2.set_title(f"known classes (adjusted Rand index of the clusters: {ari:.3f})", fontsize=10)
    fig.tight_layout()
    return fig


# --- PPCA --------------------------------------------------------------------------------------


def scree(model, data, posteriors, dataset=None):
    """Eigenvalues of the sample covariance (1/N; columns mean-imputed where entries are missing) with
    each posterior's K leading eigenvalues of W W^T + sigma^2 I and its noise variance sigma^2 (the
    remaining D - K eigenvalues of the model covariance): medians and 94% intervals."""
    x = data.double()
    observed = ~torch.isnan(x)
    center = torch.where(observed, x, torch.zeros(())).sum(0) / observed.sum(0)
    x = torch.where(observed, x, center)
    S = (x - x.mean(0)).T @ (x - x.mean(0)) / x.shape[0]
    sample = torch.linalg.eigvalsh(S).flip(0).numpy()
    D, K = len(sample), model.n_components
    ranks = np.arange(1, D + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(ranks, sample, "o-", color="0.4", ms=4, lw=1, label="sample covariance (1/N)")
    n = len(posteriors)
    for i, (label, post) in enumerate(posteriors.items()):
        offset = (i - (n - 1) / 2) * 0.18
        ev = post.aligned["explained_variance"].reshape(-1, K).double()
        s2 = post.aligned["noise_variance"].reshape(-1).double()
        med, lo, hi = interval(ev)
        color = f"C{i}"
        ax.errorbar(np.arange(1, K + 1) + offset, med, yerr=[med - lo, hi - med], fmt="s", color=color, ms=5,
                    capsize=3, label=f"{label.upper()}: leading eigenvalues (94%)")
        smed, slo, shi = interval(s2.unsqueeze(-1))
        ax.hlines(smed[0], K + 0.5, D + 0.5, color=color, ls="--", lw=1.2,
                  label=f"{label.upper()}: noise variance $\\sigma^2$")
        ax.fill_between([K + 0.5, D + 0.5], slo[0], shi[0], color=color, alpha=0.15)
    ax.set_xlabel("component")
    ax.set_ylabel("eigenvalue (variance)")
    ax.set_xticks(ranks)
    ax.set_title(f"Scree plot: PPCA with K={K} of D={D}" + (f" ({dataset.name})" if dataset is not None else ""),
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --- VAE -------------------------------------------------------------------------------------------


def latent_projection(model, data, posteriors, dataset=None, max_draws: int = 400):
    """The data projected on the reference posterior's principal axes: the posterior mean over draws of
    E[z_n | x_n] rotated, per draw, to the frame of the reference's principal axes (so the rotation of
    W does not blur it), coloured by the dataset's classes when it has them."""
    labels = list(posteriors)
    ref = posteriors[labels[-1]]
    axes_ref = ref.alignment["principal_axes"].double()                          # (D, K)
    draws = {k: v.reshape(-1, *v.shape[2:]).double() for k, v in ref.global_samples.items()}
    S = draws["loadings"].shape[0]
    keep = torch.linspace(0, S - 1, min(max_draws, S)).round().long()
    draws = {k: v[keep] for k, v in draws.items()}
    x = data.double()
    z, _ = model.posterior_z(x, draws)                                            # (s, N, K)
    # coordinates along the reference axes: axes^T W E[z | x] (the denoised point's projection)
    recon = (draws["loadings"].unsqueeze(-3) @ z.unsqueeze(-1)).squeeze(-1)      # (s, N, D)
    coords = (recon @ axes_ref).mean(0).numpy()                                   # (N, K)
    K = coords.shape[1]
    fig, ax = plt.subplots(figsize=(6, 4.8))
    has_labels = dataset is not None and dataset.labels is not None and len(dataset.labels) == len(coords)
    y = coords[:, 1] if K > 1 else np.random.default_rng(0).uniform(-0.3, 0.3, len(coords))
    if has_labels:
        names = dataset.label_names or [str(v) for v in np.unique(dataset.labels)]
        for j, name in enumerate(names):
            sel = dataset.labels == j
            ax.scatter(coords[sel, 0], y[sel], s=16, alpha=0.8, label=name, edgecolors="none")
        ax.legend(fontsize=8)
    else:
        ax.scatter(coords[:, 0], y, s=16, alpha=0.8, edgecolors="none")
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2" if K > 1 else "(jitter)")
    ax.set_title(f"Data on the {labels[-1].upper()} posterior's principal axes"
                 + (f" (first 2 of {K})" if K > 2 else ""), fontsize=10)
    fig.tight_layout()
    return fig


# --- HMM --------------------------------------------------------------------------------------


def hmm_states(model, data, posteriors, dataset=None, sequence: int = 0, max_draws: int = 200):
    """The data of one sequence over time, coloured by the Viterbi path at the reference posterior's
    mean (the last posterior), and the posterior state probabilities p(z_t | x) averaged over its draws."""
    ref = list(posteriors.values())[-1]
    label = list(posteriors)[-1].upper()
    mean = {k: v.mean((0, 1)) for k, v in ref.aligned.items()}
    draws = {k: v.reshape(-1, *v.shape[2:]) for k, v in ref.aligned.items()}
    n = next(iter(draws.values())).shape[0]
    keep = torch.linspace(0, n - 1, min(max_draws, n)).round().long()
    L = int(data.lengths[sequence])
    one = type(data)(data.values[sequence:sequence + 1, :L], data.lengths[sequence:sequence + 1])
    probs = model.smooth(one, {k: v[keep] for k, v in draws.items()}).mean(0)[0].numpy()   # (L, S)
    path, x = model.decode(one, mean)[0][0].numpy(), one.values[0].numpy()
    dates = dataset.meta.get("dates") if dataset is not None else None
    t = np.asarray(dates)[:L] if dates is not None and len(dates) >= L and data.values.shape[0] == 1 else np.arange(L)
    S = probs.shape[-1]
    colors = plt.cm.tab10(np.arange(S)) if S <= 10 else plt.cm.tab20(np.arange(S) % 20)
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    if model.emission == "bernoulli":   # piano roll: keys x time, the path as a colour band below
        ax.imshow(x.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest",
                  extent=(-0.5, L - 0.5, -0.5, x.shape[1] - 0.5))
        ax.scatter(np.arange(L), np.full(L, -1.5), c=colors[path], marker="s", s=12)
        ax.set_ylabel("key (active = black)")
        t = np.arange(L)
    else:
        y = x[:, 0] if x.ndim > 1 else x
        ax.plot(t, y, color="0.7", lw=0.7, zorder=1)
        ax.scatter(t, y, c=colors[path], s=8, zorder=2)
        names = dataset.feature_names if dataset is not None and dataset.feature_names else None
        ax.set_ylabel(names[0] if names else {"categorical": "symbol", "poisson": "count"}.get(model.emission, "x"))
        if model.emission == "gaussian":
            for s in range(S):
                loc, scale = float(mean["locs"][s, 0]), float(mean["scales"][s, 0])
                ax.axhline(loc, color=colors[s], ls="--", lw=1, label=f"state {s}: mean, mean +- 2 sd")
                for bound in (loc - 2 * scale, loc + 2 * scale):
                    ax.axhline(bound, color=colors[s], ls=":", lw=1)
            ax.legend(loc="best", fontsize=8)
    ax.set_title(f"{S}-state HMM ({model.emission}): points coloured by the Viterbi path at the {label} posterior "
                 f"mean" + (f" (sequence {sequence})" if data.values.shape[0] > 1 else ""), fontsize=10)
    ax2.stackplot(t, probs.T, colors=colors, labels=[f"state {s}" for s in range(S)], step="mid")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("p(state | data)")
    ax2.set_xlabel("date" if t.dtype.kind == "M" else "time step")
    ax2.set_title(f"posterior state probabilities (forward-backward, averaged over {len(keep)} {label} draws)",
                  fontsize=10)
    ax2.legend(loc="upper left", fontsize=8, ncol=min(S, 8))
    fig.tight_layout()
    return fig


def _means(model, z):
    """E[x | z]: pixel probabilities (Bernoulli) or means (Gaussian), (..., D)."""
    out = model.decoder(z)
    return torch.sigmoid(out) if model.likelihood == "bernoulli" else out


@torch.no_grad()
def vae_reconstructions(model, data, shape, n: int = 10, seed: int = 0):
    """Images, their reconstructions E[x | z = mean of q(z | x)], and one draw z ~ q(z | x) (``seed``)."""
    if shape is None:
        return None
    x = data[:n]
    loc, scale = model.encoder(x)
    eps = torch.randn(loc.shape, generator=torch.Generator().manual_seed(seed), dtype=loc.dtype).to(loc.device)
    rows = [x.cpu(), _means(model, loc).cpu(), _means(model, loc + scale * eps).cpu()]
    return image_grid(rows, shape, row_labels=["data", "recon. (mean z)", "recon. (z ~ q)"],
                       title="reconstructions: pixel probabilities given the encoder's code")


@torch.no_grad()
def vae_samples(model, shape, n: int = 40, seed: int = 0):
    """E[x | z] for z drawn from the prior."""
    if shape is None:
        return None
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, model.latent_dim, generator=g).to(model.prior_loc)
    x = _means(model, z).cpu()
    cols = 10
    return image_grid([x[i:i + cols] for i in range(0, n, cols)], shape,
                       title="prior samples: E[x | z], z ~ N(0, I)")


@torch.no_grad()
def vae_interpolations(model, data, shape, pairs: int = 4, steps: int = 9):
    """Decoded straight lines between the codes (encoder means) of pairs of images."""
    if shape is None or len(data) < 2:
        return None
    loc = model.encoder(data[:2 * pairs])[0]
    t = torch.linspace(0, 1, steps).to(loc).unsqueeze(-1)
    rows = [_means(model, (1 - t) * loc[2 * i] + t * loc[2 * i + 1]).cpu() for i in range(len(loc) // 2)]
    return image_grid(rows, shape, title="interpolations between the codes of two test images")


@torch.no_grad()
def vae_latent_scatter(model, data, labels=None, n: int = 2000):
    """Encoder means of up to n images in 2-D (the code itself when L = 2, else its first two
    principal components), coloured by digit label when labels exist."""
    loc = model.encoder(data[:n])[0].cpu().numpy()
    if loc.shape[1] > 2:
        centered = loc - loc.mean(0)
        _, s, vt = np.linalg.svd(centered, full_matrices=False)
        xy = centered @ vt[:2].T
        explained = (s[:2] ** 2).sum() / (s ** 2).sum()
        axis = ["PC 1", "PC 2"]
        note = f"first two principal components of the {loc.shape[1]}-D codes ({explained:.0%} of variance)"
    elif loc.shape[1] == 2:
        xy, axis, note = loc, ["z[0]", "z[1]"], "2-D codes"
    else:
        xy = np.stack([loc[:, 0], np.zeros(len(loc))], 1)
        axis, note = ["z[0]", ""], "1-D codes"
    fig, ax = plt.subplots(figsize=(6.6 if labels is not None else 6, 5))
    if labels is not None:
        labels = np.asarray(labels)[:n]
        for d in np.unique(labels):
            sel = labels == d
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.7, label=str(d), color=plt.cm.tab10(int(d) % 10))
        ax.legend(markerscale=3, fontsize=8, title="label", loc="upper left", bbox_to_anchor=(1.01, 1))   # off the points
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.6)
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title(f"encoder means of {len(xy)} images: {note}", fontsize=9)
    fig.tight_layout()
    return fig
