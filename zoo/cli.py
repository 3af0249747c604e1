"""The ``zoo`` command: parse, call inference, write outputs. No maths here.

    zoo list
    zoo fit MODEL --method svi|nuts|map|em [--data NAME|PATH.csv] [--out DIR] ...
    zoo compare MODEL [--data ...] [--out DIR] ...      # SVI vs NUTS on the same model and data
    zoo check MODEL [--data ...]                         # what is wrong with the model/guide pair

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
CONFIG_FLAGS = {"components": "n_components", "states": "n_states", "emission": "emission",
                "latent_dim": "latent_dim", "hidden": "hidden", "likelihood": "likelihood"}


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
        p.add_argument("--lr", type=float, default=None,
                       help="learning rate of Adam (default 0.02 for SVI, 1e-3 for minibatch training)")
        p.add_argument("--guide", default=None, help="SVI guide: model (default), normal, mvn, iaf")
        p.add_argument("--samples", type=int, default=1000, help="posterior draws (per chain for NUTS)")
        p.add_argument("--warmup", type=int, default=500, help="NUTS warmup steps per chain")
        p.add_argument("--chains", type=int, default=4, help="NUTS chains")
        p.add_argument("--components", type=int, help="number of mixture / latent components")
        p.add_argument("--states", type=int, help="number of hidden states (hmm)")
        p.add_argument("--emission", help="emission family (hmm): gaussian, categorical, poisson, bernoulli")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model configuration, e.g. --option concentration=2.0")
        p.add_argument("--latent-dim", type=int, help="latent dimension (VAE)")
        p.add_argument("--hidden", type=_sizes, help="hidden layer sizes, e.g. 200,200 (VAE)")
        p.add_argument("--likelihood", help="observation model, e.g. bernoulli or gaussian (VAE)")
        t = p.add_argument_group("minibatch training (models whose latents are all local, e.g. the VAE)")
        t.add_argument("--epochs", type=int, default=100)
        t.add_argument("--batch-size", type=int, default=100)
        t.add_argument("--elbo", default="trace", choices=["trace", "iwae"], help="objective (iwae: Burda et al.)")
        p.add_argument("--particles", type=int, default=1,
                       help="ELBO particles (SVI), or particles per data point (k of the IWAE bound)")
        t.add_argument("--patience", type=int, default=None, help="early stopping: epochs without a better validation ELBO")
        t.add_argument("--checkpoint", help="checkpoint file, written every epoch (default: OUT.ckpt.pt)")
        t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
        t.add_argument("--trainer", default="torch", choices=["torch", "lightning"],
                       help="torch: our loop (checkpoints); lightning: PyTorch Lightning DDP on --devices processes")
        t.add_argument("--devices", type=int, default=1, help="processes / GPUs for --trainer lightning")
        t.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
        t.add_argument("--eval-particles", type=int, default=None,
                       help="importance samples per image for the test log-likelihood (default: the model's, 5000)")
        t.add_argument("--points", type=int, default=8, help="compare: test images for the amortization gap")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")

    fit = sub.add_parser("fit", help="fit one model with one method and write a report")
    common(fit)
    fit.add_argument("--method", default="svi", choices=["svi", "nuts", "map", "em"])
    compare = sub.add_parser("compare", help="fit by SVI and by NUTS, compare, diagnose, report")
    common(compare)
    check = sub.add_parser("check", help="check a model/guide pair: shapes, guide, ELBO, log_likelihood, align")
    check.add_argument("model", help="model name (see `zoo list`)")
    check.add_argument("--data", help="dataset name or path to a CSV (default: data simulated by the model)")
    check.add_argument("--data-dir", help="folder with real datasets (default: $ZOO_DATA_DIR)")
    check.add_argument("--seed", type=int, default=0)
    for flag in ("components", "states", "latent_dim"):
        check.add_argument(f"--{flag.replace('_', '-')}", type=int)
    for flag in ("emission", "likelihood"):
        check.add_argument(f"--{flag}")
    check.add_argument("--hidden", type=_sizes)
    check.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
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

    if args.lr is None:
        args.lr = 0.02
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

    if _amortized(args):
        return fit_amortized(args)
    model, out, dataset, data, coords = _setup(args)
    progress = not args.quiet
    if args.method == "nuts":
        post = inference.run_nuts(model, data, num_samples=args.samples, warmup_steps=args.warmup,
                                  num_chains=args.chains, seed=args.seed, coords=coords, progress=progress)
    elif args.method in ("svi", "map"):
        guide = "delta" if args.method == "map" else _svi_guide(args)
        post = inference.fit_svi(model, data, guide=guide, num_steps=args.steps, lr=args.lr, seed=args.seed,
                                 num_samples=args.samples, num_particles=args.particles, coords=coords,
                                 progress=progress)
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
    sections = {}
    heldout = _heldout(model, post, dataset)
    if heldout is not None:
        print(f"\nheld-out log predictive density ({args.method}):")
        print(heldout.round(4).to_string())
        sections["Held-out data (log predictive density)"] = heldout
    path = inference.write_report(out, {args.method: post}, dataset=dataset, diagnoses={args.method: diagnosis},
                                  title=f"zoo fit {args.model} --method {args.method}", force=args.force,
                                  sections=sections)
    print(f"\nreport written to {path}/")
    return 0


def _heldout(model, post, dataset):
    """Log predictive density of every further split the dataset ships (e.g. valid, test), in total and
    per observation (per time step for sequences); None when there is none."""
    import pandas as pd

    from inference.target import num_observations

    rows = {}
    for split, values in dataset.splits.items():
        data = model.validate(values)
        lpd = post.predictive_log_density(data)
        n_obs = num_observations(data)
        rows[split] = {"points": len(lpd), "observations": n_obs, "lpd": float(lpd.sum()),
                       "nll_per_observation": -float(lpd.sum()) / n_obs}
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("split")
    table.attrs["csv"] = "heldout.csv"
    return table


def cmd_compare(args) -> int:
    import inference
    from inference.compare import summary_line

    if _amortized(args):
        return compare_amortized(args)
    model, out, dataset, data, coords = _setup(args)
    progress = not args.quiet
    svi = inference.fit_svi(model, data, guide=_svi_guide(args), num_steps=args.steps, lr=args.lr,
                            seed=args.seed, num_samples=args.samples, num_particles=args.particles,
                            coords=coords, progress=progress)
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


def cmd_check(args) -> int:
    """`zoo check MODEL`: run inference.check and print its report; exit status 1 when a check fails."""
    import inference
    import zoo
    from zoo import datasets

    model = zoo.get(args.model, **model_config(args))
    data = datasets.load(args.data, data_dir=args.data_dir).data if args.data else None
    report = inference.check(model, data=data, seed=args.seed)
    print(report)
    return 0 if report.ok else 1


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 200,200, got {text!r}") from None


# --- amortized models: minibatch training, test log-likelihood, amortization gap -----------------


def _amortized(args) -> bool:
    """A model whose latents are all local (no global sites) is fitted by minibatch amortized SVI."""
    import zoo

    return not zoo.get(args.model, **model_config(args)).global_sites


def _train_amortized(args):
    """Train (or resume), evaluate on the test split; returns what the report needs."""
    import zoo
    from inference.report import check_output_dir
    from inference.train import heldout_nll, plot_history, train
    from zoo import datasets

    if getattr(args, "method", "svi") != "svi":
        raise ValueError(f"--method: model {args.model!r} has only local latents and is fitted by amortized SVI "
                         f"(--method svi); `zoo compare {args.model}` runs NUTS on the latents of a few test images")
    model = zoo.get(args.model, **model_config(args), **({"eval_particles": args.eval_particles} if args.eval_particles else {}))
    out = check_output_dir(args.out or os.path.join("runs", f"{args.model}-{args.command}"), args.force)
    dataset = datasets.load(args.data or model.default_dataset, data_dir=args.data_dir)
    data = model.validate(dataset.data)
    valid = dataset.splits.get("valid")
    split = "test" if "test" in dataset.splits else "valid" if valid is not None else "train"
    kw = dict(valid=valid, elbo=args.elbo, num_particles=args.particles, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr or 1e-3, seed=args.seed, progress=not args.quiet)
    if args.trainer == "lightning":
        from inference.lightning import train_lightning

        fit = train_lightning(model, data, devices=args.devices, accelerator="gpu" if args.device == "cuda" else "cpu", **kw)
    else:
        checkpoint = args.checkpoint or f"{out}.ckpt.pt"
        if args.force and not args.resume and os.path.exists(checkpoint):
            os.remove(checkpoint)   # --force: start afresh (without it, an existing checkpoint is refused)
        fit = train(model, data, patience=args.patience, checkpoint=checkpoint, resume=args.resume, device=args.device, **kw)
    evaluation = dataset.split(split)
    post = fit.posterior(evaluation.data)
    return fit, post, evaluation, out, heldout_nll(fit, post, split), {"elbo": plot_history(fit.history)}


def fit_amortized(args) -> int:
    import inference

    fit, post, evaluation, out, held, figures = _train_amortized(args)
    print(f"{args.model} on {evaluation.name}: {held.split} NLL = {held.nll:.3f} ± {held.se:.3f} nats per data point; "
          f"{len(fit.history['epoch'])} epochs in {fit.wall_time:.1f}s")
    path = inference.write_report(out, {"svi": post}, dataset=evaluation, title=f"zoo fit {args.model}",
                                  force=args.force, sections={f"{held.split.capitalize()} log-likelihood": held.text},
                                  figures=figures)
    print(f"\nreport written to {path}/")
    return 0


def compare_amortized(args) -> int:
    import inference
    from inference.amortization import amortization_gap, gap_sections

    fit, post, evaluation, out, held, figures = _train_amortized(args)
    points = post.data[:args.points]
    gap = amortization_gap(post.model, points, num_samples=args.samples, warmup_steps=args.warmup,
                           num_chains=args.chains, svi_steps=args.steps, seed=args.seed, progress=not args.quiet)
    print(f"{args.model} on {evaluation.name}: {held.split} NLL = {held.nll:.3f} nats per data point; amortization "
          f"gap on {len(points)} {held.split} data points (nats):\n")
    print(gap)
    path = inference.write_report(out, {"svi": post}, dataset=evaluation, title=f"zoo compare {args.model}",
                                  force=args.force,
                                  sections={f"{held.split.capitalize()} log-likelihood": held.text, **gap_sections(gap)},
                                  figures={**figures, "amortization": gap.figure()})
    print(f"\nreport written to {path}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    commands = {"list": cmd_list, "fit": cmd_fit, "compare": cmd_compare, "check": cmd_check}
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
