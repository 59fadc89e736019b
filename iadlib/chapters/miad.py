"""Chapter 3 — the MIAD baselines (Bao et al. 2022, appendix A.2) side by side.

Six methods, each in its own module of :mod:`iadlib.models`: Reverse Distillation (A.2.1),
PatchCore (A.2.2), FastFlow (A.2.3), DRAEM (A.2.4), a U-Net auto-encoder (A.2.5) and UniAD
(A.2.6). The appendix' settings are the ``full`` profile (on MIAD and MVTec AD when present); the
``quick`` profile keeps each method's structure and shrinks resolution/epochs for a 2-core CPU, on
ELPV (photovoltaic cells, one of MIAD's seven scenarios) and the synthetic texture benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..experiment import run_experiment
from ..models import list_models
from ..results import ResultStore, load_reported
from . import get_profile

CHAPTER = "03_miad"
METHODS = ("reverse_distillation", "patchcore", "fastflow", "draem", "unet_ae", "uniad")
LABELS = {
    "reverse_distillation": "RD",
    "patchcore": "PatchCore",
    "fastflow": "FastFlow",
    "draem": "DRAEM",
    "unet_ae": "U-Net AE",
    "uniad": "UniAD",
}

_TINY_TEX = {"image_size": 64, "n_train": 10, "n_test_good": 4, "n_test_defect": 6}

PROFILES: dict[str, dict[str, Any]] = {
    # seconds: every method end to end on a tiny texture set (the test suite runs this)
    "smoke": {
        "datasets": [("synth_textures", {"category": "brick", **_TINY_TEX})],
        "methods": {
            "reverse_distillation": {"image_size": 64, "epochs": 1, "batch_size": 8},
            "patchcore": {"image_size": 64, "coreset_ratio": 0.1},
            "fastflow": {"image_size": 64, "epochs": 1, "batch_size": 8},
            "draem": {"image_size": 32, "epochs": 2, "batch_size": 4, "width": 4},
            "unet_ae": {"image_size": 64, "epochs": 1, "batch_size": 8, "width": 8},
            "uniad": {"image_size": 64, "epochs": 1, "batch_size": 8, "hidden_dim": 32, "ff_dim": 64,
                      "enc_layers": 1, "dec_layers": 1, "heads": 2},
        },
    },
    # minutes on a 2-core CPU: the appendix' methods at reduced resolution and epochs
    "quick": {
        "datasets": [
            ("elpv", {"category": "mono"}),
            ("elpv", {"category": "poly"}),
            ("synth_textures", {"category": "brick"}),
        ],
        "methods": {
            "reverse_distillation": {"image_size": 128, "epochs": 20, "batch_size": 8},
            "patchcore": {"image_size": 224, "coreset_ratio": 0.01},
            "fastflow": {"image_size": 128, "epochs": 15, "batch_size": 8},
            # DRAEM/AE: raised learning rate, 10–20 epochs replace the appendix' 700/100; ELPV's thin
            # cracks need 128 px (they vanish at 64 px), the textures do with 64 px
            "draem": {"image_size": 64, "epochs": 20, "batch_size": 8, "width": 16, "lr": 1e-3,
                      "by_dataset": {"elpv": {"image_size": 128, "width": 8, "epochs": 10}}},
            "unet_ae": {"image_size": 64, "epochs": 15, "batch_size": 8, "width": 16, "depth": 4, "lr": 1e-3},
            # standardised features and a larger rate: the quick budget is 20 epochs, not 500
            "uniad": {"image_size": 128, "epochs": 20, "batch_size": 8, "standardize": True, "lr": 1e-3,
                      "hidden_dim": 128, "ff_dim": 256, "enc_layers": 1, "dec_layers": 2, "heads": 4,
                      "neighbor_size": 3},
        },
    },
    # the appendix' settings (A.2.1–A.2.6); datasets found through environment variables
    "full": {
        "datasets": "miad+mvtec_ad",
        "methods": {
            "reverse_distillation": {"image_size": 256, "epochs": 200, "batch_size": 32, "lr": 0.005,
                                     "backbone": "wide_resnet50_2", "layers": (1, 2, 3)},
            "patchcore": {"image_size": 224, "coreset_ratio": 0.1, "backbone": "wide_resnet50_2",
                          "layers": (2, 3), "max_train_images": 2000},
            "fastflow": {"image_size": 256, "epochs": 500, "batch_size": 32, "backbone": "wide_resnet50_2",
                         "layers": (1, 2, 3)},
            "draem": {"image_size": 256, "epochs": 700, "batch_size": 8, "lr": 1e-4},
            "unet_ae": {"image_size": 256, "epochs": 100, "batch_size": 16, "lr": 1e-4, "weight_decay": 5e-4},
            "uniad": {"image_size": 224, "epochs": 500, "batch_size": 64, "backbone": "efficientnet_b4",
                      "layers": (0, 1, 2, 3)},
        },
    },
}


def full_datasets() -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """MIAD and MVTec AD categories found under ``$IADLIB_MIAD_ROOT`` / ``$IADLIB_MVTEC_AD_ROOT``."""
    from ..data.mvtec import MIAD_CATEGORIES, MVTEC_AD_CATEGORIES

    out, notes = [], []
    for name, env, cats in (
        ("miad", "IADLIB_MIAD_ROOT", MIAD_CATEGORIES),
        ("mvtec_ad", "IADLIB_MVTEC_AD_ROOT", MVTEC_AD_CATEGORIES),
    ):
        root = os.environ.get(env)
        if not root or not Path(root).is_dir():
            notes.append(f"{name}: set {env}=/path/to/{name} to include it")
            continue
        out += [(name, {"root": root, "category": c}) for c in cats if (Path(root) / c).is_dir()]
    return out, notes


def plan(profile: str, methods: list[str] | None = None) -> tuple[list, dict[str, dict], list[str]]:
    """Datasets, method configs and notes (skipped methods or data) for ``profile``."""
    prof = get_profile(PROFILES, profile)
    notes: list[str] = []
    datasets = prof["datasets"]
    if datasets == "miad+mvtec_ad":
        datasets, notes = full_datasets()
    available = set(list_models())
    chosen = {}
    for m in methods or METHODS:
        if m not in prof["methods"]:
            from ..errors import ConfigError

            raise ConfigError(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        if m in available:
            chosen[m] = prof["methods"][m]
        else:
            notes.append(f"{LABELS[m]} is not available in this build (model {m!r} not registered)")
    return datasets, chosen, notes


def run(
    profile: str = "quick",
    results_dir: str | None = None,
    force: bool = False,
    device: str = "auto",
    seed: int = 0,
    methods: list[str] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Run the grid (datasets × methods); returns the records as a long table and notes."""
    store = ResultStore(results_dir)
    datasets, chosen, notes = plan(profile, methods)
    rows = []
    jobs = [(d, dc, m, mc) for d, dc in datasets for m, mc in chosen.items()]
    for i, (ds_name, ds_cfg, method, cfg) in enumerate(jobs, 1):
        cfg = {k: v for k, v in cfg.items() if k != "by_dataset"} | cfg.get("by_dataset", {}).get(ds_name, {})
        rec = run_experiment(
            CHAPTER, method, ds_name, cfg, ds_cfg, profile=profile, seed=seed, device=device,
            paper="MIAD (Bao et al. 2022)", table="per-category AUROC", store=store, force=force,
            backbone=cfg.get("backbone", "efficientnet_lite0") if method not in ("draem", "unet_ae") else "none",
        )
        ex = rec["extra"]
        print(f"[{i}/{len(jobs)}] {LABELS[method]:<10} {ds_name}/{ds_cfg.get('category')}: image AUROC "
              f"{rec['metrics']['image_auroc']:.3f} · fit {ex['fit_seconds']:.0f} s · "
              f"{ex['predict_ms_per_image']:.0f} ms/img", flush=True)
        for metric, value in rec["metrics"].items():
            rows.append({
                "method": LABELS[method],
                "model": method,
                "dataset": ds_name,
                "category": ds_cfg.get("category"),
                "metric": metric,
                "value": value,
                **{k: rec["extra"].get(k) for k in ("fit_seconds", "predict_ms_per_image", "peak_rss_mb",
                                                     "image_size", "n_train", "n_test", "predictions")},
                "commit": rec["provenance"]["commit"],
                "device": rec["provenance"]["device"],
            })
    return pd.DataFrame(rows), notes


def table(df: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """Rows dataset/category, columns methods (in the paper's order), plus the mean row."""
    d = df[df.metric == metric]
    if d.empty:
        return pd.DataFrame()
    t = d.pivot_table(index=["dataset", "category"], columns="method", values="value")
    t = t[[LABELS[m] for m in METHODS if LABELS[m] in t.columns]]
    t.loc[("mean", ""), :] = t.mean()
    return t


def reported_table() -> pd.DataFrame:
    """The methods' own reported MVTec AD numbers (the MIAD table itself is not available here)."""
    rep = load_reported("miad")
    return rep.pivot_table(index=["dataset", "metric"], columns="method", values="value")


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fit seconds, prediction ms/image and peak RSS per method (median over datasets)."""
    d = df[df.metric == "image_auroc"]
    return d.groupby("method")[["fit_seconds", "predict_ms_per_image", "peak_rss_mb"]].median().reindex(
        [LABELS[m] for m in METHODS if LABELS[m] in set(d.method)]
    )


def predictions(df: pd.DataFrame, dataset: str, category: str) -> dict[str, dict[str, np.ndarray]]:
    """The stored ``.npz`` predictions per method for one dataset/category."""
    d = df[(df.metric == "image_auroc") & (df.dataset == dataset) & (df.category == category)]
    out = {}
    for _, r in d.iterrows():
        with np.load(r["predictions"]) as z:
            out[r["method"]] = {k: z[k] for k in z.files}
    return out


def score_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of every test image's score (z-normalised per method/dataset for one axis)."""
    rows = []
    for (ds, cat, method), g in df[df.metric == "image_auroc"].groupby(["dataset", "category", "method"]):
        with np.load(g.iloc[0]["predictions"]) as z:
            s, lab = z["scores"], z["labels"]
        normal = s[lab == 0]
        zs = (s - normal.mean()) / (normal.std() + 1e-12)
        rows.append(pd.DataFrame({"dataset": f"{ds}/{cat}", "method": method, "score": zs, "label": lab}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
