"""Data types the models share, and the checks that belong to them. Imports no model.

:class:`Sequences` is a ragged batch of sequences padded to a common length (the HMM's data, and
what ``zoo.datasets`` loads for sequence datasets); :func:`check_lengths` and :func:`reject` are its
input checks, naming the argument and the first offending sequence and step.
"""

from __future__ import annotations

from typing import NamedTuple

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
