"""Decision thresholds on anomaly scores.

* :class:`RunningThreshold` — the running threshold of Rotondi & Lavalle's autoencoder paper
  (Eq. 6), per class for the Mixer autoencoder (Algorithm 1: ``AnomalyScore > thresholds[c]``).
* :func:`f1_optimal_threshold` — the threshold attaining F1-max on labelled data.
* :func:`threshold_at_fpr` — the lowest threshold whose false-positive rate on validation normals
  does not exceed a target.

Convention (the same as :mod:`iadlib.metrics`): an image is predicted anomalous when
``score >= threshold``, except :meth:`RunningThreshold.predict`, which follows the paper's
strict ``>``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, MetricError
from .metrics import f1_max

__all__ = ["RunningThreshold", "f1_optimal_threshold", "threshold_at_fpr"]

_GLOBAL = "__all__"


def _errors_1d(errors: Any, what: str) -> np.ndarray:
    if isinstance(errors, torch.Tensor):
        errors = errors.detach().cpu().numpy()
    arr = np.asarray(errors, dtype=np.float64).ravel()
    if arr.size == 0:
        raise MetricError(f"{what}: empty batch of errors")
    if not np.isfinite(arr).all():
        raise MetricError(f"{what}: errors contain NaN or inf ({int((~np.isfinite(arr)).sum())} values)")
    return arr


class RunningThreshold:
    """Running threshold ``T_i = (1−α)·T_{i−1} + α·(μ_i + β·σ_i)`` (Rotondi & Lavalle, Eq. 6).

    ``μ_i`` and ``σ_i`` are the paper's epoch statistics of the reconstruction error of *normal
    training* samples: "we keep track of the mean and the standard deviation of the reconstruction
    error of each batch and then compute their average at the end of the epoch" — i.e. the mean
    over the epoch's batches of the batch means and of the batch standard deviations (the batch
    standard deviation is PyTorch's default unbiased ``torch.std``; 0 for a batch of one).
    ``α ∈ (0, 1]`` sets how fast new epochs move the threshold; ``β ∈ (−1, 1)`` how many standard
    deviations are added (negative β: a conservative, recall-favouring threshold).

    Initialisation (the paper does not state ``T_0``): by default the first epoch sets
    ``T_1 = μ_1 + β·σ_1`` (``init="first"``), i.e. ``T_0`` is taken equal to the first estimate so
    that the average is not biased towards an arbitrary start (with ``T_0 = 0`` the threshold would
    need ~1/α epochs to forget the zero). A number given as ``init`` is used as ``T_0`` instead.

    Per class (the Mixer autoencoder, Algorithm 1): pass ``classes`` (one label per error) to
    :meth:`add_batch`/:meth:`update`; each class keeps its own ``T_i^c`` from its own batch
    statistics (batches without that class do not count towards its average), and
    :meth:`predict` compares every error with the threshold of its class. The pooled threshold over
    all classes is always kept as well (:attr:`threshold`).

    Use per epoch either ``update(list_of_batch_errors)`` or ``add_batch(...)`` for each batch and
    then ``end_epoch()``.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 0.0, init: str | float = "first"):
        if not 0.0 < float(alpha) <= 1.0:
            raise ConfigError(f"RunningThreshold: alpha must be in (0, 1], got {alpha!r}")
        if not -1.0 < float(beta) < 1.0:
            raise ConfigError(f"RunningThreshold: beta must be in (-1, 1) (Eq. 6), got {beta!r}")
        if not (init == "first" or (isinstance(init, int | float) and np.isfinite(init))):
            raise ConfigError(f"RunningThreshold: init must be 'first' or a finite number, got {init!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.init = init
        self.thresholds: dict[Hashable, float] = {}
        self.history: dict[Hashable, list[float]] = {}
        self.epoch = 0
        self._batch_stats: dict[Hashable, list[tuple[float, float]]] = {}

    # -- accumulation -------------------------------------------------------------------------
    def add_batch(self, errors: Any, classes: Sequence[Hashable] | np.ndarray | None = None) -> None:
        """Record one training batch's errors (and optionally their classes)."""
        err = _errors_1d(errors, "RunningThreshold.add_batch")
        groups: dict[Hashable, np.ndarray] = {_GLOBAL: err}
        if classes is not None:
            cls = np.asarray(classes.detach().cpu() if isinstance(classes, torch.Tensor) else classes).ravel()
            if cls.shape != err.shape:
                raise MetricError(
                    f"RunningThreshold.add_batch: {err.size} errors but {cls.size} class labels"
                )
            for c in np.unique(cls):
                groups[c.item() if hasattr(c, "item") else c] = err[cls == c]
        for key, e in groups.items():
            sd = float(np.std(e, ddof=1)) if e.size > 1 else 0.0
            self._batch_stats.setdefault(key, []).append((float(np.mean(e)), sd))

    def end_epoch(self) -> float:
        """Apply Eq. 6 with this epoch's averaged batch statistics; returns the pooled ``T_i``."""
        if not self._batch_stats:
            raise MetricError("RunningThreshold.end_epoch: no batch was added in this epoch")
        for key, stats in self._batch_stats.items():
            mu = float(np.mean([s[0] for s in stats]))
            sigma = float(np.mean([s[1] for s in stats]))
            target = mu + self.beta * sigma
            if key in self.thresholds:
                prev = self.thresholds[key]
            else:
                prev = target if self.init == "first" else float(self.init)
            t = (1.0 - self.alpha) * prev + self.alpha * target
            self.thresholds[key] = t
            self.history.setdefault(key, []).append(t)
        self._batch_stats = {}
        self.epoch += 1
        return self.thresholds[_GLOBAL]

    def update(
        self,
        errors: Any,
        classes: Sequence[Any] | None = None,
        batch_size: int | None = None,
    ) -> float:
        """One epoch: ``errors`` as a list of per-batch arrays, or one array split into batches of
        ``batch_size`` (one batch when None); ``classes`` matching ``errors`` in the same layout."""
        batches, cls_batches = self._as_batches(errors, classes, batch_size)
        for i, b in enumerate(batches):
            self.add_batch(b, None if cls_batches is None else cls_batches[i])
        return self.end_epoch()

    @staticmethod
    def _as_batches(
        errors: Any, classes: Any, batch_size: int | None
    ) -> tuple[list[Any], list[Any] | None]:
        if isinstance(errors, list | tuple) and errors and np.ndim(errors[0]) >= 1:
            batches = list(errors)
            cls = None if classes is None else list(classes)
            if cls is not None and len(cls) != len(batches):
                raise MetricError(
                    f"RunningThreshold.update: {len(batches)} error batches but {len(cls)} class batches"
                )
            return batches, cls
        arr = _errors_1d(errors, "RunningThreshold.update")
        cls_arr = None if classes is None else np.asarray(classes).ravel()
        if batch_size is None:
            return [arr], None if cls_arr is None else [cls_arr]
        if int(batch_size) < 1:
            raise ConfigError(f"RunningThreshold.update: batch_size must be >= 1, got {batch_size!r}")
        bs = int(batch_size)
        idx = range(0, arr.size, bs)
        return [arr[i : i + bs] for i in idx], None if cls_arr is None else [cls_arr[i : i + bs] for i in idx]

    # -- use ----------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The pooled threshold ``T_i`` over all classes."""
        if _GLOBAL not in self.thresholds:
            raise MetricError("RunningThreshold: no epoch finished yet; call update() or end_epoch() first")
        return self.thresholds[_GLOBAL]

    def threshold_of(self, cls: Hashable | None = None) -> float:
        """``T_i^c`` of one class (the pooled threshold when ``cls`` is None)."""
        if cls is None:
            return self.threshold
        if cls not in self.thresholds:
            known = sorted(str(k) for k in self.thresholds if k != _GLOBAL)
            raise MetricError(f"RunningThreshold: no threshold for class {cls!r}; known: {', '.join(known)}")
        return self.thresholds[cls]

    def predict(self, errors: Any, classes: Iterable[Hashable] | None = None) -> np.ndarray:
        """Anomaly decisions ``error > T`` (Algorithm 1), per class when ``classes`` is given."""
        err = _errors_1d(errors, "RunningThreshold.predict")
        if classes is None:
            return err > self.threshold
        cls = np.asarray(classes.detach().cpu() if isinstance(classes, torch.Tensor) else list(classes)).ravel()
        if cls.shape != err.shape:
            raise MetricError(f"RunningThreshold.predict: {err.size} errors but {cls.size} class labels")
        thr = np.array([self.threshold_of(c.item() if hasattr(c, "item") else c) for c in cls])
        return err > thr

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "init": self.init,
            "epoch": self.epoch,
            "thresholds": dict(self.thresholds),
            "history": {k: list(v) for k, v in self.history.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["alpha"], state["beta"], state["init"])  # type: ignore[misc]
        self.epoch = int(state["epoch"])
        self.thresholds = dict(state["thresholds"])
        self.history = {k: list(v) for k, v in state["history"].items()}

    def __repr__(self) -> str:
        t = self.thresholds.get(_GLOBAL)
        return f"RunningThreshold(alpha={self.alpha}, beta={self.beta}, epoch={self.epoch}, threshold={t})"


def f1_optimal_threshold(labels: Any, scores: Any) -> float:
    """The threshold maximising F1 on labelled data (``score >= threshold`` predicted anomalous).

    The same threshold :func:`iadlib.metrics.f1_max` reports (a score value of the data; the
    highest one on ties in F1).
    """
    return f1_max(labels, scores)[1]


def threshold_at_fpr(normal_scores: Any, fpr: float) -> float:
    """The lowest threshold whose false-positive rate on ``normal_scores`` is at most ``fpr``.

    With ``score >= threshold`` predicted anomalous, at most ``k = floor(fpr · n)`` of the ``n``
    validation normals may lie at or above the threshold. The returned value is the smallest
    distinct normal score with at most ``k`` normals at or above it (ties are never split), or
    just above the largest normal score (``np.nextafter``) when even one false positive is too
    many. Minimising the threshold under the FPR constraint maximises the recall.
    """
    if isinstance(normal_scores, torch.Tensor):
        normal_scores = normal_scores.detach().cpu().numpy()
    s = np.asarray(normal_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise MetricError("threshold_at_fpr: no normal scores given")
    if not np.isfinite(s).all():
        n_bad = int((~np.isfinite(s)).sum())
        raise MetricError(f"threshold_at_fpr: scores contain NaN or inf ({n_bad} values)")
    f = float(fpr)
    if not 0.0 <= f <= 1.0:
        raise MetricError(f"threshold_at_fpr: fpr must be in [0, 1], got {fpr!r}")
    values, counts = np.unique(s, return_counts=True)  # ascending
    at_or_above = np.cumsum(counts[::-1])[::-1]  # normals >= values[j]
    k = int(np.floor(f * s.size + 1e-9))
    ok = np.flatnonzero(at_or_above <= k)
    if ok.size == 0:
        return float(np.nextafter(values[-1], np.inf))
    return float(values[ok[0]])
