"""Turning anomaly scores into calibrated probabilities of "anomalous".

The calibration maps reviewed in Saghir's LOCO thesis (§2.4, after Guo et al., "On Calibration of
Modern Neural Networks", ICML 2017) and the thesis' bounded sigmoid (§4.3.4):

* :class:`PlattScaler` — ``q = σ(a·z + b)`` fitted by maximum likelihood (Platt 1999), by default
  with Platt's smoothed targets;
* :class:`IsotonicCalibrator` — a monotone step function (pool-adjacent-violators; Zadrozny &
  Elkan 2002);
* :class:`HistogramBinning` — one frequency ``θ_m`` per score bin (Zadrozny & Elkan 2001);
* :class:`BoundedSigmoid` — a sigmoid bounded away from 0 and 1 for categories whose scores
  separate normal and anomalous images perfectly, where the maximum-likelihood sigmoid is a step.

Each has ``.fit(scores, labels)`` (returns ``self``) and ``.predict_proba(scores)`` → values in
[0, 1]. :func:`expected_calibration_error`, :func:`reliability_curve` and
:func:`plot_reliability` measure and draw calibration.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .errors import ConfigError, MetricError
from .metrics import _check_binary

__all__ = [
    "PlattScaler",
    "IsotonicCalibrator",
    "HistogramBinning",
    "BoundedSigmoid",
    "expected_calibration_error",
    "reliability_curve",
    "plot_reliability",
]


def _scores(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    s = np.asarray(x, dtype=np.float64).ravel()
    if s.size == 0:
        raise MetricError(f"{what}: empty input")
    if not np.isfinite(s).all():
        raise MetricError(f"{what}: scores contain NaN or inf ({int((~np.isfinite(s)).sum())} values)")
    return s


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def _fit_logistic(
    z: np.ndarray, t: np.ndarray, max_iter: int = 100, tol: float = 1e-10
) -> tuple[float, float]:
    """Minimise the cross-entropy ``−Σ t log σ(az+b) + (1−t) log(1−σ(az+b))`` over ``(a, b)``.

    Newton's method with backtracking line search (Lin, Lin & Weng, "A note on Platt's
    probabilistic outputs", 2007). ``z`` should be standardised; ``t`` are targets in [0, 1].
    With 0/1 targets on perfectly separated scores the optimum is at infinity: the iterations stop
    at ``max_iter`` with a very steep sigmoid (the step curve the thesis describes).
    """
    a, b = 0.0, float(np.log((t.sum() + 1e-12) / (t.size - t.sum() + 1e-12)))

    def loss(a_: float, b_: float) -> float:
        f = a_ * z + b_
        # log(1+exp(f)) − t·f, stable
        return float(np.sum(np.logaddexp(0.0, f) - t * f))

    cur = loss(a, b)
    for _ in range(max_iter):
        p = _sigmoid(a * z + b)
        d = p - t
        g = np.array([np.sum(d * z), np.sum(d)])
        w = p * (1 - p) + 1e-12
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(h, g)
        lam = 1.0
        while lam > 1e-10:
            na, nb = a - lam * step[0], b - lam * step[1]
            new = loss(na, nb)
            if new < cur + 1e-4 * lam * float(g @ -step):
                break
            lam /= 2
        else:
            break
        a, b = na, nb
        if abs(cur - new) < tol * max(1.0, abs(cur)):
            cur = new
            break
        cur = new
    return a, b


class _Calibrator:
    """Common input handling: scores are standardised with the training mean and std."""

    fitted_: bool = False

    def fit(self, scores: Any, labels: Any) -> _Calibrator:
        y, s = _check_binary(labels, scores, f"{type(self).__name__}.fit")
        self.mean_ = float(s.mean())
        self.scale_ = float(s.std()) or 1.0
        self._fit((s - self.mean_) / self.scale_, y.astype(np.float64))
        self.fitted_ = True
        return self

    def predict_proba(self, scores: Any) -> np.ndarray:
        """Calibrated probability that each score belongs to an anomalous sample, in [0, 1]."""
        if not self.fitted_:
            raise MetricError(f"{type(self).__name__}.predict_proba: call fit() first")
        s = _scores(scores, f"{type(self).__name__}.predict_proba")
        return np.clip(self._predict((s - self.mean_) / self.scale_), 0.0, 1.0)

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class PlattScaler(_Calibrator):
    """Platt scaling ``q = σ(a·z + b)`` (Platt 1999; Guo et al. 2017, §4.1; LOCO thesis §2.4).

    ``(a, b)`` maximise the likelihood of the calibration labels. With ``smoothed_targets=True``
    (Platt's original recipe) the labels are replaced by ``t₊ = (N₊+1)/(N₊+2)`` and
    ``t₋ = 1/(N₋+2)``, which keeps ``(a, b)`` finite; with ``False`` (plain logistic regression as
    in Guo et al. and the thesis) perfectly separated scores give a step function.
    """

    def __init__(self, smoothed_targets: bool = True, max_iter: int = 100):
        self.smoothed_targets = smoothed_targets
        self.max_iter = max_iter

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        t = y.copy()
        if self.smoothed_targets:
            n_pos, n_neg = y.sum(), y.size - y.sum()
            t[y == 1] = (n_pos + 1) / (n_pos + 2)
            t[y == 0] = 1 / (n_neg + 2)
        self.a_, self.b_ = _fit_logistic(z, t, self.max_iter)

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a_ * z + self.b_)


class IsotonicCalibrator(_Calibrator):
    """Isotonic regression: the non-decreasing step function closest to the labels in squared
    error (pool-adjacent-violators; Zadrozny & Elkan 2002; Guo et al. 2017, §4.1)."""

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        self.iso_ = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(z, y)

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return self.iso_.predict(z)


class HistogramBinning(_Calibrator):
    """Histogram binning (Zadrozny & Elkan 2001; Guo et al. 2017, §4.1).

    The calibration scores are split into ``n_bins`` bins (``strategy="quantile"``: equal counts;
    ``"uniform"``: equal widths over the score range); bin ``B_m`` predicts ``θ_m`` = the fraction
    of anomalous samples in it, which minimises the bin-wise squared loss ``Σ_m Σ_{i∈B_m}
    (θ_m − y_i)²``. Scores outside the calibration range fall in the first/last bin; an empty bin
    (uniform strategy) takes the overall anomaly rate.
    """

    def __init__(self, n_bins: int = 10, strategy: str = "quantile"):
        if int(n_bins) < 1:
            raise ConfigError(f"HistogramBinning: n_bins must be >= 1, got {n_bins!r}")
        if strategy not in ("quantile", "uniform"):
            raise ConfigError(f"HistogramBinning: unknown strategy {strategy!r}; valid: quantile, uniform")
        self.n_bins = int(n_bins)
        self.strategy = strategy

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        if self.strategy == "quantile":
            edges = np.quantile(z, np.linspace(0, 1, self.n_bins + 1))
        else:
            edges = np.linspace(z.min(), z.max(), self.n_bins + 1)
        self.edges_ = np.unique(edges)
        idx = self._bin(z)
        n = len(self.edges_) - 1 if len(self.edges_) > 1 else 1
        counts = np.bincount(idx, minlength=n)
        pos = np.bincount(idx, weights=y, minlength=n)
        self.theta_ = np.where(counts > 0, pos / np.maximum(counts, 1), y.mean())

    def _bin(self, z: np.ndarray) -> np.ndarray:
        if len(self.edges_) < 2:
            return np.zeros(z.size, dtype=np.int64)
        inner = self.edges_[1:-1]
        return np.searchsorted(inner, z, side="right")

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return self.theta_[self._bin(z)]


class BoundedSigmoid(_Calibrator):
    """A sigmoid bounded to ``[l, u]`` for scores that may separate the classes perfectly.

    ``q(z) = l + (u − l)·σ(a·z + b)`` (the LOCO thesis, §4.3.4: "a generalized bounded sigmoid").
    The thesis proposes the function because on categories a detector classifies perfectly the
    maximum-likelihood Platt sigmoid is a step (0 % or 100 % confidence), but its draft stops
    before stating the parameters. The choices made here, each with its reason:

    * **Bounds** from the rule of succession: after ``N₊`` anomalous and ``N₋`` normal calibration
      samples, no score region can claim more certainty than ``u = (N₊+1)/(N₊+2)`` anomalous or
      ``l = 1/(N₋+2)`` — the same numbers as Platt's smoothed targets (``bounds="laplace"``).
      A pair ``(l, u)`` can be given instead.
    * **Slope and offset** when the classes overlap: the maximum-likelihood ``(a, b)`` of the
      bounded model (finite there), fitted by Newton iterations from the Platt solution.
    * When the calibration scores are **perfectly separated** (``max normal < min anomalous``) the
      likelihood has no finite maximiser. The sigmoid then comes from the generative model that
      justifies Platt's sigmoid in the first place — two Gaussian class-conditional score
      densities with a common variance ``s²`` (pooled within-class variance), whose posterior
      log-odds is linear: ``a = (μ₊ − μ₋)/s²``, ``b = −a(μ₊ + μ₋)/2 + log(N₊/N₋)``. Its width follows
      the spread of the scores, not the (possibly tiny) gap between the classes, and it stays
      finite whenever the classes have any spread. ``separated_`` tells which case applied.
    """

    def __init__(self, bounds: str | tuple[float, float] = "laplace", max_iter: int = 200):
        if bounds != "laplace":
            try:
                lo, hi = (float(v) for v in bounds)  # type: ignore[union-attr]
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"BoundedSigmoid: bounds must be 'laplace' or (low, high), got {bounds!r}"
                ) from exc
            if not 0.0 <= lo < hi <= 1.0:
                raise ConfigError(f"BoundedSigmoid: need 0 <= low < high <= 1, got {bounds!r}")
        self.bounds = bounds
        self.max_iter = max_iter

    def _fit(self, z: np.ndarray, y: np.ndarray) -> None:
        pos, neg = z[y == 1], z[y == 0]
        if self.bounds == "laplace":
            self.low_, self.high_ = 1.0 / (neg.size + 2), (pos.size + 1) / (pos.size + 2)
        else:
            self.low_, self.high_ = (float(v) for v in self.bounds)  # type: ignore[union-attr]
        self.separated_ = bool(neg.max() < pos.min())
        if self.separated_:
            var = (np.sum((pos - pos.mean()) ** 2) + np.sum((neg - neg.mean()) ** 2)) / max(1, z.size - 2)
            if var <= 0:  # every class collapsed to one value: use the gap as the spread
                var = ((pos.min() - neg.max()) / 2.0) ** 2
            self.a_ = float((pos.mean() - neg.mean()) / var)
            self.b_ = float(-self.a_ * (pos.mean() + neg.mean()) / 2.0 + np.log(pos.size / neg.size))
            return
        a, b = _fit_logistic(z, y)
        self.a_, self.b_ = self._fit_bounded(z, y, a, b)

    def _fit_bounded(self, z: np.ndarray, y: np.ndarray, a: float, b: float) -> tuple[float, float]:
        """Maximum likelihood of ``q = l + (u−l)σ(az+b)`` by gradient steps with line search."""
        lo, hi = self.low_, self.high_

        def nll(a_: float, b_: float) -> float:
            q = lo + (hi - lo) * _sigmoid(a_ * z + b_)
            return float(-np.sum(y * np.log(q) + (1 - y) * np.log1p(-q)))

        cur = nll(a, b)
        for _ in range(self.max_iter):
            s = _sigmoid(a * z + b)
            q = lo + (hi - lo) * s
            dq = (hi - lo) * s * (1 - s)
            r = -(y / q - (1 - y) / (1 - q)) * dq  # d nll / d(az+b)
            g = np.array([np.sum(r * z), np.sum(r)])
            # Gauss–Newton curvature (Fisher information of the bounded model)
            w = dq * dq / (q * (1 - q)) + 1e-12
            h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]]) + 1e-9 * np.eye(2)
            step = np.linalg.solve(h, g)
            lam = 1.0
            while lam > 1e-10:
                na, nb = a - lam * step[0], b - lam * step[1]
                new = nll(na, nb)
                if new <= cur:
                    break
                lam /= 2
            else:
                break
            a, b = na, nb
            done = abs(cur - new) < 1e-12 * max(1.0, abs(cur))
            cur = new
            if done:
                break
        return float(a), float(b)

    def _predict(self, z: np.ndarray) -> np.ndarray:
        return self.low_ + (self.high_ - self.low_) * _sigmoid(self.a_ * z + self.b_)


# ----------------------------------------------------------------------------------------------
# measuring calibration
# ----------------------------------------------------------------------------------------------
def _check_probs(probs: Any, labels: Any, what: str, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    if int(n_bins) < 1:
        raise MetricError(f"{what}: n_bins must be >= 1, got {n_bins!r}")
    y, p = _check_binary(labels, probs, what, need_both=False)
    if (p < 0).any() or (p > 1).any():
        raise MetricError(
            f"{what}: probabilities must lie in [0, 1]; got range [{p.min():.4g}, {p.max():.4g}]"
        )
    return y, p


def reliability_curve(probs: Any, labels: Any, n_bins: int = 10) -> pd.DataFrame:
    """Per equal-width probability bin ``B_m`` of [0, 1]: its count, mean predicted probability
    ``conf(B_m)``, observed anomaly frequency ``freq(B_m)`` and their gap (Guo et al., Eq. 2–3,
    for the probability of the anomalous class). Columns: ``bin, lower, upper, count,
    mean_prob, frac_anomalous, gap``; empty bins have NaN means and count 0."""
    y, p = _check_probs(probs, labels, "reliability_curve", n_bins)
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, int(n_bins) - 1)  # p = 1 → last bin
    count = np.bincount(idx, minlength=n_bins)
    sp = np.bincount(idx, weights=p, minlength=n_bins)
    sy = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sp / count, np.nan)
        freq = np.where(count > 0, sy / count, np.nan)
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": count,
            "mean_prob": mean_p,
            "frac_anomalous": freq,
            "gap": freq - mean_p,
        }
    )


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """``ECE = Σ_m |B_m|/n · |freq(B_m) − conf(B_m)|`` over equal-width bins (Guo et al., Eq. 3),
    for the predicted probability of "anomalous" (the binary reliability diagram's quantity)."""
    df = reliability_curve(probs, labels, n_bins)
    ok = df["count"] > 0
    n = df["count"].sum()
    return float(np.sum(df["count"][ok] / n * np.abs(df["gap"][ok])))


def plot_reliability(
    ax: Any,
    probs: Any,
    labels: Any,
    n_bins: int = 10,
    label: str | None = None,
    color: Any = None,
    show_counts: bool = True,
) -> Any:
    """Reliability diagram on ``ax``: observed anomaly frequency against the mean predicted
    probability per bin, the diagonal of perfect calibration, the ECE in the legend and (with
    ``show_counts``) the share of samples per bin as a light histogram at the bottom."""
    df = reliability_curve(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    ok = df["count"] > 0
    name = f"{label + ' ' if label else ''}(ECE {ece:.3f})"
    lines = ax.plot(df["mean_prob"][ok], df["frac_anomalous"][ok], marker="o", color=color, label=name)
    if show_counts:
        share = df["count"] / df["count"].sum()
        ax.bar(
            df["lower"], 0.25 * share, width=df["upper"] - df["lower"], align="edge",
            color=lines[0].get_color(), alpha=0.15,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of anomalous")
    ax.set_ylabel("observed frequency of anomalous")
    ax.legend(loc="upper left", fontsize="small")
    return ax
