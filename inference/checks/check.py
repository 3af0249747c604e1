"""``check(model, guide, data)``: what is wrong with a model/guide pair, in plain words, before a long fit.

Each check names the site at fault and suggests the fix; ``str(report)`` prints them with Pyro's
shapes table. The checks, in order (a failed one skips those that need it):

- ``data``        the model's ``validate`` accepts the data (or ``simulate`` makes some);
- ``model``       the model runs under Pyro's validation with warnings as errors (shapes against plates);
- ``discrete``    every latent discrete site can be sampled: enumerated, or moved by run_nuts's Gibbs moves
                  (named with how; a site that can be neither fails); SVI's autoguides cannot draw the moved
                  ones (a guide of the user's own that draws them can);
- ``guide``       the guide runs, draws every latent site the model has (enumerated ones excepted) and no
                  other, each with the model's shape and inside its support; Pyro's ELBO validation
                  (model/guide match, enumeration requirements) with warnings as errors;
- ``elbo``        a finite ELBO and a finite gradient for every parameter; ``loss`` equal to
                  ``differentiable_loss`` on the same draws;
- ``prior predictive``  a draw of every observed site from the prior, finite and shaped like the data;
- ``log_likelihood``  the model's ``log_likelihood`` at a prior draw equals the marginal log-likelihood
                  of the trace (enumerated sites summed out), when no local latent is left to integrate;
- ``align``       on six draws of the guide: idempotent (aligning draws to their own alignment changes
                  nothing), keeps ``(chain, draw)`` (frame entries such as PPCA's axes excepted);
- ``recovery``    with ``simulate``: a short SVI fit on simulated data moves toward the truth.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from pyro.poutine.util import site_is_subsample

from inference.inspection import ModelArgs, ModelInfo, inspect_model, model_data
from inference.likelihood import pointwise_log_likelihood
from inference.sampling.discrete import MOVED, describe, discrete_sites, refuse_impossible
from inference.target import Target, set_seed
from inference.variational.guides import make_guide
from inference.variational.optimization import collect_parameters
from inference.variational.svi import fit_svi

SIMULATED_N = 100      # data points simulated when no data is given, and for the recovery fit
RECOVERY_STEPS = 200


@dataclass
class Finding:
    check: str
    ok: bool
    message: str = ""


@dataclass
class CheckReport:
    """The outcome of :func:`check`: ``ok`` when every check passed; ``str()`` for people."""

    model: str
    findings: list[Finding] = field(default_factory=list)
    shapes: str = ""

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def __str__(self) -> str:
        lines = [f"check {self.model}: {'OK' if self.ok else f'{len(self.failures)} problem(s)'}"]
        for f in self.findings:
            mark = "ok  " if f.ok else "FAIL"
            lines.append(f"  {mark} {f.check:18s} {f.message}".rstrip())
        if self.shapes:
            lines += ["", self.shapes]
        return "\n".join(lines)


class _Failed(Exception):
    """A check failed; the message says where and what to do."""


def check(model, guide=None, data=None, *, model_args=None, model_kwargs=None, seed: int = 0) -> CheckReport:
    """Check a model/guide pair on ``data`` and return a printable :class:`CheckReport`.

    :param model: a zoo model or a plain Pyro callable ``model(data)``; or, with ``model_args`` and/or
        ``model_kwargs`` instead of ``data``, a plain callable ``model(*model_args, **model_kwargs)`` (and
        its guide likewise).
    :param guide: a guide callable; None for the model's own (a zoo model's ``guide``), else AutoNormal.
    :param data: the data; None: simulated by the model's ``simulate`` when it has one.
    :param seed: seed of every draw made here.
    """
    data = model_data(data, model_args, model_kwargs)
    args_form = isinstance(data, ModelArgs)
    target = Target(model, guide=guide, copy_model=True, args_form=args_form)
    report = CheckReport(target.name)
    # the recovery fit starts from a fresh copy: a guide that initializes itself from the data on its first
    # call (HMM, GMM) would otherwise start from the state the checks before it left on `data`
    state: dict = {"fresh": Target(model, guide=guide, copy_model=True, args_form=args_form)}
    steps = [("data", _data), ("model", _model), ("discrete", _discrete), ("guide", _guide), ("elbo", _elbo),
             ("prior predictive", _prior_predictive), ("log_likelihood", _log_likelihood),
             ("align", _align), ("recovery", _recovery)]
    needs = {"model": "data", "discrete": "model", "guide": "model", "elbo": "guide", "prior predictive": "model",
             "log_likelihood": "model", "align": "guide", "recovery": "elbo"}
    passed: set[str] = set()
    with target.scope():
        for name, fn in steps:
            if name in needs and needs[name] not in passed:
                report.findings.append(Finding(name, False, f"skipped: needs the {needs[name]!r} check to pass"))
                continue
            set_seed(seed)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    warnings.filterwarnings("ignore", category=DeprecationWarning)
                    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")  # Pyro's loss()
                    message = fn(target, data, state, seed)
            except _Failed as e:
                report.findings.append(Finding(name, False, str(e)))
                continue
            except Exception as e:   # anything else Pyro or the model raised: report it, do not crash
                report.findings.append(Finding(name, False, f"{type(e).__name__}: {_first_line(e)}"))
                continue
            passed.add(name)
            report.findings.append(Finding(name, True, message or ""))
    report.shapes = state.get("shapes", "")
    return report


# --- the checks: each returns a short note, or raises _Failed(what is wrong + the fix) -------------


def _data(target, data, state, seed):
    if data is None:
        if not callable(getattr(target.model, "simulate", None)):
            raise _Failed("data: none given, and the model has no simulate(n, seed); pass data=...")
        data, _ = target.model.simulate(SIMULATED_N, seed=seed)
        state["note"] = f"simulated {SIMULATED_N} points"
    try:
        state["data"] = target.validate(data)
    except (ValueError, TypeError) as e:
        raise _Failed(f"validate rejects the data: {e}") from None
    return state.get("note", "")


def _model(target, data, state, seed):
    data = state["data"]
    with pyro.validation_enabled(True):
        trace = poutine.trace(poutine.seed(target.model_fn, rng_seed=seed)).get_trace(data)
        try:
            trace.compute_log_prob()
        except ValueError as e:
            raise _Failed(f"{_first_line(e)}; declare every batch dim of a site with pyro.plate") from None
    state["shapes"] = trace.format_shapes(title="Model trace shapes:")
    info = inspect_model(target.model_fn, data, target.model.global_sites)
    if not info.observed:
        raise _Failed("the model observes nothing (no pyro.sample(..., obs=...) site for this data)")
    for name in info.observed + info.latent:
        bad = ~torch.isfinite(trace.nodes[name]["log_prob"])
        if bad.any():
            raise _Failed(f"site {name!r}: log density is not finite at a prior draw ({int(bad.sum())} values); "
                          "check its parameters and the data's support")
    state["info"], state["trace"] = info, trace
    return (f"observed {list(info.observed)}, latent {list(info.latent)}, enumerated {list(info.enumerated)}, "
            f"max_plate_nesting {info.max_plate_nesting}")


def _discrete(target, data, state, seed):
    kinds = discrete_sites(state["trace"])
    try:
        refuse_impossible(kinds)
    except ValueError as e:
        raise _Failed(str(e).removeprefix("model: ")) from None
    moved = [k for k, kind in kinds.items() if kind in MOVED]
    if not moved:
        return ""
    note = describe(kinds, [k for k in state["info"].latent if k not in kinds])
    return note + ("; SVI needs a guide of your own that draws them (autoguides cannot)" if target.guide is None else "")


def _guide(target, data, state, seed):
    data, info, model_trace = state["data"], state["info"], state["trace"]
    guide_fn = make_guide(target, None, data)
    with pyro.validation_enabled(False):   # first without argument checks, to name a site that draws NaN
        guide_trace = poutine.trace(poutine.seed(guide_fn, rng_seed=seed)).get_trace(data)
    drawn = {k: s for k, s in guide_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
             and not s["infer"].get("is_auxiliary") and not site_is_subsample(s)}
    for name, site in drawn.items():
        if not torch.isfinite(site["value"]).all():
            raise _Failed(f"site {name!r}: the guide draws values that are not finite (NaN/inf); keep its scales "
                          "positive (constraint=constraints.positive, softplus) and its parameters finite")
    with pyro.validation_enabled(True):
        poutine.trace(poutine.seed(guide_fn, rng_seed=seed)).get_trace(data)
    missing = [k for k in info.latent if k not in drawn]
    if missing:
        raise _Failed(f"the guide draws no value of latent site(s) {missing}; add pyro.sample({missing[0]!r}, ...) "
                      "to the guide (or mark the site infer={'enumerate': 'parallel'} if it is discrete)")
    extra = [k for k in drawn if k not in info.latent]
    if extra:
        raise _Failed(f"guide site(s) {extra} are not latent sites of the model; rename them to model sites or mark "
                      "them infer={'is_auxiliary': True}")
    for name in info.latent:
        value, expected = drawn[name]["value"], model_trace.nodes[name]["value"].shape
        if value.shape != expected:
            plates = [f"{f.name} (size {f.size}, dim {f.dim})" for f in model_trace.nodes[name]["cond_indep_stack"]]
            where = f" inside plate(s) {', '.join(plates)}" if plates else ""
            raise _Failed(f"site {name!r}: the guide draws shape {tuple(value.shape)}, the model's site has shape "
                          f"{tuple(expected)}{where}; draw it inside the same plates with the same event shape")
    for name in info.latent:
        value = drawn[name]["value"]
        support = model_trace.nodes[name]["fn"].support
        if not bool(torch.all(support.check(value))):
            raise _Failed(f"site {name!r}: the guide draws values outside the model's support ({support}); use a "
                          "distribution on that support (e.g. LogNormal for positive values) or an autoguide")
    elbo = _make_elbo(info)
    with pyro.validation_enabled(True):
        elbo.loss(target.model_fn, guide_fn, data)
    state["guide"], state["elbo"] = guide_fn, elbo
    return f"draws {list(drawn)}"


def _elbo(target, data, state, seed):
    data, guide_fn, elbo = state["data"], state["guide"], state["elbo"]

    def loss_fn():
        return elbo.differentiable_loss(target.model_fn, guide_fn, data)

    with poutine.seed(rng_seed=seed):
        params = collect_parameters(loss_fn, [target.model, target.model_fn, guide_fn])
    with poutine.seed(rng_seed=seed + 1):
        loss = loss_fn()
    value = float(loss.detach())
    if not math.isfinite(value):
        guide_trace = poutine.trace(poutine.seed(guide_fn, rng_seed=seed + 1)).get_trace(data)
        bad = [k for k, s in guide_trace.nodes.items()
               if s["type"] == "sample" and not torch.isfinite(s["value"]).all()]
        where = f"the guide draws non-finite values at site(s) {bad}" if bad else "check every scale is positive"
        raise _Failed(f"the ELBO is {value}: {where}; keep scales positive (constraints.positive, softplus) "
                      "and parameters finite")
    loss.backward()
    names = _param_names(guide_fn, target)
    for p in params:
        if p.grad is not None and not torch.isfinite(p.grad).all():
            raise _Failed(f"parameter {names.get(id(p), tuple(p.shape))!r}: non-finite gradient of the ELBO; "
                          "look for log(0), sqrt(0) or division by zero in the guide")
    with poutine.seed(rng_seed=seed + 2):
        plain = elbo.loss(target.model_fn, guide_fn, data)
    with poutine.seed(rng_seed=seed + 2):
        differentiable = float(elbo.differentiable_loss(target.model_fn, guide_fn, data))
    if not math.isclose(plain, differentiable, rel_tol=1e-5, abs_tol=1e-5):
        raise _Failed(f"loss {plain:.6g} != differentiable_loss {differentiable:.6g} on the same draws; the model or "
                      "guide draws from a global RNG that pyro's seed does not control (use pyro.sample)")
    return f"-ELBO {value:.4g} (one particle), {len(params)} parameter tensor(s) with finite gradients"


def _prior_predictive(target, data, state, seed):
    data = state["data"]
    observed = target.observed_values(data)
    with torch.no_grad():
        trace = poutine.trace(poutine.seed(poutine.uncondition(target.marginal_fn), rng_seed=seed)).get_trace(data)
    for name, value in observed.items():
        draw = trace.nodes[name]["value"]
        if draw.shape != value.shape:
            raise _Failed(f"site {name!r}: a prior draw has shape {tuple(draw.shape)}, the data {tuple(value.shape)}; "
                          "give the distribution the data's shape (a pyro.plate, or .expand(shape))")
        if not torch.isfinite(draw).all():
            raise _Failed(f"site {name!r}: the prior predictive draw is not finite; check the priors' scales")
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in observed.items())


def _log_likelihood(target, data, state, seed):
    data = state["data"]
    info: ModelInfo = target.info(data, marginal=True)
    local = [k for k in info.latent if k not in info.global_sites]
    if local:
        return f"not compared: local latent site(s) {local} are integrated out by the model's log_likelihood"
    with torch.no_grad():
        trace = poutine.trace(poutine.seed(target.marginal_fn, rng_seed=seed)).get_trace(data)
        params = {k: trace.nodes[k]["value"] for k in info.latent}
        got = target.log_likelihood(data, params)
        expected = pointwise_log_likelihood(target.marginal_fn, data, params, info)
    total_got = float(sum(v.double().sum() for v in got.values()))
    total_expected = float(sum(v.double().sum() for v in expected.values()))
    if not math.isclose(total_got, total_expected, rel_tol=1e-4, abs_tol=1e-4):
        raise _Failed(f"log_likelihood sums to {total_got:.6g} at a prior draw, but the model's trace gives "
                      f"{total_expected:.6g} (enumerated sites summed out); it must be log p(data | global sites)")
    return f"{total_got:.6g} at a prior draw, as the trace; points: " + ", ".join(
        f"{k} {tuple(v.shape)}" for k, v in got.items())


def _align(target, data, state, seed):
    data, info = state["data"], state["info"]
    # draws like those align is given (a posterior's): the guide's, at its initialization on the data; six
    # independent prior draws of a mixture have no common labeling to find
    with torch.no_grad():
        traces = [poutine.trace(poutine.seed(state["guide"], rng_seed=seed + i)).get_trace(data) for i in range(6)]
    draws = {k: torch.stack([t.nodes[k]["value"] for t in traces]).reshape(2, 3, *traces[0].nodes[k]["value"].shape)
             for k in info.global_sites}
    once = target.align(draws, with_frame=True)
    again = target.align(draws, reference=once, with_frame=True)
    frame = set(target.frame_keys)   # a frame of reference (PPCA's axes), not per-draw quantities
    for name, value in once.items():
        if name not in frame and tuple(value.shape[:2]) != (2, 3):
            raise _Failed(f"align: {name!r} has shape {tuple(value.shape)}; keep the leading (chain, draw) dims")
        if name not in again or again[name].shape != value.shape or not torch.allclose(again[name], value, atol=1e-6):
            raise _Failed(f"align: {name!r} changes when draws are aligned to their own alignment; align(draws, "
                          "reference=align(draws)) must equal align(draws)")
    return f"{len(once)} quantities"


def _recovery(target, data, state, seed):
    target = state.get("fresh", target)
    if not callable(getattr(target.model, "simulate", None)):
        return "not run: the model has no simulate(n, seed)"
    simulated, truth = target.model.simulate(SIMULATED_N, seed=seed + 1)
    simulated = target.validate(simulated)
    sites = [k for k in target.global_sites(simulated) if k in truth]
    if not sites:
        return "not run: simulate's truth holds no global site"
    kwargs = dict(guide=target.guide, num_samples=20, seed=seed, progress=False, converge=False, lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = fit_svi(target.model, simulated, num_steps=1, **kwargs)
        end = fit_svi(target.model, simulated, num_steps=RECOVERY_STEPS, **kwargs)
    reference = target.align({k: torch.as_tensor(truth[k])[None, None] for k in sites}, with_frame=True)
    truth_q = target.align({k: torch.as_tensor(truth[k])[None, None] for k in sites})
    before, after = (_distance(target.align(p.global_samples, reference=reference), truth_q) for p in (start, end))
    if not after < max(before, 0.1):
        raise _Failed(f"a {RECOVERY_STEPS}-step SVI fit on simulated data moves away from the truth (relative "
                      f"distance {before:.3g} -> {after:.3g}); check the guide's initialization and the priors")
    return f"relative distance to the truth {before:.3g} -> {after:.3g} after {RECOVERY_STEPS} SVI steps"


# --- helpers -------------------------------------------------------------------------------------


def _make_elbo(info: ModelInfo):
    kwargs = dict(max_plate_nesting=info.max_plate_nesting)
    return TraceEnum_ELBO(strict_enumeration_warning=True, **kwargs) if info.enumerated else Trace_ELBO(**kwargs)


def _distance(quantities, truth) -> float:
    """Mean over quantities of |posterior mean - truth| / (|truth| + 1)."""
    parts = [float((quantities[k].double().mean((0, 1)) - v.double()[0, 0]).norm() / (v.double().norm() + 1))
             for k, v in truth.items() if k in quantities]
    return sum(parts) / max(1, len(parts))


def _param_names(guide_fn, target) -> dict[int, str]:
    names = {}
    for obj in (guide_fn, target.model_fn, target.model):
        module = getattr(obj, "__self__", obj)
        if isinstance(module, torch.nn.Module):
            names.update((id(p), n) for n, p in module.named_parameters())
    names.update((id(p), n) for n, p in pyro.get_param_store().named_parameters())
    return names


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
