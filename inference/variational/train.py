"""Minibatch training of amortized Pyro models: epochs of shuffled minibatches, checkpoints, early stopping.

Works for any Pyro model whose data plate yields the indices it covers and whose pair members index
the data with them (the Pyro idiom ``with pyro.plate("data", len(data)) as idx: x = data[idx]``).
Each step fixes those indices to the next minibatch (:class:`FixedSubsample`), so the plate scales
the batch's terms by N / B and the loss estimates the ELBO of the whole data set. The guide is the
model's own (amortized) guide or any guide whose parameters live in the model's module. The step is
:class:`inference.variational.optimization.Optimization` (Adam, schedule, clipping, NaN rollback, progress), as in
``fit_svi``; ``Trace_ELBO`` of long runs is traced and compiled with the batch's indices as an input
of the graph (:func:`inference.variational.traced_loss.traced_loss`).

Objectives:

- ``"trace"``: ``Trace_ELBO`` (particles vectorized);
- ``"iwae"``: the importance-weighted bound of Burda et al. (2015), per element of the data plate,
  ``sum_n logmeanexp_k log w_nk`` with ``log w_nk = log p(x_n, z_nk) - log q(z_nk | x_n)``,
  particles vectorized, scaled by N / B outside the log-mean-exp. Pyro's ``RenyiELBO(alpha=0)``
  is the same bound on a full batch (it keeps plates shared by every site), but under
  subsampling it applies the N / B scale *inside* the log-mean-exp, which is a different and
  wrong objective; hence this one.

A checkpoint (``torch.save`` of tensors and plain containers, read back with
``torch.load(weights_only=True)``) holds the module's parameters, the optimizer and schedule, the
epoch and step, the torch RNG state, the early-stopping state and the history; a resumed run
continues with the same losses as an uninterrupted one.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyro
import torch

from inference.files import atomic_write
from inference.inspection import inspect_model
from inference.posterior import Posterior
from inference.target import Target, as_target, chain_seed, is_zoo_model, set_seed
from inference.validation import check_setting
from inference.variational.objectives import OBJECTIVES, FixedSubsample, make_objective
from inference.variational.optimization import Optimization, collect_parameters
from inference.variational.traced_loss import traced_loss

log = logging.getLogger(__name__)

#: evaluation data (validation, test) get the training transform once, with this seed, in every run
EVAL_SEED = 0
#: the per-epoch record: epoch, training objective, validation objective, learning rate, wall and CPU seconds
HISTORY = ("epoch", "train", "valid", "lr", "seconds", "cpu_seconds")


def minibatch_loss(objective, model_fn, guide_fn, data_plate: str):
    """``loss(x, indices)``: the objective on data ``x`` with the data plate fixed to ``indices``."""
    def loss(x, indices):
        fix = FixedSubsample(data_plate, indices)
        return objective.differentiable_loss(fix(model_fn), fix(guide_fn), x)
    return loss


def training_parameters(loss, data, batch_size: int, module) -> list[torch.Tensor]:
    """The trainable tensors of a fit, found by one evaluation of ``loss(x, indices)`` (which creates
    lazy parameters); every one must live in ``module``, which checkpoints save. (Pyro's ELBO module,
    ``elbo(model, guide)``, would hold none of them: the model and guide are methods of ``module``.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*was not registered in the param store.*")
        params = collect_parameters(lambda: loss(data, torch.arange(batch_size, device=data.device)), [module])
    owned = {id(p) for p in module.parameters()}
    if not params or any(id(p) not in owned for p in params):
        raise ValueError("guide: every trainable parameter must live in the model's module (for checkpoints)")
    return params


@dataclass
class TrainResult:
    """What :func:`train` returns. ``model`` is the fitted copy (the best epoch's parameters when a
    validation split was given); ``losses`` are per step, ``history`` per epoch, both
    per data element (negative objective / positive objective); ``loss_route`` is how the
    training loss was computed (:func:`inference.variational.traced_loss.traced_loss`)."""

    model: Any
    guide: Callable
    losses: list[float]
    history: dict[str, list[float]]
    wall_time: float
    settings: dict[str, Any]
    transform: Callable | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    checkpoint: Path | None = None
    target: Any = field(default=None, repr=False)
    loss_route: str = "pyro"

    def prepare(self, data) -> torch.Tensor:
        """Evaluation data as training saw it: validated, and transformed once with ``EVAL_SEED``."""
        x = prepare_eval(self.target, data, self.transform)
        first = next(self.model.parameters(), None)
        return x.to(first.device) if first is not None else x

    def posterior(self, data) -> Posterior:
        """A one-point Posterior of the fitted model on evaluation ``data`` (e.g. the test split)."""
        return Posterior.point(self.target, self.prepare(data), {}, method="svi", wall_time=self.wall_time,
                               losses=self.losses, settings=self.settings)


def training_target(model):
    """``(target, module)`` for a fit: a deep copy of a zoo model, or of a PyroModule with ``model``/``guide``
    methods (a user's amortized model); the module owns every trainable parameter."""
    if isinstance(model, torch.nn.Module) and callable(getattr(model, "model", None)):
        module = copy.deepcopy(model)
        return (as_target(module) if is_zoo_model(module) else Target(module.model)), module
    raise TypeError("model: minibatch training needs a zoo model or a PyroModule with model and guide methods "
                    f"that owns the guide's parameters; got {type(model).__name__}")


def prepare_eval(target, data, transform):
    x = target.validate(data)
    if transform is not None:
        x = transform(x, torch.Generator().manual_seed(EVAL_SEED))
    return x


def train(model, data, *, guide=None, valid=None, elbo: str = "trace", num_particles: int = 1,
          epochs: int = 100, batch_size: int = 100, lr: float = 1e-3, lr_decay: float = 0.1,
          clip_norm: float | None = None, patience: int | None = None, seed: int = 0,
          checkpoint: str | os.PathLike | None = None, resume: bool = False, device: str | None = None,
          transform="auto", loss_route: str = "auto", progress: bool = True) -> TrainResult:
    """Fit an amortized model by minibatch SVI; returns a :class:`TrainResult`.

    :param model: a zoo model or a PyroModule with ``model``/``guide`` methods; the fit works on a deep copy.
    :param valid: validation data: the objective per data element is computed on it after every
        epoch; with ``patience`` the run stops after that many epochs without improvement and the
        best epoch's parameters are kept.
    :param elbo: "trace" (Trace_ELBO) or "iwae" (importance-weighted bound with ``num_particles``).
    :param lr: Adam's learning rate; it decays exponentially, per step, to ``lr * lr_decay`` at the
        last planned step.
    :param transform: ``f(x, generator) -> x`` applied afresh to the training data every epoch
        (dynamic binarization, augmentation) and once, with a fixed seed, to the validation data;
        "auto" takes the zoo model's ``training_transform(data)``; None for none.
    :param checkpoint: file written (atomically) after every epoch. An existing file is refused
        unless ``resume=True``, which continues from it.
    :param device: "cpu", "cuda", ... (default: where the data is).
    :param loss_route: "auto", "compiled", "graph" or "pyro": how a ``Trace_ELBO`` step is computed
        (:func:`inference.variational.traced_loss.traced_loss`, the batch's indices an input of the graph; "auto":
        the route policy of :mod:`inference.tracing` on the planned steps, checked while it runs).
        The IWAE bound runs as Pyro computes it.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("num_particles", num_particles)):
        check_setting(value, name, kind="int", minimum=1)
    check_setting(patience, "patience", kind="int", minimum=1, allow_none=True)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if elbo not in OBJECTIVES:
        raise ValueError(f"elbo: expected one of {', '.join(OBJECTIVES)}, got {elbo!r}")
    target, module = training_target(model)
    data = target.validate(data)
    valid = target.validate(valid) if valid is not None else None
    if valid is None and patience is not None:
        raise ValueError("patience: early stopping needs a validation split (valid=)")
    guide_fn = guide if guide is not None else getattr(module, "guide", None)
    if not callable(guide_fn):
        raise TypeError("guide: expected the model's amortized guide or a callable guide(data)")
    if transform == "auto":
        transform = target.training_transform(data)
    device = torch.device(device) if device is not None else data.device
    module.to(device)
    data = data.to(device)
    valid = prepare_eval(target, valid, transform).to(device) if valid is not None else None

    N, B = data.shape[0], min(batch_size, data.shape[0])
    info = inspect_model(target.model_fn, data[:2])
    if info.data_plate is None:
        raise ValueError("model: no data plate found (the observed site must sit in a pyro.plate over the data)")
    objective = make_objective(elbo, num_particles, info.max_plate_nesting, info.data_plate)
    batch_loss = minibatch_loss(objective, target.model_fn, guide_fn, info.data_plate)

    set_seed(seed)
    params = training_parameters(batch_loss, data, B, module)
    steps_per_epoch = math.ceil(N / B)
    loop = Optimization(params, lr=lr, lr_decay=lr_decay, num_steps=epochs * steps_per_epoch, clip_norm=clip_norm,
                        model=target.source, guide=guide_fn, names={id(p): k for k, p in module.named_parameters()},
                        per=N, desc=f"train {target.name}", progress=progress)
    state = {"epoch": 0, "step": 0, "losses": [], "history": {k: [] for k in HISTORY},
             "best_metric": -math.inf, "best_epoch": None, "bad_epochs": 0, "best_state": None, "wall_time": 0.0}
    settings = dict(elbo=elbo, num_particles=num_particles, epochs=epochs, batch_size=B, lr=lr, lr_decay=lr_decay,
                    patience=patience, seed=seed, device=str(device))
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        if not resume:
            raise FileExistsError(f"checkpoint: {str(path)!r} exists; pass resume=True (--resume) to continue it "
                                  "or choose another path")
        state = load_checkpoint(path, module, loop.optimizer, loop.schedule, settings)
        log.info("resumed %s at epoch %d (step %d)", path, state["epoch"], state["step"])
    elif resume:
        raise ValueError(f"resume: no checkpoint at {str(path) if path else '(none given)'} to resume from")
    loop.losses, loop.steps = state["losses"], state["step"]
    # the batch's indices are an input of the traced loss: one graph serves every batch of B. The route
    # depends on the planned steps only, so that a resumed run takes the route of the uninterrupted one
    step_loss, _ = traced_loss(objective, target.model_fn, guide_fn, data, params, route=loss_route,
                               num_steps=epochs * steps_per_epoch,
                               subsample=(info.data_plate, torch.arange(B, device=device)))

    start = time.perf_counter() - state["wall_time"]
    stopped = False
    # Pyro's shape and support checks ran on the first evaluation of the loss (training_parameters);
    # the loop skips them: they cost about a tenth of a step of a small network
    with pyro.validation_enabled(False), loop:
        for epoch in range(state["epoch"], epochs):
            t0, c0 = time.perf_counter(), time.process_time()
            gen = torch.Generator().manual_seed(chain_seed(seed, epoch))
            x_epoch = transform(data, gen) if transform is not None else data
            perm = torch.randperm(N, generator=gen).to(device)
            module.train()
            first = len(loop.losses)
            loop.postfix = dict(epoch=epoch + 1, valid=f"{state['history']['valid'][-1]:.3f}"
                                if state["history"]["valid"] else "-")
            for b in range(steps_per_epoch):
                loop.step(functools.partial(step_loss, x_epoch, perm[b * B:(b + 1) * B]))
            step_loss.verify(x_epoch, perm[:B])   # the fast route, checked once an epoch too
            module.eval()
            metric = evaluate(batch_loss, valid, B) if valid is not None else float("nan")
            h = state["history"]
            epoch_losses = loop.losses[first:]
            for key, v in (("epoch", epoch + 1), ("train", -sum(epoch_losses) / len(epoch_losses)), ("valid", metric),
                           ("lr", loop.optimizer.param_groups[0]["lr"]), ("seconds", time.perf_counter() - t0),
                           ("cpu_seconds", time.process_time() - c0)):
                h.setdefault(key, []).append(v)   # (a checkpoint of an older version has no cpu_seconds)
            state.update(epoch=epoch + 1, step=loop.steps)
            if valid is not None:
                if metric > state["best_metric"]:
                    state.update(best_metric=metric, best_epoch=epoch + 1, bad_epochs=0,
                                 best_state={k: v.detach().clone() for k, v in module.state_dict().items()})
                else:
                    state["bad_epochs"] += 1
                stopped = patience is not None and state["bad_epochs"] >= patience
            log.info("epoch %d: train %.4f, valid %.4f per data point", epoch + 1, h["train"][-1], metric)
            state["wall_time"] = time.perf_counter() - start
            if path is not None:
                save_checkpoint(path, module, loop.optimizer, loop.schedule, state, settings, target)
            if stopped:
                log.info("early stop after epoch %d (best epoch %d)", epoch + 1, state["best_epoch"])
                break
    if state["best_state"] is not None:
        module.load_state_dict(state["best_state"])
    module.eval()
    return TrainResult(model=module, guide=guide_fn, losses=state["losses"], history=state["history"],
                       wall_time=time.perf_counter() - start, settings=settings, transform=transform,
                       best_epoch=state["best_epoch"], stopped_early=stopped, checkpoint=path, target=target,
                       loss_route=step_loss.describe())


def evaluate(batch_loss, x, batch_size: int) -> float:
    """The objective per data element on ``x`` (ELBO or IWAE bound, higher is better), in minibatches."""
    N, total = x.shape[0], 0.0
    with torch.no_grad():
        for first in range(0, N, batch_size):
            idx = torch.arange(first, min(N, first + batch_size), device=x.device)
            total += float(batch_loss(x, idx)) * len(idx) / N   # the plate scaled the batch by N / len(idx)
    return -total / N


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(path: Path, module, optimizer, schedule, state, settings, target) -> None:
    """Write everything a resumed run needs; tensors and plain containers only (``weights_only`` loads)."""
    payload = {
        "format": "latent-zoo-train/1",
        "model": target.name,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in _config(target).items()},
        "settings": dict(settings),
        "module": module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "losses": torch.tensor(state["losses"], dtype=torch.float64),
        **{k: state[k] for k in ("epoch", "step", "history", "best_metric", "best_epoch", "bad_epochs",
                                 "best_state", "wall_time")},
    }
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path) -> dict:
    """Load a checkpoint with ``torch.load(weights_only=True)``; a clear error for unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint: {str(path)!r} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, pickle of arbitrary objects, not a torch file
        raise ValueError(f"checkpoint: could not read {str(path)!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != "latent-zoo-train/1":
        raise ValueError(f"checkpoint: {str(path)!r} is not a Latent Zoo training checkpoint")
    return payload


def load_checkpoint(path, module, optimizer, schedule, settings) -> dict:
    payload = read_checkpoint(path)
    changed = {k: (payload["settings"].get(k), v) for k, v in settings.items()
               if k not in ("epochs", "device") and payload["settings"].get(k) != v}
    if changed:
        raise ValueError(f"resume: the checkpoint was written with other settings {changed} (checkpoint, now)")
    _load_state(module, payload["module"], payload)
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    torch.set_rng_state(payload["rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    state = {k: payload[k] for k in ("epoch", "step", "history", "best_metric", "best_epoch", "bad_epochs",
                                     "best_state", "wall_time")}
    state["losses"] = payload["losses"].tolist()
    return state


def load_model(path, model):
    """Put the parameters of a checkpoint (the best epoch's, if early stopping kept one) into ``model``."""
    payload = read_checkpoint(path)
    _load_state(model, payload["best_state"] or payload["module"], payload)
    return model


def _load_state(module, state, payload) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:   # other layer sizes or sites
        raise ValueError(f"checkpoint: holds a model configured as {payload['config']}, which does not fit this one "
                         f"({str(e).splitlines()[0][:200]})") from None


def _config(target) -> dict:
    return target.model.config() if hasattr(target.model, "config") else {}
