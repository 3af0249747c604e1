"""``zoo report``: report.html of a finished run folder, or of a new ``zoo compare``."""

from __future__ import annotations

import os

from zoo.cli.fit import cmd_compare
from zoo.cli.fitting import check_args, fit_kwargs
from zoo.cli.sbc import read_sbc, sbc_runner


def cmd_report(args) -> int:
    """report.html for a finished run folder (--from DIR), or `zoo compare` with the same flags (its
    folder gets report.html like every report folder); with simulation-based calibration run here
    (--sbc N) or read from a `zoo sbc` folder (--sbc-from DIR)."""
    from pathlib import Path

    from inference.reporting.html import read_posteriors, sbc_items, write_html

    if args.sbc is not None and args.sbc_from is not None:
        raise ValueError("--sbc/--sbc-from: give one: run the calibration here, or include one run by `zoo sbc`")
    calibration = read_sbc(args) if args.sbc_from is not None else None
    if args.source is None:
        if args.sbc is not None:
            check_args(args)
            run = sbc_runner(args, args.sbc, "nuts", {**fit_kwargs(args, "nuts"), "num_chains": 1}, "--sbc:")
        else:
            run = (lambda: calibration) if calibration is not None else None
        code = cmd_compare(args, sbc=run)
        out = Path(args.out or os.path.join("runs", f"{args.model}-report"))
        if args.plots:
            write_html(out, plots=args.plots)
        print(f"open {out / 'report.html'}")
        return code
    if args.sbc is not None:
        raise ValueError("--sbc: runs the calibration for a new report; with --from, run `zoo sbc MODEL` and pass "
                         "--sbc-from DIR")
    folder = Path(args.source)
    if not folder.is_dir():
        raise FileNotFoundError(f"--from: {str(folder)!r} is not a folder")
    if not (folder / "summary.md").is_file() or not list(folder.glob("posterior_*.nc")):
        raise ValueError(f"--from: {str(folder)!r} is not a zoo run folder (expected posterior_<method>.nc and "
                         "summary.md, written by zoo fit, compare or select)")
    try:
        posteriors = read_posteriors(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--from: cannot read the netCDF files of {str(folder)!r}: {e}") from None
    models = {str(p.posterior.attrs.get("model")) for p in posteriors.values()}
    if models != {args.model}:
        raise ValueError(f"model: the run in {str(folder)!r} is of model {', '.join(sorted(models))}, not {args.model!r}")
    out = Path(args.out) if args.out else folder
    if not out.is_dir():
        raise FileNotFoundError(f"--out: {str(out)!r} is not a folder")
    if (out / "report.html").exists() and not args.force:
        raise FileExistsError(f"--out: {str(out / 'report.html')!r} already exists; pass --force to rebuild it")
    elsewhere = calibration is not None and Path(args.sbc_from).resolve() != folder.resolve()
    pieces = {"sbc": sbc_items(args.sbc_from)} if elsewhere else None
    path = write_html(folder, posteriors, plots=args.plots or ("trace", "rank", "energy", "pair"),
                      path=out / "report.html", pieces=pieces)
    print(f"report written to {path}")
    return 0
