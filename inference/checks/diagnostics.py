"""Convergence diagnostics: ArviZ summaries and a verdict with reasons (the plots: ``inference.reporting.plots``).

Everything is computed on the model's identifiable quantities (``Posterior.aligned``): for a
mixture that is the relabeled draws, so R-hat does not flag mere label switching between chains.

NUTS runs that record per-draw ``energy`` (the Hamiltonian at each draw, ArviZ's name) also get the
energy Bayesian fraction of missing information per chain (E-BFMI, Betancourt 2016; ``az.bfmi``):
the variance of the energy *changes* between successive draws over the variance of the energy,

    E-BFMI = sum_n (E_n - E_{n-1})^2 / sum_n (E_n - mean E)^2.

Momentum resampling is the only way NUTS changes energy level; when it moves the energy by much less
than the energy varies over the posterior (E-BFMI < 0.3), the chain explores the energy levels by a
random walk and the tails (a funnel, heavy tails) are visited too rarely for the draws to be trusted.
Runs that record ``reached_max_treedepth`` also report how many transitions were cut short at the
maximum tree depth (an efficiency warning: trajectories stopped before they turned around).
Samplers that record neither (Pyro's kernel) simply get no such verdict.

SVI posteriors get two verdicts of their own. Whether the optimisation converged (the iterates were
stationary: :mod:`inference.variational.convergence`; ``Posterior.settings["converged"]``), and the Pareto k-hat of
the guide's importance ratios p(x, z) / q(z) (Yao et al. 2018; :mod:`inference.checks.importance`): above 0.7
the guide misses the posterior and its sds are not to be trusted, whatever R-hat and ESS of its
independent draws say; 0.5-0.7 is usable with care.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import arviz as az
import numpy as np
import pandas as pd

from inference.azcompat import quiet as quiet_arviz
from inference.checks.importance import khat
from inference.posterior import Posterior
from inference.thresholds import BFMI_MIN, ESS_MIN, KHAT_GOOD, KHAT_MAX, RHAT_MAX

log = logging.getLogger(__name__)

@dataclass
class Diagnosis:
    """ArviZ summary plus a verdict. ``ok`` is True when no reason was found."""

    method: str
    summary: pd.DataFrame
    divergences: int
    num_chains: int
    num_draws: int
    reasons: list[str] = field(default_factory=list)
    #: E-BFMI per chain (None when the sampler recorded no ``energy``)
    bfmi: np.ndarray | None = None
    #: transitions that stopped at the maximum tree depth (None when not recorded)
    max_treedepth_hits: int | None = None
    #: SVI: Pareto k-hat of the guide's importance ratios (None when not an SVI fit or not computable)
    khat: float | None = None
    #: SVI: whether the optimisation converged (None when not recorded)
    converged: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.reasons

    @property
    def verdict(self) -> str:
        return "pass" if self.ok else "check"

    def __str__(self) -> str:
        head = (f"{self.method.upper()}: {self.num_chains} chain(s) x {self.num_draws} draws, "
                f"{self.divergences} divergences")
        if self.bfmi is not None:
            head += ", E-BFMI " + " ".join(f"{b:.2f}" for b in self.bfmi)
        if self.khat is not None:
            head += f", Pareto k-hat {self.khat:.2f}"
        if self.converged is not None:
            head += ", converged" if self.converged else ", NOT converged"
        head += f" -> {self.verdict}"
        lines = [head] + [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def diagnose(posterior: Posterior, *, rhat_max: float = RHAT_MAX, ess_min: float = ESS_MIN,
             bfmi_min: float = BFMI_MIN, hdi_prob: float = 0.94) -> Diagnosis:
    """Summarize ``posterior`` (mean, sd, hdi, mcse, ess_bulk, ess_tail, r_hat) and judge it.

    Reasons for concern: any R-hat above ``rhat_max``, any bulk ESS below ``ess_min``, any
    divergent transition, E-BFMI below ``bfmi_min`` in any chain, transitions that hit the maximum
    tree depth (the last two only when the sampler recorded ``energy`` / ``reached_max_treedepth``);
    for SVI, an optimisation that did not converge and a Pareto k-hat above ``KHAT_MAX`` (module docstring).
    A single draw (MAP, EM) yields a summary of point values and no verdict on mixing.
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
        reasons = [f"point estimate ({n_total} draw): no uncertainty or mixing diagnostics"]
        if posterior.settings.get("converged") is False:
            reasons.append(f"the optimisation did not converge: {posterior.settings.get('convergence', '')}")
        return Diagnosis(posterior.method, summary, divergences, posterior.num_chains, posterior.num_draws, reasons,
                         converged=posterior.settings.get("converged"))
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
    bfmi = energy_bfmi(posterior)
    if bfmi is not None and (bfmi < bfmi_min).any():
        low = np.flatnonzero(bfmi < bfmi_min)
        reasons.append(
            f"E-BFMI < {bfmi_min:g} in chain{'s' if len(low) > 1 else ''} "
            + ", ".join(f"{c} ({bfmi[c]:.2f})" for c in low)
            + ": momentum resampling changes the energy far less than the energy varies, so the chain "
            "explores energy levels by a slow random walk and may miss the tails (funnel, heavy tails); "
            "reparameterize (e.g. non-centred) or run much longer")
    hits = None
    if "reached_max_treedepth" in posterior.sample_stats:
        saturated = np.asarray(posterior.sample_stats["reached_max_treedepth"], dtype=bool)
        hits = int(saturated.sum())
        if hits:
            depth = int(np.max(posterior.sample_stats["tree_depth"])) if "tree_depth" in posterior.sample_stats else None
            reasons.append(
                f"{hits} transition{'s' if hits > 1 else ''} ({100 * hits / saturated.size:.1f}%) stopped at the "
                f"maximum tree depth{f' {depth}' if depth is not None else ''}: trajectories were cut before "
                "turning around (slow exploration, not bias); raise max_tree_depth or reparameterize")
    k, converged = svi_reasons(posterior, reasons)
    return Diagnosis(posterior.method, summary, divergences, posterior.num_chains, posterior.num_draws, reasons,
                     bfmi=bfmi, max_treedepth_hits=hits, khat=k, converged=converged)


def svi_reasons(posterior: Posterior, reasons: list[str]) -> tuple[float | None, bool | None]:
    """Append the SVI verdicts (module docstring) to ``reasons``; returns ``(k-hat, converged)``."""
    converged = posterior.settings.get("converged")
    if converged is False:
        reasons.append(f"the optimisation did not converge: {posterior.settings.get('convergence', '')}")
    k = khat(posterior) if posterior.log_q is not None else None
    if k is not None and k > KHAT_MAX:
        reasons.append(f"Pareto k-hat {k:.2f} > {KHAT_MAX}: the guide misses the posterior: do not trust its sds "
                       "(the importance ratios p(x, z) / q(z) are heavy-tailed: the guide is too narrow or misses "
                       "correlations or modes); use a richer guide (guide='mvn') or NUTS")
    elif k is not None and k > KHAT_GOOD:
        log.info("SVI: Pareto k-hat %.2f in (%.1f, %.1f]: the guide is usable with care", k, KHAT_GOOD, KHAT_MAX)
    return k, converged


def energy_bfmi(posterior: Posterior) -> np.ndarray | None:
    """E-BFMI per chain (``az.bfmi`` of ``sample_stats["energy"]``, shape (chain,)), or None when the
    sampler recorded no energy or a chain has fewer than 3 draws."""
    energy = posterior.sample_stats.get("energy")
    if energy is None:
        return None
    energy = np.asarray(energy, dtype=float).reshape(posterior.num_chains, -1)
    if energy.shape[1] < 3:
        return None
    return np.atleast_1d(az.bfmi(energy))
