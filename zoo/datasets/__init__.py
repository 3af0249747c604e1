"""Datasets: bundled defaults that need no download, and loaders for real files in a data directory.

    >>> from zoo import datasets
    >>> ds = datasets.load("iris-petals")            # bundled with scikit-learn
    >>> ds = datasets.load("old-faithful", data_dir="../shared/datasets")
    >>> ds = datasets.load("my_measurements.csv")    # any CSV of numeric columns

A data directory holds one folder per dataset (``old_faithful/faithful.csv``, ...), as in
``../shared/datasets``; it is taken from ``data_dir=`` or the ``ZOO_DATA_DIR`` environment
variable. Files with a published checksum are verified on load.
"""

from __future__ import annotations

import os
from pathlib import Path

from zoo.datasets import bundled, real, images   # in this order: each registers its named datasets on import
from zoo.datasets.dataset import _LOADERS, Dataset, list_datasets, register
from zoo.datasets.files import SHA256, load_csv, read_csv, resolve_data_dir, verify_sha256
from zoo.datasets.images import read_idx

__all__ = ["Dataset", "load", "list_datasets", "register", "resolve_data_dir", "verify_sha256"]
__all__ += ["SHA256", "load_csv", "read_csv", "read_idx"]   # the file readers, for loaders of other datasets

#: the modules of the named datasets, in the order they register them (the order `load`'s error names them)
MODULES = (bundled, real, images)


def load(name: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a named dataset or a CSV file path."""
    if isinstance(name, str) and name in _LOADERS:
        return _LOADERS[name][0](Path(data_dir) if data_dir is not None else None)
    path = Path(name)
    if path.suffix.lower() == ".csv" or path.exists():
        return load_csv(path)
    raise ValueError(
        f"data: unknown dataset {str(name)!r}; expected a CSV path or one of {', '.join(_LOADERS)}"
    )
