"""Reading files: CSV files of numeric columns checked value by value (:func:`load_csv`), the data directory
of the real datasets (:func:`resolve_data_dir`), published checksums (:func:`verify_sha256`)."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from zoo.datasets.dataset import Dataset

log = logging.getLogger("zoo.datasets")   # the name the CLI shows with a warning

#: sha256 of the real files this project reads (from each folder's provenance README)
SHA256 = {
    "old_faithful/faithful.csv": "5043db1e2c51c8e8fd67e0868c768ae589770cc76ad0ac0c5b7afd1fca31fc57",
    "old_faithful/geyser_MASS.csv": "691381248e0418ccbfc23cc5093e71220313ddb7ffb70e817e27a6dfb900fbcc",
    "jsb_chorales/jsb_chorales.json": "d40ed9b0a64a04c70e79d3695bd85823ac41c9ea6284a479d9aff849155ed73e",
    "mnist/train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "binarized_mnist/binarized_mnist.npz": "7a049ae3a0d88e964af4b41bbdb14e4303595e1c5de65f8bd2455cdcebb3514b",
}


def resolve_data_dir(data_dir: str | os.PathLike | None, dataset: str, needs: str) -> Path:
    """The data directory for ``dataset`` (argument, else ``$ZOO_DATA_DIR``), checked to hold ``needs``."""
    given = data_dir if data_dir is not None else os.environ.get("ZOO_DATA_DIR")
    if given is None:
        raise ValueError(
            f"data_dir: dataset {dataset!r} is not bundled; pass --data-dir (or set ZOO_DATA_DIR) "
            f"to a folder containing {needs}"
        )
    root = Path(given).expanduser()
    if not (root / needs).exists():
        raise ValueError(f"data_dir: {str(root)!r} does not contain {needs} (needed by dataset {dataset!r})")
    return root


def verify_sha256(path: Path, expected: str) -> None:
    """Raise a clear error if the file's sha256 differs from the published one."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != expected:
        raise ValueError(
            f"data: {str(path)!r} is corrupt or a different version (sha256 {h.hexdigest()[:12]}..., "
            f"expected {expected[:12]}...); download it again"
        )


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV with clear errors for missing, unreadable or empty files."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data: file {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"data: {str(path)!r} is a directory, expected a CSV file")
    try:
        frame = pd.read_csv(path)
        if len(frame.columns) and all(_is_number(c) for c in frame.columns):
            log.warning("data: the first row of %r is numbers, not column names; read as data", str(path))
            frame = pd.read_csv(path, header=None)
            frame.columns = [f"x{i}" for i in range(frame.shape[1])]
        return frame
    except pd.errors.EmptyDataError:
        raise ValueError(f"data: {str(path)!r} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise ValueError(f"data: could not read {str(path)!r} as CSV ({type(e).__name__}: {e})") from None


def _is_number(text) -> bool:
    try:
        float(str(text).strip())
        return True
    except ValueError:
        return False


def load_csv(path: str | os.PathLike, columns: list[str] | None = None) -> Dataset:
    """A CSV of numeric columns (a leading ``rownames``/unnamed index column is dropped)."""
    frame = read_csv(path)
    first = str(frame.columns[0]) if len(frame.columns) else ""
    if first in ("rownames", "") or first.startswith("Unnamed"):
        frame = frame.drop(columns=frame.columns[0])
    if columns is not None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"data: {str(path)!r} has no column(s) {', '.join(missing)}")
        frame = frame[columns]
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"data: {str(path)!r} has no data rows or columns")
    bad = [str(c) for c, dt in frame.dtypes.items() if not pd.api.types.is_numeric_dtype(dt)]
    if bad:
        sep = next((s for s in (";", "\t", "|") if len(bad) == 1 and s in bad[0]), None)
        hint = f" (the file looks separated by {sep!r}; expected commas)" if sep else ""
        raise ValueError(f"data: {str(path)!r} has non-numeric column(s) {', '.join(bad)}; expected numbers only{hint}")
    values = frame.to_numpy(dtype=np.float64, copy=True)     # read in float64, then checked against the model dtype
    dtype, limit = torch.get_default_dtype(), torch.finfo(torch.get_default_dtype()).max
    for bad, what in ((np.isinf(values), "is infinite"),
                      (np.isfinite(values) & (np.abs(values) > limit),
                       f"overflows {str(dtype).replace('torch.', '')} (largest {limit:.3g}); rescale the column")):
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"data: {str(path)!r}: value {values[r, c]:g} in data row {r + 1}, column "
                             f"{frame.columns[c]!r} {what}")
    return Dataset(
        name=Path(path).stem,
        data=torch.as_tensor(values, dtype=dtype),
        description=f"CSV file {path}",
        source=str(path),
        feature_names=[str(c) for c in frame.columns],
    )
