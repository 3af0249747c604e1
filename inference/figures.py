"""Matplotlib helpers that the figures of every layer share (checks draw their own results; reporting
draws posteriors and tables): no model, no inference."""

import math

import matplotlib.pyplot as plt
import numpy as np


def figure_of(axes):
    """The Figure behind an ArviZ plot's axes (one Axes or an array of them)."""
    return np.ravel(axes)[0].figure


def panels(n: int, width: float, height: float):
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return fig, axes
