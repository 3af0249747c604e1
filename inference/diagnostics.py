"""Convergence diagnostics: ArviZ summaries, a verdict with reasons, and diagnostic plots.

Everything is computed on the model's identifiable quantities (``Posterior.aligned``): for a
mixture that is the relabeled draws, so R-hat does not flag mere label switching between chains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd

from inference.posterior import Posterior, quiet_arviz

RHAT_MAX = 1.01
ESS_MIN = 400


@dataclass
class Diagnosis:
    """ArviZ summary plus a verdict. ``ok`` is True when no reason was found."""

    method: str
    summary: pd.DataFrame
    divergences: int
    num_chains: int
    num_draws: int
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        return "pass" if self.ok else "check"

    def __str__(self) -> str:
        head = (f"{self.method.upper()}: {self.num_chains} chain(s) x {self.num_draws} draws, "
                f"{self.divergences} divergences -> {self.verdict}")
        lines = [head] + [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def diagnose(posterior: Posterior, *, rhat_max: float = RHAT_MAX, ess_min: float = ESS_MIN,
             hdi_prob: float = 0.94) -> Diagnosis:
    """Summarize ``posterior`` (mean, sd, hdi, mcse, ess_bulk, ess_tail, r_hat) and judge it.

    Reasons for concern: any R-hat above ``rhat_max``, any bulk ESS below ``ess_min``, any
    divergent transition. A single draw (MAP, EM) yields a summary of point values and no verdict
    on mixing.
    """
    names = list(posterior.aligned)
    divergences = int(np.sum(posterior.sample_stats.get("diverging", 0)))
    n_total = posterior.num_chains * posterior.num_draws
    if n_total < 4:
        rows = {}
        for name in names:
            mean = posterior.aligned[name].mean((0, 1)).numpy()
            for idx in np.ndindex(mean.shape):
                rows[posterior.element_label(name, idx)] = {"mean": float(mean[idx])}
        summary = pd.DataFrame.from_dict(rows, orient="index")
        return Diagnosis(posterior.method, summary, divergences, posterior.num_chains, posterior.num_draws,
                         [f"point estimate ({n_total} draw): no uncertainty or mixing diagnostics"])
    # one chain (SVI draws): ArviZ logs that split R-hat needs two; a constant quantity divides 0 by 0
    with quiet_arviz(), np.errstate(invalid="ignore", divide="ignore"):
        summary = az.summary(posterior.quantities_idata(), var_names=names, hdi_prob=hdi_prob, round_to="none")
    reasons = []
    rhat = summary["r_hat"].astype(float)
    bad = rhat[rhat > rhat_max]
    if len(bad):
        reasons.append(f"R-hat > {rhat_max} for {len(bad)} quantit{'y' if len(bad) == 1 else 'ies'} "
                       f"(worst {bad.idxmax()} = {bad.max():.3f})")
    ess = summary["ess_bulk"].astype(float)
    low = ess[ess < ess_min]
    if len(low):
        reasons.append(f"ESS_bulk < {ess_min:g} for {len(low)} quantit{'y' if len(low) == 1 else 'ies'} "
                       f"(worst {low.idxmin()} = {low.min():.0f})")
    if divergences:
        reasons.append(f"{divergences} divergent transition{'s' if divergences > 1 else ''} after warmup")
    return Diagnosis(posterior.method, summary, divergences, posterior.num_chains, posterior.num_draws, reasons)


# --- plots -----------------------------------------------------------------------------------


def plot_trace(posterior: Posterior, var_names=None):
    """ArviZ trace plot of the identifiable quantities; returns the matplotlib Figure."""
    axes = az.plot_trace(posterior.quantities_idata(), var_names=var_names or list(posterior.aligned), compact=True,
                         combined=False, show=False)
    fig = np.ravel(axes)[0].figure
    fig.suptitle(f"{posterior.target.name} {posterior.method.upper()} trace (after alignment)")
    fig.tight_layout()
    return fig


def plot_rank(posterior: Posterior, var_names=None):
    """ArviZ rank plot: uniform histograms per chain mean the chains mix."""
    axes = az.plot_rank(posterior.quantities_idata(), var_names=var_names or list(posterior.aligned), show=False)
    fig = np.ravel(axes)[0].figure
    fig.suptitle(f"{posterior.target.name} {posterior.method.upper()} rank plot")
    fig.tight_layout()
    return fig
