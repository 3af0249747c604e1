"""Model choice: rank candidate fits by PSIS-LOO on the *marginal* pointwise log-likelihood.

For a latent-variable model the pointwise log-likelihood must have the local latents summed or
integrated out: log p(x_n | params). A log-likelihood conditional on sampled latents, log p(x_n | z_n,
params) with z_n drawn (what ``az.from_pyro`` records for a mixture whose assignments are enumerated:
the assignments are drawn afresh from their prior), measures something else and gives a wrong elpd
(``tests/inference/checks/test_select.py`` shows it against a brute-force leave-one-out). ``Posterior.idata`` holds
the marginal one, which is what :func:`loo` and :func:`select` use.

    >>> table = inference.select({"K=1": post1, "K=2": post2, "K=3": post3})
    >>> table[["rank", "elpd_loo", "se", "elpd_diff", "dse", "pareto_k_max"]]
"""

from __future__ import annotations

import warnings
from typing import Mapping

import arviz as az
import numpy as np
import pandas as pd

from inference.checks.importance import khat, log_ratios, loo_corrected
from inference.posterior import Posterior
from inference.target import as_target
from inference.thresholds import KHAT_MAX

def loo(posterior, *, name: str = "posterior", correct: bool = True, var_name: str | None = None) -> az.ELPDData:
    """PSIS-LOO (pointwise) of a :class:`Posterior` or an InferenceData with a ``log_likelihood`` group.

    Draws of an SVI guide are not posterior draws: with ``correct`` (default) their LOO weights fold in
    the guide's importance ratios p(x, z) / q(z) (:func:`inference.checks.importance.loo_corrected`, Magnusson et
    al. 2019), so the estimate is of the same elpd as NUTS's; ``correct=False`` treats them as posterior
    draws. ``result.attrs["draws"]`` says which: "posterior", "guide, corrected (k-hat K)" or "guide,
    uncorrected" (an InferenceData of SVI draws, or a guide whose ratios cannot be computed).
    ``var_name``: one observed site's log-likelihood (default: the only one, or all sites' joint for a
    Posterior). ``name`` is the argument named in error messages.
    """
    idata = _loo_idata(posterior, name, var_name)
    method = posterior.method if isinstance(posterior, Posterior) else idata.posterior.attrs.get("inference_method")
    ratios = log_ratios(posterior) if correct and isinstance(posterior, Posterior) else None
    if ratios is not None:
        ll = (posterior.pointwise[var_name].flatten(2) if var_name else posterior.log_likelihood).double().numpy()
        result = loo_corrected(ll.reshape(-1, ll.shape[-1]), ratios)
        result.attrs["draws"] = f"guide, corrected (k-hat {khat(posterior):.2f})"
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # ArviZ warns about high Pareto k: reported in the table instead
        result = az.loo(idata, pointwise=True, var_name=var_name)
    result.attrs["draws"] = "guide, uncorrected" if method == "svi" else "posterior"
    return result


def select(candidates: Mapping[str, Posterior], *, scale: str = "log") -> pd.DataFrame:
    """Rank ``{label: Posterior or InferenceData}`` by PSIS-LOO with ``az.compare`` (best first).

    Columns: az.compare's (``rank``, ``elpd_loo``, ``p_loo``, ``elpd_diff``, ``weight`` (stacking),
    ``se``, ``dse``, ``warning``, ``scale``) plus ``pareto_k_max`` and ``pareto_k>0.7`` (points whose
    leave-one-out estimate is unreliable) and ``draws`` (SVI fits: LOO corrected for the guide,
    :func:`loo`). ``df.attrs["loo"]`` holds each candidate's ELPDData.
    """
    if not isinstance(candidates, Mapping):
        raise TypeError(f"candidates: expected a dict {{label: Posterior}}, got {type(candidates).__name__}")
    if len(candidates) < 2:
        raise ValueError(f"candidates: expected at least two fits to choose between, got {len(candidates)}")
    loos = {str(label): loo(post, name=f"candidates[{label!r}]") for label, post in candidates.items()}
    sizes = {label: r.n_data_points for label, r in loos.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"candidates: the fits have log-likelihoods of different data sizes {sizes}; "
                         "LOO compares models of the same data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = az.compare(loos, ic="loo", scale=scale)
    for column in ("pareto_k_max", f"pareto_k>{KHAT_MAX}", "draws"):
        table[column] = [_columns(loos[label])[column] for label in table.index]
    table.index.name = "model"
    table.attrs["loo"] = loos
    return table


def loo_table(posteriors: Mapping[str, Posterior], *, by_site: bool = False) -> pd.DataFrame:
    """PSIS-LOO (:func:`loo`) of each posterior's marginal pointwise log-likelihood, one row per posterior
    (``by_site``: per observed site of each, labelled "label: site" where there are several): ``elpd_loo``,
    ``se``, ``p_loo``, ``points``, ``pareto_k_max``, ``pareto_k>0.7`` (points whose estimate is unreliable,
    ``inference.thresholds.KHAT_MAX``) and ``draws`` (SVI: corrected for the guide). A posterior LOO does
    not apply to (a point estimate, one item of the data plate) has no row; ``df.attrs["notes"]`` says why.
    The one LOO table of ``select``'s columns, the report folder and report.html."""
    rows, notes = {}, []
    for label, post in posteriors.items():
        sites = list(post.pointwise) if by_site else [None]
        for site in sites:
            try:
                result = loo(post, name=label, var_name=site)
            except (ValueError, TypeError) as e:
                notes.append(str(e))
                continue
            row = label if site is None or len(sites) == 1 else f"{label}: {site}"
            rows[row] = {"elpd_loo": float(result.elpd_loo), "se": float(result.se), "p_loo": float(result.p_loo),
                         "points": int(result.n_data_points), **_columns(result)}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")
    table.attrs["notes"] = notes
    return table


def _columns(result: az.ELPDData) -> dict:
    """The Pareto k and draws columns of one LOO result."""
    k = np.asarray(result.pareto_k)
    return {"pareto_k_max": float(k.max()), f"pareto_k>{KHAT_MAX}": int((k > KHAT_MAX).sum()),
            "draws": result.attrs.get("draws", "")}


def check_loo_data(model, data, *, name: str = "data") -> int:
    """Before any fit: the number of items PSIS-LOO leaves out one at a time (the size of the data plate:
    points, rows, sequences), or a one-line error naming ``name`` when there are fewer than two (one
    sequence of a time-series model: nothing is left to predict it from)."""
    target = as_target(model)
    info = target.info(target.validate(data), marginal=True)
    if info.data_size is not None and info.data_size < 2:
        raise ValueError(f"{name}: PSIS-LOO leaves out one item of the data plate {info.data_plate!r} at a time and "
                         f"needs at least 2, got {info.data_size}; give data with several independent items "
                         "(e.g. several sequences, not one)")
    return info.data_size if info.data_size is not None else 1


def _loo_idata(posterior, name: str, var_name: str | None = None):
    """The InferenceData to run LOO on, or a one-line error naming ``name``."""
    if isinstance(posterior, Posterior):
        if posterior.num_chains * posterior.num_draws < 2:
            raise ValueError(f"{name}: a point estimate ({posterior.method}, 1 draw) has no posterior draws for "
                             "PSIS-LOO; fit by NUTS or SVI")
        if not posterior.target.info(posterior.data, marginal=True).observed:
            raise ValueError(f"{name}: the model has no observed site, so no log-likelihood for PSIS-LOO")
        idata = posterior.idata
    elif isinstance(posterior, az.InferenceData):
        idata = posterior
    else:
        raise TypeError(f"{name}: expected a Posterior or an az.InferenceData, got {type(posterior).__name__}")
    if "log_likelihood" not in idata.groups():
        raise ValueError(f"{name}: no log_likelihood group; PSIS-LOO needs the pointwise log-likelihood "
                         "(the idata of inference.fit_svi / run_nuts holds the marginal one)")
    ll = idata.log_likelihood[var_name] if var_name else next(iter(idata.log_likelihood.data_vars.values()))
    if ll.sizes.get("chain", 1) * ll.sizes.get("draw", 1) < 2:
        raise ValueError(f"{name}: a single draw has no posterior to leave points out of; fit by NUTS or SVI")
    if int(np.prod([s for d, s in ll.sizes.items() if d not in ("chain", "draw")])) < 2:
        raise ValueError(f"{name}: PSIS-LOO needs at least 2 data points in the log-likelihood, got 1 "
                         "(one sequence? give data with several independent sequences)")
    return idata
