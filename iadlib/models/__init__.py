"""Model registry: ``get_model(name, **cfg)`` like ``timm.create_model``.

Each module in this package is self-contained (one method, its ``nn.Module`` and its detector) and
registers its detector with :func:`register_model`; modules are imported on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Detector

_MODELS: dict[str, Callable[..., Detector]] = {}
_DISCOVERED = False


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator registering a detector under ``name`` (also sets ``cls.name``)."""

    def deco(cls: type) -> type:
        if name in _MODELS and _MODELS[name] is not cls:
            raise ConfigError(f"model {name!r} registered twice")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    _DISCOVERED = True


def list_models() -> list[str]:
    _discover()
    return sorted(_MODELS)


def get_model(name: str, **cfg: Any) -> Detector:
    """Create detector ``name`` (e.g. ``"patchcore"``) with configuration ``cfg``."""
    _discover()
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; valid: {', '.join(sorted(_MODELS))}")
    try:
        return _MODELS[name](**cfg)
    except TypeError as exc:
        raise ConfigError(f"bad configuration for model {name!r}: {exc}") from exc


def load_model(path: str | Path, device: str = "auto") -> Detector:
    """Load any checkpoint written by ``Detector.save``."""
    _discover()
    return Detector.load(path, device=device)


__all__ = ["Detector", "get_model", "list_models", "load_model", "register_model"]
