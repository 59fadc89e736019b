"""Running threshold (Eq. 6 of the autoencoder paper), F1-optimal threshold, threshold at an FPR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from iadlib.errors import ConfigError, MetricError
from iadlib.thresholds import RunningThreshold, f1_optimal_threshold, threshold_at_fpr


def _stats(batches):
    mu = np.mean([np.mean(b) for b in batches])
    sd = np.mean([np.std(b, ddof=1) for b in batches])
    return mu, sd


def test_running_threshold_follows_eq6():
    rng = np.random.default_rng(0)
    alpha, beta = 0.3, 0.5
    rt = RunningThreshold(alpha, beta)
    expected = None
    for epoch in range(5):
        batches = [rng.gamma(2.0, 1.0 / (epoch + 1), size=16) for _ in range(4)]
        mu, sd = _stats(batches)
        target = mu + beta * sd
        # T_1 = μ_1 + βσ_1 (T_0 := first estimate); then T_i = (1−α)T_{i−1} + α(μ_i + βσ_i)
        expected = target if expected is None else (1 - alpha) * expected + alpha * target
        got = rt.update(batches)
        assert got == pytest.approx(expected, rel=1e-12)
    assert rt.history["__all__"][-1] == pytest.approx(expected)
    assert rt.epoch == 5


def test_running_threshold_batch_split_and_init():
    errors = np.arange(8, dtype=float)  # batches [0..3], [4..7]: means 1.5, 5.5; std sqrt(5/3) each
    rt = RunningThreshold(alpha=0.5, beta=-0.5, init=0.0)
    t = rt.update(errors, batch_size=4)
    assert t == pytest.approx(0.5 * 0.0 + 0.5 * (3.5 - 0.5 * np.sqrt(5 / 3)))
    # streaming API gives the same
    rt2 = RunningThreshold(alpha=0.5, beta=-0.5, init=0.0)
    rt2.add_batch(errors[:4])
    rt2.add_batch(errors[4:])
    assert rt2.end_epoch() == pytest.approx(t)


def test_running_threshold_per_class_and_predict():
    rt = RunningThreshold(alpha=1.0, beta=0.0)  # α = 1: T_i = μ_i
    errors = np.array([1.0, 1.2, 10.0, 11.0, 0.8, 12.0])
    classes = np.array(["a", "a", "b", "b", "a", "b"])
    rt.update([errors[:4], errors[4:]], classes=[classes[:4], classes[4:]])
    # class a: batches [1.0, 1.2] and [0.8] → mean of batch means (1.1 + 0.8)/2
    assert rt.threshold_of("a") == pytest.approx((1.1 + 0.8) / 2)
    assert rt.threshold_of("b") == pytest.approx((10.5 + 12.0) / 2)
    assert rt.threshold == pytest.approx((np.mean(errors[:4]) + np.mean(errors[4:])) / 2)
    dec = rt.predict([1.0, 1.0, 11.0, 12.0], classes=["a", "b", "b", "b"])
    assert dec.tolist() == [True, False, False, True]
    # integer classes given as torch tensors (as a Mixer autoencoder's classifier would output)
    rt_int = RunningThreshold(alpha=1.0, beta=0.0)
    rt_int.update(torch.tensor([1.0, 2.0, 10.0, 20.0]), classes=torch.tensor([0, 0, 1, 1]))
    assert rt_int.threshold_of(1) == pytest.approx(15.0)
    assert rt_int.predict(torch.tensor([1.6, 16.0]), classes=torch.tensor([0, 1])).tolist() == [True, True]
    with pytest.raises(MetricError, match="no threshold for class 'c'"):
        rt.threshold_of("c")
    state = rt.state_dict()
    rt2 = RunningThreshold()
    rt2.load_state_dict(state)
    assert rt2.threshold_of("b") == rt.threshold_of("b")


def test_running_threshold_errors():
    with pytest.raises(ConfigError, match="beta"):
        RunningThreshold(0.1, 1.0)
    with pytest.raises(ConfigError, match="alpha"):
        RunningThreshold(0.0, 0.1)
    rt = RunningThreshold()
    with pytest.raises(MetricError, match="no epoch"):
        _ = rt.threshold
    with pytest.raises(MetricError, match="NaN"):
        rt.update([1.0, np.nan])
    with pytest.raises(MetricError, match="no batch"):
        rt.end_epoch()


def test_f1_optimal_threshold():
    rng = np.random.default_rng(1)
    y = rng.random(200) < 0.4
    s = rng.normal(size=200) + 1.5 * y
    t = f1_optimal_threshold(y, s)
    best = max(f1_score(y, s >= c) for c in np.unique(s))
    assert f1_score(y, s >= t) == pytest.approx(best)


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.1, 0.37, 1.0])
def test_threshold_at_fpr_is_lowest_feasible(fpr):
    rng = np.random.default_rng(2)
    normals = np.round(rng.normal(size=500), 1)  # ties
    t = threshold_at_fpr(normals, fpr)
    assert np.mean(normals >= t) <= fpr + 1e-12
    # any lower distinct value violates the constraint (recall cannot be increased)
    lower = np.unique(normals)[np.unique(normals) < t]
    if lower.size:
        assert np.mean(normals >= lower[-1]) > fpr


def test_threshold_at_fpr_hand_values_and_errors():
    assert threshold_at_fpr(np.arange(1, 11), 0.2) == 9.0  # 9 and 10 are the 2 allowed false positives
    assert threshold_at_fpr([1, 2, 2, 3], 0.25) == 3.0  # 2 is tied twice: cannot stop at 2
    assert threshold_at_fpr([1, 2, 3], 0.0) > 3.0
    with pytest.raises(MetricError, match="fpr must be in"):
        threshold_at_fpr([1, 2], 1.5)
    with pytest.raises(MetricError, match="no normal"):
        threshold_at_fpr([], 0.1)
