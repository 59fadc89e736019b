"""Calibration maps, ECE and reliability curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.calibration import calibration_curve  # noqa: E402

from iadlib.calibration import (  # noqa: E402
    BoundedSigmoid,
    HistogramBinning,
    IsotonicCalibrator,
    PlattScaler,
    expected_calibration_error,
    plot_reliability,
    reliability_curve,
)
from iadlib.errors import ConfigError, MetricError  # noqa: E402

CALIBRATORS = [PlattScaler, IsotonicCalibrator, HistogramBinning, BoundedSigmoid]


def _scores(seed: int, n: int, sep: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Log-normal anomaly scores: heavy-tailed and far from probabilities."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    return np.exp(rng.normal(size=n) + sep * y), y.astype(int)


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_probabilities_in_unit_interval_and_monotone(cls):
    s, y = _scores(0, 400)
    cal = cls().fit(s, y)
    grid = np.linspace(s.min() - 5, s.max() + 5, 500)
    p = cal.predict_proba(grid)
    assert p.min() >= 0 and p.max() <= 1
    if cls is HistogramBinning:  # bin frequencies need not be monotone: a step function of ≤ 10 levels
        assert len(np.unique(p)) <= 10
    else:
        assert np.all(np.diff(p) >= -1e-12)  # non-decreasing in the score


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_ece_improves_on_held_out_data(cls):
    s_cal, y_cal = _scores(1, 1500)
    s_test, y_test = _scores(2, 4000)
    raw = (s_test - s_test.min()) / (s_test.max() - s_test.min())  # min–max "probabilities"
    before = expected_calibration_error(raw, y_test)
    after = expected_calibration_error(cls().fit(s_cal, y_cal).predict_proba(s_test), y_test)
    assert after < 0.5 * before
    assert after < 0.08


def test_ece_and_reliability_against_hand_values_and_sklearn():
    p = np.array([0.05, 0.15, 0.15, 0.85, 0.95, 1.0])
    y = np.array([0, 0, 1, 1, 1, 1])
    df = reliability_curve(p, y, n_bins=2)  # bins [0, .5) and [.5, 1]
    assert df["count"].tolist() == [3, 3]
    assert df["frac_anomalous"].tolist() == pytest.approx([1 / 3, 1.0])
    ece = 3 / 6 * abs(1 / 3 - (0.05 + 0.3) / 3) + 3 / 6 * abs(1 - (0.85 + 0.95 + 1.0) / 3)
    assert expected_calibration_error(p, y, n_bins=2) == pytest.approx(ece)
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = rng.random(500) < p
    frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
    df = reliability_curve(p, y, 10).dropna()
    assert df["frac_anomalous"].to_numpy() == pytest.approx(frac)
    assert df["mean_prob"].to_numpy() == pytest.approx(mean)
    assert expected_calibration_error(y.astype(float), y) == 0.0


def test_platt_with_0_1_targets_is_a_step_on_separated_scores_bounded_sigmoid_is_not():
    rng = np.random.default_rng(4)
    s = np.r_[rng.normal(0, 1, 60), rng.normal(8, 1, 20)]
    y = np.r_[np.zeros(60), np.ones(20)]
    assert s[y == 0].max() < s[y == 1].min()
    step = PlattScaler(smoothed_targets=False).fit(s, y)
    bs = BoundedSigmoid().fit(s, y)
    assert bs.separated_
    assert (bs.low_, bs.high_) == (pytest.approx(1 / 62), pytest.approx(21 / 22))
    mid = np.array([s[y == 0].max(), 4.0, s[y == 1].min()])
    p_step = step.predict_proba(mid)
    p_bs = bs.predict_proba(mid)
    # plain logistic regression saturates to ~0/1 on the training scores
    assert step.predict_proba(s[y == 1]).min() > 1 - 1e-6
    # the bounded sigmoid never claims more than the rule of succession allows …
    assert p_bs.min() >= bs.low_ and p_bs.max() <= bs.high_
    assert bs.predict_proba(np.array([1e6]))[0] == pytest.approx(bs.high_)
    # … and it is the Gaussian-posterior sigmoid: slope (μ₊−μ₋)/s² in raw score units
    pos, neg = s[y == 1], s[y == 0]
    var = (np.sum((pos - pos.mean()) ** 2) + np.sum((neg - neg.mean()) ** 2)) / (len(s) - 2)
    assert bs.a_ / bs.scale_ == pytest.approx((pos.mean() - neg.mean()) / var)
    assert np.all(np.diff(p_bs) > 0) and np.all(np.isfinite(p_step))


def test_bounded_sigmoid_overlapping_classes_is_a_maximum_likelihood_fit():
    s, y = _scores(5, 800)
    bs = BoundedSigmoid().fit(s, y)
    assert not bs.separated_
    z = (s - bs.mean_) / bs.scale_

    def nll(a, b):
        q = bs.low_ + (bs.high_ - bs.low_) / (1 + np.exp(-(a * z + b)))
        return -np.sum(y * np.log(q) + (1 - y) * np.log(1 - q))

    best = nll(bs.a_, bs.b_)
    for da, db in [(0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)]:
        assert nll(bs.a_ + da, bs.b_ + db) >= best - 1e-9


def test_histogram_binning_values():
    s = np.array([1, 2, 3, 4, 5, 6, 7, 8], float)
    y = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    hb = HistogramBinning(n_bins=2).fit(s, y)
    got = hb.predict_proba(np.array([0.0, 2.5, 6.5, 100.0]))
    assert got.tolist() == pytest.approx([0.25, 0.25, 0.75, 0.75])


def test_plot_reliability_draws():
    s, y = _scores(6, 300)
    fig, ax = plt.subplots()
    plot_reliability(ax, PlattScaler().fit(s, y).predict_proba(s), y, label="Platt")
    assert "ECE" in ax.get_legend().get_texts()[0].get_text()
    plt.close(fig)


def test_errors():
    with pytest.raises(MetricError, match="one class"):
        PlattScaler().fit([1, 2, 3], [0, 0, 0])
    with pytest.raises(MetricError, match="NaN"):
        IsotonicCalibrator().fit([1, np.nan], [0, 1])
    with pytest.raises(MetricError, match="fit\\(\\) first"):
        HistogramBinning().predict_proba([0.5])
    with pytest.raises(MetricError, match="\\[0, 1\\]"):
        expected_calibration_error([0.2, 1.3], [0, 1])
    with pytest.raises(MetricError, match="2 labels but 3 scores"):
        reliability_curve([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ConfigError, match="strategy"):
        HistogramBinning(strategy="kmeans")
    with pytest.raises(ConfigError, match="low < high"):
        BoundedSigmoid(bounds=(0.9, 0.1))
