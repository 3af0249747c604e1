"""The zoo model protocol and the input checks every model shares.

A zoo model is a small :class:`~pyro.nn.PyroModule` that knows itself. ``inference/`` relies on
this protocol and nothing else (``../shared/DESIGN.md``); a plain Pyro callable gets the same
protocol from ``inference.target.PlainModel``, which finds every fact by tracing.

Required::

    model(data)                  the generative story; data=None simulates
    guide(data)                  the variational family (the model's own)
    global_sites                 names of the global latent sites: what compare and diagnose summarize
    log_likelihood(data, params) pointwise log-likelihood, local latents summed or integrated out:
                                 (*batch, N) for the one observed site, or {observed site: (*batch, N)}
    simulate(n, seed)            (data, truth) from the generative process
    align(draws, reference=None) identifiable quantities of the draws (default: the global sites as drawn)
    validate(data)               data as the model expects it, or a ValueError/TypeError naming it

Optional, each with when to use it (the defaults below do nothing)::

    name, default_dataset        the registry name; the dataset the CLI uses without --data
    dims, coords(data)           named dims and labels of the sites in InferenceData
    marginal_model(data)         local latents summed or integrated out in closed form: NUTS samples it,
                                 MAP maximizes it, predictive draws come from it, and SVI fits it when
                                 the guide draws exactly its latent sites (found by tracing)
    log_density(data)            the closed form of marginal_model's log joint for the NUTS engine (a speed-up)
    initial_values(data, seed)   data-driven starting values for chains and autoguides
    gibbs_sweep(data, values, rng)  one Gibbs sweep from conditionals known in closed form, for
                                 ``inference.run_gibbs`` (see ``ZooModel.gibbs_sweep``)
    alignment_frame              align() entries that are a frame of reference, not quantities (PPCA's axes)
    training_transform(data)     a fresh random transform of training data per epoch (VAE binarization)
    figures(data, posteriors)    model-specific report figures

Facts found by tracing rather than declared: the observed sites (``pyro.deterministic`` sites are
posterior quantities), the enumerated sites, ``max_plate_nesting``, the data plate. The unit that
held-out scores are reported per comes from the data type (``data.num_observations``, e.g.
``zoo.hmm.Sequences``: time steps), else one per row.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections import abc
from typing import Any, ClassVar, Mapping

import numpy as np
import pandas as pd
import torch
from pyro.nn import PyroModule

# THE check of an integer, probability, number, flag or choice, shared with inference (which cannot import
# the zoo): use it for every model setting
from inference.validation import check_setting  # noqa: F401


class ZooModel(PyroModule):
    """Base class of the zoo models (the protocol: see the module docstring)."""

    #: registry name, e.g. ``"gmm"``
    name: ClassVar[str] = ""
    #: names of the global latent sites: what ``compare`` and ``diagnose`` summarize
    global_sites: ClassVar[tuple[str, ...]] = ()
    #: named dims (after ``chain, draw``) of every site and derived quantity in ``align``
    dims: ClassVar[dict[str, list[str]]] = {}
    #: dataset used by the CLI when no ``--data`` is given (must need no download)
    default_dataset: ClassVar[str] = ""
    #: entries of ``align``'s output that are a frame of reference rather than quantities (PPCA: the
    #: principal axes that subspace angles are measured from). ``Posterior.alignment`` keeps them and
    #: hands them to another posterior's ``align(..., reference=...)``; ``Posterior.aligned`` and
    #: everything built on it (compare, diagnose, plots) leave them out.
    alignment_frame: ClassVar[tuple[str, ...]] = ()
    #: optional method ``marginal_model(data)``: the same model with its local latents summed or
    #: integrated out in closed form (same global sites and priors, same marginal likelihood). NUTS
    #: samples it, MAP maximizes it and the posterior predictive replicates data from it; SVI fits it
    #: when the guide draws exactly its latent sites. ``None``: ``model`` serves for everything.
    marginal_model = None
    #: optional method ``log_density(data) -> (transforms, fn)``: the log joint of ``marginal_model``
    #: on unconstrained coordinates with its exact gradient, in numpy, for NUTS (``inference.run_nuts``
    #: checks it against the Pyro log joint, then skips Pyro's trace and autograd at every leapfrog).
    #: ``transforms[site]`` maps unconstrained values onto the site's support; ``fn(u)`` takes a dict
    #: of float64 arrays and returns ``(log p(params, x) + log |det J|, gradient dict)``.
    log_density = None

    # --- the Pyro pair -------------------------------------------------------------------
    def model(self, data=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, data=None):  # pragma: no cover - abstract
        raise NotImplementedError

    # --- the protocol --------------------------------------------------------------------
    def log_likelihood(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Pointwise log-likelihood, local latents summed or integrated out.

        ``params`` maps latent site names to constrained values that may carry leading batch dims
        (posterior draws); the result has shape ``(*batch, N)``, or is a dict of such arrays, one per
        observed site of the marginal form (``idata.log_likelihood`` gets one variable per entry).
        """
        raise NotImplementedError

    def simulate(self, n: int, seed: int = 0):
        """Draw ``(data, truth)`` from the generative process."""
        raise NotImplementedError

    def align(self, draws: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor] | None = None):
        """Map draws (leading dims ``chain, draw``) to identifiable quantities.

        ``reference`` is the output of ``align`` on another posterior of the same model; when given,
        the result is expressed in the same labeling / coordinates. The default is the identity.
        """
        return {k: draws[k] for k in self.global_sites if k in draws}

    def validate(self, data):
        """Return ``data`` as the model expects it, or raise a clear ``ValueError``/``TypeError``."""
        raise NotImplementedError

    def initial_values(self, data, seed: int = 0) -> dict[str, torch.Tensor] | None:
        """Optional data-driven starting values (constrained) for MCMC chains and autoguides."""
        return None

    def training_transform(self, data):
        """Optional random transform ``f(x, generator) -> x`` of training data, applied afresh every epoch by
        minibatch training (e.g. the VAE's dynamic binarization of grey levels); None for none."""
        return None

    def coords(self, data) -> dict[str, list]:
        """Optional coordinate labels for the named dims (e.g. feature names)."""
        return {}

    def figures(self, data, posteriors: Mapping[str, Any], dataset=None) -> dict[str, Any]:
        """Optional model-specific report figures: ``{file stem: matplotlib Figure}``."""
        return {}

    #: optional method ``gibbs_sweep(data, values, rng) -> (values, block)``: one sweep of a Gibbs sampler
    #: built from conditionals the model knows in closed form (``inference.run_gibbs``; a model whose
    #: latents enumeration cannot sum out needs none: ``run_nuts`` samples them by HMC-within-Gibbs).
    #: Given ``values`` (a value of every global site) and a ``numpy.random.Generator``, it draws the local
    #: latents (e.g. FFBS of HMM state paths), then every global site whose prior is conjugate, and
    #: returns the new global values and ``block``: None, or ``(transforms, fn, conditioned)`` for the
    #: global sites left over, their conditional log density given everything just drawn in the format of
    #: ``log_density`` (up to a constant), which inference moves by one NUTS transition; ``conditioned()``
    #: returns the values of the other latent sites of ``model`` (local ones included) that it is
    #: conditional on, where inference checks it against Pyro's log density of ``model``.
    gibbs_sweep = None

    #: optional method ``ppc_statistics(values, data, params) -> {name: float or array}``: the test
    #: statistics of posterior predictive checks (``inference.ppc``) that matter for this model.
    #: ``values`` are values of ``observed_site`` (the data's own, or a replicate drawn from
    #: ``marginal_model``), ``data`` the validated data they belong to (sequence lengths, missing
    #: entries), ``params`` one posterior draw of the global sites: a statistic may use it (a realized
    #: discrepancy, e.g. states decoded under the draw). ``None``: mean, sd, min and max of each
    #: observed site.
    ppc_statistics = None

    # --- conveniences --------------------------------------------------------------------
    @classmethod
    def settings(cls) -> dict[str, tuple[Any, str]]:
        """The constructor settings of a simple type, ``{keyword: (kind, help)}``, read from ``__init__``'s
        signature (``kind``: ``int``, ``float``, ``str``, ``bool``, or ``"ints"`` for a sequence of
        integers; ``X | None`` counts as ``X``) and the class docstring's ``:param keyword:`` lines. The
        command line offers each as a flag (``n_components`` as ``--components``); other settings (arrays)
        are given with ``--option KEY=VALUE``."""
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:   # an annotation that cannot be resolved: no flags, --option still works
            return {}
        docs = {m.group(1): " ".join(m.group(2).split()) for m in
                re.finditer(r":param (\w+): (.+?)(?=\n\s*:|\n\s*\n|\Z)", inspect.getdoc(cls) or "", re.S)}
        out = {}
        for keyword in inspect.signature(cls.__init__).parameters:
            kind = _simple_kind(hints.get(keyword))
            if keyword != "self" and kind is not None:
                out[keyword] = (kind, docs.get(keyword, ""))
        return out

    def config(self) -> dict[str, Any]:
        """The constructor arguments of this instance (for reports and ``repr``)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items())


def _simple_kind(hint):
    """``int``, ``float``, ``str``, ``bool`` or ``"ints"`` for a type hint of that kind (or ``X | None``); else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint, args = args[0], list(typing.get_args(args[0]))
    if hint in (int, float, str, bool):
        return hint
    origin = typing.get_origin(hint)
    if isinstance(origin, type) and issubclass(origin, abc.Sequence) and not issubclass(origin, str) \
            and [a for a in args if a is not Ellipsis] == [int]:
        return "ints"
    return None


# --- input checks shared by the models ------------------------------------------------------


def as_float_tensor(data, *, name: str = "data", allow_nan: bool = False, dtype=None) -> torch.Tensor:
    """Convert array-like numeric ``data`` to a floating tensor or raise a clear error.

    Accepts torch tensors, numpy arrays, pandas DataFrames/Series and nested lists. Floating
    tensors keep their dtype; everything else becomes ``dtype`` (default: torch's default dtype).
    """
    if data is None:
        raise ValueError(f"{name}: expected numeric data, got None")
    if isinstance(data, torch.Tensor):
        t = data.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name}: expected a real numeric tensor, got dtype {t.dtype}")
        if t.dtype in (torch.float16, torch.bfloat16):
            raise TypeError(f"{name}: dtype {t.dtype} is too coarse for inference; convert the data to float32 "
                            "or float64 first")
        if not t.is_floating_point():
            t = t.to(dtype or torch.get_default_dtype())
        elif dtype is not None:
            t = t.to(dtype)
    else:
        if hasattr(data, "dtypes") and hasattr(data, "columns"):  # pandas DataFrame
            bad = [str(c) for c, dt in data.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
            if bad:
                raise ValueError(f"{name}: non-numeric column(s) {', '.join(bad)}; expected numbers only")
            data = data.to_numpy()
        try:
            arr = np.asarray(data)
        except Exception as e:  # ragged lists and the like
            raise TypeError(f"{name}: could not convert {type(data).__name__} to an array ({e})") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name}: expected numeric values, got array of dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"{name}: expected real numbers, got complex values")
        t = torch.as_tensor(arr.astype(np.float64, copy=False), dtype=dtype or torch.get_default_dtype())
    if t.numel() == 0 or (t.dim() > 0 and t.shape[0] == 0):
        raise ValueError(f"{name}: is empty (shape {tuple(t.shape)}); expected at least one row")
    nonfinite = ~torch.isfinite(t) if not allow_nan else torch.isinf(t)
    if nonfinite.any():
        idx = nonfinite.nonzero()[0].tolist()
        what = "inf" if allow_nan else "NaN (missing) or inf" if torch.isnan(t).any() else "inf"
        raise ValueError(
            f"{name}: contains {int(nonfinite.sum())} {what} value(s) (first at index {tuple(idx)}); "
            "remove or impute them first"
        )
    return t


def as_matrix(data, *, name: str = "data", allow_nan: bool = False, dtype=None) -> torch.Tensor:
    """Like :func:`as_float_tensor` but returns shape ``(N, D)``; a 1-D input becomes ``(N, 1)``."""
    t = as_float_tensor(data, name=name, allow_nan=allow_nan, dtype=dtype)
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (N, D), got shape {tuple(t.shape)}")
    return t
