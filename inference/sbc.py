"""Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) for zoo models.

If parameters are drawn from the prior, theta ~ p(theta), data from the model, y ~ p(y | theta), and
the fit returns draws from the exact posterior p(theta | y), then theta is itself a draw from that
posterior, so its rank among L independent posterior draws is uniform on {0, ..., L}. Every departure
from uniformity is a failure of the fit (or of the code): a U-shaped rank histogram means posteriors
that are too narrow, a hump too wide, a slope a biased location.

:func:`sbc` repeats this ``num_simulations`` times for any model with ``simulate(n, seed) -> (data,
truth)`` and a prior that does not depend on the data (checked: SBC tests the joint that ``simulate``
draws from):

1. replicate i is seeded from ``(seed, i)`` alone (``inference.target.chain_seed``), so the result does
   not depend on ``n_jobs`` or on where it runs;
2. data and truth come from ``model.simulate(num_observations, seed_i)``, the fit from ``run_nuts`` or
   ``fit_svi`` with ``fit_kwargs``;
3. ranks are taken on the model's identifiable quantities (``align``; label switching would make raw
   ranks meaningless): the posterior's ``aligned`` draws, and the truth aligned with the posterior's
   own frame (``align(truth, reference=posterior.alignment)``);
4. the draws are thinned to about their effective sample size (stride ceil(draws / min ESS), bulk and
   tail, over all quantities), so that they are nearly independent as the rank argument needs;
5. ties (a discrete or constant quantity) are broken at random, and the rank r among L draws is also
   reported as a randomized fractional rank u = (r + V) / (L + 1), V ~ U(0, 1): exactly U(0, 1) under
   calibration whatever L is, so replicates with different L (different ESS) pool into one test.

The verdict per scalar quantity is Pearson's chi-square test of u binned into equal bins (at least 5
expected per bin), with the mean and sd of u for the direction of a failure (sd above 1/sqrt(12) =
0.289: posteriors too narrow). :meth:`SBCResult.plot` draws the ECDF of u minus the uniform CDF with
simultaneous 94% bands (Säilynoja, Bürkner & Vehtari 2022; ``az.plot_ecdf``).

Replicates run through joblib (``n_jobs``); on a cluster, inside ``joblib.parallel_backend("dask")``
with a ``dask.distributed.Client`` (extra ``[dist]``). The API follows simuk's ``SBC`` where it fits:
``num_simulations``, ``seed``, keyword arguments for the fit, a plot of ECDF differences.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyro.poutine as poutine
import torch
from joblib import Parallel, delayed
from scipy import stats as scipy_stats
from tqdm import tqdm

from inference import azcompat
from inference.target import Target, as_target, chain_seed
from inference.validation import check_setting

log = logging.getLogger(__name__)

METHODS = ("nuts", "svi")
GROUPS = {"truth": "prior", "ranks": "prior_sbc", "pit": "sbc_pit", "stats": "sbc_stats"}   # netCDF groups


@dataclass
class SBCResult:
    """Ranks of the true values of every aligned quantity, one row per simulation.

    ``ranks[name]``: (num_simulations, *shape) integers in 0..num_draws[i]; ``pit[name]``: the same as
    randomized fractional ranks in (0, 1); ``truth[name]``: the aligned true values; ``stats``: per
    simulation ``num_draws`` (L after thinning), ``min_ess``, ``divergences`` and ``wall_time``.
    """

    model: str
    method: str
    ranks: dict[str, np.ndarray]
    pit: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_simulations(self) -> int:
        return len(self.stats["num_draws"])

    def labels(self) -> dict[str, tuple[str, tuple]]:
        """``{label: (name, index)}`` of every scalar quantity, e.g. ``"locs[1, 0]"``."""
        out = {}
        for name, values in self.pit.items():
            for idx in np.ndindex(values.shape[1:]):
                out[f"{name}[{', '.join(map(str, idx))}]" if idx else name] = (name, idx)
        return out

    def values(self, label: str) -> np.ndarray:
        name, idx = self.labels()[label]
        return self.pit[name][(slice(None), *idx)]

    def table(self, *, alpha: float = 0.01, bins: int | None = None) -> pd.DataFrame:
        """Per scalar quantity: chi-square of the binned fractional ranks (df = bins - 1), its p-value,
        the mean and sd of the fractional ranks (0.5 and 0.289 when uniform), and a verdict:
        ``miscalibrated`` when p < alpha / (number of quantities) (Bonferroni), else ``ok``."""
        labels = self.labels()
        bins = bins or max(2, min(20, self.num_simulations // 5))
        level = alpha / max(1, len(labels))
        rows = {}
        for label in labels:
            u = self.values(label)
            counts = np.bincount(np.minimum((u * bins).astype(int), bins - 1), minlength=bins)
            chi2, p = scipy_stats.chisquare(counts)
            rows[label] = {"chi2": float(chi2), "df": bins - 1, "p_value": float(p), "pit_mean": float(u.mean()),
                           "pit_sd": float(u.std(ddof=1)), "verdict": "miscalibrated" if p < level else "ok"}
        table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("quantity")
        table.attrs.update(alpha=alpha, bins=bins, level=level)
        return table

    @property
    def calibrated(self) -> bool:
        """No quantity rejected at the Bonferroni level of :meth:`table` (default alpha 0.01)."""
        return bool((self.table()["verdict"] == "ok").all())

    def __str__(self) -> str:
        table = self.table()
        bad = table.index[table["verdict"] != "ok"].tolist()
        head = (f"SBC {self.model} {self.method.upper()}: {self.num_simulations} simulations, "
                f"{len(table)} quantities, median {int(np.median(self.stats['num_draws']))} thinned draws -> "
                f"{'calibrated' if not bad else 'miscalibrated'}")
        return head + (f" ({', '.join(bad)})" if bad else "")

    # --- files ---------------------------------------------------------------------------------
    def to_idata(self) -> azcompat.InferenceData:
        """InferenceData (one 'chain', simulations as 'draw'): groups ``prior`` (aligned truth),
        ``prior_sbc`` (ranks, as simuk), ``sbc_pit`` (fractional ranks), ``sbc_stats``."""
        attrs = {"model": self.model, "inference_method": self.method, "sbc": "Talts et al. 2018",
                 **{f"setting_{k}": str(v) for k, v in self.settings.items()}}
        return azcompat.from_groups({GROUPS[key]: {k: v[None] for k, v in getattr(self, key).items()}
                                     for key in GROUPS}, attrs=attrs)

    def to_netcdf(self, path, *, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"path: {str(path)!r} exists; pass overwrite=True to replace it")
        self.to_idata().to_netcdf(str(path))
        return path

    @classmethod
    def from_netcdf(cls, path) -> "SBCResult":
        """Read a result written by :meth:`to_netcdf`."""
        idata = azcompat.from_netcdf(path)
        if GROUPS["ranks"] not in idata.groups():
            raise ValueError(f"path: {str(path)!r} holds no SBC result (no '{GROUPS['ranks']}' group)")
        parts = {key: {k: v.values[0] for k, v in idata[group].data_vars.items()} for key, group in GROUPS.items()}
        attrs = dict(idata[GROUPS["ranks"]].attrs)
        settings = {k[len("setting_"):]: v for k, v in attrs.items() if k.startswith("setting_")}
        return cls(model=attrs.get("model", ""), method=attrs.get("inference_method", ""), settings=settings, **parts)

    # --- plots ---------------------------------------------------------------------------------
    def plot(self, var_names=None, *, max_panels: int = 24, ci_prob: float = 0.94):
        """Rank ECDF minus uniform with simultaneous ``ci_prob`` bands, one panel per scalar quantity (at
        most ``max_panels``): ``inference.plots.plot_sbc``, which says how to read it."""
        from inference.plots import plot_sbc

        labels = [k for k, (name, _) in self.labels().items() if var_names is None or name in var_names]
        if not labels:
            raise ValueError(f"var_names: expected names among {sorted(self.pit)}, got {var_names!r}")
        return plot_sbc(self, labels[:max_panels], ci_prob=ci_prob, total=len(labels))

    def write_files(self, folder) -> list[str]:
        """Write ``sbc.nc``, ``sbc.csv`` (the table) and ``sbc.png`` (the plot) into the existing ``folder``
        (a report folder being written); returns the file names."""
        import matplotlib.pyplot as plt

        folder = Path(folder)
        self.to_netcdf(folder / "sbc.nc")
        self.table().to_csv(folder / "sbc.csv")
        fig = self.plot()
        fig.savefig(folder / "sbc.png", dpi=110)
        plt.close(fig)
        return ["sbc.nc", "sbc.csv", "sbc.png"]

    def write(self, out, *, force: bool = False) -> Path:
        """Write ``sbc.nc``, ``sbc.csv`` and ``sbc.png`` into the folder ``out`` (created; an existing folder
        is replaced only with ``force``), atomically."""
        from inference.report import check_output_dir

        out = check_output_dir(out, force)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            self.write_files(tmp)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


def sbc(model, *, num_simulations: int = 100, num_observations: int = 50, method: str = "nuts",
        fit_kwargs: Mapping[str, Any] | None = None, seed: int = 0, n_jobs: int = 1,
        progress: bool = True) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model`` (see the module docstring).

    :param model: a zoo model with ``simulate(n, seed)`` and global latent sites, whose prior does not
        depend on the data (an empirical-Bayes prior is refused: fix its hyperparameters).
    :param num_observations: ``n`` passed to ``simulate`` (data points, or time steps of a sequence).
    :param method: "nuts" (``run_nuts``: default one chain, sequential) or "svi" (``fit_svi``).
    :param fit_kwargs: keyword arguments of the fit (e.g. ``num_samples``, ``warmup_steps``, ``guide``).
    :param n_jobs: joblib workers (-1: all cores); the backend is joblib's active one (``loky``
        processes, or ``dask`` inside ``joblib.parallel_backend("dask")``). Same ``seed``, same result.
    """
    target, fit_kwargs = check_inputs(model, num_simulations=num_simulations, num_observations=num_observations,
                                      method=method, fit_kwargs=fit_kwargs, seed=seed, n_jobs=n_jobs)
    start = time.perf_counter()
    jobs = (delayed(replicate)(target.model, i, seed=seed, method=method, num_observations=num_observations,
                               fit_kwargs=fit_kwargs) for i in range(num_simulations))
    results = []
    runs = Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
    for r in tqdm(runs, total=num_simulations, desc=f"SBC {target.name} {method}", disable=None if progress else True,
                  leave=False):
        results.append(r)
    names = list(results[0]["ranks"])
    result = SBCResult(
        model=target.name, method=method,
        ranks={k: np.stack([r["ranks"][k] for r in results]) for k in names},
        pit={k: np.stack([r["pit"][k] for r in results]) for k in names},
        truth={k: np.stack([r["truth"][k] for r in results]) for k in names},
        stats={k: np.array([r["stats"][k] for r in results]) for k in results[0]["stats"]},
        settings=dict(model_config=", ".join(f"{k}={v}" for k, v in getattr(target.model, "config", dict)().items()),
                      num_simulations=num_simulations, num_observations=num_observations, seed=seed,
                      n_jobs=n_jobs, **{f"fit_{k}": v for k, v in fit_kwargs.items()}))
    log.info("SBC %s %s: %d simulations in %.1fs", target.name, method, num_simulations, time.perf_counter() - start)
    return result


def check_inputs(model, *, num_simulations: int = 100, num_observations: int = 50, method: str = "nuts",
                 fit_kwargs: Mapping[str, Any] | None = None, seed: int = 0, n_jobs: int = 1) -> tuple[Target, dict]:
    """The checks :func:`sbc` makes before any fit (so a command can make them before other long work):
    returns the model's Target and the fit keyword arguments, or raises a one-line error naming the
    argument (``model`` for a model SBC cannot calibrate: no ``simulate``, no global latent sites, a prior
    that depends on the data)."""
    target = as_target(model)
    simulate = getattr(target.model, "simulate", None)
    if simulate is None:
        raise ValueError(f"model: SBC needs a zoo model with simulate(n, seed) -> (data, truth); "
                         f"{target.name!r} has none")
    check_setting(method, "method", kind="choice", choices=METHODS)
    check_setting(num_simulations, "num_simulations", kind="int", minimum=2)
    check_setting(num_observations, "num_observations", kind="int", minimum=1)
    if check_setting(n_jobs, "n_jobs", kind="int", minimum=-math.inf) == 0:
        raise ValueError(f"n_jobs: expected a non-zero integer (-1 for all cores), got {n_jobs!r}")
    fit_kwargs = dict(fit_kwargs or {})
    for reserved in ("seed", "progress"):
        if reserved in fit_kwargs:
            raise ValueError(f"fit_kwargs: {reserved!r} is set by sbc (per replicate); pass sbc(..., {reserved}=...)")
    check_fixed_prior(target, num_observations, seed)
    return target, fit_kwargs


def replicate(model, index: int, *, seed: int, method: str, num_observations: int,
              fit_kwargs: Mapping[str, Any]) -> dict[str, dict]:
    """One SBC replicate, seeded from ``(seed, index)`` only: simulate, fit, thin, rank."""
    from inference.mcmc import run_nuts
    from inference.svi import fit_svi

    s = chain_seed(seed, index)
    data, truth = model.simulate(num_observations, seed=s)
    begin = time.perf_counter()
    if method == "nuts":
        kw = {"num_chains": 1, "chain_method": "sequential", **fit_kwargs}
        post = run_nuts(model, data, seed=s, progress=False, **kw)
    else:
        post = fit_svi(model, data, seed=s, progress=False, **fit_kwargs)
    wall = time.perf_counter() - begin
    if post.num_chains * post.num_draws < 2:
        raise ValueError(f"fit_kwargs: SBC ranks the truth among posterior draws; got "
                         f"{post.num_chains * post.num_draws} draw")
    sites = post.target.global_sites(post.data)
    true = post.target.align({k: torch.as_tensor(truth[k])[None, None] for k in sites}, reference=post.alignment)
    draws = {k: v.detach().double().cpu().numpy() for k, v in post.aligned.items()}   # (chain, draw, ...)
    stride, min_ess = thinning(draws)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    ranks, pit, truths = {}, {}, {}
    for name, d in draws.items():
        kept = d[:, ::stride].reshape(-1, *d.shape[2:])                       # (L, ...)
        t = true[name].detach().double().cpu().numpy().reshape(d.shape[2:])
        below, ties = (kept < t).sum(0), (kept == t).sum(0)
        ranks[name] = below + rng.integers(0, ties + 1)                         # ties broken at random
        pit[name] = (ranks[name] + rng.uniform(size=t.shape)) / (len(kept) + 1)
        truths[name] = t
    divergences = int(np.sum(post.sample_stats.get("diverging", 0)))
    return {"ranks": ranks, "pit": pit, "truth": truths,
            "stats": {"num_draws": len(kept), "min_ess": min_ess, "divergences": divergences, "wall_time": wall}}


def thinning(draws: Mapping[str, np.ndarray]) -> tuple[int, float]:
    """The stride that thins every chain to about the smallest effective sample size (bulk or tail)
    over all scalar quantities, and that ESS. Constant quantities (no ESS) are ignored."""
    total = None
    ess = []
    for d in draws.values():
        flat = d.reshape(d.shape[0], d.shape[1], -1)
        total = d.shape[0] * d.shape[1]
        for j in range(flat.shape[-1]):
            x = np.ascontiguousarray(flat[..., j])
            if np.ptp(x) == 0:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ess += [float(azcompat.ess(x, method="bulk")), float(azcompat.ess(x, method="tail"))]
    ess = [e for e in ess if np.isfinite(e)]
    if not ess or total is None:
        return 1, float("nan")
    low = min(ess)
    return max(1, math.ceil(total / max(low, 1.0))), low


def check_fixed_prior(target: Target, num_observations: int, seed: int) -> None:
    """Refuse a model whose prior depends on the data: the log prior of the same parameters (the first
    replicate's truth) under two simulated data sets must agree. SBC checks the posterior of the joint
    that ``simulate`` draws from; a prior re-centred on each data set (empirical Bayes) is another joint."""
    sites = tuple(target.model.global_sites)
    if not sites:
        raise ValueError(f"model: {target.name!r} has no global latent sites; SBC has nothing to calibrate")
    runs = [target.model.simulate(num_observations, seed=chain_seed(seed, i)) for i in range(2)]
    truth = {k: torch.as_tensor(runs[0][1][k]) for k in sites}
    values = []
    for data, _ in runs:
        data = target.validate(data)
        with torch.no_grad():
            trace = poutine.trace(poutine.condition(target.marginal_fn, data=truth)).get_trace(data)
        values.append(sum(float(trace.nodes[k]["fn"].log_prob(trace.nodes[k]["value"]).sum()) for k in sites))
    if not math.isclose(values[0], values[1], rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(
            f"model: the prior of {target.name!r} depends on the data (log prior of the same parameters "
            f"{values[0]:.6g} under one simulated data set, {values[1]:.6g} under another: an empirical-Bayes "
            "prior); SBC needs the prior that simulate draws from, so fix the model's prior hyperparameters")
