"""The one optimisation loop of SVI, PyTorch-style (as in Pyro's ``examples/svi_torch.py``): ``torch.optim``
(or a ``pyro.optim`` wrapper) over the parameters of the model/guide modules plus any global ``pyro.param``
the guide declares, a learning-rate schedule, gradient clipping, NaN rollback (:class:`SVIDivergedError`)
and the progress bar. Shared by :func:`inference.fit_svi`, the minibatch trainer
(:mod:`inference.variational.train`) and the Lightning module (:mod:`inference.variational.lightning`)."""

from __future__ import annotations

import logging
import math
from typing import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from tqdm import tqdm


log = logging.getLogger(__name__)


class SVIDivergedError(RuntimeError):
    """The ELBO became NaN/inf (or the model failed on parameters that had become NaN/inf).

    The parameters are restored to their last finite values first: ``model`` (the fitted copy of a zoo
    model, else the callable), ``guide`` and ``params`` (``{name: tensor}``, the restored trainable
    tensors) hold them; ``step`` and ``losses`` tell where it happened. When the model raised, the
    exception is chained as ``__cause__``.
    """

    def __init__(self, step: int, losses: list[float], model, cause: str = "", *, guide=None, params=None):
        last = next((x for x in reversed(losses) if math.isfinite(x)), float("nan"))
        why = f" ({cause})" if cause else ""
        super().__init__(
            f"SVI loss became non-finite at step {step}{why} (last finite loss {last:.4g}); parameters were "
            "restored to their last finite values. Try a smaller lr, more particles, or a better init."
        )
        self.step, self.losses, self.model, self.guide, self.params = step, losses, model, guide, dict(params or {})


def collect_parameters(loss_fn: Callable[[], torch.Tensor], modules) -> list[torch.Tensor]:
    """Run the loss once (creating lazy parameters) and gather every trainable tensor of ``modules`` and
    of the ``pyro.param`` statements the run met.

    Pass Pyro's ELBO module (``elbo(model, guide)``) among ``modules``: its ``parameters()`` are those of
    a model and a guide that are modules. What it cannot see is gathered here by hand: the module
    behind a bound method (``guide=m.guide``; the ELBO module registers module attributes only) and
    ``pyro.param`` statements (a classic guide's parameters live in Pyro's store, in no module)."""
    with poutine.trace(param_only=True) as capture:
        loss_fn()
    params = {}
    for module in modules:
        module = getattr(module, "__self__", module)   # a bound method (guide=m.guide): its module
        if isinstance(module, torch.nn.Module):
            params.update((id(p), p) for p in module.parameters() if p.requires_grad)
    for site in capture.trace.nodes.values():  # global pyro.param statements (classic style guides)
        value = site["value"]
        p = value.unconstrained() if hasattr(value, "unconstrained") else value
        if p.requires_grad and p.is_leaf:
            params[id(p)] = p
    return list(params.values())


def make_optimizer(optim, params: list[torch.Tensor], lr: float, lr_decay: float | None, num_steps: int):
    """``(optimizer, schedule)`` for :class:`Optimization`; ``schedule`` (or None) is stepped after every step.

    ``optim`` None: the zoo's Adam at ``lr``, decaying exponentially per step to ``lr * lr_decay`` at step
    ``num_steps`` (no decay when ``lr_decay`` is None). A ``pyro.optim`` optimiser (``pyro.optim.Adam``,
    ``ClippedAdam``, or a scheduler wrapper such as ``pyro.optim.ExponentialLR``, whose ``step()`` is then
    called after every step). Or a factory ``params -> torch optimiser`` or ``params -> (optimiser,
    scheduler)``."""
    if optim is None:   # torch's fused Adam where it has one: a kernel a step instead of ~8 operations a tensor
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        optimizer = torch.optim.Adam(params, lr=lr, fused=fused or None)
        gamma = lr_decay ** (1.0 / max(1, num_steps)) if lr_decay else 1.0
        return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if isinstance(optim, PyroOptim):
        return _PyroOptimizer(optim, params), optim if isinstance(optim, PyroLRScheduler) else None
    if callable(optim) and not isinstance(optim, torch.optim.Optimizer):
        made = optim(params)
        optimizer, schedule = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
        if isinstance(optimizer, torch.optim.Optimizer) and (schedule is None or hasattr(schedule, "step")):
            return optimizer, schedule
        raise TypeError(f"optim: the factory must return a torch optimiser or (optimiser, scheduler), got "
                        f"{type(made).__name__}")
    raise TypeError("optim: expected a pyro.optim optimiser (e.g. pyro.optim.ClippedAdam({'lr': 0.01})) or a factory "
                    f"params -> torch optimiser (or (optimiser, scheduler)), got {type(optim).__name__}")


class _PyroOptimizer:
    """A ``pyro.optim`` optimiser with the two methods of a torch optimiser that the loop calls."""

    def __init__(self, optim: PyroOptim, params: list[torch.Tensor]):
        self.optim, self.params = optim, params

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.optim(self.params)


class Optimization:
    """The one optimisation step of :func:`fit_svi`, :func:`inference.variational.train.train` and
    :func:`inference.variational.lightning.train_lightning`, and the progress bar of the run.

    Adam on ``params``; the learning rate decays exponentially, per step, to ``lr * lr_decay`` at step
    ``num_steps`` (or ``optim``: :func:`make_optimizer`); gradients are clipped to norm ``clip_norm``
    (None: not clipped). A non-finite loss (or a distribution refusing a non-finite argument) restores the
    parameters of the last finite step and raises :class:`SVIDivergedError` naming them (``names``:
    ``id(tensor) -> name``) and carrying ``model`` and ``guide``; any other exception of the model or guide
    propagates unchanged.

    Recorded losses (``losses``, a list that a resumed run hands back in) are divided by ``per``
    (the minibatch trainer records them per data element); ``steps`` counts the steps taken.
    Use as a context manager: the bar (tqdm, ``desc``; none unless ``progress``) closes on exit.
    """

    def __init__(self, params, *, lr: float, lr_decay: float | None, num_steps: int, clip_norm: float | None,
                 model=None, guide=None, names: dict[int, str] | None = None, per: float = 1,
                 desc: str = "", progress: bool = True, optim=None):
        self.params = list(params)
        self.optimizer, self.schedule = make_optimizer(optim, self.params, lr, lr_decay, num_steps)
        self.clip_norm, self.per, self.num_steps = clip_norm, per, num_steps
        self.model, self.guide, self.names = model, guide, names or {}
        self.desc, self.progress, self.bar, self.postfix = desc, progress, None, {}
        self.losses: list[float] = []
        self.steps = 0
        self._last_good = [p.detach().clone() for p in self.params]

    @property
    def lr(self) -> float:
        """The current step size (of the first parameter group; NaN for a ``pyro.optim`` optimiser)."""
        groups = getattr(self.optimizer, "param_groups", None)
        return float(groups[0]["lr"]) if groups else float("nan")

    def scale_lr(self, factor: float) -> None:
        """Multiply the step size of every parameter group by ``factor``."""
        for group in getattr(self.optimizer, "param_groups", []):
            group["lr"] *= factor

    def __enter__(self):
        self.bar = tqdm(total=self.num_steps, initial=self.steps, desc=self.desc, leave=False,
                        disable=None if self.progress else True)
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def step(self, loss_fn: Callable[[], torch.Tensor], backward: Callable | None = None) -> torch.Tensor:
        """One step on ``loss_fn()``; returns the loss (detached). ``backward(loss)`` replaces
        ``loss.backward()`` (Lightning's ``manual_backward``); without it, a loss that carries its gradients
        (``known_gradients``: a traced loss) hands them to the optimiser directly."""
        self.optimizer.zero_grad()
        try:
            loss = loss_fn()
        except Exception as e:
            if not nonfinite_unchecked(loss_fn):
                raise   # the model's or guide's own error: unchanged, with its traceback
            self.losses.append(float("nan"))   # a distribution refused a NaN/inf argument: the loss is non-finite
            raise self._diverged(str(e).splitlines()[0][:200] if str(e) else type(e).__name__) from e
        value = float(loss.detach())
        self.losses.append(value / self.per)
        if not math.isfinite(value):
            raise self._diverged()
        with torch.no_grad():
            for p, good in zip(self.params, self._last_good):
                good.copy_(p)
        known = getattr(loss, "known_gradients", None) if backward is None else None
        if known is not None:   # a traced loss computed them with the value: no pass of autograd
            for p, g in zip(*known):   # a copy: a gradient may be a view (of ones, for a sum), which clipping scales
                p.grad = g.clone() if p.grad is None else p.grad + g
        elif backward is None:
            loss.backward()
        else:
            backward(loss)
        if self.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.steps += 1
        if self.bar is not None:
            self.bar.update()
            if self.steps % 25 == 1 or self.steps == self.num_steps:
                recent = self.losses[-25:]
                self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}", **self.postfix)
        return loss.detach()

    def _diverged(self, cause: str = "") -> SVIDivergedError:
        """Restore the last finite parameters and build the error that carries them."""
        with torch.no_grad():
            for p, good in zip(self.params, self._last_good):
                p.copy_(good)
        restored = {self.names.get(id(p), f"param_{i}"): p for i, p in enumerate(self.params)}
        return SVIDivergedError(self.steps, self.losses, self.model, cause, guide=self.guide, params=restored)


#: the zoo's step size of Adam at the first level (fit_svi's default ``lr``)
def optim_name(optim) -> str:
    """``ClippedAdam`` for ``pyro.optim.ClippedAdam(...)``, ``ExponentialLR(SGD)`` for a scheduler wrapper, a
    factory's function name, else the type's."""
    if isinstance(optim, PyroLRScheduler):
        return f"{optim.pt_scheduler_constructor.__name__}({optim.pt_optim_constructor.__name__})"
    if isinstance(optim, PyroOptim):
        return optim.pt_optim_constructor.__name__
    return getattr(optim, "__name__", type(optim).__name__)


def nonfinite_unchecked(loss_fn) -> bool:
    """Whether the loss, evaluated again without argument validation, is NaN/inf: then the exception
    was a distribution refusing a non-finite argument (a divergence), not the model's own error."""
    try:
        with pyro.validation_enabled(False), torch.no_grad():
            return not math.isfinite(float(loss_fn()))
    except Exception:
        return False


def parameter_names(modules) -> dict[int, str]:
    """``id(tensor) -> name`` of module parameters and ``pyro.param`` store entries (unconstrained)."""
    names = {id(p): name for name, p in pyro.get_param_store().named_parameters()}
    for module in modules:
        module = getattr(module, "__self__", module)
        if isinstance(module, torch.nn.Module):
            names.update((id(p), name) for name, p in module.named_parameters())
    return names
