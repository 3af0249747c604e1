"""Image datasets for the VAE: scikit-learn's 8x8 digits (bundled) and MNIST, grey or binarized (from a data
directory), each as a training split with ``valid`` and ``test`` splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from zoo.datasets.dataset import Dataset, register
from zoo.datasets.files import SHA256, resolve_data_dir, verify_sha256


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
