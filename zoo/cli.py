"""The ``zoo`` command: parse, call inference, write outputs. No maths here.

    zoo list
    zoo fit MODEL --method svi|nuts|map|em [--data NAME|PATH.csv] [--out DIR] ...
    zoo compare MODEL [--data ...] [--out DIR] ...      # SVI vs NUTS on the same model and data
    zoo sbc MODEL --simulations N --jobs J [--method nuts|svi] [--out DIR]   # simulation-based calibration
    zoo new NAME                                        # zoo/NAME.py and tests/test_NAME.py from an example
    zoo select MODEL --components 1..6 ...              # rank model sizes by PSIS-LOO (also --states)
    zoo report MODEL [--from DIR] ...                   # report.html of a run folder, or of a new compare
    zoo check MODEL [--data ...]                         # what is wrong with the model/guide pair

User mistakes exit with status 2 and a one-line message naming the flag; no traceback. Ctrl-C exits
with 130 at any moment, start-up included, and leaves no partial output. :func:`main` is the one place
that maps exceptions to exit codes; :func:`output_folder` checks ``--out`` (and ``--checkpoint``)
before any fitting, with :func:`inference.report.check_output_dir`.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import time
import warnings

#: CLI flag -> model configuration keyword (only flags the user gives are forwarded)
CONFIG_FLAGS = {"components": "n_components", "states": "n_states", "emission": "emission",
                "latent_dim": "latent_dim", "hidden": "hidden", "likelihood": "likelihood"}


#: API keyword -> CLI flag, to name the flag in error messages
FLAG_OF = {**{key: "--" + flag.replace("_", "-") for flag, key in CONFIG_FLAGS.items()},
           "out": "--out", "checkpoint": "--checkpoint", "data": "--data", "data_dir": "--data-dir",
           "num_steps": "--steps", "lr": "--lr", "guide": "--guide", "num_samples": "--samples",
           "warmup_steps": "--warmup", "num_chains": "--chains", "num_particles": "--particles",
           "epochs": "--epochs", "batch_size": "--batch-size", "patience": "--patience", "device": "--device",
           "devices": "--devices", "eval_particles": "--eval-particles", "resume": "--resume", "seed": "--seed"}

#: defaults of the flags that only some methods use (None in the parser, so a flag the user gave is known)
DEFAULTS = {"steps": 3000, "samples": 1000, "warmup": 500, "chains": 4, "particles": 1, "epochs": 100,
            "batch_size": 100, "elbo": "trace", "trainer": "torch", "devices": 1, "points": 8}


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line and exit status 2 (argparse prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="Latent Zoo: fit and compare latent-variable models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list models and datasets")

    def common(p, sizes=int):
        p.add_argument("model", help="model name (see `zoo list`)")
        p.add_argument("--data", help="dataset name or path to a CSV of numeric columns (default: the model's bundled default)")
        p.add_argument("--data-dir", help="folder with real datasets (default: $ZOO_DATA_DIR)")
        p.add_argument("--out", help="report folder (default: runs/<model>-<command>)")
        p.add_argument("--force", action="store_true", help="replace an existing report folder")
        p.add_argument("--seed", type=_int(0), default=0)
        p.add_argument("--steps", type=_int(1), help="SVI steps (default 3000)")
        p.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate of Adam (default 0.02 for SVI, 1e-3 for minibatch training)")
        p.add_argument("--guide", default=None, help="SVI guide: model (default), normal, mvn, iaf")
        p.add_argument("--samples", type=_int(1), help="posterior draws (per chain for NUTS; default 1000)")
        p.add_argument("--warmup", type=_int(0), help="NUTS warmup steps per chain (default 500)")
        p.add_argument("--chains", type=_int(1), help="NUTS chains (default 4)")
        p.add_argument("--components", type=sizes, help="number of mixture / latent components")
        p.add_argument("--states", type=sizes, help="number of hidden states (hmm)")
        p.add_argument("--emission", help="emission family (hmm): gaussian, categorical, poisson, bernoulli")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model configuration, e.g. --option concentration=2.0")
        p.add_argument("--latent-dim", type=int, help="latent dimension (VAE)")
        p.add_argument("--hidden", type=_sizes, help="hidden layer sizes, e.g. 200,200 (VAE)")
        p.add_argument("--likelihood", help="observation model, e.g. bernoulli or gaussian (VAE)")
        t = p.add_argument_group("minibatch training (models whose latents are all local, e.g. the VAE)")
        t.add_argument("--epochs", type=_int(1), help="default 100")
        t.add_argument("--batch-size", type=_int(1), help="default 100")
        t.add_argument("--elbo", choices=["trace", "iwae"], help="objective (iwae: Burda et al.; default trace)")
        p.add_argument("--particles", type=_int(1),
                       help="ELBO particles (SVI), or particles per data point (k of the IWAE bound; default 1)")
        t.add_argument("--patience", type=_int(1), default=None,
                       help="early stopping: epochs without a better validation ELBO")
        t.add_argument("--checkpoint", help="checkpoint file, written every epoch (default: OUT.ckpt.pt)")
        t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
        t.add_argument("--trainer", choices=["torch", "lightning"],
                       help="torch (default): our loop (checkpoints); lightning: PyTorch Lightning DDP on --devices processes")
        t.add_argument("--devices", type=_int(1), help="processes / GPUs for --trainer lightning (default 1)")
        t.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
        t.add_argument("--eval-particles", type=_int(1), default=None,
                       help="importance samples per image for the test log-likelihood (default: the model's, 5000)")
        t.add_argument("--points", type=_int(1), help="compare: test images for the amortization gap (default 8)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")

    fit = sub.add_parser("fit", help="fit one model with one method and write a report")
    common(fit)
    fit.add_argument("--method", default="svi", choices=["svi", "nuts", "map", "em"])
    compare = sub.add_parser("compare", help="fit by SVI and by NUTS, compare, diagnose, report")
    common(compare)
    sbc = sub.add_parser("sbc", help="simulation-based calibration: refit data simulated from the prior")
    common(sbc)
    sbc.add_argument("--method", default="nuts", choices=["nuts", "svi"])
    sbc.add_argument("--simulations", type=int, default=100, help="simulated data sets (replicates)")
    sbc.add_argument("--observations", type=int, default=50, help="data points (time steps) per simulated data set")
    sbc.add_argument("--jobs", type=int, default=1, help="parallel replicates (joblib; -1: all cores)")
    new = sub.add_parser("new", help="write zoo/NAME.py and tests/test_NAME.py from a documented example model")
    new.add_argument("name", metavar="NAME", help="the new model's name, a lowercase Python identifier")
    new.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    select = sub.add_parser("select", help="fit a range of model sizes and rank them by PSIS-LOO")
    common(select, sizes=_counts)
    select.add_argument("--method", default="nuts", choices=["nuts", "svi"], help="how each candidate is fitted")
    report = sub.add_parser("report", help="write report.html: from a fit/compare folder (--from), or run compare")
    common(report)
    report.add_argument("--from", dest="source", metavar="DIR", help="a folder written by zoo fit/compare/select")
    report.add_argument("--plots", type=_plot_names, help="plots to show, some of trace,rank,energy,pair (default all)")
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
    """The model's configuration from the dedicated flags and ``--option KEY=VALUE``; a setting given
    twice with different values is an error, not a silent override."""
    config = {key: getattr(args, flag) for flag, key in CONFIG_FLAGS.items() if getattr(args, flag, None) is not None}
    given = {key: f"--{flag.replace('_', '-')} {config[key]}" for flag, key in CONFIG_FLAGS.items() if key in config}
    for item in args.option:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if key in config and config[key] != value:
            raise ValueError(f"--option: {item!r} conflicts with {given[key]}; give the setting once")
        config[key] = value
        given[key] = f"--option {item}"
    return config


def _unused_flags(args, amortized: bool) -> list[str]:
    """Flags the user gave that the chosen command and method do not use."""
    method = getattr(args, "method", None)
    svi = {"steps", "lr", "guide", "particles", "samples"}
    used = {"svi": svi, "map": svi - {"guide", "samples"}, "nuts": {"samples", "warmup", "chains"}, "em": set(),
            None: svi | {"warmup", "chains"}}[method]
    train = {"epochs", "batch_size", "elbo", "particles", "patience", "checkpoint", "resume", "trainer", "devices",
             "device", "eval_particles", "lr"}
    if amortized:
        used = train | ({"points", "samples", "warmup", "chains", "steps"} if method is None else set())
        if args.trainer == "lightning":
            used -= {"patience", "checkpoint", "resume"}
    if args.trainer != "lightning":
        used.discard("devices")
    flags = ["steps", "lr", "guide", "samples", "warmup", "chains", "particles", *sorted(train - {"lr", "particles"}),
             "points"]
    return [f"--{f.replace('_', '-')}" for f in flags if f not in used and getattr(args, f) not in (None, False)]


def _check_device(device: str | None) -> None:
    if device is None:
        return
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device: expected cpu or cuda (cuda:N), got {device!r}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} asked for, but this machine has no CUDA device that torch can use; "
                         "use --device cpu")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected cpu or cuda (cuda:N), got {device!r}")


def check_args(args) -> bool:
    """Validate the flags of ``fit``/``compare`` before anything slow and note the flags the chosen command
    and method do not use (:func:`warn_unused` prints them). Returns whether the model is fitted by
    minibatch training."""
    import zoo

    model = zoo.get(args.model, **model_config(args))
    amortized = not model.global_sites
    args.unused = _unused_flags(args, amortized)
    _check_device(args.device)
    for flag, value in DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    return amortized


def warn_unused(args) -> None:
    """One warning line per flag that is not used, printed once the inputs are checked and the fit begins
    (a mistake found earlier stays a single line)."""
    how = f" with --method {args.method}" if getattr(args, "method", None) else ""
    for flag in getattr(args, "unused", ()):
        print(f"zoo: warning: {flag} is not used by `zoo {args.command} {args.model}`{how}; ignored", file=sys.stderr)


def output_folder(args, checkpoint: bool = False):
    """``--out`` (default runs/<model>-<command>) checked before any fitting: never the working folder or an
    ancestor, nor a folder holding the input data; replaced only with --force and only if it is a report.
    With ``checkpoint``, also the checkpoint file (default OUT.ckpt.pt). Returns ``(out, checkpoint)``."""
    from inference.report import check_output_dir, check_output_file

    protect = [p for p in (args.data, args.data_dir) if p and os.path.exists(p)]
    out = check_output_dir(args.out or os.path.join("runs", f"{args.model}-{args.command}"), args.force,
                           name="--out", protect=protect)
    if not checkpoint:
        return out, None
    from inference.train import read_checkpoint

    path = args.checkpoint or f"{out}.ckpt.pt"
    check_output_file(path, args.force or args.resume, name="--checkpoint", protect=protect, is_ours=read_checkpoint,
                      what="a zoo training checkpoint", advice="pass --resume to continue it or --force to start afresh")
    return out, path


def cmd_list(args) -> int:
    import zoo
    from zoo import datasets

    print("models:")
    for name in zoo.list_models():
        try:
            cls = zoo.model_class(name)
        except Exception as e:   # a broken plugin does not hide the other models
            print(f"  {name:10s} (cannot be loaded: {type(e).__name__}: {e})")
            continue
        doc = ((cls.__doc__ or "").strip().splitlines() or [""])[0]
        print(f"  {name:10s} {doc}  [default data: {cls.default_dataset}]")
    print("datasets:")
    for name, desc in datasets.list_datasets().items():
        print(f"  {name:16s} {desc}")
    print("  PATH.csv         any CSV file of numeric columns")
    return 0


def _setup(args):
    import zoo
    from zoo import datasets

    if args.lr is None:
        args.lr = 0.02
    model = zoo.get(args.model, **model_config(args))
    out, _ = output_folder(args)
    dataset = datasets.load(args.data or model.default_dataset, data_dir=args.data_dir)
    data = model.validate(dataset.data)
    coords = {"feature": dataset.feature_names} if dataset.feature_names else {}
    return model, out, dataset, data, coords


def _svi_guide(args):
    return None if args.guide in (None, "model") else args.guide


def cmd_fit(args) -> int:
    import inference
    from inference.posterior import Posterior

    if check_args(args):
        return fit_amortized(args)
    model, out, dataset, data, coords = _setup(args)
    if args.method == "em" and not callable(getattr(model, "em", None)):
        raise ValueError(f"--method: model {args.model!r} has no EM baseline; use svi, nuts or map")
    warn_unused(args)
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

    if check_args(args):
        return compare_amortized(args)
    model, out, dataset, data, coords = _setup(args)
    warn_unused(args)
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


def cmd_sbc(args) -> int:
    """Simulation-based calibration: sbc.nc, sbc.csv and sbc.png in --out (default runs/MODEL-sbc)."""
    import zoo
    from inference.sbc import sbc

    check_args(args)
    model = zoo.get(args.model, **model_config(args))
    out, _ = output_folder(args)
    if args.method == "nuts":
        fit = dict(num_samples=args.samples, warmup_steps=args.warmup, num_chains=args.chains)
    else:
        fit = dict(num_steps=args.steps, lr=args.lr or 0.02, num_samples=args.samples, num_particles=args.particles,
                   guide=_svi_guide(args))
    try:
        result = sbc(model, num_simulations=args.simulations, num_observations=args.observations, method=args.method,
                     fit_kwargs=fit, seed=args.seed, n_jobs=args.jobs, progress=not args.quiet)
    except ValueError as e:   # name the CLI flags, not the Python arguments
        flags = {"num_simulations:": "--simulations:", "num_observations:": "--observations:", "n_jobs:": "--jobs:",
                 "model:": f"{args.model}:"}
        text = str(e)
        raise ValueError(next((f + text[len(a):] for a, f in flags.items() if text.startswith(a)), text)) from None
    print(result.table().round(4).to_string())
    print()
    print(result)
    path = result.write(out, force=args.force)
    print(f"\nSBC written to {path}/ (sbc.nc, sbc.csv, sbc.png)")
    return 0


def cmd_new(args) -> int:
    """``zoo new NAME``: a new model file and its test (zoo/scaffold.py); never replaces a file."""
    from zoo.scaffold import new_model

    model_file, test_file = new_model(args.name)
    print(f"wrote {model_file}\nwrote {test_file}\nnext: edit the story and the TODOs in {model_file.name}, then\n"
          f"  zoo check {args.name}\n  pytest {test_file} tests/test_contract.py -k {args.name}\n"
          f"  zoo compare {args.name}")
    return 0


def cmd_select(args) -> int:
    """Fit the model once per size of the --components (or --states) range, rank the fits by PSIS-LOO on the
    marginal log-likelihood, and write select.csv, select.png, khat.png and every candidate's netCDF."""
    import inference
    import zoo
    from inference.select import plot_khat, plot_select, select

    ranged = [f for f in ("components", "states") if getattr(args, f) is not None and len(getattr(args, f)) > 1]
    if len(ranged) != 1:
        raise ValueError("--components/--states: give one range of sizes to choose between, e.g. --components 1..6")
    flag = ranged[0]
    sizes = getattr(args, flag)
    for f in ("components", "states"):   # a single size given for the other flag is fixed
        setattr(args, f, getattr(args, f)[0] if getattr(args, f) is not None else None)
    if check_args(args):
        raise ValueError(f"model: {args.model!r} has only local latents; PSIS-LOO model choice needs posterior "
                         "draws of global parameters")
    _, out, dataset, _, coords = _setup(args)
    candidates = {}
    for k in sizes:
        setattr(args, flag, k)
        model = zoo.get(args.model, **model_config(args))
        data = model.validate(dataset.data)
        label = f"{'K' if flag == 'components' else 'S'}={k}"
        if args.method == "nuts":
            post = inference.run_nuts(model, data, num_samples=args.samples, warmup_steps=args.warmup,
                                      num_chains=args.chains, seed=args.seed, coords=coords, progress=not args.quiet)
        else:
            post = inference.fit_svi(model, data, guide=_svi_guide(args), num_steps=args.steps, lr=args.lr,
                                     seed=args.seed, num_samples=args.samples, num_particles=args.particles,
                                     coords=coords, progress=not args.quiet)
        inference.loo(post, name=f"--{flag} {k}")   # fails early where LOO cannot work (e.g. one sequence)
        candidates[label] = post
        print(f"{label}: {args.method.upper()} in {post.wall_time:.1f}s")
    table = select(candidates)
    loos = table.attrs.pop("loo")
    table.attrs["csv"] = "select.csv"
    print(f"\n{args.model} on {dataset.name}, ranked by PSIS-LOO (best first):\n")
    print(table[["elpd_loo", "se", "elpd_diff", "dse", "p_loo", "pareto_k_max", "pareto_k>0.7"]].round(2).to_string())
    ranked = {label: candidates[label] for label in table.index}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # ArviZ on a constant quantity (the weight of K=1)
        diagnoses = {label: inference.diagnose(p) for label, p in ranked.items()}
    path = inference.write_report(out, ranked, dataset=dataset, force=args.force, diagnoses=diagnoses,
                                  title=f"zoo select {args.model} --{flag} ({dataset.name})",
                                  sections={"Model choice (PSIS-LOO, best first)": table},
                                  figures={"select": plot_select(table), "khat": plot_khat(loos)})
    print(f"\nreport written to {path}/")
    return 0


def cmd_report(args) -> int:
    """report.html for a finished run folder (--from DIR), or `zoo compare` with the same flags (its
    folder gets report.html like every report folder)."""
    from pathlib import Path

    from inference.html import read_posteriors, write_html

    if args.source is None:
        code = cmd_compare(args)
        out = Path(args.out or os.path.join("runs", f"{args.model}-report"))
        if args.plots:
            write_html(out, plots=args.plots)
        print(f"open {out / 'report.html'}")
        return code
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
    path = write_html(folder, posteriors, plots=args.plots or ("trace", "rank", "energy", "pair"),
                      path=out / "report.html")
    print(f"report written to {path}")
    return 0


def _counts(text: str) -> tuple[int, ...]:
    """A size, a range A..B or a list A,B,C of positive integers."""
    try:
        if ".." in text:
            low, high = (int(v) for v in text.split(".."))
            values = tuple(range(low, high + 1))
        else:
            values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 3, a range such as 1..6 or a list such "
                                         f"as 2,3,5, got {text!r}")
    return values


def _plot_names(text: str) -> tuple[str, ...]:
    from inference.html import PLOTS

    names = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in names if v not in PLOTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown plot {unknown[0] if unknown else text!r}; expected some of "
                                         f"{','.join(PLOTS)}")
    return names


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


def _train_amortized(args):
    """Train (or resume), evaluate on the test split; returns what the report needs."""
    import zoo
    from inference.plots import plot_history
    from inference.report import heldout_nll
    from inference.train import train
    from zoo import datasets

    if getattr(args, "method", "svi") != "svi":
        raise ValueError(f"--method: model {args.model!r} has only local latents and is fitted by amortized SVI "
                         f"(--method svi); `zoo compare {args.model}` runs NUTS on the latents of a few test images")
    model = zoo.get(args.model, **model_config(args), **({"eval_particles": args.eval_particles} if args.eval_particles else {}))
    out, checkpoint = output_folder(args, checkpoint=args.trainer != "lightning")
    dataset = datasets.load(args.data or model.default_dataset, data_dir=args.data_dir)
    data = model.validate(dataset.data)
    warn_unused(args)
    valid = dataset.splits.get("valid")
    split = "test" if "test" in dataset.splits else "valid" if valid is not None else "train"
    kw = dict(valid=valid, elbo=args.elbo, num_particles=args.particles, epochs=args.epochs, batch_size=args.batch_size,
              lr=args.lr or 1e-3, seed=args.seed, progress=not args.quiet)
    if args.trainer == "lightning":
        from inference.lightning import train_lightning

        fit = train_lightning(model, data, devices=args.devices, accelerator="gpu" if args.device == "cuda" else "cpu", **kw)
    else:
        if args.force and not args.resume and os.path.exists(checkpoint):
            os.remove(checkpoint)   # --force: start afresh from a checkpoint that output_folder found to be ours
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
    """Run the command; the one place where exceptions become exit codes: 0 done, 1 the fit failed
    (divergence, or an unexpected error: one line, ``-v`` for the traceback), 2 a user mistake (one line
    naming the flag), 130 interrupted. Ctrl-C is answered at every phase, start-up included. A bad flag
    raises argparse's ``SystemExit(2)`` after its one line."""
    parsed: dict = {}
    try:
        return _run(argv, parsed)
    except KeyboardInterrupt:
        print("zoo: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:
        args = parsed.get("args")
        if getattr(args, "verbose", False):
            raise
        code, message = _user_message(e, args)
        print(f"zoo: error: {message}", file=sys.stderr)
        return code


def _run(argv, parsed: dict) -> int:
    import warnings

    # ArviZ announces its refactor once a day on import: noise on a newcomer's first screen
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    args = parsed["args"] = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    commands = {"list": cmd_list, "fit": cmd_fit, "compare": cmd_compare, "sbc": cmd_sbc, "new": cmd_new,
                "select": cmd_select, "report": cmd_report, "check": cmd_check}
    return commands[args.command](args)


def _user_message(e: BaseException, args) -> tuple[int, str]:
    """(exit code, one line) for an exception; the leading ``keyword:`` of a message becomes its flag."""
    from inference.svi import SVIDivergedError

    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, SVIDivergedError):
        return 1, message
    if isinstance(e, OSError) and not isinstance(e, (FileExistsError, FileNotFoundError)) or (
            isinstance(e, (FileExistsError, FileNotFoundError)) and e.filename is not None):
        path = e.filename or ""
        near = [(f, os.path.dirname(os.path.abspath(getattr(args, f)))) for f in ("out", "checkpoint", "data", "data_dir")
                if getattr(args, f, None)]
        flag = next((f"--{f.replace('_', '-')}" for f, folder in near
                     if path and os.path.abspath(str(path)).startswith(folder + os.sep)), "")
        where = f"{flag}: " if flag else ""
        return 2, f"{where}{e.strerror or message}" + (f": {path!r}" if path else "")
    if isinstance(e, (ValueError, TypeError, FileExistsError, FileNotFoundError)):
        key, sep, rest = message.partition(": ")
        if sep and key in FLAG_OF:
            flag = FLAG_OF[key]
            message = f"{flag}: {rest}" if flag[2:].replace("-", "_") == key else f"{flag} ({key}): {rest}"
        elif sep and args is not None and key in model_config_keys(args):
            message = f"--option {key}: {rest}"
        return 2, message
    return 1, f"{type(e).__name__}: {message} (internal error; run again with -v for the traceback)"


def model_config_keys(args) -> set[str]:
    """The configuration keywords of the model named on the command line (empty if it is unknown)."""
    import inspect

    import zoo

    try:
        return set(inspect.signature(zoo.model_class(args.model).__init__).parameters) - {"self"}
    except Exception:
        return set()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
