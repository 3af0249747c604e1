"""Dataset loaders: bundled defaults, real files from a data directory, CSV errors, checksums."""

import shutil

import numpy as np
import pytest
import torch

import zoo
from zoo import datasets


def test_registry_lists_models_and_reports_unknown_names():
    assert "gmm" in zoo.list_models()
    with pytest.raises(ValueError, match="unknown model 'nope'; available: .*gmm"):
        zoo.get("nope")


def test_iris_petals_is_bundled():
    ds = datasets.load("iris-petals")
    assert ds.data.shape == (150, 2)
    assert ds.feature_names == ["petal_length_cm", "petal_width_cm"]
    assert np.bincount(ds.labels).tolist() == [50, 50, 50]
    assert datasets.load("iris").data.shape == (150, 4)


def test_old_faithful_from_data_dir(shared_data_dir):
    ds = datasets.load("old-faithful", data_dir=shared_data_dir)
    assert ds.data.shape == (272, 2)
    assert ds.feature_names == ["eruptions", "waiting"]
    # README: eruptions mean 3.488, waiting mean 70.897
    assert ds.data.mean(0).tolist() == pytest.approx([3.4878, 70.8971], abs=1e-3)


def test_old_faithful_corrupt_file_is_detected(shared_data_dir, tmp_path):
    (tmp_path / "old_faithful").mkdir()
    shutil.copy(shared_data_dir / "old_faithful" / "faithful.csv", tmp_path / "old_faithful" / "faithful.csv")
    with open(tmp_path / "old_faithful" / "faithful.csv", "a") as f:
        f.write("273,3.0,70\n")
    with pytest.raises(ValueError, match="corrupt"):
        datasets.load("old-faithful", data_dir=tmp_path)


def test_missing_data_dir_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_DATA_DIR", raising=False)
    with pytest.raises(ValueError, match="--data-dir"):
        datasets.load("old-faithful")
    with pytest.raises(ValueError, match="does not contain old_faithful/faithful.csv"):
        datasets.load("old-faithful", data_dir=tmp_path)


def test_csv_loader(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("rownames,a,b\n1,1.0,2.0\n2,3.0,4.5\n")
    ds = datasets.load(str(path))
    assert ds.feature_names == ["a", "b"]
    assert torch.equal(ds.data, torch.tensor([[1.0, 2.0], [3.0, 4.5]]))


@pytest.mark.parametrize("content, message", [
    ("a,kind\n1.0,x\n2.0,y\n", "non-numeric column.*kind"),
    ("", "empty"),
    ("a,b\n", "no data rows"),
])
def test_csv_errors(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        datasets.load(str(path))


def test_missing_or_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        datasets.load(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match="unknown dataset 'mnist-typo'"):
        datasets.load("mnist-typo")
    with pytest.raises(ValueError, match="is a directory"):
        datasets.load_csv(tmp_path)
