"""From an exception to an exit status and one line that names the flag (:func:`user_message`); a Ctrl-C
recognised behind the errors that Python and libraries turn it into (:func:`after_ctrl_c`)."""

from __future__ import annotations

import os

from zoo.cli.settings import config_sources, model_config_keys

#: API keyword -> CLI flag of the command's own settings, to name the flag in error messages (the model
#: settings' flags come from the registry: :func:`zoo.cli.settings.model_flags`)
FLAG_OF = {"out": "--out", "checkpoint": "--checkpoint", "data": "--data", "data_dir": "--data-dir",
           "num_steps": "--steps", "lr": "--lr", "guide": "--guide", "num_samples": "--samples",
           "warmup_steps": "--warmup", "num_chains": "--chains", "num_particles": "--particles",
           "epochs": "--epochs", "batch_size": "--batch-size", "patience": "--patience", "device": "--device",
           "devices": "--devices", "eval_particles": "--eval-particles", "resume": "--resume", "seed": "--seed"}


def after_ctrl_c(e: BaseException) -> bool:
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


def user_message(e: BaseException, args) -> tuple[int, str]:
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
        given = {k: how.split()[0] for k, _, how in config_sources(args)}
    except ValueError:
        given = {}
    flags = {k: f"--{dest.replace('_', '-')}" for dest, k in getattr(args, "model_flags", {}).items()}
    return given.get(key) or flags.get(key) or "--option"
