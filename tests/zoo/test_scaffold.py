"""`zoo new NAME`, module discovery and plugins (the entry-point group ``latent_zoo.models``)."""

import ast
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zoo
from zoo.cli import main
from zoo.scaffold import new_model

REPO = Path(__file__).resolve().parents[2]


def run(args, cwd, timeout=300):
    """A fresh interpreter in ``cwd`` whose ``zoo`` is the copy there (``inference`` from this checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), str(REPO)]), "MPLBACKEND": "Agg"}
    env.pop("CI", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def checkout(tmp_path):
    """A temporary copy of the source: zoo/ and the tests the new model needs."""
    shutil.copytree(REPO / "zoo", tmp_path / "zoo", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "tests").mkdir()
    for name in ("conftest.py", "test_contract.py"):
        shutil.copy(REPO / "tests" / name, tmp_path / "tests" / name)
    return tmp_path


def test_new_model_fits_and_passes_its_tests_and_the_contract(checkout):
    created = run(["-m", "zoo", "new", "robust_loc"], checkout)
    assert created.returncode == 0, created.stderr
    model_file, test_file = checkout / "zoo" / "robust_loc.py", checkout / "tests" / "zoo" / "test_robust_loc.py"
    assert str(model_file) in created.stdout and str(test_file) in created.stdout
    source = model_file.read_text()
    assert 'name = "robust_loc"' in source and "class RobustLoc(ZooModel)" in source and "TODO" in source

    listed = run(["-m", "zoo", "list"], checkout)
    assert listed.returncode == 0 and "robust_loc" in listed.stdout, listed.stderr

    tests = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/zoo/test_robust_loc.py", "tests/test_contract.py",
                 "-k", "robust_loc"], checkout)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    fitted = run(["-m", "zoo", "fit", "robust_loc", "--method", "svi", "--steps", "50", "--samples", "20",
                  "--quiet", "--out", "runs/fit"], checkout)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert {"posterior_svi.nc", "summary.md"} <= {p.name for p in (checkout / "runs" / "fit").iterdir()}

    before = {p: p.read_text() for p in (model_file, test_file)}
    again = run(["-m", "zoo", "new", "robust_loc"], checkout)
    assert again.returncode == 2 and "exists already" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert {p: p.read_text() for p in before} == before


@pytest.mark.parametrize("name, message", [
    ("Robust", "lowercase Python identifier"),
    ("1model", "lowercase Python identifier"),
    ("my-model", "lowercase Python identifier"),
    ("class", "lowercase Python identifier"),
    ("gmm", "exists already"),
    ("get", "taken by the zoo package"),
    ("datasets", "taken by the zoo package"),
])
def test_bad_names_are_refused(tmp_path, name, message):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "tests").mkdir()
    with pytest.raises(ValueError, match=message):
        new_model(name, tmp_path / "pkg", tmp_path / "tests")
    assert not any(tmp_path.rglob("*.py"))


def test_never_replaces_a_file_and_writes_nothing_then(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "tests").mkdir()
    mine = tmp_path / "tests" / "test_robust_loc.py"
    mine.write_text("# my own test\n")
    with pytest.raises(FileExistsError, match="never replaces"):
        new_model("robust_loc", tmp_path / "pkg", tmp_path / "tests")
    assert mine.read_text() == "# my own test\n"
    assert not (tmp_path / "pkg" / "robust_loc.py").exists()


def test_needs_a_tests_folder(tmp_path):
    with pytest.raises(ValueError, match="source checkout"):
        new_model("robust_loc", tmp_path, tmp_path / "tests")


def test_written_files_are_valid_python(tmp_path):
    written = new_model("factor_model", tmp_path, tmp_path)
    assert [p.name for p in written] == ["factor_model.py", "test_factor_model.py"]
    for path in written:
        ast.parse(path.read_text())
    assert zoo.module_models(written[0]) == {"factor_model": "FactorModel"}


def test_module_discovery_reads_classes_from_source(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent('''
        from zoo.base import ZooModel
        import zoo.base
        class Helper:
            name = "not-a-model"
        class First(ZooModel):
            name = "first"
        class Second(zoo.base.ZooModel):
            name: str = "second"
        class Variant(First):
            name = "variant"
        class Abstract(ZooModel):
            """no name: not registered"""
        def make():
            class Hidden(ZooModel):
                name = "hidden"
    '''))
    assert zoo.module_models(path) == {"first": "First", "second": "Second", "variant": "Variant"}


PLUGIN = '''
from zoo.gmm import GaussianMixture


class Plugged(GaussianMixture):
    """A mixture shipped by another package."""

    name = "plugged"


class NotAModel:
    pass
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed package `zoo_plugin_demo` declaring models in the `latent_zoo.models` group."""
    (tmp_path / "zoo_plugin_demo.py").write_text(PLUGIN)
    info = tmp_path / "zoo_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[latent_zoo.models]\nplugged = zoo_plugin_demo:Plugged\ngmm = zoo_plugin_demo:Plugged\n"
        "broken = zoo_plugin_demo:NotAModel\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_plugin_models_appear_in_zoo_list(plugin, capsys, caplog):
    with caplog.at_level(logging.WARNING, logger="zoo"):
        assert {"plugged", "broken", "gmm"} <= set(zoo.list_models())
    assert "'gmm'" in caplog.text and "skipped" in caplog.text           # a built-in name is not taken over
    assert zoo.model_class("gmm").__module__ == "zoo.gmm"
    m = zoo.get("plugged", n_components=2)
    assert type(m).__name__ == "Plugged" and m.n_components == 2
    with pytest.raises(TypeError, match="not a ZooModel subclass"):
        zoo.get("broken")
    assert main(["list"]) == 0                                             # a broken plugin hides nothing
    out = capsys.readouterr().out
    assert "plugged" in out and "gmm" in out and "broken     (cannot be loaded: TypeError" in out


def test_plugin_in_a_fresh_interpreter(plugin):
    (plugin / "zoo_plugin_demo-0.1.dist-info" / "entry_points.txt").write_text(
        "[latent_zoo.models]\nplugged = zoo_plugin_demo:Plugged\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
    listed = subprocess.run([sys.executable, "-m", "zoo", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "plugged" in listed.stdout and "A mixture shipped by another package." in listed.stdout
