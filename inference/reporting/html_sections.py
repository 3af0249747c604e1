"""The sections of ``report.html`` (:mod:`inference.reporting.html`): what each shows, from the posteriors, the
report folder's files (``*.png`` by stem, ``*.csv`` tables) or computed here (energy and pair plots,
PSIS-LOO, a generic predictive check). Each builder returns a list of items the page renders."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd

from inference.checks.compare import summary_line
from inference.checks.ppc import plot_ppc
from inference.checks.sbc_result import SBCResult
from inference.checks.select import loo_table
from inference.reporting.plots import plot_energy, plot_pair, plot_rank, plot_trace
from inference.thresholds import AGREE_SMD, BFMI_MIN, ESS_MIN, KHAT_GOOD, KHAT_MAX, RHAT_MAX

log = logging.getLogger(__name__)

#: id -> (heading, what to look at)
SECTIONS = {
    "data": ("Data and model", "Do the data look like what the model assumes (scales, clusters, gaps)? "
                               "Are the runs' settings and wall times what you asked for?"),
    "comparison": ("Comparison of the fits", f"Rows whose verdict is not 'agree': means off by more than {AGREE_SMD} "
                                             "sd of the reference fit, or sds too small (mean-field SVI "
                                             "underestimates variance)."),
    "diagnostics": ("Diagnostics and verdicts", f"Every verdict should be 'pass': R-hat <= {RHAT_MAX}, bulk ESS >= "
                                                f"{ESS_MIN}, no divergences; E-BFMI below {BFMI_MIN} means poor "
                                                "exploration. SVI: 'converged' (the iterates became stationary) and "
                                                f"Pareto k-hat of the guide below {KHAT_GOOD} (close to the "
                                                f"posterior); {KHAT_GOOD}-{KHAT_MAX} use with care; above {KHAT_MAX} "
                                                "the guide misses the posterior: do not trust its sds."),
    "plots": ("Trace, rank, energy and pair plots", "Traces should overlap like fuzzy caterpillars, rank "
                                                   "histograms be flat, the energy transition distribution be as "
                                                   "wide as the marginal energy, pairs show no funnels or "
                                                   "divergences piled in one place."),
    "ppc": ("Posterior predictive checks", "Observed data (or statistic) inside the cloud of replicated data; "
                                           "Bayesian p-values near 0 or 1 name what the model misses."),
    "loo": ("PSIS-LOO and model choice", "Higher elpd_loo predicts better; a difference smaller than about "
                                        f"2 dse is no evidence; Pareto k above {KHAT_MAX} makes that point's estimate "
                                        "unreliable. SVI rows are corrected for the guide ('draws'); an "
                                        "uncorrected SVI row treats guide draws as posterior draws."),
    "more": ("Further results", "Results particular to this model or command (held-out log-likelihood, "
                                "amortization gap, ...)."),
    "sbc": ("Simulation-based calibration", "Every ECDF difference inside its simultaneous band and the verdict "
                                            "'calibrated': the fitting method recovers parameters drawn from the "
                                            "prior. A curve above 0 in the lower half and below it in the upper "
                                            "half: posteriors too narrow; the mirror image: too wide; above 0 "
                                            "throughout: posteriors biased upwards."),
    "files": ("Files", "The CSV and netCDF files behind this page (open netCDF with arviz.from_netcdf)."),
}
PLOTS = ("trace", "rank", "energy", "pair")
#: PNG stems of a report folder -> section (stems not listed, e.g. a model's own figures, go to "data")
STEM_SECTION = {"trace": "plots", "rank": "plots",
                "forest": "comparison", "density": "comparison", "loss": "comparison", "elbo": "comparison",
                "amortization": "comparison", "select": "loo", "khat": "loo",
                "importance": "diagnostics"}
PREFIX_SECTION = {"ppc": "ppc", "sbc": "sbc", "energy": "plots", "pair": "plots"}
CSV_SECTION = {"select.csv": "loo", "heldout.csv": "loo"}
SBC_FILES = {"sbc.png", "sbc.csv"}   # shown by sbc_items with the verdict read from sbc.nc


class Verdict(str):
    """A diagnosis printed as text, styled by its verdict."""


class Absent(str):
    """A line saying what is missing and how to get it."""


def data_items(idatas, dataset, summary):
    items = []
    if dataset is not None:
        shape = tuple(dataset.data.shape) if hasattr(dataset.data, "shape") else ""
        items.append(f"Data: {dataset.name} {shape}: {dataset.description}. Source: {dataset.source}")
    else:
        items += [line for line in summary.splitlines() if line.startswith("Data:")]
    items += [line for line in summary.splitlines() if line.startswith("Model:")]
    first = next(iter(idatas.values()), None)
    if first is not None and "observed_data" in first.groups():
        items.append(("Observed data", _observed_table(first.observed_data)))
    runs = {}
    for label, idata in idatas.items():
        post = _draws_group(idata)
        attrs = {**dict(post.attrs), **dict(idata.attrs)} if post is not None else dict(idata.attrs)
        sizes = post.sizes if post is not None else {}
        runs[label] = {"method": attrs.get("inference_method", label), "chains": sizes.get("chain", 1),
                       "draws": sizes.get("draw", 1), "wall time (s)": float(attrs.get("wall_time_s", np.nan)),
                       "settings": ", ".join(f"{k[8:]}={v}" for k, v in attrs.items() if k.startswith("setting_"))}
    if runs:
        items.append(("Runs", pd.DataFrame.from_dict(runs, orient="index").rename_axis("label")))
    return items


def _observed_table(observed) -> pd.DataFrame:
    rows = {}
    for name, var in observed.data_vars.items():
        x = np.asarray(var.values, dtype=float)
        cols = [(name, x)] if x.ndim != 2 or x.shape[1] > 20 else \
            [(f"{name}[{c}]", x[:, j]) for j, c in enumerate(var.coords[var.dims[1]].values)]
        for j, (label, v) in enumerate(cols):
            finite = v[np.isfinite(v)]
            rows[label] = {"shape": str(tuple(var.shape)) if j == 0 else "",
                           "mean": finite.mean() if finite.size else np.nan,
                           "sd": finite.std() if finite.size else np.nan,
                           "min": finite.min() if finite.size else np.nan,
                           "max": finite.max() if finite.size else np.nan,
                           "missing": int(np.isnan(v).sum())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("variable")


def comparison_items(comparison, folder):
    if comparison is None and (folder / "comparison.csv").exists():
        comparison = pd.read_csv(folder / "comparison.csv", index_col=0)
    if comparison is None:
        return [Absent("Only one fit in this folder: `zoo compare MODEL` fits by SVI and by NUTS and compares them.")]
    items = [summary_line(comparison)] if "labels" in comparison.attrs else []
    verdicts = comparison["verdict"].value_counts() if "verdict" in comparison else None
    if verdicts is not None:
        items.append("Verdicts: " + ", ".join(f"{v} ({n})" for v, n in verdicts.items()))
    return items + [("smd = (mean_a - mean_b) / sd_b; sd_ratio = sd_a / sd_b (b: the reference)",
                     comparison.drop(columns=["site"], errors="ignore"))]


def diagnostics_items(diagnoses, folder, summary):
    if diagnoses:
        verdicts = [str(d) if label == d.method else f"[{label}] {d}" for label, d in diagnoses.items()]
        table = pd.concat({label: d.summary for label, d in diagnoses.items()}, names=["method", "quantity"])
    else:
        verdicts = summary_block(summary, "Diagnostics")
        table = pd.read_csv(folder / "diagnostics.csv", index_col=[0, 1]) if (folder / "diagnostics.csv").exists() \
            else None
    items = [Verdict(v) for v in verdicts]
    if table is not None:
        items.append(("ArviZ summary of the identifiable quantities", table))
    return items


def plot_items(posteriors, idatas, plots, found):
    sampled = _sampled(idatas)
    items = []
    for name in plots:
        have = [item for stem, item in found if stem == name or stem.startswith(name + "_")]
        if have:
            items += [(None, item) for item in have]
            continue
        if not sampled and name in ("trace", "rank"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                make = {"energy": _energy, "pair": _pair}.get(name, lambda *a: _trace_or_rank(name, *a))
                made = make(posteriors, idatas, sampled)
        except Exception as e:   # a plot that cannot be drawn is named, the page goes on
            log.warning("report.html plot %s: %s", name, e)
            made = [f"The {name} plot could not be drawn: {e}"]
        items += made
    return items


def _sampled(idatas) -> list[str]:
    """Labels of the fits with several chains, in order: the first is the one plotted (as in report.py:
    NUTS in a compare folder, the best candidate in a select folder)."""
    return [label for label, idata in idatas.items() if "posterior" in idata.groups()
            and idata.posterior.sizes.get("chain", 1) > 1]


def _draws_group(idata):
    """The group that holds a run's draws and attributes: ``posterior``, else (an amortized model with no
    global latents keeps only per-point quantities) the first group with chain and draw dims; or None."""
    for group in ("posterior", *idata.groups()):
        if group in idata.groups() and {"chain", "draw"} <= set(getattr(idata, group).sizes):
            return getattr(idata, group)
    return None


def _trace_or_rank(name, posteriors, idatas, sampled):
    label = sampled[0]
    fig = (plot_trace if name == "trace" else plot_rank)(posteriors[label])
    return [(f"{label}: {name} plot", fig)]


def _energy(posteriors, idatas, sampled):
    items = []
    for label, idata in idatas.items():
        if "sample_stats" not in idata.groups() or "energy" not in idata.sample_stats:
            continue
        bfmi = az.bfmi(idata)
        items.append((f"{label}: marginal energy vs energy transition; E-BFMI per chain "
                      f"{', '.join(f'{b:.2f}' for b in bfmi)} (below 0.3: warning)",
                      plot_energy(idata, title=f"{label}: energy")))
    return items or ["No energy plot: no posterior here records `energy` in its sample statistics "
                     "(NUTS runs that do get an energy plot and E-BFMI)."]


def _pair(posteriors, idatas, sampled):
    if not sampled:
        return []
    label = sampled[0]
    return [(f"{label}: pairs of draws; divergences in red", plot_pair(posteriors[label]))]


def ppc_items(idatas, found):
    if found:
        return []
    for label in _sampled(idatas) + list(reversed(idatas)):
        idata = idatas[label]
        if {"posterior_predictive", "observed_data"} <= set(idata.groups()):
            # each replicated variable with the observed variable of its name, else of its shape
            pairs = {}
            for name, rep in idata.posterior_predictive.data_vars.items():
                same = [v for v in idata.observed_data.data_vars.values() if v.shape == rep.shape[2:]]
                obs = idata.observed_data.get(name, same[0] if len(same) == 1 else None)
                if obs is not None:
                    pairs[name] = (rep.values.reshape(-1, *rep.shape[2:]), obs.values)
            if not pairs:
                continue
            n = len(next(iter(pairs.values()))[0])
            fig = plot_ppc({k: r for k, (r, _) in pairs.items()}, {k: o for k, (_, o) in pairs.items()},
                           figsize=(6.5, 3.6))
            return [(f"{label}: density of the observed values against {min(50, n)} replicated data sets", fig)]
    return []


def loo_items(posteriors):
    table = loo_table(posteriors)
    items: list = [("PSIS-LOO on the marginal pointwise log-likelihood", table)] if len(table) else []
    return items + table.attrs["notes"]


def sbc_items(folder) -> list:
    """The calibration section of a folder holding ``sbc.nc`` (``zoo sbc``, or a report written with an
    SBC result): the verdict, the settings, the ECDF plot and the chi-square table. Nothing when the
    folder has no ``sbc.nc``."""
    folder = Path(folder)
    if not (folder / "sbc.nc").is_file():
        return []
    result = SBCResult.from_netcdf(folder / "sbc.nc")
    settings = dict(result.settings)
    config = settings.pop("model_config", "")
    draws, divergences = result.stats["num_draws"], int(result.stats["divergences"].sum())
    items = [Verdict(str(result)),
             f"Model: {result.model} ({config}). Fit by {result.method.upper()}: "
             + ", ".join(f"{k}={v}" for k, v in settings.items())
             + f". Thinned draws per simulation: {int(draws.min())} to {int(draws.max())}; {divergences} divergences."]
    if (folder / "sbc.png").is_file():
        items.append(("ECDF of the fractional ranks minus the uniform CDF, with simultaneous bands (sbc.png)",
                      folder / "sbc.png"))
    if (folder / "sbc.csv").is_file():
        items.append(("Uniformity per quantity: chi-square of the binned fractional ranks, verdict at the "
                      "Bonferroni level (sbc.csv)", pd.read_csv(folder / "sbc.csv", index_col=0)))
    return items


def file_items(folder):
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")) \
        if folder.is_dir() else []
    files = [f for f in files if f != "report.html"]
    return ["Beside this page: " + ", ".join(files)] if files else []


# --- folder contents ----------------------------------------------------------------------------


def folder_items(folder: Path, skip=()) -> dict[str, list]:
    """PNGs and section tables (but not the CSVs in ``skip``) of a report folder by section (plots:
    ``(stem, path)`` pairs)."""
    found: dict[str, list] = {sid: [] for sid in SECTIONS}
    if not folder.is_dir():
        return found
    for png in sorted(folder.glob("*.png")):
        if png.name in skip:
            continue
        stem = png.stem
        sid = STEM_SECTION.get(stem) or next((s for p, s in PREFIX_SECTION.items() if stem.startswith(p)), "data")
        if sid == "plots":
            found["plots"].append((stem, png))
        else:
            found[sid].append(png)
    for csv in sorted(folder.glob("*.csv")):
        sid = csv_section(csv.name)
        if sid is not None and csv.name not in skip:
            found[sid].append((csv.name, pd.read_csv(csv, index_col=0)))
    return found


def csv_section(name: str) -> str | None:
    """The section of a report folder's CSV file (select.csv, heldout.csv, ppc*.csv, sbc*.csv), or None."""
    return CSV_SECTION.get(name) or next((s for p, s in PREFIX_SECTION.items() if name.startswith(p)), None)


def summary_block(summary: str, heading: str) -> list[str]:
    """The fenced blocks under ``## heading`` of a summary.md."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", summary, flags=re.S | re.M)
    return re.findall(r"```\n(.*?)\n```", match.group(1), flags=re.S) if match else []


def first_heading(summary: str) -> str:
    match = re.search(r"^# (.+)$", summary, flags=re.M)
    return match.group(1) if match else ""


def idata_of(post):
    if isinstance(post, az.InferenceData):
        return post
    if hasattr(post, "idata"):
        return post.idata
    raise TypeError(f"posteriors: expected Posterior or az.InferenceData values, got {type(post).__name__}")
