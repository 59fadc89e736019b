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

from ..data import get_dataset
from ..data.base import ADDataset, Split
from ..errors import ConfigError
from ..experiment import evaluate, run_experiment, run_extra, save_predictions
from ..models import get_model, list_models
from ..results import ResultStore, experiment_key, load_reported
from ..utils import PeakMemory, resolve_device
from . import check_run_args, get_profile

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
        # The whole chapter in ~5 min on a 2-core CPU: every method trains on the same capped training
        # set and is tested on the same capped, stratified test set (CappedDataset; ELPV has ~300/~500
        # normal training cells and ~600/~800 test cells per type). Single-thread CPU seconds per cell
        # (fit + predict, measured on ELPV mono): RD 10, PatchCore 5, FastFlow 12, DRAEM 23, U-Net AE
        # 14, UniAD 15; the unified UniAD ~40 (three categories' images per epoch).
        "max_train": 64,
        "max_test_per_label": 60,
        "datasets": [
            ("elpv", {"category": "mono"}),
            ("elpv", {"category": "poly"}),
            ("synth_textures", {"category": "brick"}),
        ],
        "methods": {
            "reverse_distillation": {"image_size": 128, "epochs": 10, "batch_size": 8},
            "patchcore": {"image_size": 224, "coreset_ratio": 0.01},
            "fastflow": {"image_size": 128, "epochs": 10, "batch_size": 8},
            # DRAEM/AE: raised learning rate, ~10 epochs replace the appendix' 700/100; ELPV's thin
            # cracks need ≥ 96 px (they vanish at 64 px), the textures do with 64 px
            "draem": {"image_size": 64, "epochs": 10, "batch_size": 8, "width": 16, "lr": 1e-3,
                      "by_dataset": {"elpv": {"image_size": 96, "width": 8}}},
            "unet_ae": {"image_size": 64, "epochs": 10, "batch_size": 4, "width": 16, "depth": 4, "lr": 1e-3},
            # standardised features and a larger rate: the quick budget is 20 epochs, not 500; batch 4
            # for more steps on 64 images
            "uniad": {"image_size": 128, "epochs": 20, "batch_size": 4, "standardize": True, "lr": 1e-3,
                      "hidden_dim": 128, "ff_dim": 256, "enc_layers": 1, "dec_layers": 2, "heads": 4,
                      "neighbor_size": 3},
        },
    },
    # the appendix' settings (A.2.1–A.2.6); datasets found through environment variables
    "full": {
        "datasets": "miad+mvtec_ad",
        "unified_by": "dataset",  # one UniAD for MIAD's scenarios, one for MVTec AD's classes
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


class CappedDataset:
    """``get_dataset(name, seed=seed, **cfg)`` with at most ``max_train`` training images and at most
    ``max_test_per_label`` test images of each label (normal / anomalous), drawn without replacement
    with ``numpy.random.default_rng([seed, 1])`` / ``[seed, 2]`` (deterministic, stratified: both
    classes stay). Built lazily on first access of ``.train`` / ``.test`` and picklable as its
    configuration only, so a grid cell holding one is cheap to list and to ship to a worker.
    """

    def __init__(
        self,
        name: str,
        cfg: dict[str, Any] | None = None,
        max_train: int | None = None,
        max_test_per_label: int | None = None,
        seed: int = 0,
    ):
        for what, v in (("max_train", max_train), ("max_test_per_label", max_test_per_label)):
            if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
                raise ConfigError(f"{name}: {what} must be a positive integer or None, got {v!r}")
        self.name = name
        self.cfg = dict(cfg or {})
        self.category = self.cfg.get("category")
        self.max_train = None if max_train is None else int(max_train)
        self.max_test_per_label = None if max_test_per_label is None else int(max_test_per_label)
        self.seed = seed
        self._ds: ADDataset | None = None

    def record_cfg(self) -> dict[str, Any]:
        """The dataset configuration that identifies a record (the loader's options plus the caps)."""
        out = dict(self.cfg)
        if self.max_train is not None:
            out["max_train"] = self.max_train
        if self.max_test_per_label is not None:
            out["max_test_per_label"] = self.max_test_per_label
        return out

    def build(self) -> ADDataset:
        if self._ds is None:
            ds = get_dataset(self.name, seed=self.seed, **self.cfg)
            train, test = ds.train, ds.test
            if self.max_train is not None and len(train) > self.max_train:
                rng = np.random.default_rng([self.seed, 1])
                train = train[np.sort(rng.choice(len(train), self.max_train, replace=False))]
            if self.max_test_per_label is not None:
                rng = np.random.default_rng([self.seed, 2])
                labels = test.labels
                keep = []
                for lab in (0, 1):
                    idx = np.flatnonzero(labels == lab)
                    if len(idx) > self.max_test_per_label:
                        idx = rng.choice(idx, self.max_test_per_label, replace=False)
                    keep.append(idx)
                test = test[np.sort(np.concatenate(keep))]
            train.name, test.name = ds.train.name, ds.test.name
            info = {**ds.info, "max_train": self.max_train, "max_test_per_label": self.max_test_per_label,
                    "n_train_full": len(ds.train), "n_test_full": len(ds.test)}
            self._ds = ADDataset(ds.name, ds.category, train, test, ds.validation, info)
        return self._ds

    @property
    def train(self) -> Split:
        return self.build().train

    @property
    def test(self) -> Split:
        return self.build().test

    @property
    def info(self) -> dict[str, Any]:
        return self.build().info

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ds": None}

    def __repr__(self) -> str:
        return (f"CappedDataset({self.name!r}, {self.cfg!r}, max_train={self.max_train}, "
                f"max_test_per_label={self.max_test_per_label}, seed={self.seed})")


def plan(profile: str, methods: list[str] | None = None) -> tuple[list, dict[str, dict], list[str]]:
    """Datasets, method configs and notes (skipped methods or data) for ``profile``."""
    prof = get_profile(PROFILES, profile)
    notes: list[str] = []
    datasets = prof["datasets"]
    if datasets == "miad+mvtec_ad":
        datasets, notes = full_datasets()
    available = set(list_models())
    chosen = {}
    for m in methods or [m for m in METHODS if m in prof["methods"]]:
        if m not in prof["methods"]:
            raise ConfigError(f"unknown method {m!r}; valid: {', '.join(METHODS)}")
        if m in available:
            chosen[m] = prof["methods"][m]
        else:
            notes.append(f"{LABELS[m]} is not available in this build (model {m!r} not registered)")
    return datasets, chosen, notes


PAPER = "MIAD (Bao et al. 2022)"
TABLE = "per-category AUROC"


def method_config(profile: str, method: str, dataset: str) -> dict[str, Any]:
    """The model configuration of ``method`` in ``profile`` on ``dataset`` (per-dataset overrides applied)."""
    cfg = dict(get_profile(PROFILES, profile)["methods"][method])
    return {k: v for k, v in cfg.items() if k != "by_dataset"} | cfg.get("by_dataset", {}).get(dataset, {})


def chapter_dataset(profile: str, name: str, cfg: dict[str, Any], seed: int = 0) -> tuple[str | CappedDataset, dict]:
    """``(dataset, dataset_cfg)`` for :func:`run_experiment`: the name itself when the profile caps
    nothing, else a :class:`CappedDataset` and its identifying configuration."""
    prof = get_profile(PROFILES, profile)
    max_train, max_test = prof.get("max_train"), prof.get("max_test_per_label")
    if max_train is None and max_test is None:
        return name, dict(cfg)
    ds = CappedDataset(name, cfg, max_train, max_test, seed)
    return ds, ds.record_cfg()


def cells(
    profile: str = "quick", methods: list[str] | None = None, seed: int = 0, device: str = "auto"
) -> list[dict[str, Any]]:
    """The chapter's per-category grid: one dict of :func:`iadlib.experiment.run_experiment` keyword
    arguments per (dataset/category, method) cell, in the order the chapter runs them. Add
    ``store=`` / ``force=`` and call ``run_experiment(**cell)``; each cell writes its own record.

    The unified UniAD (one model for all categories, :func:`run_unified`) is not among them: it is a
    single fit shared by every category, not a per-category ``run_experiment`` cell.
    """
    datasets, chosen, _ = plan(profile, methods)
    out = []
    for ds_name, ds_cfg in datasets:
        dataset, record_cfg = chapter_dataset(profile, ds_name, ds_cfg, seed)
        for method in chosen:
            cfg = method_config(profile, method, ds_name)
            out.append({
                "chapter": CHAPTER, "method": method, "dataset": dataset, "model_cfg": cfg,
                "dataset_cfg": record_cfg, "profile": profile, "seed": seed, "device": device,
                "paper": PAPER, "table": TABLE,
                "backbone": "none" if method in ("draem", "unet_ae") else cfg.get("backbone", "efficientnet_lite0"),
            })
    return out


def _rows(rec: dict[str, Any], label: str) -> list[dict[str, Any]]:
    p, ex = rec["params"], rec["extra"]
    return [{
        "method": label,
        "model": p["method"],
        "dataset": p["dataset"],
        "category": p["category"],
        "metric": metric,
        "value": value,
        **{k: ex.get(k) for k in ("fit_seconds", "predict_ms_per_image", "peak_rss_mb",
                                  "image_size", "n_train", "n_test", "predictions")},
        "commit": rec["provenance"]["commit"],
        "device": rec["provenance"]["device"],
    } for metric, value in rec["metrics"].items()]


def _log(i: int, n: int, label: str, rec: dict[str, Any]) -> None:
    p, ex = rec["params"], rec["extra"]
    print(f"[{i}/{n}] {label:<16} {p['dataset']}/{p['category']}: image AUROC "
          f"{rec['metrics']['image_auroc']:.3f} · fit {ex['fit_seconds']:.0f} s · "
          f"{ex['predict_ms_per_image']:.0f} ms/img · train {ex['n_train']} / test {ex['n_test']}", flush=True)


def run(
    profile: str = "quick",
    results_dir: str | None = None,
    force: bool = False,
    device: str = "auto",
    seed: int = 0,
    methods: list[str] | None = None,
    unified: bool | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Run the grid (datasets × methods) and, when UniAD is among the methods and ``unified`` is not
    False, the unified UniAD; returns the records as a long table and notes."""
    store = ResultStore(results_dir)
    check_run_args(PROFILES, profile, device=device, seed=seed)
    _, chosen, notes = plan(profile, methods)
    jobs = cells(profile, methods, seed, device)
    unified = "uniad" in chosen if unified is None else unified
    n = len(jobs) + (1 if unified else 0)
    rows = []
    for i, cell in enumerate(jobs, 1):
        rec = run_experiment(**cell, store=store, force=force)
        _log(i, n, LABELS[cell["method"]], rec)
        rows += _rows(rec, LABELS[cell["method"]])
    if unified:
        for rec in run_unified(profile, results_dir, force, device, seed):
            _log(n, n, UNIFIED, rec)
            rows += _rows(rec, UNIFIED)
    return pd.DataFrame(rows), notes


UNIFIED = "UniAD (unified)"


def order() -> list[str]:
    """Method labels in the paper's order, the unified UniAD right after the per-category one."""
    return [LABELS[m] for m in METHODS] + [UNIFIED]


def unified_config(profile: str) -> dict[str, Any]:
    """UniAD's configuration for the unified run: the profile's UniAD settings (no per-dataset
    overrides: one model sees every dataset) updated with the profile's ``unified_uniad`` entries."""
    prof = get_profile(PROFILES, profile)
    cfg = {k: v for k, v in prof["methods"]["uniad"].items() if k != "by_dataset"}
    return cfg | prof.get("unified_uniad", {})


def unified_jobs(
    profile: str = "quick", seed: int = 0, device: str = "auto"
) -> tuple[dict[str, Any], list[tuple[CappedDataset, dict[str, Any]]]]:
    """The unified UniAD's model configuration and, per category, ``(dataset, record params)``.

    ``params["train_set"]`` lists the categories whose training sets the category's model is fitted
    on: all of the profile's categories (``unified_by="all"``, quick/smoke), or all categories of the
    same dataset (``unified_by="dataset"``, full: one model for MIAD's scenarios, one for MVTec AD's
    fifteen classes, as in the UniAD paper).
    """
    datasets, _, _ = plan(profile, ["uniad"])
    cfg = unified_config(profile)
    by = get_profile(PROFILES, profile).get("unified_by", "all")
    if by not in ("all", "dataset"):
        raise ConfigError(f"{profile}: unified_by={by!r}; valid: 'all', 'dataset'")
    members = [(n, c, *chapter_dataset(profile, n, c, seed)) for n, c in datasets]
    jobs = []
    for name, cfg_ds, dataset, record_cfg in members:
        train_set = [f"{n}/{c.get('category')}" for n, c, _, _ in members if by == "all" or n == name]
        if isinstance(dataset, str):  # nothing capped: the loader's dataset as it is, built lazily
            dataset = CappedDataset(name, cfg_ds, seed=seed)
        params = {
            "paper": PAPER, "table": TABLE, "method": "uniad_unified", "model": "uniad",
            "protocol": "unified", "train_set": train_set, "dataset": name,
            "category": cfg_ds.get("category"), "dataset_cfg": record_cfg, "model_cfg": cfg,
            "profile": profile, "seed": seed, "device": resolve_device(device).type,
        }
        jobs.append((dataset, params))
    return cfg, jobs


def run_unified(
    profile: str = "quick",
    results_dir: str | None = None,
    force: bool = False,
    device: str = "auto",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """UniAD's own protocol (You et al. 2022, §4.1): **one** model fitted on the union of the
    profile's categories' training sets (per dataset in ``full``, see :func:`unified_jobs`), then
    evaluated on each category's test set.

    Writes one record per category to the :class:`ResultStore` the way :func:`run_experiment` does
    (parameters with ``"method": "uniad_unified"``, ``"protocol": "unified"`` and the ``train_set``;
    metrics; an ``.npz`` of predictions; provenance; atomic), and reuses them unless ``force``. The
    fit time in every record is that of the one shared fit (``extra["fit_shared_by"]`` categories).
    """
    store = ResultStore(results_dir)
    cfg, jobs = unified_jobs(profile, seed, device)
    groups: dict[tuple[str, ...], list] = {}
    for job in jobs:
        groups.setdefault(tuple(job[1]["train_set"]), []).append(job)
    return [rec for group in groups.values() for rec in _run_unified_group(group, cfg, store, force, device, seed)]


def _run_unified_group(
    jobs: list[tuple[CappedDataset, dict[str, Any]]],
    cfg: dict[str, Any],
    store: ResultStore,
    force: bool,
    device: str,
    seed: int,
) -> list[dict[str, Any]]:
    """One UniAD fitted on the training sets of ``jobs``' categories, one record per category."""
    if not force:
        done = [store.get(CHAPTER, params) for _, params in jobs]
        if all(d is not None and Path(d["extra"].get("predictions", "")).is_file() for d in done):
            return done
    model = get_model("uniad", seed=seed, device=device, **cfg)
    train = {params["dataset"] + "/" + str(params["category"]): ds.train for ds, params in jobs}
    with PeakMemory() as mem_fit:
        model.fit(train)
    n_train = sum(len(t) for t in train.values())
    out = []
    for ds, params in jobs:
        with PeakMemory() as mem_pred:
            scores, maps = model.predict(ds.test)
        metrics = evaluate(ds.test, scores, maps)
        pred_path = save_predictions(store.root / CHAPTER / f"{experiment_key(params)}.npz", ds.test, scores, maps)
        extra = {
            "backbone": cfg.get("backbone", "efficientnet_lite0"),
            "n_train": n_train,
            "n_train_category": len(ds.train),
            "fit_shared_by": len(jobs),
            **run_extra(model, mem_fit, mem_pred, len(ds.test), pred_path),
        }
        out.append(store.put(CHAPTER, params, metrics, extra, device=device))
    return out


def table(df: pd.DataFrame, metric: str = "image_auroc") -> pd.DataFrame:
    """Rows dataset/category, columns methods (in the paper's order), plus the mean row."""
    d = df[df.metric == metric]
    if d.empty:
        return pd.DataFrame()
    t = d.pivot_table(index=["dataset", "category"], columns="method", values="value")
    t = t[[m for m in order() if m in t.columns]]
    t.loc[("mean", ""), :] = t.mean()
    return t


def reported_table() -> pd.DataFrame:
    """The methods' own reported MVTec AD numbers (the MIAD table itself is not available here)."""
    rep = load_reported("miad")
    return rep.pivot_table(index=["dataset", "metric"], columns="method", values="value")


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """Fit seconds, prediction ms/image and peak RSS per method (median over datasets; the unified
    UniAD's fit is its one fit on all categories together)."""
    d = df[df.metric == "image_auroc"]
    return d.groupby("method")[["fit_seconds", "predict_ms_per_image", "peak_rss_mb"]].median().reindex(
        [m for m in order() if m in set(d.method)]
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


def cell_params(cell: dict[str, Any]) -> dict[str, Any]:
    """The record parameters :func:`run_experiment` stores for ``cell`` (its identity in the store)."""
    ds = cell["dataset"]
    return {
        "paper": cell["paper"], "table": cell["table"], "method": cell["method"],
        "dataset": ds if isinstance(ds, str) else ds.name,
        "category": cell["dataset_cfg"].get("category") if isinstance(ds, str) else ds.category,
        "dataset_cfg": dict(cell["dataset_cfg"]), "model_cfg": dict(cell["model_cfg"]),
        "profile": cell["profile"], "seed": cell["seed"], "device": resolve_device(cell["device"]).type,
    }


def results(
    profile: str = "quick", results_dir: str | None = None, device: str = "auto", seed: int = 0
) -> pd.DataFrame:
    """The long table :func:`run` returns, read from the store only (finished cells of the current
    grid, the unified UniAD included); nothing is computed."""
    store = ResultStore(results_dir)
    rows = []
    for cell in cells(profile, None, seed, device):
        if (rec := store.get(CHAPTER, cell_params(cell))) is not None:
            rows += _rows(rec, LABELS[cell["method"]])
    for _, params in unified_jobs(profile, seed, device)[1]:
        if (rec := store.get(CHAPTER, params)) is not None:
            rows += _rows(rec, UNIFIED)
    return pd.DataFrame(rows)


SUBSTITUTION = (
    "ours: ELPV mono/poly (MIAD's photovoltaic scenario) + synthetic brick texture, efficientnet_lite0 "
    "backbone, capped data and few epochs; paper: the method's own MVTec AD mean (MIAD's table not available)"
)


def headline(
    results_dir: str | None = None, profile: str = "quick", device: str = "auto", seed: int = 0
) -> pd.DataFrame:
    """The chapter's headline: per method, the mean image AUROC over the profile's categories (from
    the store) beside the number the method's authors report on MVTec AD (``book/reported/miad.csv``;
    a different dataset, backbone and schedule; UniAD's reported number is its unified model's, so
    it sits beside the unified row). Empty when the chapter has not been run."""
    df = results(profile, results_dir, device, seed)
    cols = ["chapter", "method", "dataset", "metric", "ours", "paper", "paper_dataset", "n_categories", "substitution"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    d = df[df.metric == "image_auroc"]
    rep = load_reported("miad")
    rep = rep[(rep.metric == "image_auroc") & (rep.category == "mean")].set_index("method")["value"]
    paper_label = {UNIFIED: "UniAD", "UniAD": None}
    rows = []
    for label in order():
        g = d[d.method == label]
        if g.empty:
            continue
        key = paper_label.get(label, label)
        rows.append({
            "chapter": CHAPTER, "method": label,
            "dataset": ", ".join(f"{a}/{b}" for a, b in g[["dataset", "category"]].drop_duplicates().values),
            "metric": "image_auroc (mean)", "ours": float(g.value.mean()),
            "paper": float(rep[key]) if key in rep.index else float("nan"),
            "paper_dataset": "mvtec_ad" if key in rep.index else "",
            "n_categories": len(g), "substitution": SUBSTITUTION,
        })
    return pd.DataFrame(rows, columns=cols)
