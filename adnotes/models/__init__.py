"""Feature-reconstruction models, one file per method, behind one registry.

    model = adnotes.models.create("uniad", in_channels=192, feature_size=14)

Every model maps backbone features to their reconstruction of the same shape,
``(B, C_in, H, W) -> (B, C_in, H, W)`` (Omni-AD: a list of multi-scale maps to a list of the
same shapes). Models know nothing of optimisers, data or logging: the loss and the anomaly map
are shared code (:mod:`adnotes.models.objectives`) and one trainer serves all.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Class decorator: make a model available to :func:`create` under ``name``."""
    def add(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls
    return add


def list_models() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def create(name: str, **cfg) -> nn.Module:
    """A model by its registered name, configured with keyword arguments (its config fields)."""
    _import_all()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**cfg)


def _import_all() -> None:
    """Import every model file so that its @register runs."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
