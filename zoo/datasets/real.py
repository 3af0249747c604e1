"""The real datasets other than images, read from a data directory (``--data-dir`` or ``$ZOO_DATA_DIR``),
checksums verified (the images: :mod:`zoo.datasets.images`)."""

from __future__ import annotations

import torch

from zoo.datasets.dataset import Dataset, register
from zoo.datasets.files import SHA256, load_csv, resolve_data_dir, verify_sha256


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
