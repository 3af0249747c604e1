"""``report.html``: one self-contained page per report folder (images as data URIs, CSS inline, no JS).

Sections, each with a line on what to look at, and a one-line note where its inputs are absent:
data and model, the comparison of the fits (its heading names them: "SVI vs NUTS vs GIBBS"), diagnostics and
verdicts, trace/rank/energy/pair plots, posterior
predictive checks, PSIS-LOO and model choice, simulation-based calibration, files.

Content comes from three places, in this order: ``pieces`` handed in by the caller (matplotlib
Figures, PNG paths, DataFrames, text), the files of the report folder (``*.png`` by stem, ``*.csv``
tables), and what is computed here from the posteriors (energy and pair plots, PSIS-LOO, a generic
predictive check). A page can be built from a finished folder alone (``zoo report --from DIR``).
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import arviz as az
import matplotlib.pyplot as plt
import pandas as pd

from inference.files import atomic_write
from inference.reporting.html_sections import (PLOTS, SBC_FILES, SECTIONS, Absent, Verdict, comparison_items,
                                               csv_section, data_items, diagnostics_items, file_items, first_heading,
                                               folder_items, idata_of, loo_items, plot_items, ppc_items, sbc_items)

log = logging.getLogger(__name__)

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1150px;margin:0 auto;
padding:1em 1.5em 3em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #dde;padding-bottom:.2em;margin-top:2em}
nav{background:#f4f5f9;padding:.5em 1em;border-radius:6px}nav a{margin-right:1.2em;text-decoration:none}
.look{background:#eef6ee;border-left:4px solid #4a4;padding:.4em .8em}
.absent{color:#777;font-style:italic}
.verdict{font-family:monospace;white-space:pre-wrap;background:#f7f7f7;padding:.6em;border-radius:4px}
.pass{border-left:4px solid #4a4}.check{border-left:4px solid #d80}
.tablewrap{max-height:420px;overflow:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:85%}td,th{padding:2px 8px;text-align:right;border-bottom:1px solid #eee}
th{background:#f4f5f9;position:sticky;top:0}
figure{display:inline-block;vertical-align:top;margin:.8em .8em .8em 0;max-width:100%}
img{max-width:100%;max-height:720px;border:1px solid #eee}
figcaption{font-size:85%;color:#555}code{background:#f4f4f4;padding:0 .3em}
"""


def write_html(folder, posteriors: Mapping[str, Any] | None = None, *, title: str = "", dataset=None,
               diagnoses: Mapping | None = None, comparison: pd.DataFrame | None = None,
               pieces: Mapping[str, Sequence] | None = None, plots: Sequence[str] = PLOTS,
               path=None) -> Path:
    """Write ``report.html`` (or ``path``) for the report ``folder``; returns its path.

    :param posteriors: ``{label: Posterior or az.InferenceData}``; default: the folder's ``posterior_*.nc``.
    :param pieces: ``{section id: [item, ...]}`` added to a section (ids: see :data:`SECTIONS`); an item
        is a matplotlib Figure, the path of a PNG, a DataFrame, a string (a paragraph) or a
        ``(caption, item)`` pair. Pieces for "sbc" (e.g. :func:`sbc_items` of another folder) replace the
        folder's own calibration result.
    :param plots: which of the trace, rank, energy and pair plots to show.
    """
    folder = Path(folder)
    plots = _check_plots(plots)
    pieces = {sid: list(items) for sid, items in (pieces or {}).items()}
    unknown = sorted(set(pieces) - set(SECTIONS))
    if unknown:
        raise ValueError(f"pieces: unknown section {unknown[0]!r}; expected one of {', '.join(SECTIONS)}")
    for item in list(pieces.get("more", [])):   # a known table (e.g. select.csv) goes to its own section
        sid = csv_section(getattr(item[-1] if isinstance(item, tuple) else item, "attrs", {}).get("csv") or "")
        if sid is not None:
            pieces["more"].remove(item)
            pieces.setdefault(sid, []).append(item)
    if posteriors is None:
        posteriors = read_posteriors(folder)
    idatas = {label: idata_of(p) for label, p in posteriors.items()}
    summary = (folder / "summary.md").read_text() if (folder / "summary.md").exists() else ""
    given = {getattr(item[-1] if isinstance(item, tuple) else item, "attrs", {}).get("csv")
             for items in pieces.values() for item in items}
    sbc_result = (folder / "sbc.nc").is_file() or "sbc" in pieces     # sbc.png/.csv come with its verdict
    found = folder_items(folder, skip=given | (SBC_FILES if sbc_result else set()))
    title = title or first_heading(summary) or "Latent Zoo report"
    headings = {sid: heading for sid, (heading, _) in SECTIONS.items()}
    if len(posteriors) > 1:   # what was compared: "SVI vs NUTS", "SVI vs NUTS vs GIBBS"
        headings["comparison"] = " vs ".join(str(label).upper() for label in posteriors)
    body = [f"<h1>{_e(title)}</h1>",
            "<nav>" + "".join(f'<a href="#{sid}">{_e(h)}</a>' for sid, h in headings.items()) + "</nav>"]
    builders = {
        "data": lambda: data_items(idatas, dataset, summary),
        "comparison": lambda: comparison_items(comparison, folder),
        "diagnostics": lambda: diagnostics_items(diagnoses, folder, summary),
        "plots": lambda: plot_items(posteriors, idatas, plots, found["plots"]),
        "ppc": lambda: ppc_items(idatas, found["ppc"]),
        "loo": lambda: loo_items(posteriors),
        "more": lambda: [],
        "sbc": lambda: sbc_items(folder) if "sbc" not in pieces else [],   # given pieces replace the folder's
        "files": lambda: file_items(folder),
    }
    absent = {
        "data": "No data or runs recorded.",
        "diagnostics": "No diagnostics were recorded for this folder.",
        "plots": "No sampled posterior with several chains: nothing to plot (a point estimate has no trace).",
        "ppc": "No predictive check here: no replicated data that match the observed variables.",
        "loo": "No posterior with a pointwise log-likelihood and several draws: no PSIS-LOO.",
        "sbc": "Not run: `zoo report MODEL --sbc N` (or `zoo sbc MODEL --simulations N`, then `zoo report MODEL "
               "--sbc-from DIR`) checks that the fitting method recovers parameters drawn from the prior.",
        "more": "Nothing further for this run.",
        "files": "No files.",
    }
    for sid, (_, look) in SECTIONS.items():
        try:
            items = builders[sid]() + (found[sid] if sid != "plots" else [])
        except Exception as e:   # one section that cannot be built must not lose the page
            log.warning("report.html section %s: %s", sid, e)
            items = [f"This section could not be built: {e}"]
        items += pieces.get(sid, [])
        parts = [_render(item) for item in items]
        parts = parts or [_render(Absent(absent[sid]))]
        body.append(f'<section id="{sid}"><h2>{_e(headings[sid])}</h2><p class="look"><b>What to look at:</b> '
                     f'{_e(look)}</p>{"".join(parts)}</section>')
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    out = Path(path) if path is not None else folder / "report.html"
    with atomic_write(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def read_posteriors(folder) -> dict[str, az.InferenceData]:
    """The ``posterior_<label>.nc`` files of a report folder, by label, in the order summary.md lists them
    (the order they were given: the reference last)."""
    summary = Path(folder, "summary.md").read_text() if Path(folder, "summary.md").exists() else ""
    files = sorted(Path(folder).glob("posterior_*.nc"),
                   key=lambda f: (summary.find(f.name) if f.name in summary else len(summary), f.name))
    return {f.stem[len("posterior_"):]: az.from_netcdf(str(f)) for f in files}


# --- rendering ----------------------------------------------------------------------------------


def _render(item) -> str:
    caption = None
    if isinstance(item, tuple):
        caption, item = item
    if isinstance(item, Absent):
        return f'<p class="absent">{_e(item)}</p>'
    if isinstance(item, Verdict):
        kind = "pass" if "-> pass" in item or "-> calibrated" in item else "check"
        return f'<div class="verdict {kind}">{_e(item)}</div>'
    if isinstance(item, pd.DataFrame):
        head = f"<h3>{_e(caption)}</h3>" if caption else ""
        table = item.to_html(float_format=lambda v: format(v, ".4g"), border=0, na_rep="")
        return f'{head}<div class="tablewrap">{table}</div>'
    if isinstance(item, plt.Figure):
        data = _png(item)
        name = caption or "figure"
    elif isinstance(item, (str, os.PathLike)) and str(item).lower().endswith(".png") and Path(item).is_file():
        data = Path(item).read_bytes()
        name = caption or Path(item).name
    elif isinstance(item, str):
        return (f"<h3>{_e(caption)}</h3>" if caption else "") + f"<p>{_e(item)}</p>"
    else:
        raise TypeError(f"pieces: expected a Figure, a PNG path, a DataFrame or text, got {type(item).__name__}")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{_e(name)}"><figcaption>{_e(name)}</figcaption></figure>'


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _check_plots(plots) -> tuple[str, ...]:
    plots = (plots,) if isinstance(plots, str) else tuple(plots)
    for name in plots:
        if name not in PLOTS:
            raise ValueError(f"plots: unknown plot {name!r}; expected some of {', '.join(PLOTS)}")
    return plots


def _e(text) -> str:
    return html.escape(str(text))
