"""Chapter 0 — a metrics primer: what the book's numbers measure, on toy data.

Every number of the chapter is computed here by :mod:`iadlib.metrics`, :mod:`iadlib.thresholds`
and :mod:`iadlib.calibration` and written to the :class:`~iadlib.results.ResultStore` under the
chapter ``00_metrics`` (one record per table cell, with provenance); the notebook only reads the
store and draws. Four parts:

1. :func:`image_level` — AUROC, AUPR and F1-max of a synthetic detector as anomalies get rarer;
2. :func:`pixel_level` — pixel AUROC, AU-PRO and AU-sPRO of hand-made anomaly maps on toy masks
   with one large and one small defect (region weighting, saturation);
3. :func:`thresholds_part` — the autoencoder paper's running threshold (Eq. 6) against the
   F1-optimal threshold and a threshold at 5 % FPR, scored with Table 4's ratios;
4. :func:`calibration_part` — Platt scaling, isotonic regression, histogram binning and the
   bounded sigmoid, by expected calibration error on held-out scores, and the perfectly separated
   case that motivates the bounded sigmoid.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from .. import calibration as C
from .. import metrics as M
from .. import thresholds as T
from ..results import ResultStore
from ..utils import resolve_device
from . import check_choice, check_run_args, get_profile

CHAPTER = "00_metrics"

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "n_scores": 400, "rates": [0.5, 0.1], "separations": [1.5],
        "map_size": 48, "n_good": 2,
        "n_epochs": 6, "n_train": 64, "n_test": 200,
        "n_cal": 400, "n_eval": 800, "n_bins": 10,
    },
    "quick": {
        "n_scores": 4000, "rates": [0.5, 0.2, 0.1, 0.05, 0.02], "separations": [1.0, 2.0],
        "map_size": 96, "n_good": 6,
        "n_epochs": 30, "n_train": 512, "n_test": 2000,
        "n_cal": 2000, "n_eval": 10000, "n_bins": 10,
    },
    "full": {
        "n_scores": 20000, "rates": [0.5, 0.2, 0.1, 0.05, 0.02, 0.01], "separations": [0.5, 1.0, 2.0],
        "map_size": 256, "n_good": 20,
        "n_epochs": 60, "n_train": 2048, "n_test": 10000,
        "n_cal": 5000, "n_eval": 50000, "n_bins": 15,
    },
}

CALIBRATORS = {
    "Platt": lambda: C.PlattScaler(),
    "isotonic": lambda: C.IsotonicCalibrator(),
    "histogram binning": lambda: C.HistogramBinning(),
    "bounded sigmoid": lambda: C.BoundedSigmoid(),
}


def _cached(
    store: ResultStore, params: dict[str, Any], force: bool, compute: Any, device: str = "auto"
) -> dict[str, Any]:
    if not force:
        done = store.get(CHAPTER, params)
        if done is not None:
            return done
    metrics, extra = compute()
    return store.put(CHAPTER, params, metrics, extra, device=device)


def _frame(store: ResultStore, part: str, profile: str, seed: int) -> pd.DataFrame:
    df = store.frame(CHAPTER)
    if df.empty:
        return df
    sel = (df["part"] == part) & (df["profile"] == profile) & (df["seed"] == seed)
    return df[sel].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# 1. image level
# ----------------------------------------------------------------------------------------------
def synthetic_scores(n: int, rate: float, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A detector whose normal scores are N(0, 1) and anomalous ones N(separation, 1)."""
    rng = np.random.default_rng(seed)
    n_pos = max(2, int(round(rate * n)))
    labels = np.r_[np.zeros(n - n_pos, int), np.ones(n_pos, int)]
    scores = rng.normal(size=n) + separation * labels
    return labels, scores


def image_level(
    profile: str = "quick", seed: int = 0, store: ResultStore | None = None, force: bool = False
) -> pd.DataFrame:
    """AUROC, AUPR (average precision) and F1-max over anomaly rates and class separations.

    Long table: ``separation, rate, metric, value`` (metric ∈ image_auroc, image_aupr, f1_max,
    chance_aupr = the anomaly rate, the AUPR of random scores).
    """
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    cfg = get_profile(PROFILES, profile)
    store = store or ResultStore()
    for sep in cfg["separations"]:
        for rate in cfg["rates"]:
            params = {"part": "image", "separation": sep, "rate": rate, "n": cfg["n_scores"],
                      "profile": profile, "seed": seed}

            def compute(sep: float = sep, rate: float = rate) -> tuple[dict[str, float], dict[str, Any]]:
                y, s = synthetic_scores(cfg["n_scores"], rate, sep, seed)
                f1, thr = M.f1_max(y, s)
                return (
                    {"image_auroc": M.image_auroc(y, s), "image_aupr": M.image_aupr(y, s),
                     "f1_max": f1, "chance_aupr": float(y.mean())},
                    {"f1_threshold": thr},
                )

            _cached(store, params, force, compute)
    return _frame(store, "image", profile, seed)[["separation", "rate", "metric", "value"]]


def roc_pr_curves(rate: float, separation: float, n: int, seed: int = 0) -> pd.DataFrame:
    """ROC and PR curve points of one synthetic setting (for the figure), from ``binary_curve``."""
    y, s = synthetic_scores(n, rate, separation, seed)
    tps, fps, _ = M.binary_curve(y, s)
    n_pos, n_neg = tps[-1], fps[-1]
    roc = pd.DataFrame({"x": np.r_[0, fps / n_neg], "y": np.r_[0, tps / n_pos], "curve": "ROC (TPR vs FPR)"})
    pr = pd.DataFrame({"x": tps / n_pos, "y": tps / (tps + fps), "curve": "PR (precision vs recall)"})
    out = pd.concat([roc, pr], ignore_index=True)
    out["rate"] = rate
    return out


# ----------------------------------------------------------------------------------------------
# 2. pixel level
# ----------------------------------------------------------------------------------------------
def toy_maps(size: int = 96, n_good: int = 6, seed: int = 0) -> dict[str, Any]:
    """Toy ground truth and four anomaly maps.

    Image 0 holds one *large* defect (a disc covering ~12 % of the image) and one *small* one
    (a 3×3 square); ``n_good`` further images are defect-free. For the sPRO the large defect
    saturates at a quarter of its area (like a LOCO "missing part" whose exact place does not
    matter), the small one at its full area. The maps:

    * ``large only`` — responds to the large defect only;
    * ``small only`` — responds to the small defect only;
    * ``quarter of large + small`` — covers a quarter of the large disc and the small square;
    * ``blurry, both`` — a Gaussian-blurred response to both, spilling onto normal pixels.

    All maps carry the same low-level noise, so normal pixels are never tied exactly.
    """
    rng = np.random.default_rng(seed)
    n = 1 + n_good
    yy, xx = np.mgrid[:size, :size]
    large = (yy - 0.35 * size) ** 2 + (xx - 0.4 * size) ** 2 <= (0.2 * size) ** 2
    small = np.zeros((size, size), bool)
    c = int(0.78 * size)
    small[c : c + 3, c : c + 3] = True
    masks = np.zeros((n, size, size), bool)
    masks[0] = large | small
    regions = [np.stack([large, small])] + [np.zeros((0, size, size), bool)] * n_good
    saturations = [[0.25 * large.sum(), float(small.sum())]] + [[] for _ in range(n_good)]
    noise = rng.random((n, size, size)) * 0.3
    quarter = large & (yy < 0.35 * size) & (xx < 0.4 * size)
    maps = {}
    hits = {"large only": large, "small only": small, "quarter of large + small": quarter | small}
    for name, hit in hits.items():
        m = noise.copy()
        m[0] += hit
        maps[name] = m
    blur = noise.copy()
    blur[0] += 4.0 * ndimage.gaussian_filter(masks[0].astype(float), sigma=size / 24)
    maps["blurry, both"] = blur
    return {"masks": masks, "regions": regions, "saturations": saturations, "maps": maps,
            "large": large, "small": small}


def pixel_level(
    profile: str = "quick", seed: int = 0, device: str = "auto", store: ResultStore | None = None,
    force: bool = False,
) -> pd.DataFrame:
    """Pixel AUROC, pixel AUPR, AU-PRO (0.3) and AU-sPRO (0.05) of the toy maps. Long table:
    ``map, metric, value``."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    cfg = get_profile(PROFILES, profile)
    store = store or ResultStore()
    dev = resolve_device(device)
    toy = toy_maps(cfg["map_size"], cfg["n_good"], seed)
    for name, m in toy["maps"].items():
        params = {"part": "pixel", "map": name, "size": cfg["map_size"], "n_good": cfg["n_good"],
                  "profile": profile, "seed": seed}

        def compute(m: np.ndarray = m) -> tuple[dict[str, float], dict[str, Any]]:
            masks = toy["masks"]
            return (
                {
                    "pixel_auroc": M.pixel_auroc(masks, m),
                    "pixel_aupr": M.image_aupr(masks.ravel(), m.ravel()),
                    "au_pro": M.au_pro(m, masks, fpr_limit=0.3, device=dev),
                    "au_spro": M.au_spro(m, toy["regions"], toy["saturations"], fpr_limit=0.05, device=dev),
                },
                {},
            )

        _cached(store, params, force, compute, device)
    return _frame(store, "pixel", profile, seed)[["map", "metric", "value"]]


def pro_curves(profile: str = "quick", seed: int = 0, limit: float = 0.3) -> pd.DataFrame:
    """The PRO and sPRO curves of the toy maps up to ``limit`` (for the figure)."""
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    cfg = get_profile(PROFILES, profile)
    toy = toy_maps(cfg["map_size"], cfg["n_good"], seed)
    rows = []
    for name, m in toy["maps"].items():
        _, f, p = M.au_pro(m, toy["masks"], fpr_limit=limit, return_curve=True)
        _, fs, s = M.au_spro(m, toy["regions"], toy["saturations"], fpr_limit=limit, return_curve=True)
        rows.append(pd.DataFrame({"map": name, "curve": "PRO", "fpr": f, "overlap": p}))
        rows.append(pd.DataFrame({"map": name, "curve": "sPRO", "fpr": fs, "overlap": s}))
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# 3. thresholds
# ----------------------------------------------------------------------------------------------
def simulated_training(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """Reconstruction errors of an autoencoder that improves over the epochs (gamma-distributed,
    shrinking scale), a validation set of normals and a test set with 30 % anomalies."""
    rng = np.random.default_rng(seed)
    scale = [(0.5 + 2.0 * np.exp(-e / 6)) / 4.0 for e in range(cfg["n_epochs"])]
    epochs = [rng.gamma(4.0, sc, size=cfg["n_train"]) for sc in scale]
    n_test = cfg["n_test"]
    y = (rng.random(n_test) < 0.3).astype(int)
    test = np.where(y == 1, rng.gamma(4.0, 1.6 / 4.0, n_test), rng.gamma(4.0, 0.5 / 4.0, n_test))
    val = rng.gamma(4.0, 0.5 / 4.0, size=cfg["n_train"] // 2)
    return {"epochs": epochs, "val_normals": val, "test_labels": y, "test_scores": test}


def thresholds_part(
    profile: str = "quick", seed: int = 0, alpha: float = 0.2, betas: tuple[float, ...] = (-0.5, 0.0, 0.5),
    store: ResultStore | None = None, force: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Running thresholds (Eq. 6) for several β against F1-optimal and 5 %-FPR thresholds.

    Returns ``(table, trajectory)``: the long table ``rule, metric, value`` (metric ∈ threshold,
    normal / anomalous ratio (Table 4), precision, recall, f1) and the per-epoch thresholds.
    """
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    cfg = get_profile(PROFILES, profile)
    store = store or ResultStore()
    sim = simulated_training(cfg, seed)
    y, s = sim["test_labels"], sim["test_scores"]
    traj = []
    rules: dict[str, float] = {}
    batch = 32
    for beta in betas:
        rt = T.RunningThreshold(alpha=alpha, beta=beta)
        for e, err in enumerate(sim["epochs"]):
            t = rt.update(err, batch_size=batch)
            traj.append({"epoch": e + 1, "threshold": t, "rule": f"running, β={beta:+.1f}"})
        rules[f"running, β={beta:+.1f}"] = rt.threshold
    rules["5 % FPR on validation normals"] = T.threshold_at_fpr(sim["val_normals"], 0.05)
    rules["F1-optimal (oracle: test labels)"] = T.f1_optimal_threshold(y, s)
    for e, err in enumerate(sim["epochs"]):
        traj.append({"epoch": e + 1, "threshold": float(np.mean(err)), "rule": "epoch mean μ"})
    for rule, thr in rules.items():
        params = {"part": "thresholds", "rule": rule, "alpha": alpha, "profile": profile, "seed": seed}

        def compute(thr: float = thr) -> tuple[dict[str, float], dict[str, Any]]:
            r = M.classification_ratios(y, s >= thr)
            prf = M.precision_recall_f1(y, s, thr)
            return (
                {"threshold": thr, "normal_ratio": r["normal"], "anomalous_ratio": r["anomalous"],
                 "precision": prf["precision"], "recall": prf["recall"], "f1": prf["f1"]},
                {},
            )

        _cached(store, params, force, compute)
    table = _frame(store, "thresholds", profile, seed)
    table = table[table["alpha"] == alpha][["rule", "metric", "value"]]
    return table, pd.DataFrame(traj)


# ----------------------------------------------------------------------------------------------
# 4. calibration
# ----------------------------------------------------------------------------------------------
def calibration_scores(
    n: int, seed: int, separation: float = 1.5, rate: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-tailed (log-normal) anomaly scores — far from probabilities, as real detectors'."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    return np.exp(rng.normal(size=n) + separation * y), y


def calibration_part(
    profile: str = "quick", seed: int = 0, store: ResultStore | None = None, force: bool = False
) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """ECE of the four calibration maps (and of min–max scaled raw scores) on held-out scores.

    Returns ``(table, probabilities per method, held-out labels)``; the table is long
    (``method, metric, value`` with metric ∈ ece, image_auroc).
    """
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    cfg = get_profile(PROFILES, profile)
    store = store or ResultStore()
    s_cal, y_cal = calibration_scores(cfg["n_cal"], seed)
    s_ev, y_ev = calibration_scores(cfg["n_eval"], seed + 1)
    lo, hi = s_cal.min(), s_cal.max()
    probs = {"raw score, min–max scaled": np.clip((s_ev - lo) / (hi - lo), 0, 1)}
    for name, make in CALIBRATORS.items():
        probs[name] = make().fit(s_cal, y_cal).predict_proba(s_ev)
    for name, p in probs.items():
        params = {"part": "calibration", "method": name, "n_cal": cfg["n_cal"], "n_eval": cfg["n_eval"],
                  "n_bins": cfg["n_bins"], "profile": profile, "seed": seed}

        def compute(p: np.ndarray = p) -> tuple[dict[str, float], dict[str, Any]]:
            return (
                {"ece": C.expected_calibration_error(p, y_ev, cfg["n_bins"]),
                 "image_auroc": M.image_auroc(y_ev, p)},
                {},
            )

        _cached(store, params, force, compute)
    return _frame(store, "calibration", profile, seed)[["method", "metric", "value"]], probs, y_ev


def separated_case(seed: int = 0, n_normal: int = 60, n_anomalous: int = 20) -> dict[str, Any]:
    """A perfectly classified category: Platt with 0/1 targets (a step), Platt with smoothed
    targets and the bounded sigmoid, evaluated on a score grid (for the figure)."""
    rng = np.random.default_rng(seed)
    s = np.r_[rng.normal(1.0, 0.4, n_normal), rng.normal(3.5, 0.6, n_anomalous)]
    y = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    grid = np.linspace(s.min() - 0.5, s.max() + 0.5, 400)
    fits = {
        "Platt, 0/1 targets (Guo et al.)": C.PlattScaler(smoothed_targets=False),
        "Platt, smoothed targets (Platt 1999)": C.PlattScaler(),
        "bounded sigmoid": C.BoundedSigmoid(),
    }
    curves = pd.concat(
        [pd.DataFrame({"score": grid, "probability": f.fit(s, y).predict_proba(grid), "method": name})
         for name, f in fits.items()],
        ignore_index=True,
    )
    bs = fits["bounded sigmoid"]
    return {"scores": s, "labels": y, "curves": curves, "bounds": (bs.low_, bs.high_),
            "separated": bs.separated_}


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------
def plot_image_level(df: pd.DataFrame, curves: pd.DataFrame | None = None) -> Any:
    import matplotlib.pyplot as plt
    import seaborn as sns

    ncols = 2 if curves is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    ax = axes[0, 0]
    sns.lineplot(data=df, x="rate", y="value", hue="metric", style="separation", markers=True, ax=ax,
                 hue_order=["image_auroc", "image_aupr", "f1_max", "chance_aupr"])
    ax.set_xscale("log")
    rates = sorted(df["rate"].unique())
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    sns.move_legend(ax, "lower right", fontsize="x-small", ncols=2)
    ax.set_xlabel("anomaly rate in the test set")
    ax.set_ylabel("metric value")
    ax.set_title("AUROC ignores the class balance; AUPR and F1-max do not")
    if curves is not None:
        ax = axes[0, 1]
        sns.lineplot(data=curves, x="x", y="y", hue="rate", style="curve", estimator=None, sort=False,
                     palette="viridis", ax=ax)
        ax.set_xlabel("FPR  /  recall")
        ax.set_ylabel("TPR  /  precision")
        ax.set_title("ROC and PR curves of the same scores")
        sns.move_legend(ax, "lower left", fontsize="x-small", ncols=2)
    fig.tight_layout()
    return fig


def plot_toy_maps(profile: str = "quick", seed: int = 0) -> Any:
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    import matplotlib.pyplot as plt

    cfg = get_profile(PROFILES, profile)
    toy = toy_maps(cfg["map_size"], cfg["n_good"], seed)
    names = list(toy["maps"])
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(2.6 * (len(names) + 1), 2.8))
    axes[0].imshow(toy["large"] * 1.0 + toy["small"] * 2.0, cmap="magma", vmin=0, vmax=2)
    axes[0].set_title("ground truth\n(large, small defect)", fontsize=9)
    for ax, name in zip(axes[1:], names):
        ax.imshow(toy["maps"][name][0], cmap="inferno")
        ax.contour(toy["masks"][0], levels=[0.5], colors="cyan", linewidths=0.7)
        ax.set_title(name, fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_pixel_metrics(df: pd.DataFrame, curves: pd.DataFrame) -> Any:
    import matplotlib.pyplot as plt
    import seaborn as sns

    order = list(dict.fromkeys(curves["map"]))  # the toy maps' order, the same colours in both panels
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
    sns.barplot(data=df, x="metric", y="value", hue="map", hue_order=order,
                order=["pixel_auroc", "pixel_aupr", "au_pro", "au_spro"], ax=axes[0], legend=False)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_title("one set of maps, four verdicts (colours as on the right)")
    sns.lineplot(data=curves, x="fpr", y="overlap", hue="map", hue_order=order, style="curve",
                 estimator=None, sort=False, ax=axes[1])
    sns.move_legend(axes[1], "upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    axes[1].set_xlabel("false-positive rate on defect-free pixels")
    axes[1].set_ylabel("(saturated) per-region overlap")
    axes[1].set_title("PRO and sPRO curves up to FPR 0.3")
    fig.tight_layout()
    return fig


def plot_thresholds(traj: pd.DataFrame, table: pd.DataFrame | None = None) -> Any:
    """Per-epoch running thresholds; the fixed rules of ``table`` as horizontal lines."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(9, 4))
    sns.lineplot(data=traj, x="epoch", y="threshold", hue="rule", ax=ax)
    if table is not None:
        fixed = table[(table["metric"] == "threshold") & ~table["rule"].str.startswith("running")]
        for (_, row), ls in zip(fixed.iterrows(), ("--", ":", "-.")):
            ax.axhline(row["value"], color="0.3", ls=ls, lw=1.2, label=row["rule"])
        ax.legend()
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    ax.set_ylabel("threshold on the reconstruction error")
    ax.set_title("Eq. 6: an exponential moving average of μ + βσ")
    fig.tight_layout()
    return fig


def plot_calibration(probs: dict[str, np.ndarray], labels: np.ndarray, separated: dict[str, Any],
                     n_bins: int = 10) -> Any:
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    palette = sns.color_palette("deep", len(probs))
    for (name, p), color in zip(probs.items(), palette):
        C.plot_reliability(axes[0], p, labels, n_bins=n_bins, label=name, color=color, show_counts=False)
    axes[0].set_title("reliability diagrams on held-out scores")
    ax = axes[1]
    sns.lineplot(data=separated["curves"], x="score", y="probability", hue="method", ax=ax)
    s, y = separated["scores"], separated["labels"]
    ax.plot(s[y == 0], np.full((y == 0).sum(), -0.03), "|", color="tab:blue", ms=12, label="normal scores")
    ax.plot(s[y == 1], np.full((y == 1).sum(), 1.03), "|", color="tab:red", ms=12, label="anomalous scores")
    for b in separated["bounds"]:
        ax.axhline(b, ls=":", color="0.5", lw=1)
    ax.set_ylim(-0.08, 1.08)
    ax.set_title("a perfectly separated category")
    ax.legend(fontsize="small", loc="center right")
    fig.tight_layout()
    return fig


def run_all(profile: str = "quick", seed: int = 0, device: str = "auto", results_dir: str | None = None,
            force: bool = False) -> dict[str, Any]:
    """Everything the notebook shows, in one call (used by the smoke test)."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    check_choice("profile", profile, list(PROFILES))
    store = ResultStore(results_dir)
    out: dict[str, Any] = {"image": image_level(profile, seed, store, force)}
    out["pixel"] = pixel_level(profile, seed, device, store, force)
    out["thresholds"], out["trajectory"] = thresholds_part(profile, seed, store=store, force=force)
    out["calibration"], out["probs"], out["labels"] = calibration_part(profile, seed, store, force)
    return out
