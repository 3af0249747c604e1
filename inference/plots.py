"""Generic figures, built from what inference returns (Posterior objects, training histories)."""

from __future__ import annotations

import math


def plot_history(history: dict[str, list[float]], label: str = "objective"):
    """Per-epoch training and validation objective (ELBO or IWAE bound per data point) of a minibatch
    fit (``TrainResult.history`` of :func:`inference.train.train` or :func:`inference.lightning.train_lightning`)."""
    import matplotlib.pyplot as plt

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
