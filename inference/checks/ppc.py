"""Posterior predictive checks: test statistics of the data against the same statistics of data
replicated from the posterior, with Bayesian p-values (Gelman, Meng & Stern 1996).

For R posterior draws theta_s (evenly spread over the run; repeated when the run holds fewer draws, as
a point estimate does), a replicate y_rep_s ~ p(y | theta_s) is drawn from the model's marginal form,
and every statistic T is computed on both. A statistic may use the draw (a *realized discrepancy*,
e.g. the HMM's run lengths of the states decoded under theta_s), so the p-value is

    p = mean_s [ 1(T(y_rep_s, theta_s) > T(y, theta_s)) + 1/2 1(T(y_rep_s, theta_s) = T(y, theta_s)) ]

(the mid-p: counts and other discrete statistics tie often). p near 0 or 1 means the model rarely
reproduces what the data show. Under the model these p-values are not uniform in general: they
concentrate around 1/2 (Meng 1994), except for a statistic whose distribution does not depend on the
parameters (an ancillary statistic, such as the lag-1 autocorrelation under an i.i.d. Gaussian model),
for which they are exactly uniform.

Statistics: a zoo model's optional ``ppc_statistics(values, data, params)`` (see
``zoo.base.ZooModel.ppc_statistics``); for any other model the generic ones, mean, sd, min and max of
every observed site (NaN entries ignored).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Mapping

import arviz as az
import numpy as np
import pandas as pd
import pyro.poutine as poutine
import torch
from pyro.infer import Predictive
from pyro.infer.autoguide.initialization import InitMessenger
from tqdm import tqdm

from inference.figures import figure_of, panels
from inference.initialization import sample_or_uniform
from inference.posterior import Posterior, from_dict, to_numpy
from inference.validation import check_setting

log = logging.getLogger(__name__)

GENERIC = ("mean", "sd", "min", "max")


@dataclass
class PPCResult:
    """``observed[name]`` T(y, theta_s) and ``replicated[name]`` T(y_rep_s, theta_s), each (R, *shape);
    ``data_values`` and ``replicates`` hold the observed sites' values and R replicates of them."""

    model: str
    method: str
    observed: dict[str, np.ndarray]
    replicated: dict[str, np.ndarray]
    data_values: dict[str, np.ndarray]
    replicates: dict[str, np.ndarray]

    def labels(self) -> dict[str, tuple[str, tuple]]:
        out = {}
        for name, values in self.observed.items():
            for idx in np.ndindex(values.shape[1:]):
                out[f"{name}[{', '.join(map(str, idx))}]" if idx else name] = (name, idx)
        return out

    def p_values(self) -> pd.Series:
        """Mid-p Bayesian p-value P(T(y_rep) > T(y)) + P(=)/2 of every scalar statistic."""
        return self.table()["p_value"]

    def table(self, *, alpha: float = 0.01) -> pd.DataFrame:
        """Per scalar statistic: its value on the data (averaged over draws when it depends on them), the
        replicates' mean and sd, the p-value, and ``extreme`` when p < alpha/2 or p > 1 - alpha/2."""
        rows = {}
        for label, (name, idx) in self.labels().items():
            obs = self.observed[name][(slice(None), *idx)].astype(float)
            rep = self.replicated[name][(slice(None), *idx)].astype(float)
            p = float(np.mean((rep > obs) + 0.5 * (rep == obs)))
            rows[label] = {"observed": float(np.mean(obs)), "replicated_mean": float(np.mean(rep)),
                           "replicated_sd": float(np.std(rep, ddof=1)) if len(rep) > 1 else float("nan"),
                           "p_value": p, "verdict": "extreme" if min(p, 1 - p) < alpha / 2 else "ok"}
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("statistic")

    def __str__(self) -> str:
        table = self.table()
        bad = table.index[table["verdict"] != "ok"].tolist()
        head = (f"PPC {self.model} {self.method.upper()}: {len(table)} statistics, "
                f"{len(next(iter(self.replicated.values())))} replicates -> {'check' if bad else 'ok'}")
        return head + (f" (extreme: {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''})" if bad else "")

    def plot(self, statistics=None, *, max_panels: int = 16):
        """One histogram per scalar statistic (at most ``max_panels``): :func:`plot_statistics`."""
        statistics = _check_names(statistics, self.observed, "statistics")
        labels = [k for k, (name, _) in self.labels().items() if name in statistics][:max_panels]
        return plot_statistics(self, labels)

    def plot_ppc(self, **kwargs):
        """``az.plot_ppc`` of every observed site against its replicates: :func:`plot_ppc`."""
        return plot_ppc(self.replicates, self.data_values,
                        title=f"PPC {self.model} {self.method.upper()}: data vs replicates", **kwargs)


def ppc(posterior: Posterior, *, statistics=None, num_replicates: int = 200, seed: int = 0,
        progress: bool = True) -> PPCResult:
    """Posterior predictive check of ``posterior`` (see the module docstring).

    :param statistics: names of statistics to compute (default: all the model offers; an unknown
        name is an error that lists them).
    :param num_replicates: replicated data sets (one per evenly spread posterior draw).
    """
    num_replicates = check_setting(num_replicates, "num_replicates", kind="int", minimum=2)
    target, data = posterior.target, posterior.data
    compute = statistics_function(target, data)
    with poutine.seed(rng_seed=seed), torch.no_grad():
        draws, replicates = _replicate(posterior, num_replicates)
        observed_values = _observed_values(target, data, draws)
        obs_stats, rep_stats = [], []
        for s in tqdm(range(num_replicates), desc="PPC statistics", disable=None if progress else True, leave=False):
            params = {k: v[s] for k, v in draws.items()}
            obs_stats.append(compute(observed_values, data, params))
            rep_stats.append(compute({k: v[s] for k, v in replicates.items()}, data, params))
    names = _check_names(statistics, obs_stats[0], "statistics")
    stack = lambda rows: {k: np.stack([np.asarray(to_numpy(r[k]), dtype=float) for r in rows]) for k in names}  # noqa: E731
    return PPCResult(model=target.name, method=posterior.method, observed=stack(obs_stats),
                     replicated=stack(rep_stats), data_values={k: to_numpy(v) for k, v in observed_values.items()},
                     replicates={k: to_numpy(v) for k, v in replicates.items()})


def statistics_function(target, data):
    """``f(values, data, params) -> {name: value}``: the model's ``ppc_statistics`` on its (first)
    observed site, else :func:`generic_statistics` of every observed site."""
    method = getattr(target.model, "ppc_statistics", None)
    if method is not None:
        site = target.info(data, marginal=True).observed[0]
        return lambda values, data, params: method(values[site], data, params)
    return lambda values, data, params: generic_statistics(values)


def generic_statistics(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Mean, sd, min and max of every observed site (NaN ignored): ``{"obs_mean": ..., ...}``."""
    out = {}
    for site, v in values.items():
        x = to_numpy(v).astype(float).ravel()
        x = x[~np.isnan(x)]
        out.update({f"{site}_mean": x.mean(), f"{site}_sd": x.std(ddof=1) if x.size > 1 else 0.0,
                    f"{site}_min": x.min(), f"{site}_max": x.max()})
    return out


def _check_names(requested, available, argument: str) -> list[str]:
    if requested is None:
        return list(available)
    requested = [requested] if isinstance(requested, str) else list(requested)
    unknown = [n for n in requested if n not in available]
    if unknown:
        raise ValueError(f"{argument}: unknown statistic{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; expected some of {', '.join(available)}")
    return requested


def _replicate(posterior: Posterior, num: int):
    """``num`` global draws spread evenly over the run (cycled when it holds fewer), and one replicate of
    every observed site per draw from the model's marginal form: ``({site: (num, ...)}, {obs: (num, ...)})``."""
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in posterior.global_samples.items()}
    total = posterior.num_chains * posterior.num_draws
    idx = torch.linspace(0, total - 1, num).round().long() if total >= num else torch.arange(num) % total
    draws = {k: v[idx] for k, v in flat.items()}
    target, data = posterior.target, posterior.data
    observed = target.info(data, marginal=True).observed
    model = InitMessenger(sample_or_uniform)(poutine.uncondition(target.marginal_fn))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = Predictive(model, posterior_samples=draws or None, num_samples=None if draws else num,
                          return_sites=list(observed))(data)
    return draws, {k: pred[k] for k in observed}


def _observed_values(target, data, draws) -> dict[str, torch.Tensor]:
    """The observed sites' values in the data, read off one trace of the marginal form (any data layout)."""
    observed = target.info(data, marginal=True).observed
    params = {k: v[0] for k, v in draws.items()}
    trace = poutine.trace(poutine.condition(target.marginal_fn, data=params)).get_trace(data)
    return {k: trace.nodes[k]["value"] for k in observed}


# --- figures -------------------------------------------------------------------------------------


def plot_statistics(result, labels):
    """One histogram per scalar statistic ``labels`` of an :class:`inference.checks.ppc.PPCResult`: T over the
    replicates, a line at T of the data (its mean over draws when it depends on them), the p-value in
    the title."""
    table = result.table()
    fig, axes = panels(len(labels), 3.2, 2.5)
    for ax, label in zip(axes.flat, labels):
        name, idx = result.labels()[label]
        ax.hist(result.replicated[name][(slice(None), *idx)].astype(float), bins=30, color="C0", alpha=0.7)
        ax.axvline(table.loc[label, "observed"], color="k", lw=2)
        ax.set_title(f"{label}  p={table.loc[label, 'p_value']:.2f}", fontsize=9)
    fig.suptitle(f"PPC {result.model} {result.method.upper()}: replicated (bars) vs data (line)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_ppc(replicates: Mapping[str, np.ndarray], observed: Mapping[str, np.ndarray], *, title: str = "",
             **kwargs):
    """``az.plot_ppc``: the distribution of every observed site's values against its replicates
    ``{site: (R, *shape)}`` (all dims flattened; for continuous or count data)."""
    idata = from_dict({"posterior_predictive": {k: np.asarray(v)[None] for k, v in replicates.items()},
                       "observed_data": dict(observed)}, coords={}, dims={}, attrs={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_ppc(idata, num_pp_samples=min(50, len(next(iter(replicates.values())))), random_seed=0,
                           show=False, **kwargs)
    fig = figure_of(axes)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
