"""Every ArviZ function the project calls, in one module: a port to another ArviZ changes this file.

Written for ArviZ 0.23.x (``arviz>=0.23,<1`` in pyproject.toml). ArviZ 1.x splits into
arviz-base / arviz-stats / arviz-plots, replaces ``InferenceData`` by xarray's ``DataTree``, changes
``from_dict`` (one dict of groups) and the plots' signatures, and has no Pyro converter (the project
has its own: :mod:`inference.bridges`). Callers import the names below instead of ``arviz``;
``tests/inference/test_azcompat.py`` checks each of them on the installed ArviZ.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from typing import Any, Mapping

import arviz as az
import numpy as np

InferenceData = az.InferenceData
ELPDData = az.ELPDData

# statistics: the signatures the callers use are those of ArviZ 0.23
loo = az.loo
compare = az.compare
summary = az.summary
bfmi = az.bfmi

# plots (ArviZ 1.x moves them to arviz-plots with other signatures)
plot_trace = az.plot_trace
plot_rank = az.plot_rank
plot_energy = az.plot_energy
plot_pair = az.plot_pair
plot_forest = az.plot_forest
plot_density = az.plot_density
plot_compare = az.plot_compare
plot_khat = az.plot_khat
plot_ppc = az.plot_ppc
plot_ecdf = az.plot_ecdf


def from_dict(groups: Mapping[str, Mapping[str, np.ndarray]], *, coords=None, dims=None,
              attrs: Mapping[str, Any] | None = None) -> InferenceData:
    """InferenceData from ``{group: {variable: (chain, draw, ...) array}}`` with ``attrs`` on every group."""
    idata = az.from_dict(**groups, coords=coords, dims=dims)
    for group in idata.groups():
        idata[group].attrs.update(attrs or {})
    return idata


def from_groups(groups: Mapping[str, Mapping[str, np.ndarray]], *, attrs: Mapping[str, Any]) -> InferenceData:
    """InferenceData with groups outside ArviZ's scheme (e.g. SBC's ``prior_sbc``), each from
    ``{variable: (chain, draw, ...) array}``."""
    datasets = {name: az.dict_to_dataset(dict(values), attrs=dict(attrs)) for name, values in groups.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)   # ArviZ 0.x warns about group names outside its scheme
        return az.InferenceData(**datasets)


def from_netcdf(path) -> InferenceData:
    """An InferenceData written by ``to_netcdf`` (groups outside ArviZ's scheme included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return az.from_netcdf(str(path))


def ess(x: np.ndarray, *, method: str = "bulk") -> np.ndarray:
    """Effective sample size per element of draws ``(chain, draw, *shape)``: an array of ``shape``."""
    x = np.asarray(x)
    values = az.ess(az.convert_to_dataset({"x": x}), method=method)["x"].values
    return np.asarray(values)


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed log weights along the last axis and their k-hat (``az.psislw``, relative ESS 1),
    ArviZ's warnings about large k silenced: callers judge k themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lw, k = az.psislw(np.asarray(log_weights, dtype=float), reff=1.0)
    return np.asarray(lw), np.asarray(k)


def elpd_data(*, elpd: float, se: float, p_loo: float, n_samples: int, loo_i: np.ndarray, pareto_k: np.ndarray,
              scale: str, good_k: float):
    """An ``ELPDData`` as ``az.loo(pointwise=True)`` returns it, from its parts (``loo_i`` on ``scale``)."""
    import xarray as xr   # ArviZ's own dependency: the port to ArviZ 1.x changes this function only

    return az.ELPDData(
        data=[elpd, se, p_loo, n_samples, len(loo_i), bool(np.any(pareto_k > good_k)),
              xr.DataArray(np.asarray(loo_i), dims=["observation"], name="loo_i"),
              xr.DataArray(np.asarray(pareto_k), dims=["observation"], name="pareto_shape"), scale, good_k],
        index=["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning", "loo_i", "pareto_k", "scale",
               "good_k"])


@contextmanager
def quiet():
    """Silence ArviZ's log warnings (e.g. split R-hat on the single 'chain' of SVI draws)."""
    logger = getattr(az, "_log", None) or logging.getLogger("arviz")   # ArviZ 0.x keeps its own Logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
