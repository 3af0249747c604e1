"""Side-by-side comparison of two posteriors of the same model (typically SVI against NUTS), or more.

``b`` is the reference; further posteriors (e.g. Gibbs) get columns of their own against it. Both
are reduced to the model's identifiable quantities, with ``a`` aligned to ``b``'s labeling
(``align(draws, reference=...)``), so a mixture fitted twice with different labels still compares
component by component.
"""

from __future__ import annotations

import logging

import arviz as az
import numpy as np
import pandas as pd
import torch

from inference.azcompat import quiet as quiet_arviz
from inference.posterior import Posterior
from inference.thresholds import AGREE_SMD, SD_RATIO

log = logging.getLogger(__name__)


def _labels(a: Posterior, b: Posterior, labels) -> tuple[str, str]:
    if labels is not None:
        return tuple(labels)
    la, lb = a.method, b.method
    return (la, lb) if la != lb else (f"{la}_a", f"{lb}_b")


def aligned_pair(a: Posterior, b: Posterior, sites=None) -> tuple[dict, dict]:
    """Identifiable quantities of ``a`` (in ``b``'s frame) and of ``b``; or the draws of ``sites``."""
    if sites is not None:
        return {k: a.samples[k] for k in sites}, {k: b.samples[k] for k in sites}
    return a.target.align(a.global_samples, reference=b.alignment), b.aligned


def compare(a: Posterior, b: Posterior, *others: Posterior, labels=None, sites=None) -> pd.DataFrame:
    """One row per scalar element of every identifiable quantity (or of the sample ``sites`` named,
    compared as drawn: e.g. the local latents of a few data points).

    Columns: mean and sd under ``a`` and ``b``, ``smd`` = (mean_a - mean_b) / sd_b, ``sd_ratio`` =
    sd_a / sd_b, bulk ESS and ESS per second of wall time for each, and a verdict. Each of ``others``
    (e.g. a Gibbs run: ``compare(svi, nuts, gibbs)``) adds the same columns against ``b``, suffixed with
    its label (``mean_gibbs``, ..., ``smd_gibbs``, ``sd_ratio_gibbs``, ``verdict_gibbs``). ``df.attrs``
    holds the labels of ``a`` and ``b`` (``labels``), those of ``others`` (``more``) and wall times;
    ``labels`` may name all of them.
    """
    if others:
        names = list(labels) if labels is not None else [p.method for p in (a, b, *others)]
        if len(names) != 2 + len(others) or len(set(names)) != len(names):
            raise ValueError(f"labels: expected {2 + len(others)} different labels, one per posterior, got {labels!r}")
        df = compare(a, b, labels=names[:2], sites=sites)
        attrs = dict(df.attrs, more=tuple(names[2:]))
        for post, label in zip(others, names[2:]):
            extra = compare(post, b, labels=(label, names[1]), sites=sites)
            columns = [f"mean_{label}", f"sd_{label}", f"ess_{label}", f"ess_per_s_{label}"]
            df = df.join(extra[columns]).join(extra[["smd", "sd_ratio", "verdict"]].add_suffix(f"_{label}"))
            attrs["wall_time"][label] = post.wall_time
        df.attrs = attrs
        return df
    _check_pair(a, b, labels, sites)
    la, lb = _labels(a, b, labels)
    qa, qb = aligned_pair(a, b, sites)
    for name in set(qa) & set(qb):
        if qa[name].shape[2:] != qb[name].shape[2:]:
            raise ValueError(f"b: {name} has shape {tuple(qb[name].shape[2:])} per draw, but "
                             f"{tuple(qa[name].shape[2:])} in a; compare needs posteriors of the same model, "
                             "configuration and data sizes")
    rows = []
    for name in qb:
        if name not in qa:
            continue
        xa, xb = qa[name].double(), qb[name].double()
        ess_a, ess_b = _ess(xa), _ess(xb)
        mean_a, sd_a = xa.mean((0, 1)), _sd(xa)
        mean_b, sd_b = xb.mean((0, 1)), _sd(xb)
        for idx in np.ndindex(tuple(mean_b.shape)):
            label = b.element_label(name, idx)
            ma, mb, sa, sb = (float(t[idx]) for t in (mean_a, mean_b, sd_a, sd_b))
            smd = (ma - mb) / sb if sb > 0 else (0.0 if ma == mb else np.inf)
            ratio = sa / sb if sb > 0 else np.nan
            rows.append({
                "quantity": label, "site": name,
                f"mean_{la}": ma, f"sd_{la}": sa, f"mean_{lb}": mb, f"sd_{lb}": sb,
                "smd": smd, "sd_ratio": ratio,
                f"ess_{la}": float(ess_a[idx]), f"ess_{lb}": float(ess_b[idx]),
                f"ess_per_s_{la}": float(ess_a[idx]) / max(a.wall_time, 1e-9),
                f"ess_per_s_{lb}": float(ess_b[idx]) / max(b.wall_time, 1e-9),
                "verdict": _verdict(smd, ratio),
            })
    df = pd.DataFrame(rows).set_index("quantity")
    df.attrs.update(labels=(la, lb), wall_time={la: a.wall_time, lb: b.wall_time})
    return df


def _check_pair(a, b, labels, sites) -> None:
    """Two posteriors of one model and configuration, or a clear error naming the argument."""
    for name, post in (("a", a), ("b", b)):
        if not isinstance(post, Posterior):
            raise TypeError(f"{name}: expected an inference.Posterior, got {type(post).__name__}")
    if a.target.name != b.target.name:
        raise ValueError(f"b: a posterior of model {b.target.name!r}, but a is of {a.target.name!r}; compare needs "
                         "two posteriors of the same model")
    config_a, config_b = ({k: repr(v) for k, v in p.target.model.config().items()} for p in (a, b))
    diff = {k: (config_a.get(k), config_b.get(k)) for k in config_a.keys() | config_b.keys()
            if config_a.get(k) != config_b.get(k)}
    if diff:
        settings = ", ".join(f"{k}: {va} vs {vb}" for k, (va, vb) in sorted(diff.items()))
        shapes = [{k: tuple(v.shape[2:]) for k, v in p.global_samples.items()} for p in (a, b)]
        if shapes[0] != shapes[1]:
            raise ValueError(f"b: the model is configured differently from a's ({settings})")
        # the same parameters (e.g. two forms of one model, or another prior): a comparison that means something
        log.warning("compare: the models are configured differently (%s); comparing their shared quantities", settings)
    if labels is not None and (isinstance(labels, str) or len(labels) != 2 or len(set(labels)) != 2):
        raise ValueError(f"labels: expected two different labels such as ('svi', 'nuts'), got {labels!r}")
    if sites is not None:
        names = [sites] if isinstance(sites, str) else sites
        missing = [k for k in names if k not in a.samples or k not in b.samples]
        if isinstance(sites, str) or missing:
            raise ValueError(f"sites: expected a list of sites drawn in both posteriors, got {sites!r}"
                             + (f" ({', '.join(map(repr, missing))} missing)" if missing else ""))


def _verdict(smd: float, ratio: float) -> str:
    parts = ["agree" if abs(smd) < AGREE_SMD else "means differ"]
    if np.isfinite(ratio) and not SD_RATIO[0] <= ratio <= SD_RATIO[1]:
        parts.append(f"sd {'too small' if ratio < SD_RATIO[0] else 'too large'} ({ratio:.2f}x)")
    return "; ".join(parts)


def _sd(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, *x.shape[2:])
    return flat.std(0, unbiased=True) if flat.shape[0] > 1 else torch.zeros_like(flat[0])


def _ess(x: torch.Tensor) -> np.ndarray:
    """Bulk ESS per element; independent draws of one 'chain' (SVI) get ArviZ's estimate too."""
    arr = x.detach().cpu().numpy()
    if arr.shape[0] * arr.shape[1] < 4:
        return np.full(arr.shape[2:], np.nan)
    with quiet_arviz(), np.errstate(invalid="ignore", divide="ignore"):   # constants: 0/0
        return np.asarray(az.ess(az.convert_to_dataset({"x": arr}), method="bulk")["x"].values)


def summary_line(df: pd.DataFrame) -> str:
    """One line: how many quantities agree, the largest |smd|, wall times."""
    la, lb = df.attrs["labels"]
    agree = int((df["smd"].abs() < AGREE_SMD).sum())
    wt = df.attrs["wall_time"]
    worst = df["smd"].abs().idxmax()
    line = (f"{agree}/{len(df)} quantities agree (|smd| < {AGREE_SMD}); largest |smd| = "
            f"{abs(df.loc[worst, 'smd']):.3f} at {worst}; wall time {la} {wt[la]:.1f}s, {lb} {wt[lb]:.1f}s")
    for lc in df.attrs.get("more", ()):
        smd = df[f"smd_{lc}"].abs()
        line += (f"; {lc}: {int((smd < AGREE_SMD).sum())}/{len(df)} agree with {lb}, largest |smd| "
                 f"{smd.max():.3f} at {smd.idxmax()}, wall time {wt[lc]:.1f}s")
    return line
