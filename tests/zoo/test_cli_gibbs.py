"""`zoo compare --methods`: Gibbs beside NUTS (and SVI), and the mistakes it refuses in one line."""

import pytest

from zoo.cli import main

TINY = ["--steps", "60", "--samples", "40", "--warmup", "40", "--chains", "2", "--quiet"]


def test_compare_with_gibbs_writes_its_column_and_posterior(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", "gmm", "--methods", "nuts,gibbs", "--out", str(out), *TINY[2:]]) == 0
    printed = capsys.readouterr().out
    assert "GIBBS (" in printed and "mean_gibbs" in printed and "mean_svi" not in printed   # gibbs vs nuts: one pair
    assert {"posterior_nuts.nc", "posterior_gibbs.nc", "comparison.csv"} <= {p.name for p in out.iterdir()}


@pytest.mark.parametrize("args, message", [
    (["compare", "gmm", "--methods", "svi,gibbs"], "--methods: expected nuts and one or two of svi, gibbs"),
    (["compare", "gmm", "--methods", "nuts"], "--methods: expected nuts and one or two"),
    (["compare", "ppca", "--methods", "nuts,gibbs"], "--methods: gibbs needs a model with conditionals in closed form"),
])
def test_bad_methods_are_one_line_errors(args, message, tmp_path, capsys):
    try:
        code = main([*args, "--out", str(tmp_path / "x"), *TINY])
    except SystemExit as e:   # argparse's own exit, after its one line
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
