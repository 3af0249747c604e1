"""The amortization gap (Cremer, Li & Duvenaud 2018) of a fitted amortized model on a few data points.

With the fitted networks held fixed and n data points x_i, three posteriors of the local latents:

- ``nuts``: NUTS on the local latents, the exact posterior p(z | x_i);
- ``optimized``: q*, the best member of the guide's family per data point, fitted by SVI
  (``AutoNormal``: one diagonal Gaussian per data point, the family of a mean-field encoder),
  started at the amortized guide so that it can only improve on it;
- ``amortized``: the model's own guide q(z | x_i) (the encoder).

Per data point, in nats::

    log p(x) - ELBO[q] = (log p(x) - ELBO[q*]) + (ELBO[q*] - ELBO[q])
                       =  approximation gap    +  amortization gap

ELBOs are Monte Carlo means of the importance log-weights (with their standard errors); log p(x)
is importance sampling with a Gaussian fitted to the NUTS draws as proposal (its effective sample
size is reported). Nothing here knows the model: it needs an amortized model (every latent site
inside the data plate) whose global parameters live in a module.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro.infer.autoguide import AutoNormal, init_to_value
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroParam
from torch.distributions import biject_to

from inference.checks.compare import compare
from inference.inspection import inspect_model
from inference.posterior import Posterior, sample_guide
from inference.sampling.mcmc import run_nuts
from inference.target import Target, set_seed
from inference.thresholds import AGREE_SMD
from inference.variational.objectives import elbo_estimate, importance_estimate
from inference.variational.svi import fit_svi

LABELS = ("amortized", "optimized", "nuts")


@dataclass
class AmortizationGap:
    """``table``: one row per data point (and a mean row) with log p(x), the ELBOs and the gaps;
    ``comparisons[i][label]``: :func:`inference.compare` of that posterior against NUTS for data
    point i; ``posteriors``: the three posteriors over all n data points."""

    table: pd.DataFrame
    comparisons: dict[int, dict[str, pd.DataFrame]]
    posteriors: dict[str, Posterior]
    sites: tuple[str, ...]

    def __str__(self) -> str:
        cols = ["log_px", "elbo_optimized", "elbo_amortized", "approximation_gap", "amortization_gap"]
        return self.table[cols].round(3).to_string()

    def figure(self, max_points: int = 4):
        """Each posterior of the first data points as a 2-sd ellipse over the NUTS draws:
        :func:`plot_amortization`."""
        return plot_amortization(self, max_points)


def amortization_gap(model, data, *, guide=None, num_samples: int = 1000, warmup_steps: int = 500,
                     num_chains: int = 4, svi_steps: int = 2000, svi_lr: float = 0.01,
                     elbo_particles: int = 1000, is_particles: int = 5000, seed: int = 0, jit: bool | None = None,
                     progress: bool = True) -> AmortizationGap:
    """Decompose the gap between log p(x) and the amortized ELBO for the data points in ``data``.

    :param model: a fitted amortized zoo model (or PyroModule with ``model``/``guide``); not modified.
    :param data: the n data points (e.g. 8 test images), as the model's ``model(data)`` takes them.
    :param guide: the amortized guide (default: the model's own).
    :param svi_steps, svi_lr: the per-point SVI fit of q* (learning rate decays 100-fold).
    :param elbo_particles: draws per point for the ELBO estimates; ``is_particles`` for log p(x).
    """
    frozen = copy.deepcopy(model.source if isinstance(model, Target) else model)
    for p in frozen.parameters():
        p.requires_grad_(False)
    target = Target(frozen)
    # Every Pyro parameter here (the frozen networks, the per-point AutoNormal) lives in this target's own
    # store (Target.scope): the global store may hold same-named parameters of an earlier call (e.g.
    # AutoNormal.locs.z for another number of points), which a PyroModule would otherwise take over.
    with target.scope():
        data = target.validate(data)
        info = inspect_model(target.model_fn, data)
        if info.global_sites:
            raise ValueError(f"model: the amortization gap needs every latent inside the data plate; "
                             f"{list(info.global_sites)} are global")
        sites = tuple(info.latent)
        guide_fn = guide if guide is not None else frozen.guide
        set_seed(seed)

        start = time.perf_counter()
        amortized = Posterior(target, data, sample_guide(guide_fn, data, sites, num_samples), method="amortized",
                              wall_time=time.perf_counter() - start)
        start = time.perf_counter()
        fit = fit_svi(frozen, data, guide=_optimized_guide(target.model_fn, data, amortized, sites),
                      num_steps=svi_steps, lr=svi_lr, num_particles=4, vectorize_particles=True, num_samples=1,
                      seed=seed, progress=progress)
        optimized = Posterior(target, data, sample_guide(fit.guide, data, sites, num_samples), method="optimized",
                              wall_time=time.perf_counter() - start, losses=fit.losses)
        nuts = run_nuts(frozen, data, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
                        seed=seed, jit=jit, progress=progress)
        posteriors = {"amortized": amortized, "optimized": optimized, "nuts": nuts}

        kw = dict(max_plate_nesting=info.max_plate_nesting, data_plate=info.data_plate)
        with torch.no_grad():
            elbo = {label: elbo_estimate(target.model_fn, g, data, elbo_particles, **kw)
                    for label, g in (("amortized", guide_fn), ("optimized", fit.guide))}
            proposal = _gaussian_proposal(target.model_fn, data, nuts, sites, info.data_plate)
            log_px, ess = importance_estimate(target.model_fn, proposal, data, is_particles, **kw)
            iwae, _ = importance_estimate(target.model_fn, guide_fn, data, is_particles, **kw)

    comparisons = {}
    rows = []
    for i in range(data.shape[0]):
        point = {label: _point(post, i, sites) for label, post in posteriors.items()}
        comparisons[i] = {label: compare(point[label], point["nuts"], labels=(label, "nuts"), sites=sites)
                          for label in ("amortized", "optimized")}
        row = {"log_px": log_px[i], "log_px_ess": ess[i], "iwae_amortized": iwae[i],
               "elbo_optimized": elbo["optimized"][0][i], "elbo_optimized_se": elbo["optimized"][1][i],
               "elbo_amortized": elbo["amortized"][0][i], "elbo_amortized_se": elbo["amortized"][1][i]}
        row.update(approximation_gap=row["log_px"] - row["elbo_optimized"],
                   amortization_gap=row["elbo_optimized"] - row["elbo_amortized"],
                   total_gap=row["log_px"] - row["elbo_amortized"])
        for label in ("amortized", "optimized"):
            c = comparisons[i][label]
            row[f"max_abs_smd_{label}"] = float(c["smd"].abs().max())
            row[f"median_sd_ratio_{label}"] = float(c["sd_ratio"].median())
        rows.append(row)
    table = pd.DataFrame(rows).rename_axis("point")
    table.loc["mean"] = table.mean()
    table.attrs.update(is_particles=is_particles, elbo_particles=elbo_particles, nuts=dict(nuts.settings),
                       divergences=int(np.sum(nuts.sample_stats.get("diverging", 0))))
    return AmortizationGap(table=table, comparisons=comparisons, posteriors=posteriors, sites=sites)


def _gaussian_proposal(model, data, nuts: Posterior, sites, data_plate: str):
    """A guide drawing each local site of each data point from a Gaussian fitted to its NUTS draws."""
    trace = poutine.trace(poutine.condition(model, data={s: nuts.samples[s][0, 0] for s in sites})).get_trace(data)
    fitted = {}
    for s in sites:
        dim = next(f.dim for f in trace.nodes[s]["cond_indep_stack"] if f.name == data_plate)
        draws = nuts.samples[s].reshape(-1, *nuts.samples[s].shape[2:]).double()      # (S, n, *event)
        n, event = draws.shape[1], draws.shape[2:]
        flat = draws.reshape(draws.shape[0], n, -1)                                   # (S, n, d)
        mean = flat.mean(0)
        centered = flat - mean
        cov = torch.einsum("snd,sne->nde", centered, centered) / (flat.shape[0] - 1)
        cov = cov + 1e-6 * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        fitted[s] = (dim, event, mean.to(data.dtype), torch.linalg.cholesky(cov).to(data.dtype))

    def proposal(x):
        for s, (dim, event, mean, tril) in fitted.items():
            with pyro.plate(data_plate, mean.shape[0], dim=dim):
                d = dist.MultivariateNormal(mean, scale_tril=tril)
                if len(event) != 1:
                    raise NotImplementedError(f"site {s!r}: the Gaussian proposal handles one event dim, got {tuple(event)}")
                pyro.sample(s, d)
    return proposal


def _optimized_guide(model_fn, data, amortized: Posterior, sites):
    """``AutoNormal`` (a diagonal Gaussian per data point) started at the amortized guide: the mean and
    sd of its draws on the unconstrained scale. SVI then moves each point's Gaussian to its optimum."""
    trace = poutine.trace(model_fn).get_trace(data)
    values, scales = {}, {}
    for s in sites:
        to_support = biject_to(trace.nodes[s]["fn"].support)
        u = to_support.inv(amortized.samples[s].reshape(-1, *amortized.samples[s].shape[2:]))
        values[s], scales[s] = to_support(u.mean(0)), u.std(0)
    guide = AutoNormal(model_fn, init_loc_fn=init_to_value(values=values))
    guide(data)  # creates the parameters
    for s in sites:
        deep_setattr(guide.scales, s, PyroParam(scales[s], guide.scale_constraint, guide._event_dims[s]))
    return guide


def _point(post: Posterior, i: int, sites) -> Posterior:
    """The draws of data point i alone (its local sites: (chain, draw, *event))."""
    return Posterior(post.target, post.data[i:i + 1], {s: post.samples[s][:, :, i] for s in sites},
                     method=post.method, wall_time=post.wall_time)


def flat_draws(post: Posterior, sites) -> torch.Tensor:
    """(chain*draw, n, d): every local site flattened and concatenated per data point."""
    parts = [post.samples[s].reshape(-1, post.samples[s].shape[2], int(np.prod(post.samples[s].shape[3:], dtype=int)))
             for s in sites]
    return torch.cat(parts, -1).double()


def gap_sections(gap: AmortizationGap) -> Mapping[str, object]:
    """summary.md sections for a report: the decomposition and the per-point comparison tables."""
    t = gap.table
    summary = (f"Mean over {len(t) - 1} data points: log p(x) {t.loc['mean', 'log_px']:.2f}, ELBO of q* "
               f"{t.loc['mean', 'elbo_optimized']:.2f}, ELBO of the amortized guide {t.loc['mean', 'elbo_amortized']:.2f} "
               f"nats: approximation gap {t.loc['mean', 'approximation_gap']:.2f} + amortization gap "
               f"{t.loc['mean', 'amortization_gap']:.2f} = {t.loc['mean', 'total_gap']:.2f} nats. "
               f"log p(x): importance sampling with k = {t.attrs['is_particles']} draws from a Gaussian fitted to the "
               f"NUTS draws (log_px_ess = effective sample size of the weights); ELBOs: {t.attrs['elbo_particles']} draws "
               f"(± se); NUTS divergences: {t.attrs['divergences']}.")
    table = t.copy()
    table.attrs["csv"] = "amortization_gap.csv"
    per_point = pd.concat({(i, label): c.drop(columns=["site", "verdict"]) for i, d in gap.comparisons.items()
                           for label, c in d.items()}, names=["point", "against_nuts", "quantity"])
    per_point.attrs.update(csv="amortization_compare.csv", markdown=False)
    verdicts = pd.DataFrame({label: [int((d[label]["smd"].abs() < AGREE_SMD).sum()) for d in gap.comparisons.values()]
                             for label in ("amortized", "optimized")}).rename_axis("point")
    return {"Amortization gap (Cremer et al. 2018)": summary, "Per data point (nats)": table,
            f"Latents whose mean agrees with NUTS (|smd| < {AGREE_SMD}), per data point": verdicts,
            "Per-point comparisons against NUTS": per_point}


def plot_amortization(gap, max_points: int = 4):
    """For the first data points of an :class:`inference.checks.amortization.AmortizationGap`: each posterior's
    draws projected on the two principal directions of that point's NUTS draws, drawn as the ellipse of
    its 2-sd contour (mean and covariance of the projected draws, mean marked) over the NUTS draws."""
    n = min(max_points, gap.posteriors["nuts"].data.shape[0])
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.6), squeeze=False)
    flat = {label: flat_draws(post, gap.sites).cpu() for label, post in gap.posteriors.items()}
    t = torch.linspace(0, 2 * math.pi, 200, dtype=torch.float64)
    circle = torch.stack([t.cos(), t.sin()], -1)                                   # (200, 2)
    styles = {"nuts": ("black", "NUTS (exact)"), "optimized": ("tab:blue", "q* (best Gaussian)"),
              "amortized": ("tab:red", "q(z|x) (encoder)")}
    for i in range(n):
        ref = flat["nuts"][:, i]
        mean = ref.mean(0)
        _, _, vt = torch.linalg.svd(ref - mean, full_matrices=False)
        ax = axes[0, i]
        xy = (ref - mean) @ vt[:2].T
        ax.scatter(xy[:600, 0].numpy(), xy[:600, 1].numpy(), s=3, alpha=0.25, color="0.6", lw=0)
        for label, (color, name) in styles.items():
            xy = (flat[label][:, i] - mean) @ vt[:2].T                               # (S, 2)
            m, cov = xy.mean(0), torch.cov(xy.T)
            ring = m + 2 * circle @ torch.linalg.cholesky(cov + 1e-12 * torch.eye(2, dtype=cov.dtype)).T
            ax.plot(ring[:, 0].numpy(), ring[:, 1].numpy(), color=color, lw=1.6, label=name)
            ax.plot([float(m[0])], [float(m[1])], "+", color=color, ms=9, mew=1.8)
        ax.set_aspect("equal", adjustable="datalim")
        row = gap.table.iloc[i]
        ax.set_title(f"point {i}: approximation gap {row.approximation_gap:.2f},\n"
                     f"amortization gap {row.amortization_gap:.2f} nats", fontsize=8)
        ax.set_xlabel("PC 1 of the NUTS draws")
        ax.set_ylabel("PC 2")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("posterior of the local latents: 2-sd ellipses of NUTS (grey draws), the per-point optimum q* "
                 "and the amortized q(z|x)", fontsize=9)
    fig.tight_layout()
    return fig
