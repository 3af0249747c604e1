"""A report folder built from Posterior objects: netCDF, CSV tables, PNG plots, summary.md and .html.

The folder is written to a temporary sibling and renamed into place at the end, so a failure never
leaves a half-written report. Every report folder holds a marker file (``MARKER``); ``force=True``
replaces only a folder that has it (or an empty one), never the working folder, one of its
ancestors or a folder holding protected paths (the input data). :func:`check_output_dir` is the
check, to call before any long work; :func:`write_report` calls it again at the end.
"""

from __future__ import annotations

import errno
import html
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from inference.compare import summary_line
from inference.diagnostics import Diagnosis
from inference.html import write_html
from inference.plots import plot_forest, plot_importance_tail, plot_losses, plot_overlay, plot_rank, plot_trace
from inference.posterior import Posterior

log = logging.getLogger(__name__)

#: the file every report folder holds: ``force=True`` replaces only folders that have it (or empty ones)
MARKER = ".zoo-report"


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def check_output_dir(out: str | os.PathLike, force: bool = False, *, name: str = "out",
                     protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Check that a report folder can be written at ``out``, before any long work; return it as a Path.

    Refused, with a ``ValueError``/``FileExistsError`` naming ``name`` (the argument or CLI flag): the
    working folder or one of its ancestors; an existing path without ``force``; with ``force``, an
    existing path that is not a folder, is neither empty nor a report (no ``MARKER``), or holds one
    of the ``protect`` paths (e.g. the input data); a location under a file or in a folder that cannot
    be written. Missing parent folders are fine (created when the report is written).
    """
    if not isinstance(out, (str, os.PathLike)) or not str(out).strip():
        raise TypeError(f"{name}: expected a folder path, got {out!r}")
    out = Path(out)
    where = out.resolve()
    if _inside(Path.cwd().resolve(), where):
        raise ValueError(f"{name}: {str(out)!r} is the working folder or contains it; choose a new folder, "
                         "e.g. runs/NAME")
    if out.exists() or out.is_symlink():
        if not force:
            raise FileExistsError(f"{name}: {str(out)!r} already exists; pass --force (force=True) to replace "
                                  "a report folder, or choose another folder")
        if out.is_symlink() or not out.is_dir():
            raise FileExistsError(f"{name}: {str(out)!r} exists and is a link or a file, not a folder; it is never "
                                  "replaced")
        for p in protect:
            if p is not None and _inside(Path(p).resolve(), where):
                raise ValueError(f"{name}: {str(out)!r} holds the input {str(p)!r}; --force never replaces it, "
                                 "choose another folder")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise FileExistsError(f"{name}: {str(out)!r} is not a zoo report folder (no {MARKER} file) and not "
                                  "empty; --force replaces only report folders, choose another folder")
    _check_parent(out, name)
    return out


def check_output_file(path: str | os.PathLike, force: bool = False, *, name: str = "path",
                      protect: Iterable[str | os.PathLike] = (), is_ours=None, what: str = "a zoo file",
                      advice: str = "pass --force (force=True) to replace it") -> Path:
    """The same checks as :func:`check_output_dir` for one output file (e.g. a training checkpoint): an
    existing file is replaced only with ``force``, only if ``is_ours(path)`` accepts it (raises nothing),
    and never when it is or lies inside a ``protect`` path."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise TypeError(f"{name}: expected a file path, got {path!r}")
    path = Path(path)
    if path.exists() or path.is_symlink():
        if path.is_dir():
            raise FileExistsError(f"{name}: {str(path)!r} is a folder, expected a file")
        if not force:
            raise FileExistsError(f"{name}: {str(path)!r} already exists; {advice}")
        for p in protect:
            if _inside(path.resolve(), Path(p).resolve()):
                raise ValueError(f"{name}: {str(path)!r} is (inside) the input {str(p)!r}; it is never replaced")
        try:
            if is_ours is not None:
                is_ours(path)
        except Exception:
            raise FileExistsError(f"{name}: {str(path)!r} is not {what}; --force replaces only that, choose "
                                  "another file") from None
    _check_parent(path, name)
    return path


def _check_parent(path: Path, name: str) -> None:
    """The nearest existing folder above ``path`` must be a folder that can be written."""
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{name}: {str(path)!r} lies under {str(parent)!r}, which is a file, not a folder")
    try:                         # a real write: os.access says yes to root on a read-only file system
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".zoo-probe-"))
    except OSError as e:
        raise PermissionError(f"{name}: cannot create {str(path)!r}: folder {str(parent)!r} is not writable "
                              f"({e.strerror})") from None


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
    ``sbc`` (an :class:`inference.sbc.SBCResult`) adds ``sbc.nc``, ``sbc.csv`` and ``sbc.png`` and the
    calibration section of report.html.
    The folder appears in one rename at the end; if another run created ``out`` meanwhile, that
    folder is left as it is and ``FileExistsError`` is raised.
    """
    posteriors = check_posteriors(posteriors)
    out = check_output_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        _write(tmp, posteriors, dataset, comparison, diagnoses or {}, title, figures or {}, sections or {}, sbc)
        (tmp / MARKER).write_text("written by latent-zoo's inference.write_report\n")
        _move_into_place(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out`` (replacing a report folder there only with ``force``), atomically."""
    taken = FileExistsError(f"out: {str(out)!r} was created by another run meanwhile; it was left as it is "
                            "and this report was not written")
    old = None
    if out.exists() or out.is_symlink():
        if not force:
            raise taken
        check_output_dir(out, force)      # still a report folder (it may have changed during the run)
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / "report")
    try:
        os.rename(tmp, out)               # atomic; fails on a non-empty folder created meanwhile
    except OSError as e:
        if old is not None and not out.exists():
            (old / "report").rename(out)
            shutil.rmtree(old, ignore_errors=True)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise taken from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    """The report paragraph of a minibatch fit (``inference.train.train``'s result): the held-out NLL of
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


def loo_table(posteriors: Mapping[str, Posterior]) -> pd.DataFrame:
    """PSIS-LOO from each posterior's marginal pointwise log-likelihood, one row per observed site; SVI
    rows corrected for the guide (``draws``: :func:`inference.select.loo`)."""
    from inference.select import loo

    rows = {}
    for label, post in posteriors.items():
        for site, ll in post.pointwise.items():
            if post.num_chains * post.num_draws < 10 or ll[0, 0].numel() < 2:   # one sequence: nothing left
                continue
            result = loo(post, name=label, var_name=site)
            rows[label if len(post.pointwise) == 1 else f"{label}: {site}"] = {
                "elpd_loo": float(result.elpd_loo), "se": float(result.se), "p_loo": float(result.p_loo),
                "pareto_k > 0.7": int((np.asarray(result.pareto_k) > 0.7).sum()), "draws": result.attrs["draws"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


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
    loo = loo_table(posteriors)
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
