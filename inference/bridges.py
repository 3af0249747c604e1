"""From Pyro to the zoo: a Pyro user's MCMC run, trained guide or draws as a :class:`~inference.Posterior`.

    >>> mcmc = MCMC(NUTS(model), num_samples=500, warmup_steps=500, num_chains=2)
    >>> mcmc.run(x, y=y)
    >>> post = inference.from_pyro(mcmc, model_args=(x,), model_kwargs={"y": y})
    >>> inference.diagnose(post); inference.loo(post); inference.compare(post, svi_post)

The Posterior's ``idata`` is built as for the zoo's own fits (:mod:`inference.posterior`): the pointwise
log-likelihood is the MARGINAL one, log p(y_n | continuous latents), with enumerated sites summed out by
Pyro's tensor contraction (``az.from_pyro`` instead records log p(y_n | z_n, ...) at freshly drawn
enumerated sites, which is the wrong quantity for LOO and model choice), plus the posterior predictive,
the observed data and, for MCMC, the statistics Pyro's kernel records: ``diverging`` per draw, and the
mean acceptance rate of every chain (``settings["acceptance_rate"]``; Pyro keeps no per-draw value),
with the adapted step size when the chain ran in this process (one chain).

The model and guide see the parameters of Pyro's global parameter store as they are now (what
``pyro.infer.SVI`` trained); nothing is written back to it.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import MCMC
from pyro.infer.autoguide import AutoDelta

from inference.inspection import ModelArgs, _trace, model_data
from inference.posterior import Posterior, sample_guide
from inference.target import Target
from inference.validation import check_setting


def from_pyro(obj, model=None, *, model_args=(), model_kwargs=None, num_samples: int = 1000, seed: int = 0,
              dims=None, coords=None) -> Posterior:
    """A :class:`~inference.Posterior` of a Pyro run, for ``compare``, ``diagnose``, ``loo``, ``select``,
    ``ppc`` and ``write_report``.

    :param obj: a ``pyro.infer.MCMC`` that has run (its draws, grouped by chain); a trained guide (an
        AutoGuide or a callable guide ``guide(*model_args, **model_kwargs)``; ``num_samples`` draws are
        taken from it, one for an ``AutoDelta``); or a dict of draws ``{site: (chains, draws, ...)}``.
    :param model: the Pyro model (or a zoo model); needed except for an MCMC (default: its kernel's model).
    :param model_args, model_kwargs: the model's arguments, as given to ``mcmc.run`` or ``svi.step``
        (default for an MCMC: those of its last run). Observed values are found from the trace.
    :param seed: seed of the guide's draws (the global RNG is left as it was).
    :param dims, coords: as ``az.from_pyro``'s: ``{variable: [dim, ...]}`` and ``{dim: values}``.
    """
    check_setting(num_samples, "num_samples", kind="int", minimum=1)
    guide = obj if callable(obj) and not isinstance(obj, (MCMC, Mapping)) else None
    if not isinstance(obj, (MCMC, Mapping)) and guide is None:
        raise TypeError(f"obj: expected a pyro.infer.MCMC that has run, a trained guide or a dict of draws "
                        f"{{site: (chains, draws, ...)}}, got {type(obj).__name__}")
    if isinstance(obj, MCMC) and not model_args and model_kwargs is None:
        model_args, model_kwargs = _mcmc_arguments(obj)
    model = model if model is not None else _default_model(obj)
    data = model_data(None, tuple(model_args or ()), dict(model_kwargs or {}))
    target = Target(model, guide=guide, args_form=isinstance(data, ModelArgs))
    target.param_state = pyro.get_param_store().get_state()   # what the user's SVI trained
    data = target.validate(data)
    latent = tuple(dict.fromkeys(target.info(data).latent + target.info(data, marginal=True).latent))
    sample_stats, settings = {}, {"source": type(obj).__name__}
    if isinstance(obj, MCMC):
        samples = obj.get_samples(group_by_chain=True)
        _check_sites(samples, latent)
        sample_stats, mcmc_settings = _mcmc_stats(obj)
        settings.update(mcmc_settings)
        method = type(obj.kernel).__name__.lower()
    elif guide is not None:
        method = "map" if isinstance(obj, AutoDelta) else "svi"
        count = 1 if method == "map" else num_samples
        with target.scope(), poutine.seed(rng_seed=seed), torch.no_grad():
            samples = sample_guide(target.guide, data, latent, count)
        settings.update(num_samples=count, seed=seed)
    else:
        method = "draws"
        _check_sites(obj, latent)
        samples = _checked_draws(obj, target, data)
    return Posterior(target, data, samples, method=method, wall_time=float("nan"), sample_stats=sample_stats,
                     guide=target.guide if guide is not None else None, coords=coords, dims=dims,
                     settings=settings)


def _check_sites(draws: Mapping, latent) -> None:
    unknown = [k for k in draws if k not in latent]
    if unknown:
        raise ValueError(f"obj: draws of {unknown}, which are not latent sites of the model on these arguments "
                         f"(latent sites: {list(latent)}); pass the model and model_args that produced them")


def _default_model(obj):
    """The MCMC kernel's model (``HMC.model``); an AutoGuide's ``model`` is the user's wrapped in Pyro's
    initialization handler, so a guide, as a dict of draws, needs the model given."""
    model = getattr(obj.kernel, "model", None) if isinstance(obj, MCMC) else None
    if model is None:
        raise ValueError(f"model: needed with a {type(obj).__name__} (the model its draws are of); "
                         "pass from_pyro(obj, model, model_args=..., model_kwargs=...)")
    return model


def _mcmc_arguments(mcmc: MCMC):
    """The arguments of the MCMC's last run. ``MCMC._args``/``_kwargs`` are private (``az.from_pyro`` reads
    them too): tests/inference/test_bridges.py fails loudly when Pyro changes them."""
    if mcmc._args is None:
        raise ValueError("obj: this MCMC has not run; call mcmc.run(...) first")
    return tuple(mcmc._args), dict(mcmc._kwargs or {})


def _mcmc_stats(mcmc: MCMC) -> tuple[dict[str, np.ndarray], dict]:
    """``diverging`` (chain, draw) from the kernel's divergences, and per-chain settings."""
    diagnostics = mcmc.diagnostics()
    chains, draws = mcmc.num_chains, mcmc.num_samples
    diverging = np.zeros((chains, draws), dtype=bool)
    for c in range(chains):
        diverging[c, diagnostics.get("divergences", {}).get(f"chain {c}", [])] = True
    settings = {"num_chains": chains, "num_samples": draws, "warmup_steps": mcmc.warmup_steps,
                "kernel": type(mcmc.kernel).__name__}
    accept = diagnostics.get("acceptance rate")
    if accept:
        settings["acceptance_rate"] = [round(float(accept[f"chain {c}"]), 4) for c in range(chains)]
    if chains == 1 and getattr(mcmc.kernel, "step_size", None) is not None:
        settings["step_size"] = float(mcmc.kernel.step_size)   # adapted in this process (one chain)
    return {"diverging": diverging}, settings


def _checked_draws(draws: Mapping, target: Target, data) -> dict[str, torch.Tensor]:
    """Draws ``{site: (chains, draws, *site_shape)}`` as tensors in the model's dtypes, shapes checked."""
    if not draws:
        raise ValueError("obj: an empty dict of draws; expected {site: (chains, draws, ...)}")
    with target.scope():
        nodes = {**_trace(target.marginal_fn, data).nodes, **_trace(target.model_fn, data).nodes}
    out, lead = {}, None
    for name, value in draws.items():
        value = value if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
        shape = tuple(nodes[name]["value"].shape)
        if value.dim() < 2 or tuple(value.shape[2:]) != shape or (lead is not None and value.shape[:2] != lead):
            expected = f"({lead[0]}, {lead[1]}" if lead is not None else "(chains, draws"
            raise ValueError(f"obj: draws of {name!r} have shape {tuple(value.shape)}; expected {expected}, "
                             f"*{shape}): (chains, draws) followed by the site's shape")
        lead = value.shape[:2]
        out[name] = value.to(nodes[name]["value"].dtype)
    return out
