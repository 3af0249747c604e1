"""A :class:`Dataset` (data ready for a model, with names, labels and splits) and the registry of named
datasets (:func:`register`, :func:`list_datasets`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


@dataclass
class Dataset:
    """A dataset ready for a model: ``data`` is what the model's ``validate`` accepts."""

    name: str
    data: Any
    description: str = ""
    source: str = ""
    feature_names: list[str] | None = None
    labels: np.ndarray | None = None       # optional ground-truth classes, for plots and scores
    label_names: list[str] | None = None
    splits: dict[str, Any] = field(default_factory=dict)   # further splits, e.g. {"test": ...}
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> "Dataset":
        """The split ``name`` ("train" or a key of ``splits``) as a Dataset of its own, with its labels."""
        if name != "train" and name not in self.splits:
            raise ValueError(f"split: dataset {self.name!r} has no split {name!r}; it has train, {', '.join(self.splits)}")
        labels = (self.meta.get("labels") or {}).get(name, self.labels if name == "train" else None)
        return Dataset(name=f"{self.name} ({name})", data=self.data if name == "train" else self.splits[name],
                       description=self.description, source=self.source, feature_names=self.feature_names,
                       labels=labels, label_names=self.label_names, meta=self.meta)

    def __repr__(self) -> str:
        shape = tuple(self.data.shape) if hasattr(self.data, "shape") else type(self.data).__name__
        return f"Dataset({self.name!r}, data={shape}, splits={sorted(self.splits)})"


_LOADERS: dict[str, tuple[Callable[[Path | None], Dataset], str]] = {}


def register(name: str, description: str):
    """Decorator registering ``loader(data_dir) -> Dataset`` under ``name``."""

    def wrap(loader):
        _LOADERS[name] = (loader, description)
        return loader

    return wrap


def list_datasets() -> dict[str, str]:
    """``{name: description}`` of the named datasets."""
    return {k: d for k, (_, d) in sorted(_LOADERS.items())}
