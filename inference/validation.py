"""THE check of a setting: an integer, a probability, a number (or array of them), a flag or a choice.

Used by inference's entry points and, as ``zoo.base.check_setting``, by every zoo model, so a mistake
reads the same everywhere: a value of the wrong type raises ``TypeError``, a value of the right type out
of range raises ``ValueError``, and both messages start with the argument's name (the CLI turns that
name into its flag).
"""

from __future__ import annotations

import math


import numpy as np
import torch


def check_setting(value, name: str, *, kind: str = "number", positive: bool = False, minimum: int | None = None,
                  shape=None, choices=None, allow_none: bool = False):
    """Return ``value`` cleaned, or raise a ``TypeError``/``ValueError`` naming ``name``.

    ``kind``: "int" (an integer ``>= minimum``; ``minimum`` defaults to 1 when ``positive``, else 0;
    ``-math.inf`` for any integer),
    "probability" (a number in the open interval (0, 1)), "bool", "choice" (one of ``choices``), or
    "number" (a finite real number, or an array of them when ``shape`` is given: ``shape`` is a tuple
    of allowed ranks, e.g. ``(0, 1)`` for a scalar or a vector; ``positive`` asks for every entry > 0).
    ``None`` passes through when ``allow_none``.
    """
    if value is None and allow_none:
        return None
    if kind == "int":
        low = minimum if minimum is not None else 1 if positive else 0
        what = f"an integer >= {low}" if low > -math.inf else "an integer"
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected {what}, got {value!r}")
        if value < low:
            raise ValueError(f"{name}: expected {what}, got {value}")
        return int(value)
    if kind == "probability":
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name}: expected a probability in (0, 1), got {value!r}")
        if not 0 < value < 1:
            raise ValueError(f"{name}: expected a probability in (0, 1), got {value!r}")
        return float(value)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name}: expected True or False, got {value!r}")
        return bool(value)
    if kind == "choice":
        if value not in choices:
            raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if kind != "number":
        raise ValueError(f"kind: expected 'int', 'probability', 'bool', 'choice' or 'number', got {kind!r}")
    what = "number" + (" > 0" if positive else "")
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
        raise TypeError(f"{name}: expected a finite {what}{' or an array of them' if shape else ''}, got {value!r}")
    try:
        arr = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a finite {what}{' or an array of them' if shape else ''}, "
                        f"got {value!r}") from None
    if arr.ndim not in (shape or (0,)):
        ranks = " or ".join({0: "a number", 1: "a vector", 2: "a matrix"}.get(r, f"rank {r}") for r in (shape or (0,)))
        raise ValueError(f"{name}: expected {ranks}, got shape {arr.shape}")
    if arr.size == 0 or not np.isfinite(arr).all() or (positive and not (arr > 0).all()):
        raise ValueError(f"{name}: expected finite values{' > 0' if positive else ''}, got {value!r}")
    return float(arr) if arr.ndim == 0 else value
