"""Data types the models share, and the checks that belong to them. Imports no model.

:class:`Sequences` is a ragged batch of sequences padded to a common length (the HMM's data, and
what ``zoo.datasets`` loads for sequence datasets). :func:`as_sequences` turns user data into it;
:func:`check_lengths` and :func:`reject` are its input checks, naming the argument and the first
offending sequence and step.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch

from zoo.base import as_float_tensor


class Sequences(NamedTuple):
    """A batch of sequences padded to a common length: ``values`` (B, T, *E), ``lengths`` (B,)."""

    values: torch.Tensor
    lengths: torch.Tensor | None = None

    @property
    def num_observations(self) -> int:
        """Observed time steps in all sequences: the unit held-out scores are reported per."""
        return int(self.lengths.sum())

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) True on observed steps, False on padding."""
        T = self.values.shape[1]
        return torch.arange(T, device=self.lengths.device) < self.lengths.unsqueeze(-1)


def as_sequences(data, event_dim: int, *, size: int | None = None, letter: str = "D", unit: str = "features"):
    """``data`` as :class:`Sequences` of events of rank ``event_dim``, padding set to 0, or a clear error.

    Accepts :class:`Sequences`, a mapping with ``values`` (and ``lengths``), or one bare sequence
    ``(T, *E)``; a vector event (``event_dim`` 1, ``size`` entries called ``unit`` when given) may come
    as ``(T,)``, a scalar one as ``(T, 1)``. Float values keep their type, others become float64. NaN
    may fill the padding only. ``letter`` names the event's length in messages."""
    if isinstance(data, Sequences):
        values, lengths, batched = data.values, data.lengths, True
    elif isinstance(data, Mapping) and "values" in data:
        values, lengths, batched = data["values"], data.get("lengths"), True
    else:
        values, lengths, batched = data, None, False
    x = as_float_tensor(values, name="data", allow_nan=True,
                        dtype=None if torch.is_tensor(values) and values.is_floating_point() else torch.float64)
    x = x if batched else x.unsqueeze(0)
    if event_dim == 1 and x.dim() == 2:        # one feature or key per step
        x = x.unsqueeze(-1)
    if event_dim == 0 and x.dim() == 3 and x.shape[-1] == 1:   # a (T, 1) column of symbols or counts
        x = x.squeeze(-1)
    if x.dim() != 2 + event_dim:
        raise ValueError(f"data: expected one sequence of shape {f'(T, {letter}) or (T,)' if event_dim else '(T,)'} "
                         f"or Sequences with values (B, T{', ' + letter if event_dim else ''}); got shape "
                         f"{tuple(values.shape) if hasattr(values, 'shape') else tuple(x.shape)}")
    if event_dim and size is not None and x.shape[-1] != size:
        raise ValueError(f"data: expected {size} {unit} (dim={size}), got {x.shape[-1]}")
    B, T = x.shape[:2]
    lengths = check_lengths(lengths, B, T)
    mask = Sequences(x, lengths).mask                                     # (B, T)
    observed = x[mask]                                                    # (N, *E)
    reject(torch.isnan(observed), observed, mask, "NaN within a sequence (remove or impute it)")
    x = torch.where(mask.reshape(B, T, *[1] * event_dim), x, torch.zeros((), dtype=x.dtype))
    return Sequences(x, lengths)


def check_lengths(lengths, B: int, T: int) -> torch.Tensor:
    """``lengths`` of B sequences padded to T steps as a long tensor (B,) (None: all T), or a clear error."""
    if lengths is None:
        return torch.full((B,), T, dtype=torch.long)
    t = as_float_tensor(lengths, name="lengths", dtype=torch.float64).reshape(-1)
    if t.numel() != B:
        raise ValueError(f"lengths: expected one length per sequence ({B}), got {t.numel()}")
    if (t != t.round()).any():
        raise ValueError(f"lengths: expected integers, got {t.tolist()[:5]}...")
    if (t < 1).any():
        b = int((t < 1).nonzero()[0, 0])
        raise ValueError(f"lengths: sequence {b} is empty (length {int(t[b])}); every sequence needs at least "
                         "one observation")
    if (t > T).any():
        b = int((t > T).nonzero()[0, 0])
        raise ValueError(f"lengths: sequence {b} has length {int(t[b])}, longer than the padded length T={T}")
    return t.long()


def reject(bad: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    """Raise ``data: {what}; got {value} at sequence b, step t`` for the first observed step with ``bad``.

    ``observed`` (N, *E) are the observed steps ``values[mask]``, ``bad`` (N, ...) flags them."""
    if bad.any():
        row = bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0, 0]
        b, t = mask.nonzero()[row].tolist()
        value = observed[row]
        shown = value.long().tolist() if (value == value.round()).all() else value.tolist()
        raise ValueError(f"data: {what}; got {shown} at sequence {b}, step {t}")
