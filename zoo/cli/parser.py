"""The flags of every ``zoo`` command (:func:`build_parser`) and the type checkers that turn a mistake
into one line and exit status 2. The model settings' flags come from the registry (:mod:`zoo.cli.settings`)."""

from __future__ import annotations

import argparse

from zoo.cli.settings import model_arguments, model_flags


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
