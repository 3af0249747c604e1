"""The ``zoo`` command: parse, call inference, write outputs. No maths here.

    zoo list
    zoo fit MODEL --method svi|nuts|map|em [--data NAME|PATH.csv] [--out DIR] ...
    zoo compare MODEL [--data ...] [--out DIR] ...      # SVI vs NUTS on the same model and data
    zoo sbc MODEL --simulations N --jobs J [--method nuts|svi] [--out DIR]   # simulation-based calibration
    zoo new NAME                                        # zoo/NAME.py and tests/zoo/test_NAME.py from an example
    zoo select MODEL --components 1..6 ...              # rank model sizes by PSIS-LOO (also --states)
    zoo report MODEL [--from DIR] ...                   # report.html of a run folder, or of a new compare
    zoo check MODEL [--data ...]                         # what is wrong with the model/guide pair

User mistakes exit with status 2 and a one-line message naming the flag; no traceback. Ctrl-C exits
with 130 at any moment, start-up included, and leaves no partial output (the process entry around
:func:`main`, ``zoo/__main__.py``, makes SIGINT raise from its first line). :func:`main` is the one place
that maps exceptions to exit codes; :func:`output_folder` checks ``--out`` (and ``--checkpoint``)
before any fitting, with :func:`inference.files.check_output_dir`.
"""

from __future__ import annotations

import argparse
import ast
import logging
import os
import sys
import time
import warnings
from types import SimpleNamespace

#: API keyword -> CLI flag of the command's own settings, to name the flag in error messages (the model
#: settings' flags come from the registry: :func:`model_flags`)
FLAG_OF = {"out": "--out", "checkpoint": "--checkpoint", "data": "--data", "data_dir": "--data-dir",
           "num_steps": "--steps", "lr": "--lr", "guide": "--guide", "num_samples": "--samples",
           "warmup_steps": "--warmup", "num_chains": "--chains", "num_particles": "--particles",
           "epochs": "--epochs", "batch_size": "--batch-size", "patience": "--patience", "device": "--device",
           "devices": "--devices", "eval_particles": "--eval-particles", "resume": "--resume", "seed": "--seed"}

#: the symbols of model sizes in `zoo select` labels (K=3); other sizes are labelled by their flag
SIZE_SYMBOL = {"n_components": "K", "n_states": "S"}

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


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(","))
    if not set(methods) <= {"svi", "nuts", "gibbs"} or len(set(methods)) != len(methods) or "nuts" not in methods \
            or len(methods) < 2:
        raise argparse.ArgumentTypeError(f"expected nuts and one or two of svi, gibbs, comma-separated, got {text!r}")
    return tuple(m for m in ("svi", "nuts", "gibbs") if m in methods)


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
    settings = model_flags()   # the models' constructor settings, from the registry
    sub.add_parser("list", help="list models and datasets")

    def common(p, sizes=int):
        p.add_argument("model", help="model name (see `zoo list`)")
        p.add_argument("--data", help="dataset name or path to a CSV of numeric columns (default: the model's bundled default)")
        p.add_argument("--data-dir", help="folder with real datasets (default: $ZOO_DATA_DIR)")
        p.add_argument("--out", help="report folder (default: runs/<model>-<command>)")
        p.add_argument("--force", action="store_true", help="replace an existing report folder")
        p.add_argument("--seed", type=_int(0), default=0)
        p.add_argument("--steps", type=_int(1), help="most SVI steps: it stops once converged (default 3000)")
        p.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate of Adam (default 0.05 for SVI, halved as it converges; 1e-3 for "
                            "minibatch training)")
        p.add_argument("--guide", default=None, help="SVI guide: model (default), normal, mvn, iaf")
        p.add_argument("--samples", type=_int(1), help="posterior draws (per chain for NUTS; default 1000)")
        p.add_argument("--warmup", type=_int(0), help="NUTS warmup steps per chain (default 500)")
        p.add_argument("--chains", type=_int(1), help="NUTS chains (default 4)")
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
        model_arguments(p, settings, sizes=sizes)

    fit = sub.add_parser("fit", help="fit one model with one method and write a report")
    common(fit)
    fit.add_argument("--method", default="svi", choices=["svi", "nuts", "map", "em"])
    compare = sub.add_parser("compare", help="fit by SVI and by NUTS, compare, diagnose, report")
    common(compare)
    compare.add_argument("--methods", type=_methods, default=("svi", "nuts"),
                         help="the fits to compare, NUTS the reference: svi,nuts (default), nuts,gibbs or "
                              "svi,nuts,gibbs (gibbs: models with conditionals in closed form, hmm and gmm)")
    sbc = sub.add_parser("sbc", help="simulation-based calibration: refit data simulated from the prior")
    common(sbc)
    sbc.add_argument("--method", default="nuts", choices=["nuts", "svi"])
    sbc.add_argument("--simulations", type=int, default=100, help="simulated data sets (replicates)")
    sbc.add_argument("--observations", type=int, default=50, help="data points (time steps) per simulated data set")
    sbc.add_argument("--jobs", type=int, default=1, help="parallel replicates (joblib; -1: all cores)")
    new = sub.add_parser("new", help="write zoo/NAME.py and tests/zoo/test_NAME.py from a documented example model")
    new.add_argument("name", metavar="NAME", help="the new model's name, a lowercase Python identifier")
    new.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    select = sub.add_parser("select", help="fit a range of model sizes and rank them by PSIS-LOO")
    common(select, sizes=_counts)
    select.add_argument("--method", default="nuts", choices=["nuts", "svi"], help="how each candidate is fitted")
    report = sub.add_parser("report", help="write report.html: from a fit/compare folder (--from), or run compare")
    common(report)
    report.add_argument("--from", dest="source", metavar="DIR", help="a folder written by zoo fit/compare/select")
    report.add_argument("--plots", type=_plot_names, help="plots to show, some of trace,rank,energy,pair (default all)")
    report.add_argument("--sbc", type=_int(2), metavar="N",
                        help="also run simulation-based calibration with N simulations (NUTS, one chain of --samples "
                             "draws after --warmup per simulation)")
    report.add_argument("--sbc-from", metavar="DIR", help="include the calibration in a folder written by `zoo sbc`")
    report.add_argument("--observations", type=int, default=50, help="--sbc: data points (time steps) per simulated "
                                                                     "data set (default 50)")
    report.add_argument("--jobs", type=int, default=1, help="--sbc: parallel simulations (joblib; -1: all cores)")
    check = sub.add_parser("check", help="check a model/guide pair: shapes, guide, ELBO, log_likelihood, align")
    check.add_argument("model", help="model name (see `zoo list`)")
    check.add_argument("--data", help="dataset name or path to a CSV (default: data simulated by the model)")
    check.add_argument("--data-dir", help="folder with real datasets (default: $ZOO_DATA_DIR)")
    check.add_argument("--seed", type=int, default=0)
    model_arguments(check, settings)
    return parser


def flag_name(keyword: str) -> str:
    """The flag of a model setting: ``n_components`` -> ``components`` (a leading "number of" dropped),
    ``latent_dim`` -> ``latent-dim``."""
    return (keyword[2:] if keyword.startswith("n_") else keyword).replace("_", "-")


def model_flags() -> dict[str, dict]:
    """``{flag: {"keyword", "kind", "help", "models"}}``: every simple constructor setting of every model the
    registry knows (:meth:`zoo.base.ZooModel.settings`), one flag per setting name. A model that cannot be
    loaded (a broken plugin) adds none (``zoo list`` says why); a setting whose flag another model
    already declares with another keyword or kind is left to ``--option``."""
    import zoo

    flags: dict[str, dict] = {}
    for name in zoo.list_models():
        try:
            settings = zoo.model_class(name).settings()
        except Exception:
            continue
        for keyword, (kind, text) in settings.items():
            entry = flags.setdefault(flag_name(keyword), {"keyword": keyword, "kind": kind, "help": text, "models": []})
            if (entry["keyword"], entry["kind"]) == (keyword, kind):
                entry["models"].append(name)
    return flags


def model_arguments(p, settings: dict[str, dict], sizes=int) -> None:
    """The model ``settings`` (:func:`model_flags`) as flags, and ``--option KEY=VALUE``. With
    ``sizes``, integer settings that count something (``n_...``) parse with it (``zoo select``: ranges). A
    flag the command already has (``--eval-particles``) keeps its own meaning. Sets ``args.model_flags``:
    ``{dest: keyword}`` of the flags added."""
    group = p.add_argument_group("model settings (see each model's docstring; `zoo list` names the models)")
    added = {}
    for flag, entry in settings.items():
        kind = entry["kind"]
        parse = {int: sizes if entry["keyword"].startswith("n_") else int, float: float, str: str, "ints": _sizes}
        kwargs = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": parse[kind]}
        text = entry["help"].replace("%", "%%") + f" ({', '.join(entry['models'])})"
        try:
            group.add_argument(f"--{flag}", default=None, help=text, **kwargs)
        except argparse.ArgumentError:   # the command's own flag of that name
            continue
        added[flag.replace("-", "_")] = entry["keyword"]
    group.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="any other model setting, e.g. --option prior_spread=2.0")
    p.set_defaults(model_flags=added)


def _config_sources(args) -> list[tuple[str, object, str]]:
    """``(keyword, value, how it was given)`` of every model setting on the command line, flags first."""
    items = [(key, getattr(args, dest), f"--{dest.replace('_', '-')}")
             for dest, key in getattr(args, "model_flags", {}).items() if getattr(args, dest, None) is not None]
    for item in getattr(args, "option", []):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        items.append((key, value, f"--option {item}"))
    return items


def model_config(args) -> dict:
    """The model's configuration from its setting flags and ``--option KEY=VALUE``; a setting given
    twice with different values is an error, not a silent override."""
    config, given = {}, {}
    for key, value, how in _config_sources(args):   # flags set distinct keys, so a clash involves --option
        if key in config and config[key] != value:
            raise ValueError(f"--option: {how.removeprefix('--option ')!r} conflicts with {given[key]}; give the "
                             "setting once")
        config[key] = value
        given[key] = how if how.startswith("--option") else f"{how} {value}"
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
    from inference.files import check_output_dir, check_output_file

    protect = [p for p in (args.data, args.data_dir) if p and os.path.exists(p)]
    out = check_output_dir(args.out or os.path.join("runs", f"{args.model}-{args.command}"), args.force,
                           name="--out", protect=protect)
    if not checkpoint:
        return out, None
    from inference.variational.train import read_checkpoint

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
        args.lr = 0.05   # fit_svi's first step size (inference.variational.svi.LR)
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
    from inference.posterior import Posterior, heldout

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
    if dataset.splits:
        table = heldout(post, dataset.splits)
        print(f"\nheld-out log predictive density ({args.method}):")
        print(table.round(4).to_string())
        sections["Held-out data (log predictive density)"] = table
    path = inference.write_report(out, {args.method: post}, dataset=dataset, diagnoses={args.method: diagnosis},
                                  title=f"zoo fit {args.model} --method {args.method}", force=args.force,
                                  sections=sections)
    print(f"\nreport written to {path}/")
    return 0


def cmd_compare(args, sbc=None) -> int:
    """SVI vs NUTS on one model and data; ``sbc`` (from ``zoo report --sbc/--sbc-from``): a function returning
    the SBCResult to include, called after the fits."""
    import inference
    from inference.checks.compare import summary_line

    if check_args(args):
        return compare_amortized(args)
    methods = getattr(args, "methods", ("svi", "nuts"))   # `zoo report` compares SVI and NUTS
    model, out, dataset, data, coords = _setup(args)
    if "gibbs" in methods and not callable(getattr(model, "gibbs_sweep", None)):
        raise ValueError(f"--methods: gibbs needs a model with conditionals in closed form (gibbs_sweep), which "
                         f"{args.model!r} has not; use svi,nuts")
    warn_unused(args)
    progress = not args.quiet
    chains = dict(num_samples=args.samples, warmup_steps=args.warmup, num_chains=args.chains, seed=args.seed,
                  coords=coords, progress=progress)
    fits = {}
    if "svi" in methods:
        fits["svi"] = inference.fit_svi(model, data, guide=_svi_guide(args), num_steps=args.steps, lr=args.lr,
                                        seed=args.seed, num_samples=args.samples, num_particles=args.particles,
                                        coords=coords, progress=progress)
    nuts = fits["nuts"] = inference.run_nuts(model, data, **chains)
    if "gibbs" in methods:
        fits["gibbs"] = inference.run_gibbs(model, data, **chains)
    first, *rest = [k for k in fits if k != "nuts"]
    table = inference.compare(fits[first], nuts, *(fits[k] for k in rest))
    diagnoses = {k: inference.diagnose(p) for k, p in fits.items()}
    order = [first, "nuts", *rest]
    cols = [c for k in order for c in (f"mean_{k}", f"sd_{k}")] + ["smd", "sd_ratio", "verdict"]
    cols += [f"{c}_{k}" for k in rest for c in ("smd", "sd_ratio", "verdict")]
    print(f"{args.model} on {dataset.name}: " + " vs ".join(f"{k.upper()} ({fits[k].wall_time:.1f}s)" for k in order)
          + "\n")
    print(table[cols].round(3).to_string())
    print()
    print(summary_line(table))
    print()
    for d in diagnoses.values():
        print(d)
    calibration = sbc() if sbc is not None else None
    if calibration is not None:
        print(f"\n{calibration}")
    path = inference.write_report(out, fits, dataset=dataset, comparison=table,
                                  diagnoses=diagnoses, title=f"zoo compare {args.model} ({dataset.name})",
                                  force=args.force, sbc=calibration)
    print(f"\nreport written to {path}/")
    return 0


def cmd_sbc(args) -> int:
    """Simulation-based calibration: sbc.nc, sbc.csv and sbc.png in --out (default runs/MODEL-sbc)."""
    check_args(args)
    out, _ = output_folder(args)
    if args.method == "nuts":
        fit = dict(num_samples=args.samples, warmup_steps=args.warmup, num_chains=args.chains)
    else:
        fit = dict(num_steps=args.steps, lr=args.lr or 0.05, num_samples=args.samples, num_particles=args.particles,
                   guide=_svi_guide(args))
    result = _sbc_runner(args, args.simulations, args.method, fit, f"{args.model}:")()
    print(result.table().round(4).to_string())
    print()
    print(result)
    path = result.write(out, force=args.force)
    print(f"\nSBC written to {path}/ (sbc.nc, sbc.csv, sbc.png)")
    return 0


def _sbc_runner(args, simulations: int, method: str, fit: dict, model_flag: str):
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


def cmd_new(args) -> int:
    """``zoo new NAME``: a new model file and its test (zoo/scaffold.py); never replaces a file."""
    from zoo.scaffold import new_model

    model_file, test_file = new_model(args.name)
    print(f"wrote {model_file}\nwrote {test_file}\nnext: edit the story and the TODOs in {model_file.name}, then\n"
          f"  zoo check {args.name}\n  pytest {test_file} tests/test_contract.py -k {args.name}\n"
          f"  zoo compare {args.name}")
    return 0


def cmd_select(args) -> int:
    """Fit the model once per size of the range given for one of its counts (--components, --states), rank
    the fits by PSIS-LOO on the marginal log-likelihood, and write select.csv, select.png, khat.png and
    every candidate's netCDF."""
    import inference
    import zoo
    from inference.reporting.plots import plot_khat, plot_select
    from inference.checks.select import check_loo_data, select

    keys = model_config_keys(args)
    counts = [dest for dest, key in args.model_flags.items() if key.startswith("n_") and key in keys]
    if not counts:
        raise ValueError(f"model: {args.model!r} has no size setting (n_...) to choose between")
    ranged = [dest for dest in counts if getattr(args, dest) is not None and len(getattr(args, dest)) > 1]
    if len(ranged) != 1:
        flags = [f"--{dest.replace('_', '-')}" for dest in counts]
        raise ValueError(f"{'/'.join(flags)}: give one range of sizes to choose between, e.g. {flags[0]} 1..6")
    dest = ranged[0]
    flag, key, sizes = dest.replace("_", "-"), args.model_flags[dest], getattr(args, dest)
    for other in counts:   # a single size given for another count is fixed
        setattr(args, other, getattr(args, other)[0] if getattr(args, other) is not None else None)
    if check_args(args):
        raise ValueError(f"model: {args.model!r} has only local latents; PSIS-LOO model choice needs posterior "
                         "draws of global parameters")
    _, out, dataset, _, coords = _setup(args)
    setattr(args, dest, sizes[0])
    check_loo_data(zoo.get(args.model, **model_config(args)), dataset.data)   # before any fit
    candidates = {}
    for k in sizes:
        setattr(args, dest, k)
        model = zoo.get(args.model, **model_config(args))
        data = model.validate(dataset.data)
        label = f"{SIZE_SYMBOL.get(key, flag)}={k}"
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
    folder gets report.html like every report folder); with simulation-based calibration run here
    (--sbc N) or read from a `zoo sbc` folder (--sbc-from DIR)."""
    from pathlib import Path

    from inference.reporting.html import read_posteriors, sbc_items, write_html

    if args.sbc is not None and args.sbc_from is not None:
        raise ValueError("--sbc/--sbc-from: give one: run the calibration here, or include one run by `zoo sbc`")
    calibration = _read_sbc(args) if args.sbc_from is not None else None
    if args.source is None:
        if args.sbc is not None:
            check_args(args)
            fit = dict(num_samples=args.samples, warmup_steps=args.warmup, num_chains=1)
            run = _sbc_runner(args, args.sbc, "nuts", fit, "--sbc:")
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


def _read_sbc(args):
    """The SBCResult in the folder --sbc-from (written by `zoo sbc`), checked to be of the model reported on."""
    from pathlib import Path

    from inference.checks.sbc import SBCResult

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
    from inference.reporting.html import PLOTS

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
    from inference.reporting.plots import plot_history
    from inference.posterior import heldout
    from inference.reporting.report import training_text
    from inference.variational.train import train
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
        from inference.variational.lightning import train_lightning

        fit = train_lightning(model, data, devices=args.devices, accelerator="gpu" if args.device == "cuda" else "cpu", **kw)
    else:
        if args.force and not args.resume and os.path.exists(checkpoint):
            os.remove(checkpoint)   # --force: start afresh from a checkpoint that output_folder found to be ours
        fit = train(model, data, patience=args.patience, checkpoint=checkpoint, resume=args.resume, device=args.device, **kw)
    evaluation = dataset.split(split)
    post = fit.posterior(evaluation.data)
    table = heldout(post, {split: post.data})
    held = SimpleNamespace(split=split, nll=table.loc[split, "nll_per_observation"], se=table.loc[split, "se"],
                           text=training_text(fit, table, split, getattr(post.model, "eval_particles", None)))
    return fit, post, evaluation, out, held, {"elbo": plot_history(fit.history)}


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
    from inference.checks.amortization import amortization_gap, gap_sections

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
    except (KeyboardInterrupt, Exception) as e:
        if not _after_ctrl_c(e):
            args = parsed.get("args")
            if getattr(args, "verbose", False):
                raise
            code, message = _user_message(e, args)
            print(f"zoo: error: {message}", file=sys.stderr)
            return code
        print("zoo: interrupted; nothing was written", file=sys.stderr)
        return 130


def _after_ctrl_c(e: BaseException) -> bool:
    """True for a KeyboardInterrupt, or an error raised from one or while handling one: Python and libraries
    turn a Ctrl-C into other errors (Python 3.11 wraps one raised in a class's ``__set_name__`` in a
    RuntimeError; a half-imported module fails the next import)."""
    chain, seen = [e], set()
    while chain:
        e = chain.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        chain += [e.__cause__, e.__context__]
    return False


def _run(argv, parsed: dict) -> int:
    import warnings

    # ArviZ announces its refactor once a day on import: noise on a newcomer's first screen
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import matplotlib

    matplotlib.use("Agg")   # before the parser, whose model flags import the models (and pyplot with them)
    args = parsed["args"] = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"list": cmd_list, "fit": cmd_fit, "compare": cmd_compare, "sbc": cmd_sbc, "new": cmd_new,
                "select": cmd_select, "report": cmd_report, "check": cmd_check}
    return commands[args.command](args)


def _user_message(e: BaseException, args) -> tuple[int, str]:
    """(exit code, one line) for an exception; the leading ``keyword:`` of a message becomes its flag."""
    from inference import SVIDivergedError

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
        flag = _flag_of(key, args) if sep else None
        if flag == "--option":
            message = f"--option {key}: {rest}"
        elif flag:
            message = f"{flag}: {rest}" if flag[2:].replace("-", "_") == key else f"{flag} ({key}): {rest}"
        return 2, message
    return 1, f"{type(e).__name__}: {message} (internal error; run again with -v for the traceback)"


def _flag_of(key: str, args) -> str | None:
    """The flag that set the API keyword ``key``: the command's own, or for a model setting the way the user
    gave it (its flag or ``--option``), else its flag, else ``--option``; None for anything else."""
    if key in FLAG_OF:
        return FLAG_OF[key]
    keys = model_config_keys(args) if args is not None else set()
    if key not in keys:
        return None
    try:
        given = {k: how.split()[0] for k, _, how in _config_sources(args)}
    except ValueError:
        given = {}
    flags = {k: f"--{dest.replace('_', '-')}" for dest, k in getattr(args, "model_flags", {}).items()}
    return given.get(key) or flags.get(key) or "--option"


def model_config_keys(args) -> set[str]:
    """The configuration keywords of the model named on the command line (empty if it is unknown)."""
    import inspect

    import zoo

    try:
        return set(inspect.signature(zoo.model_class(args.model).__init__).parameters) - {"self"}
    except Exception:
        return set()

