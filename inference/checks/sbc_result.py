"""The result of :func:`inference.checks.sbc.sbc`: ranks and fractional ranks of every aligned quantity,
the chi-square verdict per quantity, netCDF round trip, the ECDF figure and the files of a report folder."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import arviz as az
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from inference import azcompat
from inference.figures import panels
from inference.files import atomic_write, check_output_dir

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
        most ``max_panels``): :func:`plot_sbc`, which says how to read it."""
        labels = [k for k, (name, _) in self.labels().items() if var_names is None or name in var_names]
        if not labels:
            raise ValueError(f"var_names: expected names among {sorted(self.pit)}, got {var_names!r}")
        return plot_sbc(self, labels[:max_panels], ci_prob=ci_prob, total=len(labels))

    def write_files(self, folder) -> list[str]:
        """Write ``sbc.nc``, ``sbc.csv`` (the table) and ``sbc.png`` (the plot) into the existing ``folder``
        (a report folder being written); returns the file names."""
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
        out = check_output_dir(out, force)
        with atomic_write(out, folder=True, force=force) as tmp:
            self.write_files(tmp)
        return out


def plot_sbc(result, labels, *, ci_prob: float = 0.94, total: int | None = None):
    """ECDF of the fractional ranks of an :class:`inference.checks.sbc.SBCResult` minus the uniform CDF, with
    simultaneous ``ci_prob`` bands, one panel per scalar quantity in ``labels``. A curve leaving its band:
    miscalibrated; a curve that dips below 0 in the lower half and rises above it in the upper half (an S):
    posteriors too wide; the mirror image: too narrow; a curve above 0 throughout: the truth sits low in
    its posteriors (posterior biased upwards)."""
    fig, axes = panels(len(labels), 3.2, 2.6)
    grid = np.linspace(0, 1, 101)
    for ax, label in zip(axes.flat, labels):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            az.plot_ecdf(result.values(label), cdf=scipy_stats.uniform().cdf, eval_points=grid, difference=True,
                         confidence_bands=True, ci_prob=ci_prob, random_state=0, ax=ax, show=False)
        ax.set_title(label, fontsize=9)
        ax.axhline(0, color="0.5", lw=0.5)
    more = f" (first {len(labels)} of {total})" if total and len(labels) < total else ""
    fig.suptitle(f"SBC {result.model} {result.method.upper()}: ECDF - uniform, {result.num_simulations} "
                 f"simulations, {ci_prob:.0%} simultaneous bands{more}", fontsize=10)
    fig.tight_layout()
    return fig
