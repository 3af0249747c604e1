"""The `zoo` command: listing, a tiny compare run writing every promised file, and user mistakes."""

import subprocess
import sys

import pytest

from zoo.cli import main

TINY = ["--steps", "60", "--samples", "40", "--warmup", "40", "--chains", "2", "--quiet"]
REPORT = {"posterior_svi.nc", "posterior_nuts.nc", "comparison.csv", "diagnostics.csv", "summary.md", "summary.html",
          "trace.png", "rank.png", "forest.png", "density.png", "clusters.png", "loss.png"}


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gmm" in out and "iris-petals" in out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "zoo", "list"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "gmm" in result.stdout


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "report"
    code = main(["compare", "gmm", "--out", str(out), *TINY])
    return code, out


def test_compare_writes_every_file(compared, capsys):
    code, out = compared
    assert code == 0
    assert REPORT <= {p.name for p in out.iterdir()}
    summary = (out / "summary.md").read_text()
    assert "SVI vs NUTS" in summary and "PSIS-LOO" in summary
    assert "<img src=\"clusters.png\"" in (out / "summary.html").read_text()
    assert not list(out.parent.glob(".report.partial-*"))


def test_overwrite_is_refused_then_forced(compared, capsys):
    _, out = compared
    before = (out / "summary.md").stat().st_mtime_ns
    assert main(["compare", "gmm", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "Traceback" not in err
    assert (out / "summary.md").stat().st_mtime_ns == before
    assert main(["fit", "gmm", "--method", "map", "--out", str(out), "--force", *TINY]) == 0
    assert {p.name for p in out.iterdir()} >= {"posterior_map.nc", "summary.md", "clusters.png"}
    assert not (out / "posterior_nuts.nc").exists()


@pytest.mark.parametrize("args, message", [
    (["compare", "nope"], "unknown model 'nope'"),
    (["fit", "gmm", "--data", "missing.csv"], "does not exist"),
    (["fit", "gmm", "--components", "500"], "exceed the number of data points"),
    (["fit", "gmm", "--components", "0"], "n_components"),
    (["fit", "gmm", "--option", "bogus=1"], "unknown configuration 'bogus'"),
    (["fit", "gmm", "--method", "em"], "no EM baseline"),
    (["fit", "gmm", "--data", "old-faithful", "--data-dir", "/nonexistent"], "does not contain"),
])
def test_user_mistakes_exit_nonzero_with_one_line(tmp_path, capsys, args, message):
    assert main([*args, "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_bad_csv_content(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1.0,2.0\nnan,3.0\n4.0,5.0\n")
    assert main(["fit", "gmm", "--components", "2", "--data", str(bad), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "NaN" in capsys.readouterr().err
    text = tmp_path / "text.csv"
    text.write_text("x,label\n1.0,a\n2.0,b\n")
    assert main(["fit", "gmm", "--data", str(text), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "non-numeric" in capsys.readouterr().err


def test_model_flags_come_from_the_models_constructors(capsys, monkeypatch):
    """Every simple setting of a model's __init__ is a flag (n_ dropped), with its :param text as help; a
    model registered at run time gets its own, and its values reach the model through model_config."""
    import zoo
    import zoo.gmm
    from zoo.cli import build_parser, model_config

    class Widgets(zoo.gmm.GaussianMixture):
        """A mixture with widgets.

        :param n_widgets: how many widgets W (>= 1).
        """

        def __init__(self, n_components: int = 2, *, n_widgets: int = 3, shiny: bool = False):
            super().__init__(n_components)
            self.n_widgets, self.shiny = n_widgets, shiny

    monkeypatch.setitem(zoo._REGISTERED, "widgets", Widgets)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--components", "--states", "--emission", "--latent-dim", "--hidden", "--likelihood", "--widgets",
                 "--shiny, --no-shiny", "--option KEY=VALUE"):
        assert flag in text, flag
    assert "how many widgets W (>= 1). (widgets)" in text and "(gmm, ppca, widgets)" in text
    args = build_parser().parse_args(["fit", "widgets", "--widgets", "5", "--no-shiny", "--components", "3"])
    assert model_config(args) == {"n_components": 3, "n_widgets": 5, "shiny": False}
    assert zoo.get("widgets", **model_config(args)).n_widgets == 5


def test_importing_the_cli_loads_nothing_heavy():
    """zoo/__main__.py imports zoo.cli once Ctrl-C is answered; torch, Pyro, ArviZ, matplotlib and inference
    load inside the commands (a Ctrl-C in the middle of their set-up is the hard case, zoo/__main__.py)."""
    heavy = ("torch", "pyro", "numpy", "pandas", "matplotlib", "arviz", "inference")
    code = f"import sys, zoo.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


@pytest.mark.parametrize("method, engine", [("svi", "fit_svi"), ("map", "fit_svi"), ("nuts", "run_nuts"),
                                            ("gibbs", "run_gibbs")])
def test_one_mapping_from_flags_to_each_fit(monkeypatch, method, engine):
    """zoo.cli.fitting.fit calls the method's inference function with keywords its signature accepts, each
    set from its flag (checked by binding them to the real function's signature)."""
    import inspect

    import inference
    from zoo.cli import build_parser
    from zoo.cli.fitting import check_args, fit

    calls = []

    def record(real):
        return lambda *a, **kw: calls.append((real.__name__, inspect.signature(real).bind(*a, **kw).arguments))

    for name in ("fit_svi", "run_nuts", "run_gibbs"):
        monkeypatch.setattr(inference, name, record(getattr(inference, name)))
    args = build_parser().parse_args(["compare", "gmm", "--steps", "7", "--lr", "0.2", "--guide", "normal",
                                      "--samples", "11", "--warmup", "5", "--chains", "3", "--particles", "2",
                                      "--seed", "4", "--quiet"])
    check_args(args)
    fit(args, method, "MODEL", "DATA", {"feature": ["a"]})
    (name, bound), = calls
    common = {"model": "MODEL", "data": "DATA", "seed": 4, "coords": {"feature": ["a"]}, "progress": False,
              "num_samples": 11}
    own = {"fit_svi": {"num_steps": 7, "lr": 0.2, "num_particles": 2, "guide": "delta" if method == "map" else "normal"},
           "run_nuts": {"warmup_steps": 5, "num_chains": 3}}
    assert (name, bound) == (engine, {**common, **own.get(engine, own["run_nuts"])})
