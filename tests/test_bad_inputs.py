"""Bad and edge inputs through the command line and the API: every mistake ends with exit status 2
(or a ValueError/TypeError) and a message naming the flag or argument, no traceback, and no file
created, changed or deleted anywhere but in a fresh temporary folder. Also the findings of issue 14:
safe output folders, every valid HMM writable, errors that keep their cause, Ctrl-C, a quiet first screen.
"""

import logging
import os
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
from inference.files import MARKER, check_output_dir, check_output_file
from inference.reporting.report import write_report
from zoo import datasets
from zoo.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--steps", "5", "--samples", "5", "--quiet"]
NUTS = ["--warmup", "5", "--chains", "1"]
VAE = ["--epochs", "1", "--batch-size", "10", "--hidden", "4", "--latent-dim", "2", "--eval-particles", "5"]

rng = np.random.default_rng(0)
FILES = {   # written afresh into every case's temporary folder
    "points.csv": "x,y\n" + "\n".join(f"{a:.3f},{b:.3f}" for a, b in rng.normal(size=(30, 2))) + "\n",
    "mydata/points.csv": "x,y\n1.0,2.0\n3.0,4.0\n5.0,6.0\n",
    "counts.csv": "count\n" + "\n".join(str(v) for v in rng.poisson(3, 40)) + "\n",
    "symbols.csv": "symbol\n" + "\n".join(str(v) for v in rng.integers(0, 4, 40)) + "\n",
    "pixels.csv": "a,b,c,d\n" + "\n".join(",".join(f"{v:.2f}" for v in row) for row in rng.uniform(size=(30, 4))) + "\n",
    "notes.txt": "my notes, not a checkpoint\n",
    "empty.csv": "",
    "header_only.csv": "x,y\n",
    "text.csv": "x,label\n1.0,a\n2.0,b\n3.0,c\n",
    "nan.csv": "x,y\n1.0,2.0\nnan,3.0\n4.0,5.0\n",
    "missing_field.csv": "x,y\n1.0,2.0\n,3.0\n4.0,5.0\n",
    "huge.csv": "x,y\n1.0,2.0\n1e308,3.0\n4.0,5.0\n",
    "inf.csv": "x,y\n1.0,2.0\ninf,3.0\n4.0,5.0\n",
    "ragged.csv": "x,y\n1.0,2.0\n3.0,4.0,5.0,6.0\n",
    "negative_counts.csv": "count\n1\n-2\n3\n",
    "fractional_counts.csv": "count\n1\n2.5\n3\n",
    "two_bits.csv": "a,b\n0,1\n2,0\n1,1\n",
    "stray_symbol.csv": "symbol\n0\n1\n5000000\n2\n",
    "complex.csv": "x,y\n1+2j,3\n4,5\n",
}


def _snapshot(root: Path) -> dict:
    """Size and time of every file, and every folder (by name only: a folder's time changes when a cache
    appears in it, e.g. numba's in zoo/__pycache__ on a fresh clone, and its entries are listed anyway)."""
    seen = {}
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in (".git", "__pycache__", ".pytest_cache")]
        for name in files:
            st = os.lstat(os.path.join(folder, name))
            seen[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
        seen.update((os.path.join(folder, name), "folder") for name in subdirs)
    return seen


@pytest.fixture
def box(tmp_path, monkeypatch):
    """A fresh folder holding the input files, made the working folder; checks on exit that nothing
    in it or in the repository was created, changed or deleted."""
    for name, text in FILES.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "a_folder.csv").mkdir()
    (tmp_path / "not_a_report").mkdir()
    (tmp_path / "not_a_report" / "thesis.tex").write_text("years of work\n")
    (tmp_path / "empty_dir").mkdir()
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path), _snapshot(REPO)
    yield tmp_path
    after = _snapshot(tmp_path), _snapshot(REPO)
    assert after[0] == before[0], "files changed in the temporary folder"
    assert after[1] == before[1], "files changed in the repository"


def _fails_cleanly(capsys, args, *needles):
    try:
        code = main(args)
    except SystemExit as e:   # argparse's own exit, after its one line
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    lines = [ln for ln in err.splitlines() if not ln.startswith("zoo: warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- command line: each case exits 2 with one line naming the flag, and touches nothing ---------------

CLI_CASES = [
    # numbers that would be nonsense or mean "default"
    (["fit", "gmm", "--steps", "0"], "--steps"),
    (["fit", "gmm", "--steps", "-5"], "--steps"),
    (["fit", "gmm", "--steps", "many"], "--steps"),
    (["fit", "gmm", "--lr", "0"], "--lr"),
    (["fit", "gmm", "--lr", "nan"], "--lr"),
    (["fit", "gmm", "--lr", "-0.1"], "--lr"),
    (["fit", "gmm", "--lr", "inf"], "--lr"),
    (["fit", "gmm", "--samples", "0"], "--samples"),
    (["compare", "gmm", "--chains", "0"], "--chains"),
    (["fit", "gmm", "--method", "nuts", "--warmup", "-1"], "--warmup"),
    (["fit", "gmm", "--particles", "0"], "--particles"),
    (["fit", "vae", "--eval-particles", "0"], "--eval-particles"),
    (["fit", "vae", "--epochs", "0"], "--epochs"),
    (["fit", "vae", "--batch-size", "0"], "--batch-size"),
    (["fit", "gmm", "--seed", "-1"], "--seed"),
    (["fit", "gmm", "--components", "0"], "--components"),
    (["fit", "gmm", "--components", "500"], "--components"),
    (["fit", "gmm", "--components", "two"], "--components"),
    (["fit", "hmm", "--states", "0"], "--states"),
    (["fit", "vae", "--latent-dim", "0"], "--latent-dim"),
    (["fit", "vae", "--hidden", "0"], "--hidden"),
    (["fit", "vae", "--hidden", "a,b"], "--hidden"),
    # names and choices
    (["fit", "nope"], "unknown model 'nope'"),
    (["fit", "gmm", "--method", "gibbs"], "--method"),
    (["fit", "gmm", "--method", "em"], "--method"),
    (["fit", "hmm", "--emission", "gamma"], "--emission"),
    (["fit", "vae", "--likelihood", "poisson"], "--likelihood"),
    (["fit", "gmm", "--guide", "laplace"], "--guide"),
    (["fit", "vae", "--elbo", "renyi"], "--elbo"),
    (["fit", "vae", "--trainer", "jax"], "--trainer"),
    (["fit", "vae", "--device", "tpu"], "--device"),
    (["fit", "gmm", "--bogus-flag", "1"], "--bogus-flag"),
    # model settings
    (["fit", "gmm", "--option", "n_components=4", "--components", "2"], "--option", "--components 2"),
    (["fit", "gmm", "--option", "n_components=2", "--option", "n_components=3"], "--option"),
    (["fit", "gmm", "--option", "bogus=1"], "unknown configuration 'bogus'"),
    (["fit", "gmm", "--option", "novalue"], "--option"),
    (["fit", "gmm", "--option", "=3"], "--option"),
    (["fit", "gmm", "--option", "prior_center=[1,2,3]"], "prior_center"),
    (["fit", "gmm", "--option", "prior_center=[[1,2]]"], "prior_center"),
    (["fit", "gmm", "--option", "prior_spread=-1"], "prior_spread"),
    (["fit", "gmm", "--option", "prior_spread=nan"], "prior_spread"),
    (["fit", "gmm", "--option", "concentration=0"], "concentration"),
    (["fit", "gmm", "--option", "concentration=abc"], "concentration"),
    (["fit", "ppca", "--option", "ard=maybe"], "ard"),
    (["fit", "ppca", "--option", "missing=zero"], "missing"),
    (["fit", "hmm", "--emission", "categorical", "--option", "n_symbols=0"], "n_symbols"),
    (["fit", "hmm", "--emission", "categorical", "--option", "n_symbols=10000000"], "n_symbols"),
    (["fit", "vae", "--option", "init_seed=x"], "init_seed"),
    # data
    (["fit", "gmm", "--data", "missing.csv"], "--data", "does not exist"),
    (["fit", "gmm", "--data", "a_folder.csv"], "--data", "directory"),
    (["fit", "gmm", "--data", "empty.csv"], "--data", "empty"),
    (["fit", "gmm", "--data", "header_only.csv"], "--data"),
    (["fit", "gmm", "--data", "text.csv"], "--data", "non-numeric"),
    (["fit", "gmm", "--data", "complex.csv"], "--data", "non-numeric"),
    (["fit", "gmm", "--data", "nan.csv"], "--data", "NaN"),
    (["fit", "gmm", "--data", "missing_field.csv"], "--data", "missing"),
    (["fit", "gmm", "--data", "huge.csv"], "--data", "overflows float32"),
    (["fit", "gmm", "--data", "inf.csv"], "--data", "infinite"),
    (["fit", "gmm", "--data", "ragged.csv"], "--data"),
    (["fit", "gmm", "--data", "binary.csv"], "--data"),
    (["fit", "gmm", "--data", "no-such-dataset"], "--data", "unknown dataset"),
    (["fit", "gmm", "--data", "old-faithful", "--data-dir", "/nonexistent"], "--data-dir"),
    (["fit", "hmm", "--emission", "poisson", "--data", "negative_counts.csv"], "--data", "non-negative"),
    (["fit", "hmm", "--emission", "poisson", "--data", "fractional_counts.csv"], "--data", "integers"),
    (["fit", "hmm", "--emission", "bernoulli", "--data", "two_bits.csv"], "--data", "0 or 1"),
    (["fit", "hmm", "--emission", "categorical", "--data", "stray_symbol.csv"], "--data", "vocabulary"),
    (["fit", "vae", "--data", "points.csv"], "--data", "[0, 1]"),
    # output locations
    (["fit", "gmm", "--out", ".", "--force"], "--out", "working folder"),
    (["fit", "gmm", "--out", "..", "--force"], "--out", "working folder"),
    (["fit", "gmm", "--out", "{box}", "--force"], "--out", "working folder"),
    (["fit", "gmm", "--out", "mydata"], "--out", "already exists"),
    (["fit", "gmm", "--out", "mydata", "--force", "--data", "mydata/points.csv"], "--out", "input"),
    (["fit", "gmm", "--out", "not_a_report", "--force"], "--out", "not a zoo report"),
    (["fit", "gmm", "--out", "notes.txt", "--force"], "--out", "not a folder"),
    (["fit", "gmm", "--out", "notes.txt/run"], "--out", "file"),
    (["fit", "gmm", "--out", "/proc/zoo-report"], "--out", "not writable"),
    (["fit", "vae", "--data", "pixels.csv", "--checkpoint", "notes.txt", "--force"], "--checkpoint",
     "not a zoo training checkpoint"),
    (["fit", "vae", "--data", "pixels.csv", "--checkpoint", "notes.txt"], "--checkpoint", "already exists"),
    (["fit", "vae", "--data", "pixels.csv", "--checkpoint", "pixels.csv", "--force"], "--checkpoint", "input"),
    (["fit", "vae", "--data", "pixels.csv", "--checkpoint", "a_folder.csv"], "--checkpoint", "folder"),
    (["fit", "vae", "--data", "pixels.csv", "--checkpoint", "absent.pt", "--resume"], "--resume"),
    (["fit", "vae", "--data", "pixels.csv", "--checkpoint", "notes.txt", "--resume"], "--checkpoint"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: " ".join(c[0][1:]))
def test_cli_mistake_exits_2_with_one_line_naming_the_flag(box, capsys, case):
    args, *needles = case
    args = [a.replace("{box}", str(box)) for a in args]
    settings = [*VAE, "--quiet"] if args[1] == "vae" else TINY
    out = [] if "--out" in args else ["--out", "r"]
    _fails_cleanly(capsys, [*args[:2], *settings, *out, *args[2:]], *needles)   # the case's flags last: they win


@pytest.mark.parametrize("args", [["fit", "gmm", "--lr", "0"], ["fit", "gmm", "--data", "nan.csv"]])
def test_console_mistake_prints_no_traceback(box, args):
    result = subprocess.run([sys.executable, "-m", "zoo", *args, *TINY], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# --- API: each mistake raises ValueError/TypeError naming the argument --------------------------------

API_CASES = [
    (lambda: zoo.get("gmm", prior_center=[[1.0, 2.0]]), ValueError, "prior_center"),
    (lambda: zoo.get("gmm", prior_spread=-1), ValueError, "prior_spread"),
    (lambda: zoo.get("gmm", prior_spread=[1.0, float("nan")]), ValueError, "prior_spread"),
    (lambda: zoo.get("gmm", prior_spread="wide"), TypeError, "prior_spread"),
    (lambda: zoo.get("gmm", concentration=float("inf")), ValueError, "concentration"),
    (lambda: zoo.get("gmm", prior_center=[1, 2, 3]).validate(torch.zeros(5, 2)), ValueError, "prior_center"),
    (lambda: zoo.get("ppca", ard="yes"), TypeError, "ard"),
    (lambda: zoo.get("ppca", n_components=1.5), TypeError, "n_components"),
    (lambda: zoo.get("hmm", emission="gamma"), ValueError, "emission"),
    (lambda: zoo.get("hmm", emission="categorical", n_symbols=10**7), ValueError, "n_symbols"),
    (lambda: zoo.get("hmm", emission="categorical").validate(torch.tensor([0.0, 1.0, 4e6])), ValueError, "data"),
    (lambda: zoo.get("vae", eval_particles=0), ValueError, "eval_particles"),
    (lambda: zoo.get("vae", init_seed="x"), TypeError, "init_seed"),
    (lambda: zoo.get("gmm").validate(torch.zeros(5, 2, dtype=torch.float16)), TypeError, "data"),
    (lambda: zoo.get("hmm").validate(torch.zeros(5, dtype=torch.bfloat16)), TypeError, "data"),
    (lambda: inference.fit_svi(zoo.get("gmm"), torch.zeros(5, 2), num_steps=0), ValueError, "num_steps"),
    (lambda: inference.fit_svi(zoo.get("gmm"), torch.zeros(5, 2), lr=-1.0), ValueError, "lr"),
    (lambda: inference.fit_svi(zoo.get("gmm"), torch.randn(5, 2), guide="laplace", num_steps=1), ValueError, "guide"),
    (lambda: datasets.load("no-such-dataset"), ValueError, "data"),
    (lambda: check_output_dir(""), TypeError, "out"),
    (lambda: check_output_dir(".", force=True), ValueError, "out"),
    (lambda: check_output_dir("not_a_report", force=True), FileExistsError, "out"),
    (lambda: check_output_file("notes.txt", force=True, name="checkpoint", is_ours=_refuse), FileExistsError,
     "checkpoint"),
]


def _refuse(path):
    raise ValueError("not ours")


@pytest.mark.parametrize("case", API_CASES, ids=range(len(API_CASES)))
def test_api_mistake_raises_naming_the_argument(box, case):
    call, kind, name = case
    with pytest.raises(kind, match=name):
        call()


@pytest.fixture(scope="module")
def posteriors():
    kw = dict(num_steps=5, num_samples=5, progress=False)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(20, 2)), dtype=torch.float32)
    return {"gmm2": inference.fit_svi(zoo.get("gmm", n_components=2), x, **kw),
            "gmm3": inference.fit_svi(zoo.get("gmm", n_components=3), x, **kw),
            "gmm2b": inference.fit_svi(zoo.get("gmm", n_components=2), x, seed=1, **kw),
            "ppca": inference.fit_svi(zoo.get("ppca", n_components=1), x, **kw)}


@pytest.mark.parametrize("call, kind, name", [
    (lambda p: inference.compare(p["gmm2"], p["gmm3"]), ValueError, "b: .*n_components"),
    (lambda p: inference.compare(p["gmm2"], p["ppca"]), ValueError, "b: .*model"),
    (lambda p: inference.compare(p["gmm2"], "nuts"), TypeError, "b"),
    (lambda p: inference.compare(None, p["gmm2"]), TypeError, "a"),
    (lambda p: inference.compare(p["gmm2"], p["gmm2b"], labels=("svi",)), ValueError, "labels"),
    (lambda p: inference.compare(p["gmm2"], p["gmm2b"], sites=["nope"]), ValueError, "sites"),
    (lambda p: write_report("r", {}), ValueError, "posteriors"),
    (lambda p: write_report("r", [p["gmm2"]]), TypeError, "posteriors"),
    (lambda p: write_report("r", {"svi": 3}), TypeError, "posteriors"),
    (lambda p: write_report("r", {"../x": p["gmm2"]}), ValueError, "posteriors"),
    (lambda p: write_report(".", {"svi": p["gmm2"]}, force=True), ValueError, "out"),
    (lambda p: write_report("not_a_report", {"svi": p["gmm2"]}, force=True), FileExistsError, "out"),
])
def test_api_mistakes_with_posteriors(box, posteriors, call, kind, name):
    with pytest.raises(kind, match=name):
        call(posteriors)


def test_compare_of_the_same_model_still_works(posteriors):
    table = inference.compare(posteriors["gmm2"], posteriors["gmm2b"], labels=("a", "b"))
    assert len(table) > 0


# --- finding 1: --force replaces only a report folder; the working folder and the data are safe -------


def test_force_replaces_a_report_folder_but_nothing_else(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "points.csv").write_text(FILES["points.csv"])
    args = ["fit", "gmm", "--method", "map", "--components", "2", "--data", "points.csv", *TINY]
    assert main([*args, "--out", "r"]) == 0
    assert (tmp_path / "r" / MARKER).is_file() and (tmp_path / "r" / "posterior_map.nc").is_file()
    (tmp_path / "r" / "summary.md").write_text("old")
    assert main([*args, "--out", "r", "--force"]) == 0           # a zoo report: replaced
    assert (tmp_path / "r" / "summary.md").read_text() != "old"
    assert main([*args, "--out", str(tmp_path), "--force"]) == 2  # the working folder: refused
    assert (tmp_path / "points.csv").read_text() == FILES["points.csv"]
    (tmp_path / "empty2").mkdir()
    assert main([*args, "--out", "empty2", "--force"]) == 0        # an empty folder may be replaced
    assert (tmp_path / "empty2" / MARKER).is_file()
    assert "Traceback" not in capsys.readouterr().err


# --- finding 2: every HMM emission writes a full report, through the API and the CLI ------------------


@pytest.mark.parametrize("emission, csv", [("poisson", "counts.csv"), ("categorical", "symbols.csv")])
def test_count_and_symbol_hmms_write_full_reports(tmp_path, monkeypatch, capsys, emission, csv):
    import arviz as az

    monkeypatch.chdir(tmp_path)
    (tmp_path / csv).write_text(FILES[csv])
    m = zoo.get("hmm", n_states=2, emission=emission)
    post = inference.fit_svi(m, datasets.load(csv).data, num_steps=5, num_samples=5, progress=False)
    assert post.idata.log_likelihood["obs"].shape[-1] == 1
    assert main(["fit", "hmm", "--emission", emission, "--data", csv, "--out", "r", *TINY]) == 0
    idata = az.from_netcdf(tmp_path / "r" / "posterior_svi.nc")
    assert idata.posterior_predictive["obs"].dims == ("chain", "draw", "sequence", "time")
    assert idata.posterior_predictive["obs"].shape == (1, 5, 1, 40)
    assert idata.log_likelihood["obs"].dims == ("chain", "draw", "sequence")


# --- finding 3: two runs on one --out: the second fails cleanly, the first's folder untouched ---------


def test_a_folder_created_meanwhile_is_left_alone(box, posteriors, monkeypatch):
    import inference.reporting.report as report

    real = report._write

    def other_run_finishes_first(folder, *args):
        real(folder, *args)
        (box / "r").mkdir()
        (box / "r" / "theirs.txt").write_text("the other run's report")

    monkeypatch.setattr(report, "_write", other_run_finishes_first)
    with pytest.raises(FileExistsError, match="another run"):
        write_report(box / "r", {"svi": posteriors["gmm2"]})
    assert [p.name for p in (box / "r").iterdir()] == ["theirs.txt"]
    assert [p.name for p in box.iterdir() if p.name.startswith(".r")] == []
    (box / "r" / "theirs.txt").unlink()   # the fixture checks the rest of the folder is as it was
    (box / "r").rmdir()


def test_two_cli_runs_on_one_out(box, capsys, monkeypatch):
    import inference.reporting.report as report

    real, raced = report._write, []

    def racing(folder, *args):
        real(folder, *args)
        if not raced:
            raced.append(True)
            assert main(["fit", "gmm", "--method", "map", "--data", "points.csv", "--out", "r", *TINY]) == 0

    monkeypatch.setattr(report, "_write", racing)
    line = _fails_cleanly(capsys, ["fit", "gmm", "--method", "map", "--data", "points.csv", "--out", "r", *TINY],
                          "--out", "another run")
    assert "was not written" in line
    assert (box / "r" / MARKER).is_file()
    import shutil

    shutil.rmtree(box / "r")


# --- finding 4: errors keep their cause -----------------------------------------------------------------


class UserBug(ValueError):
    pass


def test_a_models_own_error_propagates_unchanged():
    calls = [0]

    def model(data):
        calls[0] += 1
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        if calls[0] > 6:
            raise UserBug("my model broke")
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data)

    pyro.clear_param_store()
    with pytest.raises(UserBug, match="my model broke") as err:
        inference.fit_svi(model, torch.zeros(3), num_steps=20, progress=False)
    assert not isinstance(err.value, inference.SVIDivergedError)
    assert any(frame.name == "model" for frame in __import__("traceback").extract_tb(err.value.__traceback__))


def test_nan_at_step_zero_is_the_same_divergence_error():
    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data)

    def guide(data):
        loc = pyro.param("step0_loc", torch.tensor(-1.0))
        pyro.sample("z", dist.Normal(loc, loc.sqrt()))       # NaN scale from the start

    pyro.clear_param_store()
    with pytest.raises(inference.SVIDivergedError, match="step 0") as err:
        inference.fit_svi(model, torch.zeros(3), guide=guide, num_steps=5, progress=False)
    assert err.value.step == 0 and isinstance(err.value.__cause__, ValueError)
    assert torch.equal(err.value.params["step0_loc"].detach(), torch.tensor(-1.0))
    pyro.clear_param_store()


@pytest.mark.parametrize("guide", ["normal", "mvn", "delta"])
def test_divergence_carries_the_restored_autoguide(guide):
    def model(data):   # the data pull z down without end: the scale underflows to 0, the loss to -inf
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(0.0, torch.exp(30 * z)), obs=data)

    pyro.clear_param_store()
    with pytest.raises(inference.SVIDivergedError) as err:
        inference.fit_svi(model, torch.zeros(5), guide=guide, num_steps=500, lr=0.5, lr_decay=1.0,
                          clip_norm=None, progress=False)
    e = err.value
    assert e.step > 0 and callable(e.guide) and e.params
    assert all(bool(torch.isfinite(p).all()) for p in e.params.values())
    assert set(e.params.values()) == set(e.guide.parameters())


# --- finding 5: no silent surprises ---------------------------------------------------------------


def test_numeric_first_row_is_read_as_data(box, caplog):
    (box / "noheader.csv").write_text("1.0,2.0\n3.0,4.0\n5.0,6.0\n")
    with caplog.at_level(logging.WARNING):
        ds = datasets.load(box / "noheader.csv")
    assert ds.data.shape == (3, 2) and float(ds.data[0, 0]) == 1.0
    assert "read as data" in caplog.text
    (box / "noheader.csv").unlink()


def test_flag_not_used_by_the_method_warns(box, capsys):
    code = main(["fit", "ppca", "--method", "em", "--guide", "mvn", "--chains", "2", "--out", "r", "--quiet"])
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: --guide is not used" in err and "warning: --chains is not used" in err
    import shutil

    shutil.rmtree(box / "r")


# --- finding 6: limits ------------------------------------------------------------------------------


def test_vocabulary_larger_than_the_data_warns(caplog):
    m = zoo.get("hmm", emission="categorical")
    with caplog.at_level(logging.WARNING, logger="zoo.hmm"):
        m.validate(torch.tensor([0.0, 1.0, 500.0]))
    assert "vocabulary of 501 symbols" in caplog.text


def test_cuda_on_a_cpu_machine(box, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails_cleanly(capsys, ["fit", "vae", "--device", "cuda", "--out", "r", "--quiet", *VAE], "--device", "no CUDA")


# --- finding 7: a newcomer's first screen -------------------------------------------------------------


def test_pyproject_license_is_an_spdx_string():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert any(r.replace(" ", "").startswith("setuptools>=") and int(r.split(">=")[1].split(".")[0]) >= 77
               for r in meta["build-system"]["requires"])


def test_first_run_prints_no_warnings(tmp_path):
    """A fresh user cache (ArviZ warns once a day) and a quick fit: stderr stays empty."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONWARNINGS": ""}
    result = subprocess.run([sys.executable, "-m", "zoo", "fit", "hmm", "--states", "1", "--out", str(tmp_path / "r"),
                             *TINY], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_diagnose_of_a_constant_quantity_is_quiet():
    """A quantity that never varies (the one-state HMM's initial probability) made ArviZ divide 0 by 0."""
    from inference.posterior import Posterior
    from inference.target import Target

    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(loc, 1.0).expand([len(data)]).to_event(1), obs=data)

    post = Posterior(Target(model), torch.zeros(4), {"loc": torch.ones(1, 400)}, method="svi", wall_time=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference.diagnose(post).summary.loc["loc", "sd"] == 0


# --- finding 8: Ctrl-C: exit 130 and nothing written, at every phase -------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["zoo.cli.build_parser", "zoo.datasets.load", "inference.fit_svi",
                                   "inference.diagnose", "inference.reporting.report.summary_blocks"])
def test_ctrl_c_at_every_phase(box, capsys, monkeypatch, where):
    monkeypatch.setattr(where, _interrupt)
    assert main(["fit", "gmm", "--data", "points.csv", "--out", "r", *TINY]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


@pytest.fixture
def sigint_reaches_children():
    """Child processes start with SIGINT at its default: when the tests run in a shell's background job,
    SIGINT is ignored here and a child would inherit that (a handler, unlike an ignore, is reset by exec)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


#: moments (s after the start) at which a probe sends SIGINT to a real `zoo fit gmm`: the interpreter's
#: start-up, the imports (argparse, torch, Pyro, ArviZ, the models: about 3 s on a quiet 2-core machine),
#: data and model, the fit tracing and compiling its loss (on a loaded machine the late probes land in the
#: imports). A Ctrl-C in an import is answered when that import has finished (zoo/__main__.py).
CTRL_C_DELAYS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.55, 0.7, 0.9, 1.2, 1.6, 2.0, 2.6, 3.5, 5.0, 8.0)
ONE_LINE = "zoo: interrupted; nothing was written\n"


def _console_script(folder: Path) -> Path:
    """The `zoo` console script as pip writes it for pyproject's ``[project.scripts]`` entry."""
    module, function = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["zoo"].split(":")
    script = folder / "zoo"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nif __name__ == '__main__':\n"
                      f"    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n    sys.exit({function}())\n")
    return script


def _before_the_project(returncode: int, err: str) -> bool:
    """True when the signal landed in CPython's own start-up, before the first line of the project could
    run (interpreter set-up, ``site``, runpy finding the module, compiling the package ``zoo``): CPython
    answers there ("Fatal Python error", or a KeyboardInterrupt whose traceback holds no frame of the
    project's files, or a death by the signal before Python handles it), and nothing can change that."""
    frames = [line.split('"')[1] for line in err.splitlines() if line.strip().startswith('File "')]
    return ("Fatal Python error" in err or err == "" and returncode == -signal.SIGINT
            or err.rstrip().endswith("KeyboardInterrupt") and not any(f.startswith(str(REPO)) for f in frames))


def test_the_install_runs_no_code_at_start_up():
    """The editable install's ``.pth`` file names the project's folder (pyproject's ``package-dir``) instead of
    importing a finder: code that ``site`` runs at start-up can drop a Ctrl-C. The finder imports pathlib,
    hence ipaddress's cached_property; Python 3.11 wraps a KeyboardInterrupt raised in ``__set_name__`` in a
    RuntimeError, which ``site`` prints ("Remainder of file ignored") and ignores, and the run went on to
    the end (seen once in CI, the probe at 0.05 s below)."""
    import sysconfig

    pth = sorted(Path(sysconfig.get_paths()["purelib"]).glob("__editable__.latent_zoo-*.pth"))
    if not pth:
        pytest.skip("latent-zoo is not installed in editable mode here")
    for f in pth:
        lines = f.read_text().split("\n")
        assert not any(line.startswith(("import ", "import\t")) for line in lines), (f, lines)


def _ctrl_c(command: list[str], delay: float, folder: Path) -> tuple[float, int, str, list[str]]:
    folder.mkdir()
    proc = subprocess.Popen([*command, "fit", "gmm", "--steps", "200000", "--quiet", "--out", str(folder / "r")],
                            cwd=folder, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
        code = proc.returncode
    except subprocess.TimeoutExpired:   # say which: the process went on, or something it started holds stderr
        code, err = None, f"no end 120 s after SIGINT (process {'running' if proc.poll() is None else 'exited'})"
    finally:
        proc.kill()   # nothing once it has exited; a probe that ignored the signal does not outlive the test
        proc.wait()
    return delay, code, err, sorted(p.name for p in folder.iterdir())


def test_ctrl_c_in_a_real_process(tmp_path, sigint_reaches_children):
    """SIGINT at 16 moments after `python -m zoo fit gmm ...` or the `zoo` console script starts (alternately;
    four probes at a time): exit 130, exactly one line on stderr, no output folder. A probe that lands in
    CPython's start-up, before the project's first line (:func:`_before_the_project`), is allowed in the
    first half second only; on a loaded machine that can be the first few probes (up to 5 of the 7 seen)."""
    from concurrent.futures import ThreadPoolExecutor

    commands = [[sys.executable, "-m", "zoo"], [sys.executable, str(_console_script(tmp_path))]]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: _ctrl_c(commands[i % 2], CTRL_C_DELAYS[i], tmp_path / f"probe{i}"),
                                range(len(CTRL_C_DELAYS))))
    wrong = [(delay, code, err[-600:], left) for delay, code, err, left in results
             if not (code == 130 and err == ONE_LINE and left == [])
             and not (delay < 0.5 and _before_the_project(code, err) and left == [])]
    assert not wrong, wrong   # so every probe from 0.5 s on (9 of 16) reached the project and exited 130


#: a Ctrl-C landing where Python does not simply propagate it (``os.kill`` stands in for the user)
INTERRUPT = "os.kill(os.getpid(), signal.SIGINT)"
LANDINGS = {
    # CPython records a KeyboardInterrupt leaving exec/eval of source text as unhandled (below); imports
    # run such text all the time (dataclasses, namedtuple)
    "exec of source text": f"exec('{INTERRUPT}\\nwhile True: pass')",
    # Python prints and drops an exception raised in a finalizer ("Exception ignored in ...")
    "finalizer": f"class Dropped:\n    def __del__(self):\n        {INTERRUPT}\n        for _ in range(10**6): pass\n"
                 "Dropped()\nwhile True: pass",
    # Python 3.11 wraps an exception raised in __set_name__ (cached_property does it) in a RuntimeError
    "__set_name__": f"class Named:\n    def __set_name__(self, owner, name):\n        {INTERRUPT}\n"
                    "        for _ in range(10**6): pass\nclass Owner:\n    x = Named()\nwhile True: pass",
    # raised inside a module's set-up, the exception broke compiled extensions (a crash at exit, or a lost
    # Ctrl-C): the zoo waits for the import to finish (the module writes `imported` on its last line)
    "import": "import landing_module\nwhile True: pass",
}
LANDING_MODULE = f"import os, signal\n{INTERRUPT}\nfor _ in range(10**6): pass\nopen('imported', 'w').close()\n"


def _run_zoo_with(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """``python -m`` of a module that runs the zoo's process entry with ``body`` in place of the command."""
    import textwrap

    (tmp_path / "landing_module.py").write_text(LANDING_MODULE)
    (tmp_path / "probe_landing.py").write_text(
        "import os, signal, sys\nimport zoo.cli\nfrom zoo.__main__ import main\n\n"
        f"def run(argv, parsed):\n{textwrap.indent(body, '    ')}\n\nzoo.cli._run = run\nsys.exit(main([]))\n")
    return subprocess.run([sys.executable, "-m", "probe_landing"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}, timeout=120)


@pytest.mark.parametrize("landing", list(LANDINGS))
def test_ctrl_c_where_python_drops_or_wraps_it(tmp_path, landing, sigint_reaches_children):
    """Four ways a Ctrl-C in a real start-up did not end in 130 and one line, made deterministic: the zoo
    process answers each with 130, one line."""
    result = _run_zoo_with(tmp_path, LANDINGS[landing])
    assert (result.returncode, result.stderr) == (130, ONE_LINE)
    assert (tmp_path / "imported").exists() == (landing == "import")


def test_a_process_started_with_sigint_ignored_keeps_ignoring_it(tmp_path):
    """As a shell's background job: the zoo does not take SIGINT back (Python's own rule)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)   # inherited by the child
    try:
        result = _run_zoo_with(tmp_path, f"{INTERRUPT}\nimport time\ntime.sleep(0.2)\nreturn 7")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (result.returncode, result.stderr) == (7, "")


def test_cpython_kills_python_m_after_a_ctrl_c_handled_in_exec(tmp_path, sigint_reaches_children):
    """The cause of `python -m zoo` dying by SIGINT (returncode -2) after printing its one line: CPython
    (3.11-3.14) records a KeyboardInterrupt that leaves an ``exec`` of source text as unhandled even when an
    outer ``try`` handles it, and ``python -m`` kills itself with SIGINT on the way out. When this test
    fails, CPython changed and ``zoo.__main__.Interrupted`` (a subclass, which CPython does not record)
    may go."""
    (tmp_path / "plain_exec.py").write_text(
        f"import os, signal, sys\ntry:\n    {LANDINGS['exec of source text']}\nexcept KeyboardInterrupt:\n"
        "    sys.exit(130)\n")
    result = subprocess.run([sys.executable, "-m", "plain_exec"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert result.returncode == -signal.SIGINT, (result.returncode, result.stderr)
