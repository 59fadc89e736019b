"""Experiment grids and helpers behind each book chapter (the notebooks stay thin).

Each module holds ``PROFILES = {"smoke": ..., "quick": ..., "full": ...}`` and the functions its
notebook calls; ``get_profile(module_profiles, name)`` validates a profile name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError

PROFILE_NAMES = ("smoke", "quick", "full")


def get_profile(profiles: dict[str, Any], name: str) -> Any:
    """Return ``profiles[name]`` or raise :class:`ConfigError` listing the valid profiles."""
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; valid: {', '.join(profiles)}")
    return profiles[name]


def check_choice(kind: str, value: Any, valid: list[Any] | tuple[Any, ...]) -> Any:
    """Raise :class:`ConfigError` unless ``value`` is one of ``valid`` (used on notebook parameters)."""
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; valid: {', '.join(map(str, valid))}")
    return value


def check_run_args(
    profiles: dict[str, Any],
    profile: str,
    *,
    device: Any = None,
    seed: Any = None,
) -> Any:
    """Validate the parameters every chapter entry point shares, before any data or training.

    Unknown profile or device, or a seed that is not an integer, raise :class:`ConfigError`
    listing the valid values. Returns ``profiles[profile]``.
    """
    from ..utils import resolve_device

    prof = get_profile(profiles, profile)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ConfigError(f"seed must be an integer, got {seed!r} ({type(seed).__name__})")
    if device is not None:
        resolve_device(device)
    return prof
