"""Chapter 5 — logical anomalies, the feature-level ensemble and calibration (Saghir 2024, thesis
draft, TU Darmstadt): experiment grids, protocol, tables and figures.

* **Benchmark** (§4.1, §6.1): every registered method of the thesis' study — PatchCore, SimpleNet,
  CS-Flow, DRAEM, Reverse Distillation (the last two when their modules are present; skipped with
  a note otherwise) — and the ensemble of §4.3 on LOCO-style data: image AUROC for logical and
  structural anomalies separately (each against all good images), pixel AUROC and AU-sPRO at
  FPR 0.05 (logical / structural). Quick profile: ``synth_loco`` (``flat_connector``, modelled on
  the thesis' own category, and ``compartments``, a pushpins-like counting rule) at 128 px; full:
  MVTec LOCO AD's five categories (``data_root``).
* **Background-removal ablation** (§4.1): pixels farther than ``radius`` from the main object set
  to black (:func:`remove_background`), on the flat-connector category.
* **Training curves** (§6.2): loss and held-out image AUROC per epoch for the trained methods.
* **Calibration** (§2.4, §4.3.4): Platt scaling and the bounded sigmoid fitted on one stratified
  half of each test set and scored (ECE, reliability diagrams) on the other half, against the
  uncalibrated min–max-normalised score.

Every number goes through :func:`iadlib.experiment.run_experiment` or
:class:`~iadlib.results.ResultStore` (chapter ``"05_loco"``) with all of its parameters.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..data import get_dataset
from ..data.base import ADDataset, Sample, Split
from ..errors import ConfigError
from ..experiment import evaluate, run_experiment
from ..models import get_model, list_models
from ..results import ResultStore, compare_table, load_reported
from ..utils import resolve_device
from . import check_choice, check_run_args, get_profile

CHAPTER = "05_loco"
PAPER = "Saghir 2024, Ensemble Methods for Visual Anomaly Detection in Manufacturing Settings (draft)"
CORE_METHODS = ("patchcore", "simplenet", "csflow")
OPTIONAL_METHODS = ("draem", "reverse_distillation")
ENSEMBLE = "feature_ensemble"
METHOD_LABELS = {
    "patchcore": "PatchCore",
    "simplenet": "SimpleNet",
    "csflow": "CS-Flow",
    "draem": "DRAEM",
    "reverse_distillation": "RD",
    "feature_ensemble": "Ensemble (PatchCore + SimpleNet)",
}
LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
TABLE_METRICS = (
    "image_auroc_logical", "image_auroc_structural", "image_auroc_mean", "image_auroc", "pixel_auroc",
    "au_spro_logical", "au_spro_structural", "au_spro_mean",
)

# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------
_SMOKE_DS = dict(image_size=64, n_train=8, n_validation=2, n_test_good=4, n_test_logical=4, n_test_structural=4)
_QUICK_DS = dict(image_size=128, n_train=24, n_validation=4, n_test_good=10, n_test_logical=10, n_test_structural=10)

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "dataset": "synth_loco",
        "categories": ["flat_connector"],
        "dataset_cfg": _SMOKE_DS,
        "models": {
            "patchcore": dict(image_size=64, coreset_ratio=0.25),
            "simplenet": dict(image_size=64, epochs=2, hidden=64),
            "csflow": dict(image_size=64, epochs=2, hidden=16, lr=2e-3, batch_size=8),
            "draem": dict(image_size=64, epochs=1, width=8, batch_size=4),
            "reverse_distillation": dict(image_size=64, epochs=1, batch_size=4),
            ENSEMBLE: dict(image_size=64, epochs=2, hidden=64, simplenet_cfg=dict(epochs=2, hidden=64),
                           patchcore_cfg=dict(coreset_ratio=0.25)),
        },
        "ablation": {"category": "flat_connector", "radius": 6, "methods": ["patchcore"]},
        "curves": {"category": "flat_connector", "methods": ["simplenet"]},
    },
    "quick": {
        "dataset": "synth_loco",
        "categories": ["flat_connector", "compartments"],
        "dataset_cfg": _QUICK_DS,
        "models": {
            "patchcore": dict(image_size=128, coreset_ratio=0.1),
            "simplenet": dict(image_size=128, epochs=12, hidden=512),
            "csflow": dict(image_size=128, epochs=12, hidden=64, lr=2e-3, batch_size=8),
            "draem": dict(image_size=128, epochs=4, width=16, batch_size=8),
            "reverse_distillation": dict(image_size=128, epochs=6, batch_size=8),
            ENSEMBLE: dict(image_size=128, epochs=12, hidden=512, simplenet_cfg=dict(epochs=12, hidden=512),
                           patchcore_cfg=dict(coreset_ratio=0.1)),
        },
        "ablation": {"category": "flat_connector", "radius": 8, "methods": ["patchcore"]},
        "curves": {"category": "flat_connector", "methods": [ENSEMBLE]},
    },
    "full": {
        "dataset": "mvtec_loco",
        "categories": list(LOCO_CATEGORIES),
        "dataset_cfg": {},
        "models": {
            "patchcore": dict(image_size=256, coreset_ratio=0.1, backbone="wide_resnet50_2"),
            "simplenet": dict(image_size=256, epochs=160, backbone="wide_resnet50_2"),
            "csflow": dict(image_size=768, epochs=240, hidden=1024, backbone="tf_efficientnet_b5", layer=3),
            "draem": dict(image_size=256, epochs=700),
            "reverse_distillation": dict(image_size=256, epochs=200),
            ENSEMBLE: dict(image_size=256, epochs=160, simplenet_cfg=dict(epochs=160, backbone="wide_resnet50_2"),
                           patchcore_cfg=dict(coreset_ratio=0.1, backbone="wide_resnet50_2")),
        },
        "ablation": {"category": "breakfast_box", "radius": 16, "methods": ["patchcore", "simplenet", ENSEMBLE]},
        "curves": {"category": "breakfast_box", "methods": ["simplenet", "csflow", ENSEMBLE]},
    },
}


def methods(profile: str = "quick") -> tuple[list[str], list[str]]:
    """``(methods that run, notes on skipped ones)``: DRAEM and RD run only when registered."""
    get_profile(PROFILES, profile)
    have = set(list_models())
    run, notes = [], []
    for m in (*CORE_METHODS, *OPTIONAL_METHODS, ENSEMBLE):
        if m in have:
            run.append(m)
        else:
            notes.append(f"{METHOD_LABELS[m]} ({m!r}) is not registered in this iadlib; its rows are skipped.")
    return run, notes


def substitution(profile: str) -> str:
    if profile == "full":
        return "MVTec LOCO AD (as in the thesis)"
    img = PROFILES[profile]["dataset_cfg"]["image_size"]
    return (f"synth_loco at {img} px instead of MVTec LOCO AD; "
            "efficientnet_lite0 instead of WideResNet-50 / EfficientNet-B5")


def load_dataset(profile: str, category: str, seed: int = 0, data_root: str | None = None) -> ADDataset:
    prof = get_profile(PROFILES, profile)
    check_choice("category", category, prof["categories"])
    cfg = dict(prof["dataset_cfg"])
    if prof["dataset"] == "mvtec_loco":
        if data_root is None:
            raise ConfigError("the full profile reads MVTec LOCO AD: pass data_root=<folder with its 5 categories>")
        cfg["root"] = data_root
    return get_dataset(prof["dataset"], category=category, seed=seed, **cfg)


def _dataset_cfg(profile: str, category: str, data_root: str | None) -> dict[str, Any]:
    cfg = {"category": category, **PROFILES[profile]["dataset_cfg"]}
    if data_root is not None:
        cfg["root"] = str(data_root)
    return cfg


# ------------------------------------------------------------------------------------------------
# Benchmark grid
# ------------------------------------------------------------------------------------------------
def run(
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    results_dir: str | Path | None = None,
    force: bool = False,
    data_root: str | None = None,
    only: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every method × category of the profile through :func:`run_experiment`; returns the records."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    prof = get_profile(PROFILES, profile)
    store = ResultStore(results_dir)
    todo, _ = methods(profile)
    if only is not None:
        for m in only:
            check_choice("method", m, todo)
        todo = [m for m in todo if m in only]
    records = []
    for cat in prof["categories"]:
        for m in todo:
            dcfg = _dataset_cfg(profile, cat, data_root)
            rec = run_experiment(
                CHAPTER, m, prof["dataset"], prof["models"][m], dcfg, profile=profile, seed=seed, device=device,
                paper=PAPER, table="§6.1 LOCO benchmark / §6.2 ensemble", store=store, force=force,
            )
            records.append(rec)
    return records


def records_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table: method, category, metric, value (+ fit seconds). ``image_auroc_mean`` and
    ``au_spro_mean`` are the means of the logical and structural values (MVTec LOCO's convention)."""
    rows = []
    for r in records:
        p = r["params"]
        met = dict(r["metrics"])
        for k in ("image_auroc", "au_spro"):
            if f"{k}_logical" in met and f"{k}_structural" in met:
                met[f"{k}_mean"] = 0.5 * (met[f"{k}_logical"] + met[f"{k}_structural"])
        for k, v in met.items():
            rows.append({"method": p["method"], "category": p["category"], "metric": k, "value": v,
                         "fit_s": r["extra"].get("fit_seconds")})
    return pd.DataFrame(rows)


def results_table(records: list[dict[str, Any]], metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """Per category and method: the table metrics (columns), plus a ``mean`` category."""
    df = records_frame(records)
    df = df[df["metric"].isin(metrics)]
    wide = df.pivot_table(index=["category", "method"], columns="metric", values="value").reset_index()
    mean = wide.groupby("method", as_index=False)[[c for c in metrics if c in wide]].mean()
    mean.insert(0, "category", "mean")
    out = pd.concat([wide, mean], ignore_index=True)
    out["method"] = out["method"].map(lambda m: METHOD_LABELS.get(m, m))
    return out[["category", "method", *[c for c in metrics if c in out]]]


def reported_vs_ours(records: list[dict[str, Any]], profile: str) -> pd.DataFrame:
    """The originals' MVTec LOCO numbers (``book/reported/loco.csv``) beside our category means."""
    rep = load_reported("loco")
    rep = rep[rep["metric"].isin(TABLE_METRICS)].copy()
    ours = records_frame(records)
    ours = ours[ours["metric"].isin(TABLE_METRICS)].groupby(["method", "metric"], as_index=False)["value"].mean()
    out = compare_table(ours, rep, on=["method", "metric"], substitution=substitution(profile))
    cite = rep[["method", "metric", "value", "paper", "source"]].rename(columns={"value": "reported"})
    out = out.merge(cite, on=["method", "metric", "reported"], how="left")
    out[["paper", "source"]] = out[["paper", "source"]].fillna("")
    out["method"] = out["method"].map(lambda m: METHOD_LABELS.get(m, m))
    return out.sort_values(["method", "metric"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------
# Background-removal ablation (§4.1)
# ------------------------------------------------------------------------------------------------
def object_mask(image: np.ndarray, radius: int) -> np.ndarray:
    """The main object (largest bright connected component after Otsu's threshold on the grey
    image), dilated by ``radius`` pixels: the region the §4.1 ablation keeps."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    grey = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float64)
    if grey.max() == grey.min():
        return np.ones(grey.shape, bool)
    fg = grey > threshold_otsu(grey)
    lab, n = ndi.label(fg)
    if n == 0:
        return np.ones(grey.shape, bool)
    sizes = ndi.sum(fg, lab, index=np.arange(1, n + 1))
    obj = ndi.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))
    if radius > 0:
        obj = ndi.distance_transform_edt(~obj) <= radius
    return obj


def remove_background(image: np.ndarray, radius: int) -> np.ndarray:
    """§4.1: every pixel farther than ``radius`` from the main object set to black."""
    if radius < 0:
        raise ConfigError(f"remove_background: radius must be >= 0, got {radius}")
    keep = object_mask(image, radius)
    out = image.copy()
    out[~keep] = 0
    return out


def background_removed(ds: ADDataset, radius: int) -> ADDataset:
    """A copy of ``ds`` whose images (train, test, validation) have their background removed."""

    def conv(split: Split | None) -> Split | None:
        if split is None:
            return None
        samples = []
        for s in split:
            t = copy.copy(s)
            t.image = remove_background(s.image, radius)
            samples.append(t)
        return Split.from_samples(samples, name=split.name)

    return ADDataset(ds.name, ds.category, conv(ds.train), conv(ds.test), conv(ds.validation),
                     info={**ds.info, "background_removed_radius": radius})


def run_ablation(
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    results_dir: str | Path | None = None,
    force: bool = False,
    data_root: str | None = None,
) -> list[dict[str, Any]]:
    """§4.1: the ablation methods on the original and the background-removed category."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    prof = get_profile(PROFILES, profile)
    ab = prof["ablation"]
    store = ResultStore(results_dir)
    have = set(list_models())
    meths = [m for m in ab["methods"] if m in have]
    ds = None
    records = []
    for m in meths:
        dcfg = _dataset_cfg(profile, ab["category"], data_root)
        base = run_experiment(CHAPTER, m, prof["dataset"], prof["models"][m], dcfg, profile=profile, seed=seed,
                              device=device, paper=PAPER, table="§4.1 ablation", store=store, force=force)
        base["variant"] = "original"
        records.append(base)
        cfg_bg = {**dcfg, "background_removed_radius": ab["radius"]}
        params = _params(profile, seed, device, m, prof["dataset"], ab["category"], prof["models"][m], cfg_bg,
                          "§4.1 ablation")
        done = None if force else store.get(CHAPTER, params)
        if done is None or not Path(done["extra"].get("predictions", "")).is_file():
            if ds is None:
                ds = background_removed(load_dataset(profile, ab["category"], seed, data_root), ab["radius"])
            done = run_experiment(CHAPTER, m, ds, prof["models"][m], cfg_bg, profile=profile, seed=seed,
                                  device=device, paper=PAPER, table="§4.1 ablation", store=store, force=True)
        done["variant"] = f"background removed (r = {ab['radius']} px)"
        records.append(done)
    return records


def _params(profile: str, seed: int, device: str, method: str, dataset: str, category: str,
            model_cfg: dict, dataset_cfg: dict, table: str) -> dict[str, Any]:
    """The parameter dict :func:`run_experiment` records (to look a record up before building data)."""
    return {
        "paper": PAPER, "table": table, "method": method, "dataset": dataset, "category": category,
        "dataset_cfg": dataset_cfg, "model_cfg": model_cfg, "profile": profile, "seed": seed,
        "device": resolve_device(device).type,
    }


def ablation_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        for k in ("image_auroc", "image_auroc_logical", "image_auroc_structural", "pixel_auroc", "au_spro"):
            if k in r["metrics"]:
                rows.append({"method": METHOD_LABELS.get(r["params"]["method"], r["params"]["method"]),
                             "variant": r["variant"], "metric": k, "value": r["metrics"][k]})
    df = pd.DataFrame(rows)
    return df.pivot_table(index=["method", "metric"], columns="variant", values="value").reset_index()


# ------------------------------------------------------------------------------------------------
# Training curves (§6.2)
# ------------------------------------------------------------------------------------------------
def run_curves(
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    results_dir: str | Path | None = None,
    force: bool = False,
    data_root: str | None = None,
) -> list[dict[str, Any]]:
    """Loss and test image AUROC after every epoch (the AUROC is only watched, never used to pick
    an epoch: the model kept is the last one, as in the grid)."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    prof = get_profile(PROFILES, profile)
    cv = prof["curves"]
    store = ResultStore(results_dir)
    have = set(list_models())
    ds = None
    out = []
    for m in [m for m in cv["methods"] if m in have]:
        params = {**_params(profile, seed, device, m, prof["dataset"], cv["category"], prof["models"][m],
                            _dataset_cfg(profile, cv["category"], data_root), "§6.2 training curves"),
                  "kind": "curves"}
        rec = None if force else store.get(CHAPTER, params)
        if rec is None:
            if ds is None:
                ds = load_dataset(profile, cv["category"], seed, data_root)
            model = get_model(m, seed=seed, device=device, **prof["models"][m])
            model.set_monitor(ds.test, ds.test.labels)
            t0 = time.perf_counter()
            model.fit(ds.train)
            fit_s = time.perf_counter() - t0
            scores, maps = model.predict(ds.test)
            metrics = evaluate(ds.test, scores, maps)
            rec = store.put(CHAPTER, params, metrics, {
                "history": {k: list(map(float, v)) for k, v in model.history.items()}, "fit_seconds": fit_s,
            }, device=device)
        out.append(rec)
    return out


def curves_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        h = r["extra"]["history"]
        for key, name in (("loss", "training loss"), ("monitor_auroc", "test image AUROC")):
            for ep, v in enumerate(h.get(key, [])):
                rows.append({"method": METHOD_LABELS.get(r["params"]["method"]), "epoch": ep + 1,
                             "quantity": name, "value": v})
    return pd.DataFrame(rows)


def plot_curves(records: list[dict[str, Any]]) -> sns.FacetGrid:
    df = curves_frame(records)
    g = sns.relplot(data=df, x="epoch", y="value", hue="method", col="quantity", kind="line",
                    facet_kws={"sharey": False}, height=3.0, aspect=1.3, marker="o", markersize=3)
    g.set_titles("{col_name}")
    return g


# ------------------------------------------------------------------------------------------------
# Calibration (§2.4, §4.3.4)
# ------------------------------------------------------------------------------------------------
def _halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded stratified split into a calibration half and an evaluation half."""
    rng = np.random.default_rng(seed)
    cal, ev = [], []
    for lab in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        cal.extend(idx[: len(idx) // 2])
        ev.extend(idx[len(idx) // 2 :])
    return np.sort(cal), np.sort(ev)


def calibrate_scores(scores: np.ndarray, labels: np.ndarray, seed: int = 0, n_bins: int = 10) -> dict[str, Any]:
    """Fit Platt scaling and the bounded sigmoid on one half, measure ECE on the other half.

    The uncalibrated reference maps the score to [0, 1] by the calibration half's min and max
    (clipped) — the usual way an anomaly score is read as a "probability" without calibration.
    """
    from .. import calibration as C

    cal, ev = _halves(labels, seed)
    lo, hi = float(scores[cal].min()), float(scores[cal].max())
    raw = np.clip((scores - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    probs = {"uncalibrated (min–max)": raw}
    probs["Platt"] = C.PlattScaler().fit(scores[cal], labels[cal]).predict_proba(scores)
    bs = C.BoundedSigmoid().fit(scores[cal], labels[cal])
    probs["bounded sigmoid"] = bs.predict_proba(scores)
    ece = {k: C.expected_calibration_error(p[ev], labels[ev], n_bins) for k, p in probs.items()}
    return {"probs": {k: p[ev] for k, p in probs.items()}, "labels": labels[ev], "ece": ece,
            "separated": bool(bs.separated_)}


def run_calibration(records: list[dict[str, Any]], seed: int = 0, results_dir: str | Path | None = None,
                    force: bool = False) -> pd.DataFrame:
    """ECE of every grid record's scores (uncalibrated / Platt / bounded sigmoid), stored as records."""
    store = ResultStore(results_dir)
    rows = []
    for r in records:
        p = r["params"]
        params = {"kind": "calibration", "source_key": r["key"], "method": p["method"], "category": p["category"],
                  "profile": p["profile"], "seed": seed, "n_bins": 10}
        rec = None if force else store.get(CHAPTER, params)
        if rec is None:
            with np.load(r["extra"]["predictions"]) as z:
                res = calibrate_scores(z["scores"], z["labels"], seed)
            metrics = {f"ece_{k}": v for k, v in res["ece"].items()}
            rec = store.put(CHAPTER, params, metrics, {"separated": res["separated"]})
        for k, v in rec["metrics"].items():
            rows.append({"method": METHOD_LABELS.get(p["method"], p["method"]), "category": p["category"],
                         "calibration": k.removeprefix("ece_"), "ECE": v,
                         "separated": rec["extra"].get("separated")})
    return pd.DataFrame(rows)


def plot_reliability(records: list[dict[str, Any]], method: str = ENSEMBLE, seed: int = 0) -> plt.Figure:
    """Reliability diagrams (per category) of ``method``: uncalibrated, Platt, bounded sigmoid."""
    from .. import calibration as C

    recs = [r for r in records if r["params"]["method"] == method]
    fig, axes = plt.subplots(1, max(1, len(recs)), figsize=(4.2 * max(1, len(recs)), 3.8), squeeze=False)
    for ax, r in zip(axes[0], recs):
        with np.load(r["extra"]["predictions"]) as z:
            res = calibrate_scores(z["scores"], z["labels"], seed)
        for (name, pr), color in zip(res["probs"].items(), sns.color_palette("colorblind", 3)):
            C.plot_reliability(ax, pr, res["labels"], n_bins=5, label=name, color=color)
        ax.set_title(f"{METHOD_LABELS.get(method, method)} — {r['params']['category']}")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def plot_table_bars(records: list[dict[str, Any]]) -> sns.FacetGrid:
    """Image AUROC (logical / structural) and AU-sPRO per method and category."""
    df = records_frame(records)
    keep = ["image_auroc_logical", "image_auroc_structural", "au_spro_logical", "au_spro_structural"]
    df = df[df["metric"].isin(keep)].copy()
    df["method"] = df["method"].map(lambda m: METHOD_LABELS.get(m, m))
    g = sns.catplot(data=df, x="metric", y="value", hue="method", col="category", kind="bar", height=3.4,
                    aspect=1.5, order=keep)
    for ax in g.axes.flat:
        ax.tick_params(axis="x", rotation=25)
        ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    return g


def plot_segmentations(records: list[dict[str, Any]], category: str, n: int = 4) -> plt.Figure:
    """Example anomalous test images per method (rows) with the method's map and the ground truth."""
    recs = [r for r in records if r["params"]["category"] == category]
    fig, axes = plt.subplots(len(recs), n, figsize=(2.0 * n, 2.0 * len(recs)), squeeze=False)
    for row, r in zip(axes, recs):
        with np.load(r["extra"]["predictions"]) as z:
            lab = z["labels"][z["example_idx"]]
            pick = np.flatnonzero(lab == 1)[-n:]
            maps = z["example_maps"].astype(np.float32)
            lo, hi = float(np.quantile(maps, 0.01)), float(np.quantile(maps, 0.999))
            for ax, j in zip(row, pick):
                ax.imshow(z["example_images"][j])
                ax.imshow(maps[j], cmap="inferno", alpha=0.55, vmin=lo, vmax=hi)
                if z["example_masks"][j].any():
                    ax.contour(z["example_masks"][j].astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(METHOD_LABELS.get(r["params"]["method"], r["params"]["method"]), fontsize=8)
    fig.suptitle(f"{category}: anomalous test examples across each method's score range (cyan: ground truth)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def example_images(profile: str = "quick", seed: int = 0, data_root: str | None = None) -> plt.Figure:
    """One good, one logical and one structural test image per category (and the §4.1 variant)."""
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    prof = get_profile(PROFILES, profile)
    cats = prof["categories"][:2]
    fig, axes = plt.subplots(len(cats), 4, figsize=(10, 2.6 * len(cats)), squeeze=False)
    for row, cat in zip(axes, cats):
        ds = load_dataset(profile, cat, seed, data_root)
        defects = np.array(ds.test.defects)
        picks: list[tuple[str, Sample]] = []
        for kind in ("good", "logical_anomalies", "structural_anomalies"):
            idx = np.flatnonzero(defects == kind)
            if len(idx):
                picks.append((kind, ds.test[int(idx[0])]))
        for ax, (kind, s) in zip(row, picks):
            ax.imshow(s.image, cmap="gray" if s.image.ndim == 2 else None)
            if s.mask is not None and s.mask.any():
                ax.contour(s.mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{cat}: {kind.split('_')[0]}", fontsize=8)
        if picks:
            ax = row[3]
            ax.imshow(remove_background(picks[0][1].image, prof["ablation"]["radius"]))
            ax.set_title("§4.1 background removed", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    return fig
