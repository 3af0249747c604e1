"""Model-specific report figures (the generic ones live in ``inference``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Ellipse


def _aligned_means(posteriors):
    """Posterior means of the identifiable quantities, every posterior in the last one's labeling."""
    labels = list(posteriors)
    ref = posteriors[labels[-1]]
    means = {}
    for label, post in posteriors.items():
        q = ref.aligned if post is ref else post.target.align(post.global_samples, reference=ref.aligned)
        means[label] = {k: v.mean((0, 1)) for k, v in q.items()}
    return means, ref


def mixture_clusters(model, data, posteriors, dataset=None):
    """Data coloured by posterior cluster, with each posterior's components (2-sd ellipses)."""
    from sklearn.metrics import adjusted_rand_score

    means, ref = _aligned_means(posteriors)
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
