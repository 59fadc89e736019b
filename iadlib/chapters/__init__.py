"""Experiment grids and helpers behind each book chapter (the notebooks stay thin).

Each module holds ``PROFILES = {"smoke": ..., "quick": ..., "full": ...}`` and the functions its
notebook calls; ``get_profile(module_profiles, name)`` validates a profile name.
"""

from __future__ import annotations

from typing import Any

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
