"""Latent Zoo: Pyro reference implementations of classic latent-variable models.

    >>> import zoo
    >>> zoo.list_models()
    ['gmm', 'hmm', 'ppca', 'vae']
    >>> m = zoo.get("gmm", n_components=3)

Each model follows the protocol of :class:`zoo.base.ZooModel`.
"""

from __future__ import annotations

import importlib
import inspect

# ``import zoo`` is cheap (torch and Pyro load with the first model or with zoo.base), so the command
# line can answer Ctrl-C during start-up cleanly; ``zoo.ZooModel`` is resolved on first use.
__all__ = ["ZooModel", "get", "list_models", "register"]

# name -> "module:Class" (imported on first use) or a class added with register()
_REGISTRY = {
    "gmm": "zoo.gmm:GaussianMixture",
    "ppca": "zoo.ppca:PPCA",
    "hmm": "zoo.hmm:HiddenMarkovModel",
    "vae": "zoo.vae:VAE",
}


def register(name: str, cls: type[ZooModel]) -> None:
    """Add your own :class:`ZooModel` subclass under ``name`` (then ``get``, the CLI and reports know it)."""
    from zoo.base import ZooModel

    if not (isinstance(cls, type) and issubclass(cls, ZooModel)):
        raise TypeError(f"cls: expected a ZooModel subclass, got {cls!r}")
    _REGISTRY[name] = cls


def list_models() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[ZooModel]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"model: unknown model {name!r}; available: {', '.join(list_models())}")
    entry = _REGISTRY[name]
    if isinstance(entry, type):
        return entry
    module, cls = entry.split(":")
    return getattr(importlib.import_module(module), cls)


def get(name: str, **config) -> ZooModel:
    """Build the zoo model ``name`` with its configuration, e.g. ``get("gmm", n_components=3)``."""
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
