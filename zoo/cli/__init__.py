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
that maps exceptions to exit codes (:mod:`zoo.cli.errors`); :func:`zoo.cli.fitting.output_folder` checks
``--out`` (and ``--checkpoint``) before any fitting.

The package: ``parser`` (the flags and their type checkers), ``settings`` (model settings as flags, from
the registry), ``fitting`` (what the fitting commands share: checks, output folder, the one mapping from
flags to a fit), one module per command group (``fit``: fit and compare, ``amortized``, ``sbc``,
``select``, ``report``, ``models``: list, new, check) and ``errors``. Modules import nothing heavy at the
top: ``zoo/__main__.py`` imports this package while Ctrl-C is already answered, and torch, Pyro and the
models load inside the commands.
"""

from __future__ import annotations

import logging
import sys

from zoo.cli.errors import after_ctrl_c, user_message
from zoo.cli.fit import cmd_compare, cmd_fit
from zoo.cli.models import cmd_check, cmd_list, cmd_new
from zoo.cli.parser import build_parser
from zoo.cli.report import cmd_report
from zoo.cli.sbc import cmd_sbc
from zoo.cli.select import cmd_select
from zoo.cli.settings import model_config

__all__ = ["build_parser", "main", "model_config"]

COMMANDS = {"list": cmd_list, "fit": cmd_fit, "compare": cmd_compare, "sbc": cmd_sbc, "new": cmd_new,
            "select": cmd_select, "report": cmd_report, "check": cmd_check}


def main(argv: list[str] | None = None) -> int:
    """Run the command; the one place where exceptions become exit codes: 0 done, 1 the fit failed
    (divergence, or an unexpected error: one line, ``-v`` for the traceback), 2 a user mistake (one line
    naming the flag), 130 interrupted. Ctrl-C is answered at every phase, start-up included. A bad flag
    raises argparse's ``SystemExit(2)`` after its one line."""
    parsed: dict = {}
    try:
        return _run(argv, parsed)
    except (KeyboardInterrupt, Exception) as e:
        if not after_ctrl_c(e):
            args = parsed.get("args")
            if getattr(args, "verbose", False):
                raise
            code, message = user_message(e, args)
            print(f"zoo: error: {message}", file=sys.stderr)
            return code
        print("zoo: interrupted; nothing was written", file=sys.stderr)
        return 130


def _run(argv, parsed: dict) -> int:
    import warnings

    # ArviZ announces its refactor once a day on import: noise on a newcomer's first screen
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import matplotlib

    matplotlib.use("Agg")   # before the parser, whose model flags import the models (and pyplot with them)
    args = parsed["args"] = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command](args)
