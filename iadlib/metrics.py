"""Evaluation metrics (image and pixel level). Exact, vectorised, checked against scikit-learn.

Conventions used throughout (the same as scikit-learn and the official MVTec evaluation code):

* label 1 / ``True`` = anomalous (the positive class), 0 / ``False`` = normal;
* a higher score means "more anomalous"; a sample is *predicted* anomalous when
  ``score >= threshold``;
* curves are evaluated at every distinct score (exact curves, no threshold grid); tied scores
  move together.

Image level: :func:`image_auroc`, :func:`image_aupr` (average precision), :func:`f1_max`,
:func:`precision_recall_f1`, :func:`tpr_fpr`, :func:`classification_ratios` (Table 4 of
Rotondi & Lavalle's autoencoder paper).

Pixel level: :func:`pixel_auroc`, :func:`iou`, :func:`au_pro` (Bergmann et al., MVTec AD, IJCV
2021, Sec. 4.2) and :func:`au_spro` (Bergmann et al., MVTec LOCO AD, IJCV 2022, Eq. 1).

AU-PRO and AU-sPRO share one exact, vectorised torch kernel (:func:`_overlap_curve`, CPU or
CUDA): every (pixel, region) membership becomes one entry carrying an overlap increment, every
defect-free pixel one entry carrying a false-positive increment; one sort of the entries by score
and two cumulative sums give the whole curve. Only entries whose score lies above the threshold
at which the FPR passes the integration limit are sorted (found first with ``kthvalue``), which
makes AU-PRO at 0.3 about three times cheaper than a full sort. Connected components are
computed once per mask (``scipy.ndimage.label``, 8-connectivity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from .errors import MetricError

__all__ = [
    "image_auroc",
    "image_aupr",
    "f1_max",
    "precision_recall_f1",
    "tpr_fpr",
    "classification_ratios",
    "pixel_auroc",
    "iou",
    "au_pro",
    "au_spro",
    "binary_curve",
]


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels_binary(labels: np.ndarray, what: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels
    if labels.dtype.kind not in "biuf":
        raise MetricError(f"{what}: labels must be 0/1 or bool, got dtype {labels.dtype}")
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise MetricError(
            f"{what}: labels must be 0 (normal) or 1 (anomalous); found {labels[bad][:5].tolist()} "
            f"({int(bad.sum())} values)"
        )
    return labels.astype(bool)


def _check_binary(
    labels: Any, scores: Any, what: str, need_both: bool = True, keep_float32: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    labels = _as_numpy(labels).ravel()
    scores = _as_numpy(scores).ravel()
    if not (keep_float32 and scores.dtype == np.float32):
        scores = scores.astype(np.float64, copy=False)
    if labels.shape != scores.shape:
        raise MetricError(f"{what}: {labels.size} labels but {scores.size} scores")
    if labels.size == 0:
        raise MetricError(f"{what}: empty input")
    if not np.isfinite(scores).all():
        raise MetricError(f"{what}: scores contain NaN or inf ({int((~np.isfinite(scores)).sum())} values)")
    labels = _check_labels_binary(labels, what)
    if need_both:
        n_pos = int(labels.sum())
        if n_pos == 0 or n_pos == labels.size:
            raise MetricError(
                f"{what}: the labels hold one class only ({'all anomalous' if n_pos else 'all normal'}); "
                "AUROC needs normal and anomalous samples"
            )
    return labels, scores


def _check_threshold(threshold: float, what: str) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{what}: threshold must be a number, got {threshold!r}") from exc
    if np.isnan(t):
        raise MetricError(f"{what}: threshold is NaN")
    return t


def _check_maps(maps: Any, what: str) -> np.ndarray | torch.Tensor:
    """Anomaly maps as ``[N,H,W]`` (numpy or torch), finite."""
    if isinstance(maps, torch.Tensor):
        if maps.ndim != 3:
            raise MetricError(f"{what}: maps must be [N,H,W], got shape {tuple(maps.shape)}")
        if not torch.isfinite(maps).all():
            n_bad = int((~torch.isfinite(maps)).sum())
            raise MetricError(f"{what}: maps contain NaN or inf ({n_bad} values)")
        return maps
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise MetricError(f"{what}: maps must be [N,H,W], got shape {maps.shape}")
    if maps.dtype.kind not in "biuf":
        raise MetricError(f"{what}: maps must be numeric, got dtype {maps.dtype}")
    if maps.dtype.kind == "f" and not np.isfinite(maps).all():
        raise MetricError(f"{what}: maps contain NaN or inf ({int((~np.isfinite(maps)).sum())} values)")
    return maps


def _check_limit(fpr_limit: float, what: str) -> float:
    lim = float(fpr_limit)
    if not 0.0 < lim <= 1.0:
        raise MetricError(f"{what}: fpr_limit must be in (0, 1], got {fpr_limit!r}")
    return lim


def _pick_device(device: str | torch.device | None, *tensors: Any) -> torch.device:
    if device is None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                return t.device
        return torch.device("cpu")
    from .utils import resolve_device

    return resolve_device(device)


# ----------------------------------------------------------------------------------------------
# image level
# ----------------------------------------------------------------------------------------------
def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC area as the Mann–Whitney statistic with ties counted one half (equals the trapezoid ROC).

    ``AUC = Σ_g [N₋(< g)·P(g) + ½·P(g)·N₋(g)] / (P·N)`` over the groups ``g`` of tied scores, from
    one torch sort and integer cumulative counts (exact; float32 scores are sorted as float32).
    """
    sc = torch.from_numpy(np.ascontiguousarray(scores))
    lab = torch.from_numpy(np.ascontiguousarray(labels))
    s, order = torch.sort(sc)
    cum_pos = torch.cumsum(lab[order].to(torch.int64), 0)
    ends = torch.ones(s.numel(), dtype=torch.bool)
    ends[:-1] = s[1:] != s[:-1]
    end_idx = torch.nonzero(ends).squeeze(1)
    cp = cum_pos[end_idx]
    cn = end_idx + 1 - cp
    zero = torch.zeros(1, dtype=torch.int64)
    p_in = torch.diff(cp, prepend=zero)
    n_in = torch.diff(cn, prepend=zero)
    n_below = cn - n_in
    n_pos, n_neg = int(cp[-1]), int(cn[-1])
    num = int(torch.sum(n_below * p_in)) + 0.5 * int(torch.sum(p_in * n_in))
    return float(num / (n_pos * n_neg))


def binary_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative true and false positives at every distinct threshold, highest threshold first.

    Returns ``(tps, fps, thresholds)``: predicting "anomalous" for ``score >= thresholds[i]``
    gives ``tps[i]`` true and ``fps[i]`` false positives (scikit-learn's ``_binary_clf_curve``).
    """
    lab, sc = _check_binary(labels, scores, "binary_curve")
    return _binary_curve(lab, sc)


def _binary_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = labels[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    return tps.astype(np.int64), fps.astype(np.int64), s[ends]


def image_auroc(labels, scores) -> float:
    """Image-level area under the ROC curve (labels 1 = anomalous, higher score = more anomalous)."""
    lab, sc = _check_binary(labels, scores, "image_auroc")
    return _auroc(lab, sc)


def image_aupr(labels, scores) -> float:
    """Average precision ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct thresholds.

    The step-wise (not trapezoid) area under the precision–recall curve, as scikit-learn's
    ``average_precision_score``; the anomalous class is the positive one. Its chance level is the
    anomaly rate, so unlike AUROC it depends on class balance (see the metrics primer).
    """
    lab, sc = _check_binary(labels, scores, "image_aupr")
    tps, fps, _ = _binary_curve(lab, sc)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    d_recall = np.diff(np.r_[0.0, recall])
    return float(np.sum(d_recall * precision))


def f1_max(labels, scores) -> tuple[float, float]:
    """Best F1 ``2PR/(P+R)`` over all thresholds and the threshold reaching it.

    Returns ``(f1, threshold)``; predicting anomalous for ``score >= threshold`` attains ``f1``
    on the given data. On ties in F1 the highest threshold (fewest positives) is returned.
    """
    lab, sc = _check_binary(labels, scores, "f1_max")
    tps, fps, thr = _binary_curve(lab, sc)
    n_pos = tps[-1]
    f1 = 2.0 * tps / (tps + fps + n_pos)  # = 2PR/(P+R) with P=tp/(tp+fp), R=tp/n_pos
    i = int(np.argmax(f1))
    return float(f1[i]), float(thr[i])


def _confusion(labels: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    tp = int(np.sum(pred & labels))
    fp = int(np.sum(pred & ~labels))
    fn = int(np.sum(~pred & labels))
    tn = int(np.sum(~pred & ~labels))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def precision_recall_f1(labels, scores, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 when ``score >= threshold`` is predicted anomalous.

    Returns ``dict(precision, recall, f1, tp, fp, fn, tn)``. With no predicted positives the
    precision is 0 (scikit-learn's ``zero_division=0``); with no anomalous labels the recall is 0.
    """
    t = _check_threshold(threshold, "precision_recall_f1")
    lab, sc = _check_binary(labels, scores, "precision_recall_f1", need_both=False)
    c = _confusion(lab, sc >= t)
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, **{k: float(v) for k, v in c.items()}}


def tpr_fpr(labels, scores, threshold: float) -> tuple[float, float]:
    """``(TPR, FPR) = (TP/(TP+FN), FP/(FP+TN))`` for ``score >= threshold`` predicted anomalous."""
    t = _check_threshold(threshold, "tpr_fpr")
    lab, sc = _check_binary(labels, scores, "tpr_fpr")
    c = _confusion(lab, sc >= t)
    return c["tp"] / (c["tp"] + c["fn"]), c["fp"] / (c["fp"] + c["tn"])


def classification_ratios(labels, predictions) -> dict[str, float]:
    """Ratio of correctly classified normal and anomalous images (Rotondi & Lavalle, Table 4).

    ``predictions`` are binary decisions (1/True = predicted anomalous), e.g. ``scores > T``.
    Returns ``dict(normal=TN/(TN+FP), anomalous=TP/(TP+FN), mean=…)``: the two rows of Table 4
    and their mean (the table's last column); i.e. specificity, sensitivity and balanced accuracy.
    """
    lab = _check_labels_binary(_as_numpy(labels).ravel(), "classification_ratios")
    pred = _as_numpy(predictions).ravel()
    if pred.shape != lab.shape:
        raise MetricError(f"classification_ratios: {lab.size} labels but {pred.size} predictions")
    if lab.size == 0:
        raise MetricError("classification_ratios: empty input")
    pred = _check_labels_binary(pred, "classification_ratios (predictions)")
    n_pos = int(lab.sum())
    if n_pos == 0 or n_pos == lab.size:
        raise MetricError(
            "classification_ratios: the labels hold one class only; "
            "the ratios need normal and anomalous images"
        )
    c = _confusion(lab, pred)
    normal = c["tn"] / (c["tn"] + c["fp"])
    anomalous = c["tp"] / (c["tp"] + c["fn"])
    return {"normal": normal, "anomalous": anomalous, "mean": 0.5 * (normal + anomalous)}


# ----------------------------------------------------------------------------------------------
# pixel level
# ----------------------------------------------------------------------------------------------
def _check_masks_maps(masks: Any, maps: Any, what: str) -> tuple[np.ndarray, np.ndarray | torch.Tensor]:
    maps = _check_maps(maps, what)
    masks = _as_numpy(masks)
    if masks.shape != tuple(maps.shape):
        raise MetricError(f"{what}: masks {masks.shape} and maps {tuple(maps.shape)} differ in shape")
    masks = _check_labels_binary(masks, f"{what} (masks)")
    return masks, maps


def pixel_auroc(masks, maps) -> float:
    """Pixel-level ROC area over all pixels of all images.

    ``masks`` bool ``[N,H,W]``, ``maps`` ``[N,H,W]`` (float32 maps are ranked in float32).
    """
    masks = _as_numpy(masks)
    maps = _as_numpy(maps)
    if masks.shape != maps.shape:
        raise MetricError(f"pixel_auroc: masks {masks.shape} and maps {maps.shape} differ in shape")
    lab, sc = _check_binary(masks.ravel(), maps.ravel(), "pixel_auroc", keep_float32=True)
    return _auroc(lab, sc)


def iou(masks, maps, threshold: float) -> float:
    """Intersection over union ``|H ∩ G| / |H ∪ G|`` of ``maps >= threshold`` (H) and ``masks`` (G).

    Pooled over all pixels of all images. When both are empty (nothing predicted on defect-free
    images) the segmentation is perfect and 1.0 is returned.
    """
    t = _check_threshold(threshold, "iou")
    g, m = _check_masks_maps(masks, maps, "iou")
    h = _as_numpy(m) >= t
    union = int(np.sum(h | g))
    if union == 0:
        return 1.0
    return float(np.sum(h & g) / union)


_STRUCTURE_2D_IN_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_2D_IN_3D[1] = True  # 8-connectivity inside each image, none across images


def connected_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected ground-truth regions of bool masks ``[N,H,W]`` in one ``ndimage.label`` call.

    Returns ``(labels, areas)``: ``labels`` int32 ``[N,H,W]`` with 0 = background and region ids
    1..R unique over the whole stack (regions never span two images), ``areas[r-1]`` in pixels.
    """
    lab, n = ndimage.label(masks, structure=_STRUCTURE_2D_IN_3D)
    areas = torch.bincount(torch.from_numpy(lab[masks]), minlength=n + 1)[1:].numpy()
    return lab, areas


def _to_torch(x: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def _limit_threshold(scores: torch.Tensor, ids: torch.Tensor, n_neg: int, fpr_limit: float) -> torch.Tensor:
    """A score ``t`` at or below the one where the FPR first reaches ``fpr_limit``.

    Estimated from a strided subsample of the defect-free pixels (a quantile a few standard
    errors past the limit), so that only the entries ``>= t`` need sorting; the caller checks that
    the curve did reach the limit and otherwise falls back to :func:`_exact_limit_threshold`.
    """
    step = max(1, scores.numel() // 262144)
    sub = scores[::step][ids[::step] == 0]
    if sub.numel() < 2048 or fpr_limit >= 0.9:
        return scores.min()
    margin = 5.0 * float(np.sqrt(fpr_limit * (1 - fpr_limit) / sub.numel())) + 0.02
    level = min(1.0, fpr_limit + margin)
    k = max(1, sub.numel() - int(np.ceil(level * sub.numel())))
    return torch.kthvalue(sub, k).values


def _exact_limit_threshold(
    scores: torch.Tensor, ids: torch.Tensor, n_neg: int, fpr_limit: float
) -> torch.Tensor:
    """The ``m``-th largest defect-free score, ``m = floor(limit · n_neg) + 1`` (capped at ``n_neg``)."""
    neg = scores[ids == 0]
    m = min(n_neg, int(np.floor(fpr_limit * n_neg)) + 1)
    return torch.kthvalue(neg, n_neg - m + 1).values


def _overlap_curve(
    scores: torch.Tensor,
    ids: torch.Tensor,
    group_sat: torch.Tensor,
    group_area: torch.Tensor,
    fpr_limit: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (s)PRO curve up to ``fpr_limit``: points ``(FPR_j, overlap_j)`` at every distinct score.

    One entry per defect-free pixel (``ids == 0``; the FPR counts them) and one per
    (pixel, region) membership (``ids`` = 1-based region id ``1..M``). A region's overlap at
    threshold ``t`` is ``min(|{p ∈ A_k : s_p >= t}| / sat_k, 1)``; ``sat_k = |A_k|`` gives the PRO,
    a saturation area the sPRO. The curve's y is the mean over the ``M`` regions. Entry ``j``
    (1-based rank of a pixel inside its region in descending score order) carries the increment
    ``min(j/s_k, 1) − min((j−1)/s_k, 1)`` (``1/|A_k|`` for every entry when ``s_k = |A_k|``);
    cumulative sums over the globally sorted entries, read at the end of each group of tied
    scores, are the exact curve. Only entries above a score where the FPR has passed the limit
    are sorted. Returned points start at the highest score and end at the first FPR ≥ limit.
    """
    n_regions = group_sat.numel()
    n_neg = ids.numel() - int(torch.count_nonzero(ids))
    for exact in (False, True):
        t = (_exact_limit_threshold if exact else _limit_threshold)(scores, ids, n_neg, fpr_limit)
        idx = torch.nonzero(scores >= t).squeeze(1)
        s, order = torch.sort(scores[idx], descending=True)
        grp = ids[idx][order]  # gather in memory order first, then permute the (smaller) selection
        neg = grp == 0
        if bool(torch.equal(group_sat, group_area)):
            # PRO: every membership entry adds 1/|A_k|; a lookup table with 0 for defect-free pixels
            table = torch.cat([group_area.new_zeros(1), 1.0 / group_area])
            dy = table[grp.long()]
        else:
            pos_idx = torch.nonzero(grp).squeeze(1)
            g = grp[pos_idx].long() - 1
            # rank of each membership entry inside its region (1-based), in descending score order
            g_sorted, perm = torch.sort(g, stable=True)
            counts = torch.bincount(g_sorted, minlength=n_regions)
            starts = torch.cumsum(counts, 0) - counts
            rank = torch.empty_like(perm)
            rank[perm] = torch.arange(perm.numel(), device=perm.device) - starts[g_sorted] + 1
            r = rank.to(torch.float64)
            sat = group_sat[g]
            inc = torch.clamp(r / sat, max=1.0) - torch.clamp((r - 1.0) / sat, max=1.0)
            dy = torch.zeros(s.numel(), dtype=torch.float64, device=s.device)
            dy[pos_idx] = inc
        fp = torch.cumsum(neg.to(torch.int64), 0)
        ov = torch.cumsum(dy, 0)
        ends = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
        ends[:-1] = s[1:] != s[:-1]
        fpr = fp[ends].to(torch.float64) / n_neg
        pro = torch.clamp(ov[ends] / n_regions, max=1.0)
        if fpr[-1] >= fpr_limit or int(fp[-1]) == n_neg:
            return fpr, pro
    raise AssertionError("unreachable: the exact limit threshold always reaches the FPR limit")


def _area_to_limit(
    fpr: torch.Tensor, pro: torch.Tensor, limit: float
) -> tuple[float, np.ndarray, np.ndarray]:
    """Trapezoid area under ``(0,0), (fpr, pro)...`` up to ``limit``, linearly interpolated at the
    limit (the official MVTec ``trapezoid(x, y, x_max)``), divided by ``limit``."""
    x = torch.cat([fpr.new_zeros(1), fpr, fpr.new_ones(1)]).cpu().numpy()
    y = torch.cat([pro.new_zeros(1), pro, pro.new_ones(1)]).cpu().numpy()
    inside = x <= limit
    n_in = int(inside.sum())  # points with x <= limit form a prefix (x is non-decreasing)
    xs, ys = x[:n_in], y[:n_in]
    area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
    if xs[-1] < limit:
        x0, y0, x1, y1 = x[n_in - 1], y[n_in - 1], x[n_in], y[n_in]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += 0.5 * (y_lim + y0) * (limit - x0)
        xs, ys = np.r_[xs, limit], np.r_[ys, y_lim]
    return area / limit, xs, ys


def au_pro(
    maps,
    masks,
    fpr_limit: float = 0.3,
    return_curve: bool = False,
    *,
    device: str | torch.device | None = None,
) -> float | tuple[float, np.ndarray, np.ndarray]:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, Sec. 4.2: for a threshold
    ``t`` the PRO is the mean over all 8-connected ground-truth regions ``C_k`` (of all images) of
    ``|{p ∈ C_k : map_p >= t}| / |C_k|``; it is plotted against the FPR over all defect-free pixels
    of all images, the curve integrated with the trapezoid rule up to ``fpr_limit`` (linear
    interpolation at the limit) and normalised by the limit — the official evaluation code's
    conventions, with the exact curve (every distinct score is a threshold).

    ``maps`` float ``[N,H,W]`` (numpy or torch; any device), ``masks`` bool ``[N,H,W]``. With
    ``return_curve=True`` returns ``(au_pro, fpr, pro)`` with the curve points up to the limit.
    ``device``: where to sort (default: the maps' device, CPU for numpy), e.g. ``"cuda"``.
    """
    lim = _check_limit(fpr_limit, "au_pro")
    g, m = _check_masks_maps(masks, maps, "au_pro")
    labels, areas = connected_regions(g)
    if areas.size == 0:
        raise MetricError(
            "au_pro: the masks hold no anomalous pixel; AU-PRO needs at least one defect region"
        )
    if g.all():
        raise MetricError("au_pro: every pixel is anomalous; the FPR needs defect-free pixels")
    dev = _pick_device(device, m)
    mt = _to_torch(m, dev, torch.float64 if _dtype_of(m) == np.float64 else torch.float32).reshape(-1)
    lab = torch.from_numpy(labels.reshape(-1)).to(dev)
    area = torch.from_numpy(areas.astype(np.float64)).to(dev)
    fpr, pro = _overlap_curve(mt, lab, area, area, lim)
    value, xs, ys = _area_to_limit(fpr, pro, lim)
    return (value, xs, ys) if return_curve else value


def _dtype_of(m: np.ndarray | torch.Tensor) -> Any:
    if isinstance(m, torch.Tensor):
        return np.float64 if m.dtype == torch.float64 else np.float32
    return np.float64 if m.dtype == np.float64 else np.float32


def au_spro(
    maps,
    regions: Sequence[Any],
    saturations: Sequence[Sequence[float]],
    fpr_limit: float = 0.05,
    return_curve: bool = False,
    *,
    device: str | torch.device | None = None,
) -> float | tuple[float, np.ndarray, np.ndarray]:
    """Area under the saturated per-region-overlap curve up to ``fpr_limit``, divided by it.

    Bergmann et al., "Beyond Dents and Scratches", IJCV 2022, Eq. 1:
    ``sPRO(t) = 1/m Σ_i min(|A_i ∩ P_t| / s_i, 1)`` over all ``m`` ground-truth defects ``A_i`` of
    all images (one defect = one mask file, *not* split into connected components), ``P_t`` the
    pixels with ``map >= t`` and ``s_i`` the defect's saturation area in pixels. The FPR counts the
    pixels that are defect-free in all of an image's masks, over all images (good images wholly).
    Trapezoid up to ``fpr_limit`` with interpolation at the limit, divided by the limit; exact
    curve (the official code evaluates a finite list of thresholds, whose limit this is).

    ``maps`` ``[N,H,W]``; ``regions`` one bool ``[K_i,H,W]`` per image (``K_i = 0`` for good
    images); ``saturations`` one list of ``K_i`` saturation areas (pixels) per image — a
    saturation larger than the defect's area is clipped to the area (the official
    ``min(threshold, area)``).
    """
    lim = _check_limit(fpr_limit, "au_spro")
    m = _check_maps(maps, "au_spro")
    n, h, w = (int(s) for s in m.shape)
    if len(regions) != n or len(saturations) != n:
        raise MetricError(
            f"au_spro: {n} maps but {len(regions)} region stacks and {len(saturations)} saturation lists"
        )
    free = np.ones((n, h, w), dtype=bool)
    members: list[tuple[int, np.ndarray]] = []  # (image index, bool [H,W]) per defect
    sats: list[float] = []
    for i, (reg, sat) in enumerate(zip(regions, saturations)):
        reg = _as_numpy(reg)
        if reg.size == 0 and len(sat) == 0:
            continue
        if reg.ndim == 2:
            reg = reg[None]
        if reg.ndim != 3 or reg.shape[1:] != (h, w):
            raise MetricError(f"au_spro: regions of image {i} have shape {reg.shape}; expected [K,{h},{w}]")
        reg = _check_labels_binary(reg, f"au_spro (regions of image {i})")
        if len(sat) != reg.shape[0]:
            raise MetricError(
                f"au_spro: image {i} has {reg.shape[0]} defect masks but {len(sat)} saturations"
            )
        free[i] &= ~reg.any(axis=0)
        for k in range(reg.shape[0]):
            area = int(reg[k].sum())
            s = float(sat[k])
            if area == 0:
                raise MetricError(f"au_spro: defect {k} of image {i} has an empty mask")
            if not np.isfinite(s) or s <= 0:
                raise MetricError(
                    f"au_spro: saturation {sat[k]!r} of defect {k} of image {i} must be > 0 pixels"
                )
            members.append((i, reg[k]))
            sats.append(min(s, float(area)))
    if not members:
        raise MetricError("au_spro: no defect masks given; AU-sPRO needs at least one anomalous region")
    if not free.any():
        raise MetricError("au_spro: every pixel belongs to a defect; the FPR needs defect-free pixels")
    dev = _pick_device(device, m)
    mt = _to_torch(m, dev, torch.float64 if _dtype_of(m) == np.float64 else torch.float32)
    free_t = torch.from_numpy(free).to(dev)
    img_idx = torch.tensor([i for i, _ in members], device=dev)
    stack = torch.from_numpy(np.stack([r for _, r in members])).to(dev)  # [M,H,W]
    k_idx, yy, xx = torch.nonzero(stack, as_tuple=True)
    scores = torch.cat([mt[free_t], mt[img_idx[k_idx], yy, xx]])
    n_free = int(free.sum())
    ids = torch.cat([torch.zeros(n_free, dtype=torch.long, device=dev), k_idx.long() + 1])
    sat_t = torch.tensor(sats, dtype=torch.float64, device=dev)
    area_t = torch.tensor([float(r.sum()) for _, r in members], dtype=torch.float64, device=dev)
    fpr, spro = _overlap_curve(scores, ids, sat_t, area_t, lim)
    value, xs, ys = _area_to_limit(fpr, spro, lim)
    return (value, xs, ys) if return_curve else value
