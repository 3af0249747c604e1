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

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

__all__ = ["Dataset", "load", "list_datasets", "register", "resolve_data_dir", "verify_sha256"]


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


def register(name: str, description: str):
    """Decorator registering ``loader(data_dir) -> Dataset`` under ``name``."""

    def wrap(loader):
        _LOADERS[name] = (loader, description)
        return loader

    return wrap


def list_datasets() -> dict[str, str]:
    """``{name: description}`` of the named datasets."""
    return {k: d for k, (_, d) in sorted(_LOADERS.items())}


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


# --- bundled: no download ------------------------------------------------------------------


def _iris(columns: slice, name: str, description: str) -> Dataset:
    from sklearn.datasets import load_iris

    iris = load_iris()
    return Dataset(
        name=name,
        data=torch.as_tensor(iris.data[:, columns], dtype=torch.get_default_dtype()),
        description=description,
        source="scikit-learn sklearn.datasets.load_iris (Fisher 1936, UCI Iris), shipped inside the wheel",
        feature_names=[n.replace(" (cm)", "_cm").replace(" ", "_") for n in iris.feature_names[columns]],
        labels=np.asarray(iris.target),
        label_names=list(iris.target_names),
    )


@register("iris-petals", "Iris petal length and width (cm), 150 x 2, bundled with scikit-learn")
def _iris_petals(data_dir=None) -> Dataset:
    # Three species form three groups in the petal plane (setosa far apart, versicolor and
    # virginica touching): a real, small, 2-D mixture whose clusters can be plotted and scored
    # against the species labels. Default for the GMM.
    return _iris(slice(2, 4), "iris-petals", "Iris petal length and width (cm), 150 flowers of 3 species")


@register("iris", "Iris, all four measurements (cm), 150 x 4, bundled with scikit-learn")
def _iris_all(data_dir=None) -> Dataset:
    return _iris(slice(0, 4), "iris", "Iris sepal and petal length and width (cm), 150 flowers of 3 species")


@register("wine", "Wine chemistry, 13 measurements standardized, 178 x 13, bundled with scikit-learn")
def _wine(data_dir=None) -> Dataset:
    # Thirteen chemical measurements of 178 wines from three cultivars (Forina et al., UCI Wine), in
    # very different units: proline is in the hundreds to thousands, hue around 1. Standardized (zero
    # mean, unit variance with 1/N), so PCA works on the correlation matrix; raw, proline alone would
    # be the first component, and PPCA's isotropic noise assumes comparable scales. Small and real,
    # with clear low-dimensional structure (the first two components separate the cultivars). Default
    # for PPCA.
    from sklearn.datasets import load_wine

    wine = load_wine()
    x = np.asarray(wine.data, dtype=np.float64)
    x = (x - x.mean(0)) / x.std(0)
    return Dataset(
        name="wine",
        data=torch.as_tensor(x, dtype=torch.get_default_dtype()),
        description="Wine: 13 chemical measurements of 178 wines from 3 cultivars, standardized (z-scores, 1/N)",
        source="scikit-learn sklearn.datasets.load_wine (Forina et al., UCI Wine), shipped inside the wheel",
        feature_names=[n.replace("od280/od315_of_diluted_wines", "od280_od315") for n in wine.feature_names],
        labels=np.asarray(wine.target),
        label_names=[f"cultivar {i + 1}" for i in range(3)],
        meta={"raw_mean": wine.data.mean(0).tolist(), "raw_std": wine.data.std(0).tolist()},
    )


@register("goog-returns", "Google daily log-returns (%), 1046 trading days 2004-2008, bundled with matplotlib")
def _goog_returns(data_dir=None) -> Dataset:
    # A real series with visible regimes (calm 2004-2007, turbulent 2008) for a 2-state Gaussian HMM
    # (volatility switching, as in Hamilton 1989): the HMM's default. The file ships inside the
    # matplotlib wheel (mpl-data/sample_data), a runtime dependency, so it needs no download.
    from matplotlib import cbook

    prices = cbook.get_sample_data("goog.npz")["price_data"]
    if len(prices) != 1047 or str(prices["date"][0]) != "2004-08-19":
        raise ValueError("data: matplotlib's sample_data/goog.npz is not the expected series "
                         "(1047 days from 2004-08-19); this matplotlib version ships different sample data")
    returns = 100 * np.diff(np.log(prices["adj_close"]))
    return Dataset(
        name="goog-returns",
        data=torch.as_tensor(returns[:, None], dtype=torch.get_default_dtype()),
        description="daily log-returns (%) of Google's adjusted close, 2004-08-20 to 2008-10-14 (1046 days)",
        source="matplotlib mpl-data/sample_data/goog.npz (Yahoo! Finance GOOG prices), shipped inside the wheel",
        feature_names=["log_return_pct"],
        meta={"dates": prices["date"][1:]},
    )


# --- real files from a data directory --------------------------------------------------------


@register("old-faithful", "Old Faithful eruptions and waiting times (min), 272 x 2 (needs --data-dir)")
def _old_faithful(data_dir=None) -> Dataset:
    rel = "old_faithful/faithful.csv"
    root = resolve_data_dir(data_dir, "old-faithful", rel)
    path = root / rel
    verify_sha256(path, SHA256[rel])
    ds = load_csv(path, columns=["eruptions", "waiting"])
    ds.name = "old-faithful"
    ds.description = "Old Faithful geyser: eruption duration and waiting time to the next eruption (min), 272 eruptions"
    ds.source = f"{path} (R datasets::faithful via Rdatasets; Härdle 1991)"
    return ds


@register("jsb-chorales", "J. S. Bach chorales, 51-key multi-hot sequences, train 229 / valid 76 / test 77 "
                          "(needs --data-dir)")
def _jsb_chorales(data_dir=None) -> Dataset:
    # As Pyro's examples/hmm.py: each step is the set of sounding keys, and only the 51 keys used in
    # the training chorales are kept (in every split). ``data`` is the train split; ``splits`` holds
    # valid and test. Sequences are padded to the longest of their split.
    import json

    from zoo.data import Sequences

    rel = "jsb_chorales/jsb_chorales.json"
    root = resolve_data_dir(data_dir, "jsb-chorales", rel)
    path = root / rel
    verify_sha256(path, SHA256[rel])
    try:
        raw = json.loads(path.read_text())
        keys = sorted({int(p) for seq in raw["train"] for step in seq for p in step})
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"data: could not read {str(path)!r} as the JSB chorales JSON ({e})") from None
    column = {p: i for i, p in enumerate(keys)}

    def sequences(split):
        seqs = raw[split]
        values = torch.zeros(len(seqs), max(map(len, seqs)), len(keys), dtype=torch.get_default_dtype())
        for b, seq in enumerate(seqs):
            for t, step in enumerate(seq):
                values[b, t, [column[p] for p in step if p in column]] = 1.0
        return Sequences(values, torch.tensor([len(s) for s in seqs]))

    return Dataset(
        name="jsb-chorales",
        data=sequences("train"),
        description=f"J. S. Bach four-part chorales as multi-hot key sequences over the {len(keys)} MIDI "
                    "pitches used in training; train split (valid and test in splits)",
        source=f"{path} (Boulanger-Lewandowski et al. 2012 split, as in Pyro's examples/hmm.py)",
        feature_names=[f"midi_{p}" for p in keys],
        splits={"valid": sequences("valid"), "test": sequences("test")},
    )


# --- images --------------------------------------------------------------------------------------


def _image_dataset(name, splits, labels, *, side, description, source, binarize) -> Dataset:
    """An image Dataset: ``data`` is the training split (N, side*side) in [0, 1]; ``splits`` holds
    ``valid`` and ``test``; ``meta`` holds the image side, per-split labels and the binarization."""
    as_t = {k: torch.as_tensor(v, dtype=torch.get_default_dtype()) for k, v in splits.items()}
    return Dataset(
        name=name, data=as_t["train"], description=description, source=source,
        labels=labels.get("train"), label_names=[str(d) for d in range(10)] if labels else None,
        splits={k: v for k, v in as_t.items() if k != "train"},
        meta={"image_shape": (side, side), "labels": labels, "binarize": binarize},
    )


@register("digits", "8x8 handwritten digits in [0, 1], 1797 x 64 (1257/270/270 train/valid/test), bundled with scikit-learn")
def _digits(data_dir=None) -> Dataset:
    # The VAE's default: real handwritten digits that ship inside scikit-learn (no download), small
    # enough to train in seconds on a CPU, with labels for the latent scatter. Intensities 0..16
    # become grey levels in [0, 1], binarized dynamically for a Bernoulli likelihood, as MNIST.
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))   # fixed split, same every run
    x, y = digits.data[order] / 16.0, digits.target[order]
    cut = {"train": slice(0, 1257), "valid": slice(1257, 1527), "test": slice(1527, None)}
    return _image_dataset(
        "digits", {k: x[c] for k, c in cut.items()}, {k: y[c] for k, c in cut.items()}, side=8,
        description="8x8 handwritten digits (grey levels in [0, 1]; dynamically binarized for a Bernoulli likelihood)",
        source="scikit-learn sklearn.datasets.load_digits (UCI optdigits test set), shipped inside the wheel",
        binarize="dynamic",
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed, as published): ubyte arrays with a big-endian header."""
    import gzip

    try:
        raw = gzip.open(path).read()
    except (OSError, EOFError) as e:
        raise ValueError(f"data: could not read {str(path)!r} as a gzip IDX file ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"data: {str(path)!r} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


@register("mnist", "MNIST grey levels in [0, 1], 50000/10000/10000 train/valid/test x 784 (needs --data-dir)")
def _mnist(data_dir=None) -> Dataset:
    # The last 10000 training images are the validation split (the split of Burda et al. 2015 and
    # most VAE papers); a Bernoulli VAE binarizes the grey levels dynamically in training.
    files = {f"{split}-{kind}": f"mnist/{split}-{kind}-ubyte.gz"
             for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")}
    root = resolve_data_dir(data_dir, "mnist", files["train-images-idx3"])
    arrays = {}
    for key, rel in files.items():
        path = root / rel
        if not path.exists():
            raise ValueError(f"data_dir: {str(root)!r} does not contain {rel} (needed by dataset 'mnist')")
        verify_sha256(path, SHA256[rel])
        arrays[key] = read_idx(path)
    images = {"train": arrays["train-images-idx3"][:50000], "valid": arrays["train-images-idx3"][50000:],
              "test": arrays["t10k-images-idx3"]}
    labels = {"train": arrays["train-labels-idx1"][:50000], "valid": arrays["train-labels-idx1"][50000:],
              "test": arrays["t10k-labels-idx1"]}
    return _image_dataset(
        "mnist", {k: v.reshape(len(v), 784) / 255.0 for k, v in images.items()},
        {k: v.astype(np.int64) for k, v in labels.items()}, side=28,
        description="MNIST handwritten digits, grey levels in [0, 1] (dynamically binarized for a Bernoulli likelihood)",
        source=f"{root / 'mnist'} (LeCun et al. 1998; idx files, sha256-verified)", binarize="dynamic",
    )


@register("binarized-mnist", "MNIST with the fixed binarization of Larochelle & Murray (2011), 50000/10000/10000 x 784 (needs --data-dir)")
def _binarized_mnist(data_dir=None) -> Dataset:
    rel = "binarized_mnist/binarized_mnist.npz"
    root = resolve_data_dir(data_dir, "binarized-mnist", rel)
    verify_sha256(root / rel, SHA256[rel])
    with np.load(root / rel) as npz:
        splits = {k: npz[k] for k in ("train", "valid", "test")}
    return _image_dataset(
        "binarized-mnist", splits, {}, side=28,
        description="MNIST with one fixed stochastic binarization (the benchmark of published VAE test log-likelihoods); no labels",
        source=f"{root / rel} (Larochelle & Murray 2011; sha256-verified)", binarize=None,
    )
