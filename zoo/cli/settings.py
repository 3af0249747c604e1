"""Model settings on the command line: every simple constructor setting of every registered model becomes a
flag (:func:`model_flags`, :func:`model_arguments`), and the flags given become the model's configuration
(:func:`model_config`)."""

from __future__ import annotations

import argparse
import ast


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


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 200,200, got {text!r}") from None


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


def config_sources(args) -> list[tuple[str, object, str]]:
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
    for key, value, how in config_sources(args):   # flags set distinct keys, so a clash involves --option
        if key in config and config[key] != value:
            raise ValueError(f"--option: {how.removeprefix('--option ')!r} conflicts with {given[key]}; give the "
                             "setting once")
        config[key] = value
        given[key] = how if how.startswith("--option") else f"{how} {value}"
    return config


def model_config_keys(args) -> set[str]:
    """The configuration keywords of the model named on the command line (empty if it is unknown)."""
    import inspect

    import zoo

    try:
        return set(inspect.signature(zoo.model_class(args.model).__init__).parameters) - {"self"}
    except Exception:
        return set()
