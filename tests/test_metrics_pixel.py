"""Pixel-level metrics: pixel AUROC, IoU, AU-PRO and AU-sPRO.

AU-PRO/AU-sPRO are checked against values computed by hand on small masks, against an
independent slow per-threshold implementation (skimage components, a loop over every distinct
score) and against the official MVTec conventions (8-connectivity, FPR over all defect-free
pixels, trapezoid with interpolation at the limit, normalised by it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import label as sk_label
from sklearn.metrics import roc_auc_score

from iadlib import metrics as M
from iadlib.errors import MetricError


# ---------------------------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------------------------
def _integrate(xs: np.ndarray, ys: np.ndarray, lim: float) -> float:
    xs = np.r_[0.0, xs, 1.0]
    ys = np.r_[0.0, ys, 1.0]
    n = int(np.sum(xs <= lim))
    area = float(np.sum(0.5 * (ys[1 : n] + ys[: n - 1]) * np.diff(xs[:n])))
    if xs[n - 1] < lim:
        y_lim = np.interp(lim, xs[n - 1 : n + 1], ys[n - 1 : n + 1])
        area += 0.5 * (y_lim + ys[n - 1]) * (lim - xs[n - 1])
    return area / lim


def slow_au_pro(maps: np.ndarray, masks: np.ndarray, lim: float) -> float:
    regions = []
    for i in range(len(masks)):
        lab = sk_label(masks[i], connectivity=2)
        regions += [(i, lab == r) for r in range(1, lab.max() + 1)]
    neg = maps[~masks]
    xs, ys = [], []
    for t in np.unique(maps)[::-1]:
        xs.append(np.mean(neg >= t))
        ys.append(np.mean([np.mean(maps[i][r] >= t) for i, r in regions]))
    return _integrate(np.array(xs), np.array(ys), lim)


def slow_au_spro(maps, regions, sats, lim) -> float:
    free = np.stack([~r.any(0) if len(r) else np.ones(maps.shape[1:], bool) for r in regions])
    neg = maps[free]
    defects = [(i, r[k], min(float(s[k]), float(r[k].sum()))) for i, (r, s) in enumerate(zip(regions, sats))
               for k in range(len(r))]
    xs, ys = [], []
    for t in np.unique(maps)[::-1]:
        xs.append(np.mean(neg >= t))
        ys.append(np.mean([min(np.sum(maps[i][a] >= t) / s, 1.0) for i, a, s in defects]))
    return _integrate(np.array(xs), np.array(ys), lim)


def _random_case(seed: int, n: int = 4, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    masks[0, 2:8, 3:9] = True
    masks[1, 10:20, 5:7] = True
    masks[1, 1:3, 20:23] = True
    masks[1, 5, 10] = masks[1, 6, 11] = True  # diagonal neighbours: one 8-connected region
    masks[3, 15:17, 15:17] = True
    maps = rng.random((n, size, size)).round(2) + masks * rng.uniform(0.1, 0.6)  # ties via rounding
    return maps, masks


# ---------------------------------------------------------------------------------------------
# pixel AUROC and IoU
# ---------------------------------------------------------------------------------------------
def test_pixel_auroc_matches_sklearn():
    maps, masks = _random_case(0)
    assert M.pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)


def test_iou_hand_computed():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :2] = True  # 4 pixels
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :1] = 1.0  # 2 of them
    maps[1, 3, 3] = 1.0  # one false positive on a good image
    assert M.iou(masks, maps, 0.5) == pytest.approx(2 / 5)
    assert M.iou(np.zeros((1, 3, 3), bool), np.zeros((1, 3, 3)), 0.5) == 1.0


# ---------------------------------------------------------------------------------------------
# AU-PRO: hand-computed values
# ---------------------------------------------------------------------------------------------
def _square_case() -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 4:6, 4:6] = True  # one 2x2 region, 96 normal pixels
    maps = np.zeros((1, 10, 10))
    maps[0, 4, 4:6] = 1.0  # half of the region at 1.0
    maps[0, 5, 4:6] = 0.5  # the other half at 0.5
    return maps, masks


def test_au_pro_single_square_region():
    maps, masks = _square_case()
    normal = np.flatnonzero(~masks.ravel())
    flat = maps.reshape(-1)
    flat[normal[:24]] = 0.5  # 24 of 96 normal pixels tie with the region's lower half: FPR 0.25
    # curve: (0, 0.5) at t=1, (0.25, 1) at t=0.5, (1, 1) at t=0 → area to 0.3 = 0.25*0.75 + 0.05*1
    assert M.au_pro(maps, masks) == pytest.approx((0.25 * 0.75 + 0.05) / 0.3, abs=1e-12)
    # 48 normal pixels at 0.7 (FPR 0.5) sit between the halves: PRO stays 0.5 up to the limit
    maps2, _ = _square_case()
    maps2.reshape(-1)[normal[:48]] = 0.7
    assert M.au_pro(maps2, masks) == pytest.approx(0.5, abs=1e-12)


def test_au_pro_two_regions_of_different_sizes():
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 2:6, 2:6] = True  # 16 px
    masks[0, 15, 15:17] = True  # 2 px
    small_found = masks.astype(float) * 0
    small_found[0, 15, 15:17] = 1.0
    large_found = np.zeros_like(small_found)
    large_found[0, 2:6, 2:6] = 1.0
    # PRO weights regions equally: (0, 0.5) → (1, 1); y(0.3) = 0.65 → 0.5*(0.5+0.65)*0.3/0.3
    for m in (small_found, large_found):
        assert M.au_pro(m, masks) == pytest.approx(0.5 * (0.5 + 0.65), abs=1e-12)
    # pixel AUROC weights pixels: it prefers the map that finds the large region
    assert M.pixel_auroc(masks, small_found) == pytest.approx(2 / 18 + 0.5 * 16 / 18)
    assert M.pixel_auroc(masks, large_found) == pytest.approx(16 / 18 + 0.5 * 2 / 18)


def test_au_pro_eight_connectivity():
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2, 2] = masks[0, 3, 3] = True  # diagonal neighbours: one region under 8-connectivity
    maps = np.zeros((1, 8, 8))
    maps[0, 2, 2] = 1.0
    # one region half found: (0, 0.5) → (1,1); with 4-connectivity it would be (0+1)/2 as well, so
    # also check the region count directly
    _, areas = M.connected_regions(masks)
    assert areas.tolist() == [2]
    assert M.au_pro(maps, masks) == pytest.approx(0.5 * (0.5 + 0.65))


def test_au_pro_empty_maps_and_good_images():
    maps, masks = _square_case()
    const = np.zeros_like(maps)
    # a constant map gives the single point (1, 1): the diagonal → area lim²/2, divided by lim
    assert M.au_pro(const, masks) == pytest.approx(0.15, abs=1e-12)
    assert M.au_pro(const, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    # adding a defect-free (good) image only adds normal pixels to the FPR
    normal = np.flatnonzero(~masks.ravel())
    maps.reshape(-1)[normal[:24]] = 0.5
    maps2 = np.concatenate([maps, np.zeros((1, 10, 10))])
    masks2 = np.concatenate([masks, np.zeros((1, 10, 10), bool)])
    x = 24 / 196
    expected = (0.5 * (0.5 + 1.0) * x + (0.3 - x)) / 0.3
    assert M.au_pro(maps2, masks2) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(MetricError, match="no anomalous pixel"):
        M.au_pro(maps, np.zeros_like(masks))


def test_au_pro_return_curve():
    maps, masks = _square_case()
    value, fpr, pro = M.au_pro(maps, masks, return_curve=True)
    assert fpr[0] == 0 and fpr[-1] == pytest.approx(0.3)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(value)


# ---------------------------------------------------------------------------------------------
# AU-PRO: against the slow reference, invariances, devices, errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("lim", [0.3, 0.05, 1.0])
def test_au_pro_matches_slow_reference(seed, lim):
    maps, masks = _random_case(seed)
    assert M.au_pro(maps, masks, fpr_limit=lim) == pytest.approx(slow_au_pro(maps, masks, lim), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    masks=arrays(bool, (2, 7, 7)),
    maps=arrays(np.int8, (2, 7, 7), elements=st.integers(0, 5)),  # few levels: many ties
    lim=st.sampled_from([0.01, 0.05, 0.3, 0.77, 1.0]),
)
def test_au_pro_property_matches_slow_reference(masks, maps, lim):
    assume(masks.any() and not masks.all())
    maps = maps.astype(np.float64)
    assert M.au_pro(maps, masks, fpr_limit=lim) == pytest.approx(slow_au_pro(maps, masks, lim), abs=1e-9)


def test_au_pro_large_maps_with_biased_subsample():
    """Maps large enough for the subsampled limit estimate, built so that the strided subsample
    sees only high normal scores: the exact fallback must give the same value as a full sort."""
    n, size = 8, 256
    rng = np.random.default_rng(0)
    maps = rng.random((n, size, size)).astype(np.float32)
    flat = maps.reshape(-1)
    flat[::2] += 1.0  # the stride-2 subsample sees only the high half
    masks = np.zeros((n, size, size), bool)
    masks[:, 100:120, 30:60] = True
    maps[masks] += 0.3
    got = M.au_pro(maps, masks)
    # reference: the whole curve by one full sort in numpy
    lab, areas = M.connected_regions(masks)
    order = np.argsort(-maps.ravel(), kind="stable")
    s = maps.ravel()[order]
    l_ = lab.ravel()[order]
    w = np.where(l_ > 0, 1.0 / np.r_[1, areas][l_], 0.0) / len(areas)
    ends = np.r_[s[1:] != s[:-1], True]
    fpr = np.cumsum(l_ == 0)[ends] / np.sum(lab == 0)
    pro = np.cumsum(w)[ends]
    assert got == pytest.approx(_integrate(fpr, pro, 0.3), abs=1e-9)


def test_au_pro_invariant_to_monotone_transforms():
    maps, masks = _random_case(3)
    ref = M.au_pro(maps, masks)
    for f in (np.exp, lambda x: 5 * x - 2, np.sqrt):
        assert M.au_pro(f(maps), masks) == pytest.approx(ref, abs=1e-12)
    assert M.pixel_auroc(masks, np.exp(maps)) == pytest.approx(M.pixel_auroc(masks, maps), abs=1e-12)


def test_au_pro_torch_and_dtypes():
    maps, masks = _random_case(4)
    ref = M.au_pro(maps, masks)
    assert M.au_pro(torch.from_numpy(maps), torch.from_numpy(masks)) == pytest.approx(ref, abs=1e-12)
    assert M.au_pro(maps, masks, device="cpu") == pytest.approx(ref, abs=1e-12)
    f32 = maps.astype(np.float32)
    assert M.au_pro(f32, masks) == pytest.approx(slow_au_pro(f32.astype(np.float64), masks, 0.3), abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_au_pro_cuda_matches_cpu():
    maps, masks = _random_case(5)
    assert M.au_pro(maps, masks, device="cuda") == pytest.approx(M.au_pro(maps, masks), abs=1e-9)


def test_au_pro_errors():
    maps, masks = _random_case(0)
    with pytest.raises(MetricError, match="differ in shape"):
        M.au_pro(maps[:, :10], masks)
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(MetricError, match="NaN"):
        M.au_pro(bad, masks)
    with pytest.raises(MetricError, match="fpr_limit"):
        M.au_pro(maps, masks, fpr_limit=0.0)
    with pytest.raises(MetricError, match="\\[N,H,W\\]"):
        M.au_pro(maps[0], masks[0])
    with pytest.raises(MetricError, match="defect-free"):
        M.au_pro(maps, np.ones_like(masks))


# ---------------------------------------------------------------------------------------------
# AU-sPRO
# ---------------------------------------------------------------------------------------------
def _one_defect(found: int, sat: float):
    region = np.zeros((1, 10, 10), bool)
    region[0, 2:6, 2:6] = True  # 16 px
    maps = np.zeros((1, 10, 10))
    maps[0].reshape(-1)[np.flatnonzero(region[0].ravel())[:found]] = 1.0
    return maps, [region], [[sat]]


def test_au_spro_saturation_reached():
    maps, regions, sats = _one_defect(found=8, sat=8)
    # 8 of 16 pixels found with saturation 8: sPRO = 1 at FPR 0 → AU-sPRO = 1
    assert M.au_spro(maps, regions, sats) == pytest.approx(1.0)
    # the PRO of the same map only reaches 0.5 before the FPR jumps to 1
    assert M.au_pro(maps, regions[0]) == pytest.approx(0.5 * (0.5 + 0.5 + 0.5 * 0.3))


def test_au_spro_saturation_not_reached():
    maps, regions, sats = _one_defect(found=4, sat=8)
    # sPRO 4/8 = 0.5 at FPR 0, then (1, 1): y(0.05) = 0.525 → 0.5*(0.5+0.525)*0.05/0.05
    assert M.au_spro(maps, regions, sats) == pytest.approx(0.5 * (0.5 + 0.525))
    # a saturation above the defect's area is clipped to the area (official min(thr, area))
    assert M.au_spro(maps, regions, [[100.0]]) == pytest.approx(M.au_spro(maps, regions, [[16.0]]))


def test_au_spro_defect_is_one_mask_not_components():
    region = np.zeros((1, 12, 12), bool)
    region[0, 1:3, 1:4] = True  # 6 px
    region[0, 9, 9:11] = True  # 2 px, same defect (one mask file)
    maps = np.zeros((1, 12, 12))
    maps[0, 9, 9:11] = 1.0  # find the small blob only
    # sPRO with saturation = area: 2/8 = 0.25 at FPR 0; PRO splits into components: (0+1)/2
    assert M.au_spro(maps, [region], [[8.0]], fpr_limit=1.0) == pytest.approx(0.5 * (0.25 + 1.0))
    assert M.au_pro(maps, region, fpr_limit=1.0) == pytest.approx(0.5 * (0.5 + 1.0))


def test_au_spro_good_images_overlaps_and_reference():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 16, 16)).round(2)
    r0 = np.zeros((2, 16, 16), bool)
    r0[0, 2:8, 2:8] = True
    r0[1, 5:10, 5:12] = True  # overlaps defect 0: shared pixels count for both
    r2 = np.zeros((1, 16, 16), bool)
    r2[0, 10:14, 1:3] = True
    regions = [r0, np.zeros((0, 16, 16), bool), r2, np.zeros((0, 16, 16), bool)]
    sats = [[20.0, 10.0], [], [100.0]]  # the last is clipped to its area (8)
    sats.append([])
    maps[0][r0.any(0)] += 0.4
    maps[2][r2[0]] += 0.2
    for lim in (0.05, 0.3, 1.0):
        assert M.au_spro(maps, regions, sats, fpr_limit=lim) == pytest.approx(
            slow_au_spro(maps, regions, sats, lim), abs=1e-9
        )
    # all-normal images only: no defect → error
    with pytest.raises(MetricError, match="no defect"):
        M.au_spro(maps[[1, 3]], [regions[1], regions[3]], [[], []])


def test_au_spro_equals_au_pro_for_components_with_area_saturation():
    maps, masks = _random_case(6)
    regions, sats = [], []
    for m in masks:
        lab = sk_label(m, connectivity=2)
        r = np.zeros((0, *m.shape), bool)
        if lab.max():
            r = np.stack([lab == k for k in range(1, lab.max() + 1)])
        regions.append(r)
        sats.append([float(x.sum()) for x in r])
    for lim in (0.05, 0.3):
        expected = M.au_pro(maps, masks, lim)
        assert M.au_spro(maps, regions, sats, fpr_limit=lim) == pytest.approx(expected, abs=1e-12)


def test_au_spro_constant_maps_and_errors():
    maps, regions, sats = _one_defect(found=0, sat=8)
    assert M.au_spro(maps, regions, sats, fpr_limit=0.05) == pytest.approx(0.025)
    with pytest.raises(MetricError, match="1 defect masks but 2 saturations"):
        M.au_spro(maps, regions, [[8, 8]])
    with pytest.raises(MetricError, match="must be > 0"):
        M.au_spro(maps, regions, [[0.0]])
    with pytest.raises(MetricError, match="1 maps but 2 region stacks"):
        M.au_spro(maps, regions * 2, sats * 2)
    with pytest.raises(MetricError, match="expected \\[K,10,10\\]"):
        M.au_spro(maps, [np.zeros((1, 5, 5), bool)], sats)
    bad = maps.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(MetricError, match="NaN or inf"):
        M.au_spro(bad, regions, sats)
