"""Datasets: ``get_dataset(name, **cfg)`` like ``timm.create_model``.

Each module in this package registers its loaders with :func:`register_dataset`; modules are
imported on first use, so adding a dataset means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from .base import ADDataset, Record, Sample, Split, as_image_list, check_image, read_image, read_mask

_DATASETS: dict[str, Callable[..., ADDataset]] = {}
_DISCOVERED = False


def register_dataset(name: str) -> Callable[[Callable[..., ADDataset]], Callable[..., ADDataset]]:
    """Decorator registering a dataset factory under ``name``."""

    def deco(fn: Callable[..., ADDataset]) -> Callable[..., ADDataset]:
        if name in _DATASETS and _DATASETS[name] is not fn:
            raise ConfigError(f"dataset {name!r} registered twice")
        _DATASETS[name] = fn
        return fn

    return deco


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")
    _DISCOVERED = True


def list_datasets() -> list[str]:
    _discover()
    return sorted(_DATASETS)


def get_dataset(name: str, **cfg: Any) -> ADDataset:
    """Build dataset ``name`` (e.g. ``"elpv"``, ``"mvtec_ad"``) with loader options ``cfg``."""
    _discover()
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name](**cfg)


__all__ = [
    "ADDataset",
    "Record",
    "Sample",
    "Split",
    "as_image_list",
    "check_image",
    "get_dataset",
    "list_datasets",
    "read_image",
    "read_mask",
    "register_dataset",
]
