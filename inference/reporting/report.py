"""A report folder built from Posterior objects: netCDF, CSV tables, PNG plots, summary.md and .html.

The folder is written to a temporary sibling and renamed into place at the end
(:func:`inference.files.atomic_write`), so a failure never leaves a half-written report. Every report
folder holds a marker file (``inference.files.MARKER``); ``force=True`` replaces only a folder that has it
(or an empty one): :func:`inference.files.check_output_dir` is the check, to call before any long work;
:func:`write_report` calls it again at the end.
"""

from __future__ import annotations

import html
import logging
import os
import warnings
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from inference.checks.compare import summary_line
from inference.checks.diagnostics import Diagnosis
from inference.checks.select import loo_table
from inference.files import MARKER, atomic_write, check_output_dir
from inference.posterior import Posterior
from inference.reporting.html import write_html
from inference.reporting.plots import (plot_forest, plot_importance_tail, plot_losses, plot_overlay, plot_rank,
                                       plot_trace)

log = logging.getLogger(__name__)

def check_posteriors(posteriors, name: str = "posteriors") -> dict[str, Posterior]:
    """A non-empty ``{label: Posterior}`` with labels usable in file names, or a clear error."""
    if not isinstance(posteriors, Mapping):
        raise TypeError(f"{name}: expected a dict {{label: Posterior}}, got {type(posteriors).__name__}")
    if not posteriors:
        raise ValueError(f"{name}: is empty; expected at least one {{label: Posterior}}")
    for label, post in posteriors.items():
        if not isinstance(label, str) or not label or os.sep in label or label.startswith("."):
            raise ValueError(f"{name}: label {label!r} cannot name a file; use a plain word such as 'svi'")
        if not isinstance(post, Posterior):
            raise TypeError(f"{name}: {label!r} is a {type(post).__name__}, expected an inference.Posterior")
    return dict(posteriors)


def write_report(out: str | os.PathLike, posteriors: Mapping[str, Posterior], *, dataset=None,
                 comparison: pd.DataFrame | None = None, diagnoses: Mapping[str, Diagnosis] | None = None,
                 title: str = "", force: bool = False, figures: Mapping | None = None,
                 sections: Mapping[str, str | pd.DataFrame] | None = None, sbc=None) -> Path:
    """Write the report folder and return its path.

    ``figures`` adds ``{file stem: matplotlib Figure}``; ``sections`` adds summary.md sections
    ``{heading: markdown text or a DataFrame}`` after the runs table (a table is also written as CSV
    when ``df.attrs["csv"]`` names a file, and only there when ``df.attrs["markdown"]`` is False).
    ``sbc`` (an :class:`inference.checks.sbc.SBCResult`) adds ``sbc.nc``, ``sbc.csv`` and ``sbc.png`` and the
    calibration section of report.html.
    The folder appears in one rename at the end; if another run created ``out`` meanwhile, that
    folder is left as it is and ``FileExistsError`` is raised.
    """
    posteriors = check_posteriors(posteriors)
    out = check_output_dir(out, force)
    with atomic_write(out, folder=True, force=force) as tmp:
        _write(tmp, posteriors, dataset, comparison, diagnoses or {}, title, figures or {}, sections or {}, sbc)
        (tmp / MARKER).write_text("written by latent-zoo's inference.write_report\n")
    return out


def _write(folder: Path, posteriors, dataset, comparison, diagnoses, title, extra_figures, sections, sbc):
    files: list[str] = sbc.write_files(folder) if sbc is not None else []
    for table in sections.values():
        if isinstance(table, pd.DataFrame) and table.attrs.get("csv"):
            table.to_csv(folder / table.attrs["csv"])
            files.append(table.attrs["csv"])
    for label, post in posteriors.items():
        post.to_netcdf(folder / f"posterior_{label}.nc")
        files.append(f"posterior_{label}.nc")
    if comparison is not None:
        comparison.to_csv(folder / "comparison.csv")
        files.append("comparison.csv")
    if diagnoses:
        table = pd.concat({label: d.summary for label, d in diagnoses.items()}, names=["method", "quantity"])
        table.to_csv(folder / "diagnostics.csv")
        files.append("diagnostics.csv")

    figures = {}
    sampled = [p for p in posteriors.values() if p.num_chains > 1]
    if sampled:
        figures["trace"] = lambda: plot_trace(sampled[0])
        figures["rank"] = lambda: plot_rank(sampled[0])
    first = next(iter(posteriors.values()))
    # overlays and the model's own figures: the fits of the first one's model (zoo select: several sizes)
    same = {k: p for k, p in posteriors.items() if p.target.name == first.target.name and
            p.target.model.config() == first.target.model.config()}
    if len(same) > 1:
        figures["forest"] = lambda: plot_forest(same)
        figures["density"] = lambda: plot_overlay(same)
    trained = {k: p for k, p in posteriors.items() if p.losses}
    if trained:
        figures["loss"] = lambda: plot_losses(trained)
    guided = {k: p for k, p in posteriors.items() if p.log_q is not None and p.num_draws > 1}
    if guided:
        figures["importance"] = lambda: plot_importance_tail(guided)
    for stem, fig in first.target.model.figures(first.data, same, dataset=dataset).items():
        figures[stem] = (lambda f=fig: f)
    for stem, fig in extra_figures.items():
        figures[stem] = (lambda f=fig: f)
    for stem, make in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
            fig.savefig(folder / f"{stem}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            files.append(f"{stem}.png")
        except Exception as e:  # a plot that cannot be drawn must not lose the rest of the report
            log.warning("plot %s skipped: %s", stem, e)
            plt.close("all")
    blocks = summary_blocks(posteriors, dataset=dataset, comparison=comparison, diagnoses=diagnoses,
                            files=files, title=title, sections=sections, sbc=sbc)
    (folder / "summary.md").write_text(render_markdown(blocks))
    (folder / "summary.html").write_text(render_html(blocks))
    write_html(folder, posteriors, title=blocks[0][1], dataset=dataset, diagnoses=diagnoses, comparison=comparison,
               pieces={"more": list(sections.items())})


# --- summary.md / summary.html -------------------------------------------------------------


def training_text(fit, heldout: pd.DataFrame, split: str, eval_particles: int | None = None) -> str:
    """The report paragraph of a minibatch fit (``inference.variational.train.train``'s result): the held-out NLL of
    ``split`` (a row of :func:`inference.posterior.heldout`), how it was computed, how training went."""
    row = heldout.loc[split]
    how = (f"importance sampling with k = {eval_particles} draws from the guide per data point (the IWAE bound "
           f"L_k)" if eval_particles else "the model's log_likelihood")
    h = fit.history
    return (f"Negative log-likelihood of the {split} split: **{row.nll_per_observation:.3f} nats** per data point "
            f"(± {row.se:.3f} se over {int(row.points)} data points), {how}. Training: {len(h['epoch'])} epochs, "
            f"{fit.wall_time:.0f} s, objective {fit.settings['elbo']}; last training objective {h['train'][-1]:.3f}"
            + (f", best validation objective {max(h['valid']):.3f} at epoch {fit.best_epoch}" if fit.best_epoch else "")
            + (f"; checkpoint {fit.checkpoint}" if fit.checkpoint else "") + ".")


def summary_blocks(posteriors, *, dataset=None, comparison=None, diagnoses=None, files=(), title="",
                   sections=None, sbc=None):
    """The summary as a list of ``(kind, content)`` blocks: h1, h2, p, table, pre, file."""
    first = next(iter(posteriors.values()))
    model = first.target.model
    blocks = [("h1", title or first.target.name)]
    if dataset is not None:
        shape = tuple(dataset.data.shape) if hasattr(dataset.data, "shape") else ""
        blocks += [("p", f"Data: {dataset.name} {shape}: {dataset.description}. Source: {dataset.source}")]
    blocks += [("p", f"Model: {first.target.name} ({', '.join(f'{k}={v}' for k, v in model.config().items())})")]
    runs = pd.DataFrame.from_dict(
        {label: {"chains": p.num_chains, "draws": p.num_draws, "wall time (s)": p.wall_time,
                 "settings": ", ".join(f"{k}={v}" for k, v in p.settings.items())}
         for label, p in posteriors.items()}, orient="index").rename_axis("method")
    blocks += [("h2", "Runs"), ("table", runs)]
    for heading, body in (sections or {}).items():
        if isinstance(body, pd.DataFrame) and body.attrs.get("markdown", True):
            blocks += [("h2", heading), ("table", body)]
        else:
            text = body if not isinstance(body, pd.DataFrame) else f"{len(body)} rows in {body.attrs['csv']}."
            blocks += [("h2", heading), ("p", text)]
    if comparison is not None:
        la, lb = comparison.attrs["labels"]
        blocks += [("h2", f"{la.upper()} vs {lb.upper()} (reference: {lb.upper()})"),
                   ("p", summary_line(comparison)),
                   ("p", "smd = (mean_a - mean_b) / sd_b; sd_ratio = sd_a / sd_b."),
                   ("table", comparison.drop(columns=["site"]))]
    if diagnoses:
        blocks += [("h2", "Diagnostics")] + [("pre", str(d)) for d in diagnoses.values()]
    loo = loo_table(posteriors, by_site=True)
    if len(loo):
        blocks += [("h2", "PSIS-LOO (marginal pointwise log-likelihood)"), ("table", loo)]
    if sbc is not None:
        blocks += [("h2", "Simulation-based calibration"), ("pre", str(sbc)), ("table", sbc.table())]
    if files:
        blocks += [("h2", "Files")] + [("file", f) for f in files]
    return blocks


def _cell(v, floatfmt=".4g") -> str:
    return format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-markdown table (no extra dependency)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(idx)] + [_cell(v) for v in row]) + " |" for idx, row in df.iterrows()]
    return "\n".join(lines)


def render_markdown(blocks) -> str:
    out = []
    for kind, content in blocks:
        out.append({
            "h1": lambda c: f"# {c}", "h2": lambda c: f"## {c}", "p": str, "table": markdown_table,
            "pre": lambda c: f"```\n{c}\n```",
            "file": lambda c: f"- {c}\n\n  ![{c}]({c})" if c.endswith(".png") else f"- [{c}]({c})",
        }[kind](content))
    return "\n\n".join(out) + "\n"


def render_html(blocks) -> str:
    def table(df):
        return df.to_html(float_format=lambda v: _cell(v), border=0, classes="table")

    body = []
    for kind, content in blocks:
        body.append({
            "h1": lambda c: f"<h1>{html.escape(c)}</h1>", "h2": lambda c: f"<h2>{html.escape(c)}</h2>",
            "p": lambda c: f"<p>{html.escape(c)}</p>", "table": table,
            "pre": lambda c: f"<pre>{html.escape(c)}</pre>",
            "file": lambda c: (f'<figure><img src="{c}" alt="{c}"><figcaption>{c}</figcaption></figure>'
                               if c.endswith(".png") else f'<p><a href="{c}">{c}</a></p>'),
        }[kind](content))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:90%}td,th{padding:2px 8px;text-align:right}"
             "tr:nth-child(even){background:#f4f4f4}img{max-width:100%}pre{background:#f4f4f4;padding:1em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(blocks[0][1])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
