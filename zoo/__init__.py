"""Latent Zoo: Pyro reference implementations of classic latent-variable models.

    >>> import zoo
    >>> zoo.list_models()
    ['gmm', 'hmm', 'ppca', 'vae']
    >>> m = zoo.get("gmm", n_components=3)

Each model follows the protocol of :class:`zoo.base.ZooModel`. Models are found without a list to edit:

- **module discovery**: every ``zoo/<module>.py`` that defines a class deriving from ``ZooModel`` with a
  class attribute ``name = "..."`` (read from the source, so nothing is imported until the model is used;
  ``zoo new NAME`` writes such a module);
- **plugins**: an installed package declares its models in the entry-point group ``latent_zoo.models``,
  e.g. in its ``pyproject.toml``::

      [project.entry-points."latent_zoo.models"]
      my_model = "my_package.my_module:MyModel"

- :func:`register` adds a class at run time (a notebook, a script).

A built-in model keeps its name against a plugin of the same name (the plugin is skipped, with a warning).
"""

from __future__ import annotations

# ``import zoo`` only defines functions (every import is made where it is used; torch and Pyro load with
# the first model or with zoo.base): ``python -m zoo`` imports this package before zoo/__main__.py can
# answer Ctrl-C. ``zoo.ZooModel`` is resolved on first use.
__all__ = ["ENTRY_POINT_GROUP", "ZooModel", "get", "list_models", "model_class", "register"]

#: the entry-point group an installed package declares its models in
ENTRY_POINT_GROUP = "latent_zoo.models"

#: classes added with register(): name -> class
_REGISTERED: dict[str, type[ZooModel]] = {}
#: module file -> (mtime, {name: class name}) of the module discovery
_MODULE_CACHE: dict[Path, tuple[float, dict[str, str]]] = {}


def register(name: str, cls: type[ZooModel]) -> None:
    """Add your own :class:`ZooModel` subclass under ``name`` (then ``get``, the CLI and reports know it)."""
    from zoo.base import ZooModel

    if not (isinstance(cls, type) and issubclass(cls, ZooModel)):
        raise TypeError(f"cls: expected a ZooModel subclass, got {cls!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    _REGISTERED[name] = cls


def module_models(path: Path) -> dict[str, str]:
    """``{name: class name}`` of the ZooModel subclasses that a module's source defines at top level with a
    literal ``name = "..."`` (a class deriving from another model class of the same module counts too)."""
    import ast
    import logging

    mtime = path.stat().st_mtime
    cached = _MODULE_CACHE.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as e:
        logging.getLogger(__name__).warning("zoo: skipped %s while looking for models (%s)", path.name, e)
        tree = ast.Module(body=[], type_ignores=[])
    models, found = {"ZooModel"}, {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", None) for b in node.bases}
        if not bases & models:
            continue
        models.add(node.name)
        for stmt in node.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            value = getattr(stmt, "value", None)
            if (any(isinstance(t, ast.Name) and t.id == "name" for t in targets)
                    and isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value):
                found[value.value] = node.name
    _MODULE_CACHE[path] = (mtime, found)
    return found


def _registry() -> dict[str, object]:
    """name -> ``"module:Class"`` (imported on first use), an entry point, or a registered class."""
    import logging
    from importlib import metadata
    from pathlib import Path

    entries: dict[str, object] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if not path.stem.startswith("_"):
            for name, cls in module_models(path).items():
                entries.setdefault(name, f"zoo.{path.stem}:{cls}")
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in entries:
            if entries[ep.name] != ep.value:
                logging.getLogger(__name__).warning("zoo: plugin model %r (%s) skipped: the name is taken by %s", ep.name, ep.value,
                            entries[ep.name])
            continue
        entries[ep.name] = ep
    entries.update(_REGISTERED)
    return entries


def list_models() -> list[str]:
    """Names accepted by :func:`get`: the zoo's modules, installed plugins and registered classes."""
    return sorted(_registry())


def model_class(name: str) -> type[ZooModel]:
    """The class registered under ``name``; a ``ValueError`` lists the known names otherwise."""
    entries = _registry()
    if not isinstance(name, str) or name not in entries:
        raise ValueError(f"model: unknown model {name!r}; available: {', '.join(sorted(entries))}")
    entry = entries[name]
    if isinstance(entry, type):
        return entry
    from zoo.base import ZooModel

    if not isinstance(entry, str):   # an entry point (importlib.metadata's, or its backport's)
        cls = entry.load()
        if not (isinstance(cls, type) and issubclass(cls, ZooModel)):
            raise TypeError(f"model: the plugin entry point {name} = {entry.value!r} is not a ZooModel subclass")
        return cls
    import importlib

    module, cls = entry.split(":")
    return getattr(importlib.import_module(module), cls)


def get(name: str, **config) -> ZooModel:
    """Build the zoo model ``name`` with its configuration, e.g. ``get("gmm", n_components=3)``."""
    import inspect

    cls = model_class(name)
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = [k for k in config if k not in accepted]
    if unknown:
        raise ValueError(
            f"{name}: unknown configuration {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return cls(**config)


def __getattr__(name):
    if name == "ZooModel":
        from zoo.base import ZooModel

        return ZooModel
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
