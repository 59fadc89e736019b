"""Exceptions with messages that name the file, the value and the fix."""

from __future__ import annotations


class IADError(Exception):
    """Base class of every error iadlib raises on purpose."""


class DatasetError(IADError, ValueError):
    """Bad data on disk or in memory: a missing folder, a corrupt image, a mask that does not fit."""


class ConfigError(IADError, ValueError):
    """An unknown model, dataset, profile or option; the message lists the valid values."""


class MetricError(IADError, ValueError):
    """Input a metric cannot be computed on: one class only, NaN scores, shape mismatch."""


class TrainingError(IADError, RuntimeError):
    """Training diverged (NaN/inf loss) or cannot continue."""


class CheckpointError(IADError, ValueError):
    """A checkpoint that is corrupt, of another format version, or for another model."""


class WeightsError(IADError, RuntimeError):
    """Pretrained backbone weights are not available offline."""


class ResourceError(IADError, MemoryError):
    """A computation that cannot fit in the available (GPU or host) memory; says how much it needs."""
