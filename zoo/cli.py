"""The ``zoo`` command: parse, call inference, write outputs. No maths here.

    zoo list
    zoo fit MODEL --method svi|nuts|map|em [--data NAME|PATH.csv] [--out DIR] ...
    zoo compare MODEL [--data ...] [--out DIR] ...      # SVI vs NUTS on the same model and data

User mistakes exit with status 2 and a one-line message; no traceback.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import time

#: CLI flag -> model configuration keyword (only flags the user gives are forwarded)
CONFIG_FLAGS = {"components": "n_components", "states": "n_states", "emission": "emission"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Latent Zoo: fit and compare latent-variable models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models and datasets")

    def common(p):
        p.add_argument("model", help="model name (see `zoo list`)")
        p.add_argument("--data", help="dataset name or path to a CSV of numeric columns (default: the model's bundled default)")
        p.add_argument("--data-dir", help="folder with real datasets (default: $ZOO_DATA_DIR)")
        p.add_argument("--out", help="report folder (default: runs/<model>-<command>)")
        p.add_argument("--force", action="store_true", help="replace an existing report folder")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--steps", type=int, default=3000, help="SVI steps")
        p.add_argument("--lr", type=float, default=0.02, help="SVI learning rate (Adam)")
        p.add_argument("--guide", default=None, help="SVI guide: model (default), normal, mvn, iaf")
        p.add_argument("--samples", type=int, default=1000, help="posterior draws (per chain for NUTS)")
        p.add_argument("--warmup", type=int, default=500, help="NUTS warmup steps per chain")
        p.add_argument("--chains", type=int, default=4, help="NUTS chains")
        p.add_argument("--components", type=int, help="number of mixture / latent components")
        p.add_argument("--states", type=int, help="number of hidden states (hmm)")
        p.add_argument("--emission", help="emission family (hmm): gaussian, categorical, poisson, bernoulli")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model configuration, e.g. --option concentration=2.0")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")

    fit = sub.add_parser("fit", help="fit one model with one method and write a report")
    common(fit)
    fit.add_argument("--method", default="svi", choices=["svi", "nuts", "map", "em"])
    compare = sub.add_parser("compare", help="fit by SVI and by NUTS, compare, diagnose, report")
    common(compare)
    return parser


def model_config(args) -> dict:
    config = {key: getattr(args, flag) for flag, key in CONFIG_FLAGS.items() if getattr(args, flag, None) is not None}
    for item in args.option:
        if "=" not in item:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            config[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            config[key.strip()] = value
    return config


def cmd_list(args) -> int:
    import zoo
    from zoo import datasets

    print("models:")
    for name in zoo.list_models():
        cls = zoo.model_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:10s} {doc}  [default data: {cls.default_dataset}]")
    print("datasets:")
    for name, desc in datasets.list_datasets().items():
        print(f"  {name:16s} {desc}")
    print("  PATH.csv         any CSV file of numeric columns")
    return 0


def _setup(args):
    import zoo
    from inference.report import check_output_dir
    from zoo import datasets

    model = zoo.get(args.model, **model_config(args))
    out = check_output_dir(args.out or os.path.join("runs", f"{args.model}-{args.command}"), args.force)
    dataset = datasets.load(args.data or model.default_dataset, data_dir=args.data_dir)
    data = model.validate(dataset.data)
    coords = {"feature": dataset.feature_names} if dataset.feature_names else {}
    return model, out, dataset, data, coords


def _svi_guide(args):
    return None if args.guide in (None, "model") else args.guide


def cmd_fit(args) -> int:
    import inference
    from inference.posterior import Posterior

    model, out, dataset, data, coords = _setup(args)
    progress = not args.quiet
    if args.method == "nuts":
        post = inference.run_nuts(model, data, num_samples=args.samples, warmup_steps=args.warmup,
                                  num_chains=args.chains, seed=args.seed, coords=coords, progress=progress)
    elif args.method in ("svi", "map"):
        guide = "delta" if args.method == "map" else _svi_guide(args)
        post = inference.fit_svi(model, data, guide=guide, num_steps=args.steps, lr=args.lr, seed=args.seed,
                                 num_samples=args.samples, coords=coords, progress=progress)
    else:
        if not callable(getattr(model, "em", None)):
            raise ValueError(f"--method: model {args.model!r} has no EM baseline; use svi, nuts or map")
        start = time.perf_counter()
        params = model.em(data, seed=args.seed)
        post = Posterior.point(model, data, params, method="em", wall_time=time.perf_counter() - start,
                               coords=coords)
    diagnosis = inference.diagnose(post)
    print(diagnosis.summary.round(4).to_string())
    print()
    print(diagnosis)
    heldout = _heldout(model, post, dataset)
    if heldout is not None:
        print(f"\nheld-out log predictive density ({args.method}):")
        print(heldout.round(4).to_string())
    path = inference.write_report(out, {args.method: post}, dataset=dataset, diagnoses={args.method: diagnosis},
                                  title=f"zoo fit {args.model} --method {args.method}", force=args.force,
                                  heldout=heldout)
    print(f"\nreport written to {path}/")
    return 0


def _heldout(model, post, dataset):
    """Log predictive density of every further split the dataset ships (e.g. valid, test), in total and
    per observation (per time step for sequences); None when there is none."""
    import pandas as pd

    rows = {}
    for split, values in dataset.splits.items():
        data = model.validate(values)
        lpd = post.predictive_log_density(data)
        n_obs = model.num_observations(data)
        rows[split] = {"points": len(lpd), "observations": n_obs, "lpd": float(lpd.sum()),
                       "nll_per_observation": -float(lpd.sum()) / n_obs}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("split") if rows else None


def cmd_compare(args) -> int:
    import inference
    from inference.compare import summary_line

    model, out, dataset, data, coords = _setup(args)
    progress = not args.quiet
    svi = inference.fit_svi(model, data, guide=_svi_guide(args), num_steps=args.steps, lr=args.lr,
                            seed=args.seed, num_samples=args.samples, coords=coords, progress=progress)
    nuts = inference.run_nuts(model, data, num_samples=args.samples, warmup_steps=args.warmup,
                              num_chains=args.chains, seed=args.seed, coords=coords, progress=progress)
    table = inference.compare(svi, nuts)
    diagnoses = {"svi": inference.diagnose(svi), "nuts": inference.diagnose(nuts)}
    cols = ["mean_svi", "sd_svi", "mean_nuts", "sd_nuts", "smd", "sd_ratio", "verdict"]
    print(f"{args.model} on {dataset.name}: SVI ({svi.wall_time:.1f}s) vs NUTS ({nuts.wall_time:.1f}s)\n")
    print(table[cols].round(3).to_string())
    print()
    print(summary_line(table))
    print()
    for d in diagnoses.values():
        print(d)
    path = inference.write_report(out, {"svi": svi, "nuts": nuts}, dataset=dataset, comparison=table,
                                  diagnoses=diagnoses, title=f"zoo compare {args.model} ({dataset.name})",
                                  force=args.force)
    print(f"\nreport written to {path}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    commands = {"list": cmd_list, "fit": cmd_fit, "compare": cmd_compare}
    from inference.svi import SVIDivergedError

    try:
        return commands[args.command](args)
    except SVIDivergedError as e:
        if args.verbose:
            raise
        print(f"zoo: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"zoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted; no report was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
