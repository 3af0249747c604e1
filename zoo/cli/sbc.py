"""``zoo sbc``: simulation-based calibration, run here (also for ``zoo report --sbc N``) or read back from a
folder that ``zoo sbc`` wrote (``zoo report --sbc-from DIR``)."""

from __future__ import annotations

from zoo.cli.fitting import check_args, fit_kwargs, output_folder
from zoo.cli.settings import model_config, model_config_keys


def cmd_sbc(args) -> int:
    """Simulation-based calibration: sbc.nc, sbc.csv and sbc.png in --out (default runs/MODEL-sbc)."""
    check_args(args)
    out, _ = output_folder(args)
    result = sbc_runner(args, args.simulations, args.method, fit_kwargs(args, args.method), f"{args.model}:")()
    print(result.table().round(4).to_string())
    print()
    print(result)
    path = result.write(out, force=args.force)
    print(f"\nSBC written to {path}/ (sbc.nc, sbc.csv, sbc.png)")
    return 0


def sbc_runner(args, simulations: int, method: str, fit: dict, model_flag: str):
    """Check the SBC inputs now (before other long work) and return a function that runs it. Errors name
    the CLI flags (``model_flag`` for a model SBC cannot calibrate), not the Python arguments."""
    import zoo
    from inference.checks.sbc import check_inputs, sbc

    flags = {"num_simulations:": "--simulations:" if args.command == "sbc" else "--sbc:",
             "num_observations:": "--observations:", "n_jobs:": "--jobs:", "model:": model_flag}
    kw = dict(num_simulations=simulations, num_observations=args.observations, method=method, fit_kwargs=fit,
              seed=args.seed, n_jobs=args.jobs)

    def named(call):
        try:
            return call()
        except ValueError as e:
            text = str(e)
            priors = sorted(k for k in model_config_keys(args) if "prior" in k)
            if "depends on the data" in text and priors:
                text += f" (e.g. {' '.join(f'--option {k}=VALUE' for k in priors)})"
            raise ValueError(next((f + text[len(a):] for a, f in flags.items() if text.startswith(a)), text)) from None

    model = zoo.get(args.model, **model_config(args))
    named(lambda: check_inputs(model, **kw))
    return lambda: named(lambda: sbc(model, progress=not args.quiet, **kw))


def read_sbc(args):
    """The SBCResult in the folder --sbc-from (written by `zoo sbc`), checked to be of the model reported on."""
    from pathlib import Path

    from inference import SBCResult

    path = Path(args.sbc_from) / "sbc.nc"
    if not path.is_file():
        raise ValueError(f"--sbc-from: {args.sbc_from!r} holds no sbc.nc (expected a folder written by zoo sbc)")
    try:
        result = SBCResult.from_netcdf(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"--sbc-from: cannot read {str(path)!r} as an SBC result: {str(e).splitlines()[0]}") from None
    if result.model != args.model:
        raise ValueError(f"--sbc-from: the calibration in {args.sbc_from!r} is of model {result.model!r}, "
                         f"not {args.model!r}")
    return result
