"""Evaluation metrics (image and pixel level). Exact, vectorised, checked against scikit-learn."""

from __future__ import annotations

import numpy as np

from .errors import MetricError


def _check_binary(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise MetricError(f"{what}: {labels.size} labels but {scores.size} scores")
    if labels.size == 0:
        raise MetricError(f"{what}: empty input")
    if not np.isfinite(scores).all():
        raise MetricError(f"{what}: scores contain NaN or inf ({int((~np.isfinite(scores)).sum())} values)")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        raise MetricError(
            f"{what}: the labels hold one class only ({'all anomalous' if n_pos else 'all normal'}); "
            "AUROC needs normal and anomalous samples"
        )
    return labels, scores


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann–Whitney form of the ROC area with average ranks for ties (equals the trapezoid ROC)."""
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # average ranks of tied groups
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [s.size]])
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def image_auroc(labels, scores) -> float:
    """Image-level area under the ROC curve (labels 1 = anomalous, higher score = more anomalous)."""
    lab, sc = _check_binary(labels, scores, "image_auroc")
    return _auroc(lab, sc)


def pixel_auroc(masks, maps) -> float:
    """Pixel-level ROC area over all pixels of all images; ``masks`` bool ``[N,H,W]``, ``maps`` ``[N,H,W]``."""
    masks = np.asarray(masks)
    maps = np.asarray(maps)
    if masks.shape != maps.shape:
        raise MetricError(f"pixel_auroc: masks {masks.shape} and maps {maps.shape} differ in shape")
    lab, sc = _check_binary(masks.ravel(), maps.ravel(), "pixel_auroc")
    return _auroc(lab, sc)
