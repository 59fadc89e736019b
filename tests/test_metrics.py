"""Image-level metrics against scikit-learn, hand-computed values and error cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from iadlib import metrics as M
from iadlib.errors import MetricError


def _data(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    s = rng.normal(size=n) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many tied scores
    return y.astype(int), s


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_auroc_aupr_match_sklearn(seed, ties):
    y, s = _data(seed, ties=ties)
    assert M.image_auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.image_aupr(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed,ties", [(0, False), (3, True)])
def test_f1_max_matches_precision_recall_curve(seed, ties):
    y, s = _data(seed, ties=ties)
    p, r, thr = skm.precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        f = np.nan_to_num(2 * p * r / (p + r))
    f1, t = M.f1_max(y, s)
    assert f1 == pytest.approx(f.max(), abs=1e-12)
    # the returned threshold attains it
    assert skm.f1_score(y, s >= t) == pytest.approx(f1, abs=1e-12)


def test_precision_recall_f1_and_tpr_fpr_match_sklearn():
    y, s = _data(4, ties=True)
    for t in (-0.5, 0.3, 1.0, 5.0):
        d = M.precision_recall_f1(y, s, t)
        pred = s >= t
        assert d["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
        assert d["recall"] == pytest.approx(skm.recall_score(y, pred))
        assert d["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0))
        assert d["tp"] + d["fp"] + d["fn"] + d["tn"] == len(y)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    for i in (1, 5, len(thr) // 2, len(thr) - 1):
        assert M.tpr_fpr(y, s, thr[i]) == pytest.approx((tpr[i], fpr[i]), abs=1e-12)


def test_hand_computed_values():
    y = [0, 0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.4]
    # pairs (pos, neg): 0.8 beats all 3; 0.4 beats 0.1 and 0.35, ties 0.4 → (3 + 2 + 0.5) / 6
    assert M.image_auroc(y, s) == pytest.approx(5.5 / 6)
    # thresholds 0.8: P=1 R=.5 ; 0.4: P=2/3 R=1 → AP = .5*1 + .5*2/3
    assert M.image_aupr(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    f1, t = M.f1_max(y, s)
    assert (f1, t) == (pytest.approx(0.8), 0.4)  # at 0.4: P=2/3, R=1 → F1=0.8
    d = M.precision_recall_f1(y, s, 0.4)
    assert (d["tp"], d["fp"], d["fn"], d["tn"]) == (2, 1, 0, 2)


def test_classification_ratios_table4():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    pred = np.array([0, 1, 0, 0, 1, 0, 1])
    r = M.classification_ratios(labels, pred)
    assert r["normal"] == pytest.approx(3 / 4)
    assert r["anomalous"] == pytest.approx(2 / 3)
    assert r["mean"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    perfect = M.classification_ratios(labels, labels.astype(bool))
    assert perfect == {"normal": 1.0, "anomalous": 1.0, "mean": 1.0}


def test_invariance_to_monotone_transforms():
    y, s = _data(5, ties=True)
    for f in (np.exp, lambda x: 3 * x + 7, lambda x: np.arctan(x)):
        assert M.image_auroc(y, f(s)) == pytest.approx(M.image_auroc(y, s), abs=1e-12)
        assert M.image_aupr(y, f(s)) == pytest.approx(M.image_aupr(y, s), abs=1e-12)
        assert M.f1_max(y, f(s))[0] == pytest.approx(M.f1_max(y, s)[0], abs=1e-12)


def test_torch_inputs():
    y, s = _data(6)
    assert M.image_auroc(torch.tensor(y), torch.tensor(s)) == pytest.approx(M.image_auroc(y, s))


@pytest.mark.parametrize(
    "fn", [M.image_auroc, M.image_aupr, M.f1_max, lambda y, s: M.tpr_fpr(y, s, 0.5)]
)
def test_errors(fn):
    with pytest.raises(MetricError, match="one class"):
        fn([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="one class"):
        fn([1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="3 labels but 2 scores"):
        fn([0, 1, 1], [0.1, 0.2])
    with pytest.raises(MetricError, match="NaN"):
        fn([0, 1], [0.1, np.nan])
    with pytest.raises(MetricError, match="empty"):
        fn([], [])
    with pytest.raises(MetricError, match="0 \\(normal\\) or 1"):
        fn([0, 2], [0.1, 0.2])


def test_ratio_and_threshold_errors():
    with pytest.raises(MetricError, match="one class"):
        M.classification_ratios([1, 1], [1, 0])
    with pytest.raises(MetricError, match="2 labels but 3 predictions"):
        M.classification_ratios([0, 1], [1, 0, 1])
    with pytest.raises(MetricError, match="threshold is NaN"):
        M.precision_recall_f1([0, 1], [0.1, 0.2], float("nan"))
