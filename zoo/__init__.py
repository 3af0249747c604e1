"""Latent Zoo: Pyro reference implementations of classic latent-variable models.

    >>> import zoo
    >>> zoo.list_models()
    ['gmm']
    >>> m = zoo.get("gmm", n_components=3)

Each model follows the protocol of :class:`zoo.base.ZooModel`.
"""

from __future__ import annotations

import importlib
import inspect

from zoo.base import ZooModel

__all__ = ["ZooModel", "get", "list_models"]

# name -> "module:Class"; modules are imported on first use
_REGISTRY = {
    "gmm": "zoo.gmm:GaussianMixture",
    "vae": "zoo.vae:VAE",
}


def list_models() -> list[str]:
    """Names accepted by :func:`get`."""
    return sorted(_REGISTRY)


def model_class(name: str) -> type[ZooModel]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"model: unknown model {name!r}; available: {', '.join(list_models())}")
    module, cls = _REGISTRY[name].split(":")
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
