"""Every generic figure: built from Posterior objects, InferenceData or result tables, for any model.

Each function returns a matplotlib Figure; the caller saves and closes it (``inference.reporting.report``,
``inference.reporting.html``, the CLI). Functions that take a ``source`` accept a :class:`~inference.Posterior`
(its identifiable quantities, ``Posterior.aligned``, are drawn) or an ``az.InferenceData`` read back
from a report folder. A model's own figures (clusters, scree plots, decoded states, images) are its
``figures`` hook and live beside the model in ``zoo/``; the helpers they share (:func:`image_grid`,
:func:`interval`, :func:`aligned_means`) are here.
"""

from __future__ import annotations

import math
from typing import Mapping

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import torch

from inference.checks.importance import khat, log_ratios
from inference.figures import figure_of
from inference.posterior import from_dict
from inference.thresholds import KHAT_MAX

#: scalar quantities shown in a pair plot
PAIR_MAX = 6


def _quantities(source):
    """InferenceData of the identifiable quantities of a Posterior; an InferenceData as it is."""
    return source.quantities_idata() if hasattr(source, "quantities_idata") else source


def _title(source, what: str) -> str | None:
    """``"<model> <METHOD> <what>"`` for a Posterior, None for bare InferenceData (no such names)."""
    if hasattr(source, "target"):
        return f"{source.target.name} {source.method.upper()} {what}"
    return None


# --- helpers shared with the models' own figures ---------------------------------------------------


def aligned_means(posteriors):
    """Posterior means of the identifiable quantities, every posterior in the last one's labeling;
    returns ``({label: {quantity: mean}}, the last posterior)``."""
    labels = list(posteriors)
    ref = posteriors[labels[-1]]
    means = {}
    for label, post in posteriors.items():
        q = ref.aligned if post is ref else post.target.align(post.global_samples, reference=ref.alignment)
        means[label] = {k: v.mean((0, 1)) for k, v in q.items()}
    return means, ref


def interval(x: torch.Tensor, prob: float = 0.94):
    """Median and central ``prob`` interval over the leading (draw) dim, as numpy arrays ``(med, lo, hi)``."""
    q = torch.tensor([(1 - prob) / 2, 0.5, (1 + prob) / 2], dtype=x.dtype)
    lo, med, hi = torch.quantile(x, q, dim=0)
    return med.numpy(), lo.numpy(), hi.numpy()


def image_grid(rows, shape, *, row_labels=None, title=""):
    """rows: list of (n_cols, D) arrays shown as grey images of ``shape``, one figure row each."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(0.9 * n_cols + 1.2, 0.95 * n_rows + 0.4), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(row):
                ax.imshow(np.asarray(row[j]).reshape(shape), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        if row_labels:
            axes[i, 0].text(-0.15, 0.5, row_labels[i], transform=axes[i, 0].transAxes, ha="right", va="center",
                            fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --- convergence -----------------------------------------------------------------------------------


def plot_trace(source, var_names=None):
    """ArviZ trace plot of the identifiable quantities (after alignment)."""
    data = _quantities(source)
    fig = figure_of(az.plot_trace(data, var_names=var_names, compact=True, combined=False, show=False))
    title = _title(source, "trace (after alignment)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_rank(source, var_names=None):
    """ArviZ rank plot: uniform histograms per chain mean the chains mix."""
    fig = figure_of(az.plot_rank(_quantities(source), var_names=var_names, show=False))
    title = _title(source, "rank plot")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_energy(source, *, title: str | None = None):
    """ArviZ energy plot: the marginal energy distribution against the distribution of energy changes
    between draws (E-BFMI in the legend). Two similar widths mean momentum resampling can reach every
    energy level; a transition distribution much narrower than the marginal one is what a low E-BFMI
    means. Raises ValueError when the run recorded no ``energy``."""
    if isinstance(source, az.InferenceData):
        if "sample_stats" not in source.groups() or "energy" not in source.sample_stats:
            raise ValueError("posterior: no 'energy' in the sample statistics; nothing to plot")
        idata = source
    else:
        energy = source.sample_stats.get("energy")
        if energy is None:
            raise ValueError(f"posterior: no 'energy' in the sample statistics of this {source.method.upper()} run "
                             "(the zoo's NUTS, engine=\"zoo\", records it); nothing to plot")
        idata = from_dict({"sample_stats": {"energy": np.asarray(energy, dtype=float)}}, coords={}, dims={},
                          attrs={"inference_method": source.method})
    fig = az.plot_energy(idata, show=False, figsize=(6, 3.6)).figure
    fig.suptitle(title or _title(source, "energy") or "energy", fontsize=10)
    fig.tight_layout()
    return fig


def plot_pair(source, *, max_quantities: int = PAIR_MAX):
    """Pairs of draws of up to ``max_quantities`` scalar quantities (a scalar fixed by one already shown,
    e.g. the last weight of a simplex, is skipped), divergent transitions in red."""
    data = _quantities(source)
    draws, total = {}, 0
    for name, var in data.posterior.data_vars.items():
        for idx in np.ndindex(var.shape[2:]):
            total += 1
            x = var.values[(slice(None), slice(None), *idx)]
            if len(draws) < max_quantities and x.std() > 0 and \
                    all(abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 0.999 for y in draws.values()):
                draws[f"{name}[{', '.join(map(str, idx))}]" if idx else name] = x
    stats = getattr(source, "sample_stats", None) if not isinstance(source, az.InferenceData) else (
        {k: v.values for k, v in source.sample_stats.items()} if "sample_stats" in source.groups() else None)
    groups = {"posterior": draws}
    if stats is not None and stats.get("diverging") is not None:
        groups["sample_stats"] = {"diverging": np.asarray(stats["diverging"])}
    axes = az.plot_pair(from_dict(groups, coords={}, dims={}, attrs={}), kind="scatter",
                        divergences="sample_stats" in groups, marginals=True, scatter_kwargs={"alpha": 0.25, "s": 4},
                        textsize=9, show=False, figsize=(1.8 * len(draws) + 1, 1.8 * len(draws) + 1))
    fig = figure_of(axes)
    if total > len(draws):
        fig.suptitle(f"{len(draws)} of {total} scalars", fontsize=10)
    return fig


# --- comparison and training -----------------------------------------------------------------------


def _aligned_idata(posteriors):
    """InferenceData of each posterior's identifiable quantities in a common labeling (the last one's)."""
    ref = list(posteriors.values())[-1]
    return {label: post.quantities_idata(
        None if post is ref else post.target.align(post.global_samples, reference=ref.alignment))
        for label, post in posteriors.items()}


def plot_forest(posteriors):
    """Forest plot of every identifiable quantity under each posterior (the last one is the reference)."""
    data = _aligned_idata(posteriors)
    fig = figure_of(az.plot_forest(list(data.values()), model_names=list(data), combined=True, hdi_prob=0.94,
                                   show=False))
    fig.suptitle("94% intervals: " + " vs ".join(s.upper() for s in data))
    return fig


def plot_overlay(posteriors):
    """Marginal densities of every identifiable quantity, one colour per posterior."""
    data = _aligned_idata(posteriors)
    fig = figure_of(az.plot_density(list(data.values()), data_labels=[s.upper() for s in data], shade=0.1,
                                    hdi_prob=0.999, show=False))
    fig.suptitle("Marginal posterior densities: " + " vs ".join(s.upper() for s in data))
    return fig


def plot_losses(posteriors):
    """Training curves (negative ELBO) of SVI/MAP fits, smoothed over a moving window, with the step where
    the iterates were found stationary (the averaging window's start) as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, post in posteriors.items():
        losses = np.asarray(post.losses)
        line, = ax.plot(losses, alpha=0.3, lw=0.8)
        w = max(1, len(losses) // 50)
        if w > 1:
            smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(w - 1, len(losses)), smooth, color=line.get_color(),
                    label=f"{label.upper()} (moving mean)")
        at = post.settings.get("stationary_at")
        if at is not None:   # where the averaging window of a converged fit began (inference.variational.convergence)
            ax.axvline(at, color=line.get_color(), ls="--", lw=1, label=f"{label.upper()}: stationary from step {at}")
    lo, hi = np.percentile(np.concatenate([p.losses for p in posteriors.values()]), [1, 99])
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (negative ELBO)")
    ax.legend()
    ax.set_title("SVI training curve")
    fig.tight_layout()
    return fig


def plot_importance_tail(posteriors):
    """The importance ratios p(x, z) / q(z) of each SVI posterior's draws (relative to the largest) against
    their rank, log-log, with the tail PSIS fits a Pareto distribution to and its k-hat
    (:mod:`inference.checks.importance`). A guide that covers the posterior has a steep tail (k-hat < 0.5): no
    draw outweighs the rest. A flat tail (k-hat > 0.7): a few draws carry all the weight, the guide
    misses posterior mass."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for label, post in posteriors.items():
        ratios = log_ratios(post)
        if ratios is None:
            continue
        r = np.sort(ratios.reshape(-1))[::-1]
        tail = min(len(r), int(np.ceil(min(0.2 * len(r), 3 * np.sqrt(len(r))))))   # PSIS's tail size
        rank = np.arange(1, len(r) + 1)
        line, = ax.loglog(rank, np.exp(r - r[0]), lw=1, label=f"{label.upper()}: k-hat {khat(post):.2f}")
        ax.loglog(rank[:tail], np.exp(r[:tail] - r[0]), lw=3, alpha=0.5, color=line.get_color())
    ax.set_xlabel("rank of the draw (largest ratio first)")
    ax.set_ylabel("importance ratio / largest")
    ax.set_title("Importance ratios of the guide draws (thick: the Pareto tail)")
    ax.legend()
    fig.tight_layout()
    return fig


# --- model choice ----------------------------------------------------------------------------------


def plot_select(table):
    """``az.plot_compare`` of an :func:`inference.select` table: elpd_loo +- se per candidate, differences
    to the best."""
    ax = az.plot_compare(table.drop(columns=["pareto_k_max", f"pareto_k>{KHAT_MAX}"]), insample_dev=False,
                         show=False, figsize=(7, 0.6 * len(table) + 1.6))
    fig = ax.figure
    ax.set_title("Model choice by PSIS-LOO (marginal log-likelihood): higher is better", fontsize=10)
    fig.tight_layout()
    return fig


def plot_khat(loos: Mapping[str, az.ELPDData]):
    """Pareto k of every data point, one panel per candidate, with the ``KHAT_MAX`` threshold."""
    n = len(loos)
    fig, axes = plt.subplots(1, n, figsize=(min(3.6 * n, 14), 3.2), squeeze=False, sharey=True)
    for ax, (label, result) in zip(axes[0], loos.items()):
        az.plot_khat(result, ax=ax, show_hlines=True, show=False)
        ax.axhline(KHAT_MAX, color="C3", ls="--", lw=1)
        ax.set_title(f"{label}: max k = {float(np.max(result.pareto_k)):.2f}", fontsize=9)
    fig.suptitle(f"Pareto k per data point (above {KHAT_MAX}: that point's LOO estimate is unreliable)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_history(history: dict[str, list[float]], label: str = "objective"):
    """Per-epoch training and validation objective (ELBO or IWAE bound per data point) of a minibatch
    fit (``TrainResult.history`` of :func:`inference.variational.train.train` or
    :func:`inference.variational.lightning.train_lightning`)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(history["epoch"], history["train"], label="training (running mean over the epoch)")
    if any(math.isfinite(v) for v in history["valid"]):
        ax.plot(history["epoch"], history["valid"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{label} per data point (nats)")
    ax.legend()
    ax.set_title("training curves")
    fig.tight_layout()
    return fig
