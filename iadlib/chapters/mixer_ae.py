"""Chapter 2 — autoencoders and the Mixer-AE (Rotondi & Lavalle): grids, protocol, tables, figures.

Protocol (the paper's §3.7, on a multi-category benchmark): **one** model is trained on the
normal training images of every category at once; each category's test split is divided (seeded,
stratified by label) into a validation part — early stopping on the class-averaged F1, the LR
schedule, and the ensemble weights of Eq. 10 — and a test part on which every number is computed.
Decisions come from the running thresholds of Eq. 6: one pooled threshold for the CAE variants, one
per *predicted* category for the Mixer (Algorithm 1). Table 3 averages precision / recall / F1 over
the categories; Table 4 gives per category the ratios of correctly classified normal and anomalous
images.

Substitutions (named in the tables): the paper's 15 MVTec AD categories (full profile, when the
user has them) → ELPV mono and poly solar cells plus ``synth_textures`` categories (real texture
photographs with synthetic defects) in the quick profile; 224 px → 64 px; the Table 2 channel widths
× 1/8; 8 epochs instead of early stopping (patience 20) after hundreds — with so few epochs the
"best validation epoch" is noise, so the smoke and quick profiles train for their fixed epochs and
use the validation part only for the ensemble weights and the choice of the best Mixer; batch 8
instead of 128. The Mixer's classifier of the small profiles also sees pooled encoder-stage
statistics and gets 100 extra epochs alone on the frozen encoder (``_CLS_SMALL``; the paper's
latent-only, jointly trained classifier stays near 0.6 accuracy on these fine-grained categories
in 8 epochs); the autoencoder, its loss, the thresholds and Algorithm 1 are the paper's.

Every number goes through :class:`~iadlib.results.ResultStore` under chapter ``"02_mixer_ae"``
with all of its parameters, so a rerun reuses finished records (``force=True`` recomputes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..data import get_dataset
from ..data.base import Split
from ..errors import ConfigError, DatasetError
from ..models import get_model, load_model
from ..models.autoencoders import AutoencoderDetector, weighted_vote
from ..results import ResultStore, experiment_key, load_reported
from ..utils import PeakMemory, atomic_path, resolve_device
from . import check_run_args, get_profile

CHAPTER = "02_mixer_ae"
REPORTED = "mixer_ae"
PAPER = "Rotondi & Lavalle, Unsupervised anomaly detection in industrial image data with autoencoders"
ENSEMBLE = "ENSEMBLE"

_CO = 1e-4  # Eq. 8's λ ("around 0.0001")
_DE = 0.3  # Eq. 7's v
#: Table 3 rows → model configuration (on top of the profile's shared settings).
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": dict(loss="l2", noise_std=0.0, contractive=0.0, mixer=False),
    "DE - AE (L2)": dict(loss="l2", noise_std=_DE, contractive=0.0, mixer=False),
    "CO - AE (L2)": dict(loss="l2", noise_std=0.0, contractive=_CO, mixer=False),
    "CO+DE - AE (L2)": dict(loss="l2", noise_std=_DE, contractive=_CO, mixer=False),
    "CO+DE+MIX - AE (L2)": dict(loss="l2", noise_std=_DE, contractive=_CO, mixer=True),
    "CO+DE+MIX - AE (SSIM)": dict(loss="ssim", noise_std=_DE, contractive=_CO, mixer=True),
    "CO+DE+MIX - AE (MSSIM)": dict(loss="mssim", noise_std=_DE, contractive=_CO, mixer=True),
}
MIXER_VARIANTS = tuple(k for k, v in VARIANTS.items() if v["mixer"])

MVTEC_AD_15 = (
    "carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
    "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper",
)  # fmt: skip

_TEX_SMOKE = {"image_size": 48, "n_train": 12, "n_test_good": 6, "n_test_defect": 6}
_TEX_QUICK = {"image_size": 64, "n_train": 32, "n_test_good": 24, "n_test_defect": 24}
#: The Mixer classifier of the small profiles (merged into the Mixer variants only). With 8 epochs
#: of batch 8 the paper's classifier (3×3 block + MLP on the latent code, trained jointly) gets
#: ~160 steps and stays near 0.6 accuracy: it names ELPV vs brick vs grass/gravel but not mono vs
#: poly nor grass vs gravel. Three changes bring it to ~0.9 without touching the autoencoder, the
#: loss or Algorithm 1: the classifier also sees the pooled mean/std of every encoder stage
#: ("multiscale", fine texture survives there), BatchNorm in its convolution block and on those
#: statistics ("norm"), and 100 extra epochs for the classifier alone on the frozen trained encoder
#: (cosine learning-rate decay; a few CPU seconds).
_CLS_SMALL = {"classifier_features": "multiscale", "classifier_norm": True, "classifier_epochs": 100}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "categories": [("synth_textures", "brick", _TEX_SMOKE), ("synth_textures", "grass", _TEX_SMOKE)],
        "max_train": 12,
        "max_test_per_label": 6,
        "val_fraction": 1 / 3,
        "early_stopping": False,
        "model": dict(arch="table2", image_size=48, width=1 / 16, epochs=2, batch_size=8, alpha=0.5, beta=0.5,
                      patience=20, lr_patience=5),
        "classifier": _CLS_SMALL,
    },
    "quick": {
        "categories": [
            ("elpv", "mono", {}),
            ("elpv", "poly", {}),
            ("synth_textures", "brick", _TEX_QUICK),
            ("synth_textures", "grass", _TEX_QUICK),
            ("synth_textures", "gravel", _TEX_QUICK),
        ],
        "max_train": 32,
        "max_test_per_label": 24,
        "val_fraction": 1 / 3,
        "early_stopping": False,
        "model": dict(arch="table2", image_size=64, width=1 / 8, epochs=8, batch_size=8, alpha=0.5, beta=0.5,
                      patience=20, lr_patience=5),
        "classifier": _CLS_SMALL,
    },
    "full": {
        "categories": [("mvtec_ad", c, {}) for c in MVTEC_AD_15],
        "max_train": None,
        "max_test_per_label": None,
        "val_fraction": 0.2,
        "early_stopping": True,
        "model": dict(arch="table2", image_size=224, width=1.0, epochs=300, batch_size=128, alpha=0.5,
                      beta=0.5, patience=20, lr_patience=5),
        "classifier": {},  # the paper's classifier: the latent code only, trained jointly
    },
}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Data: one multi-category benchmark
# ------------------------------------------------------------------------------------------------
@dataclass
class CategoryData:
    """One category of the benchmark: normal training images, a validation and a test split."""

    name: str
    dataset: str
    train: Split
    validation: Split
    test: Split


def category_name(dataset: str, category: str) -> str:
    return f"elpv_{category}" if dataset == "elpv" else str(category)


def _take(split: Split, idx: np.ndarray, name: str) -> Split:
    out = split[np.sort(idx)]
    out.name = name
    return out


def load_benchmark(
    profile: str = "quick", seed: int = 0, data_root: str | None = None
) -> dict[str, CategoryData]:
    """Build the profile's categories: train (capped), and the test split capped per label and
    divided, stratified by label, into validation (``val_fraction``) and test parts (seeded)."""
    prof = get_profile(PROFILES, profile)
    out: dict[str, CategoryData] = {}
    for ds_name, cat, cfg in prof["categories"]:
        cfg = dict(cfg)
        if ds_name == "mvtec_ad" and data_root is not None:
            cfg["root"] = data_root  # else the loader's default ($IADLIB_DATA/mvtec_ad or .cache/data/mvtec_ad)
        try:
            ds = get_dataset(ds_name, category=cat, seed=seed, **cfg)
        except DatasetError as exc:
            if ds_name != "mvtec_ad":
                raise
            raise DatasetError(
                f"the full profile trains one model on the 15 MVTec AD categories and needs the dataset: {exc}; "
                "in the notebook, pass data_root=<folder holding carpet/, grid/, …>"
            ) from exc
        name = category_name(ds_name, cat)
        rng = np.random.default_rng([seed, len(out)])
        train = ds.train
        if prof["max_train"] is not None and len(train) > prof["max_train"]:
            train = _take(train, rng.choice(len(train), prof["max_train"], replace=False), f"{name}/train")
        labels = ds.test.labels
        val_idx, test_idx = [], []
        for lab in (0, 1):
            idx = rng.permutation(np.flatnonzero(labels == lab))
            cap = prof["max_test_per_label"]
            if cap is not None:
                idx = idx[:cap]
            n_val = int(round(prof["val_fraction"] * len(idx)))
            if len(idx) < 2 or n_val < 1 or n_val >= len(idx):
                raise DatasetError(
                    f"{ds_name}/{cat}: {len(idx)} test images with label {lab} cannot be split into "
                    f"validation and test (val_fraction={prof['val_fraction']})"
                )
            val_idx.append(idx[:n_val])
            test_idx.append(idx[n_val:])
        val = _take(ds.test, np.concatenate(val_idx), f"{name}/validation").materialize()
        test = _take(ds.test, np.concatenate(test_idx), f"{name}/test").materialize()
        out[name] = CategoryData(name, ds_name, train.materialize(), val, test)
    return out


def benchmark_table(bench: dict[str, CategoryData]) -> pd.DataFrame:
    """Counts per category: training (normal), validation and test (normal / anomalous)."""
    rows = []
    for c in bench.values():
        rows.append({
            "category": c.name, "dataset": c.dataset, "train": len(c.train),
            "val normal": int((c.validation.labels == 0).sum()),
            "val anomalous": int(c.validation.labels.sum()),
            "test normal": int((c.test.labels == 0).sum()), "test anomalous": int(c.test.labels.sum()),
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("category")


# ------------------------------------------------------------------------------------------------
# Experiments
# ------------------------------------------------------------------------------------------------
def _benchmark_params(profile: str) -> dict[str, Any]:
    prof = PROFILES[profile]
    return {
        "categories": [[d, c, cfg] for d, c, cfg in prof["categories"]],
        "max_train": prof["max_train"],
        "max_test_per_label": prof["max_test_per_label"],
        "val_fraction": prof["val_fraction"],
        "early_stopping": prof["early_stopping"],
    }


def variant_params(variant: str, profile: str = "quick", seed: int = 0, device: str = "auto") -> dict[str, Any]:
    """The record parameters of one Table 3 variant (its store key)."""
    cfg = model_config(variant, profile)
    return {
        "paper": PAPER, "table": "Table 3", "method": variant, "model": "mixer_ae" if cfg["mixer"] else "cae",
        "model_cfg": cfg, "benchmark": _benchmark_params(profile), "profile": profile, "seed": seed,
        "device": resolve_device(device).type,
    }  # fmt: skip


def ensemble_params(
    member_keys: list[str], profile: str = "quick", seed: int = 0, device: str = "auto"
) -> dict[str, Any]:
    """The record parameters of the Eq. 10 ensemble over the members with these record keys."""
    return {
        "paper": PAPER, "table": "Table 3", "method": ENSEMBLE, "members": sorted(member_keys),
        "weights": "validation F1 (Eq. 10)", "benchmark": _benchmark_params(profile), "profile": profile,
        "seed": seed, "device": resolve_device(device).type,
    }  # fmt: skip


def model_config(variant: str, profile: str) -> dict[str, Any]:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    prof = get_profile(PROFILES, profile)
    cls = prof.get("classifier", {}) if VARIANTS[variant]["mixer"] else {}
    return {**prof["model"], **cls, **VARIANTS[variant]}


def _category_metrics(labels: np.ndarray, decision: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from .. import metrics as M

    prf = M.precision_recall_f1(labels, decision.astype(float), 0.5)
    ratios = M.classification_ratios(labels, decision)
    return {
        "precision": prf["precision"], "recall": prf["recall"], "f1": prf["f1"],
        "normal_ratio": ratios["normal"], "anomalous_ratio": ratios["anomalous"],
        "image_auroc": M.image_auroc(labels, scores),
    }  # fmt: skip


def _summarise(per_cat: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flatten per-category metrics to ``"<metric>/<category>"`` and add the class averages."""
    out: dict[str, float] = {}
    keys = next(iter(per_cat.values())).keys()
    for k in keys:
        vals = [m[k] for m in per_cat.values() if m.get(k) is not None and np.isfinite(m[k])]
        out[k] = float(np.mean(vals)) if vals else float("nan")
        for cat, m in per_cat.items():
            out[f"{k}/{cat}"] = m[k]
    return out


def run_variant(
    variant: str,
    bench: dict[str, CategoryData],
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    store: ResultStore | None = None,
    force: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Train one Table 3 variant on all categories at once, evaluate it per category, record it."""
    store = store or ResultStore()
    cfg = model_config(variant, profile)
    params = variant_params(variant, profile, seed, device)
    key = experiment_key(params)
    pred_path = store.root / CHAPTER / f"{key}.npz"
    ckpt_path = store.root / CHAPTER / f"{key}.pt"
    if not force:
        done = store.get(CHAPTER, params)
        if done is not None and pred_path.is_file() and ckpt_path.is_file():
            return done
    model = get_model(params["model"], seed=seed, device=device, verbose=verbose, **cfg)
    assert isinstance(model, AutoencoderDetector)
    with PeakMemory() as mem_fit:
        val = {c: d.validation for c, d in bench.items()} if PROFILES[profile]["early_stopping"] else None
        model.fit_multi({c: d.train for c, d in bench.items()}, val)
    per_cat: dict[str, dict[str, float]] = {}
    fields = ("score", "decision", "label", "true_cat", "pred_cat", "threshold", "val_decision", "val_label",
              "val_cat")  # fmt: skip
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in fields}
    n_test = 0
    with PeakMemory() as mem_pred:
        for k, (name, data) in enumerate(bench.items()):
            p = model.predict_multi(data.test)
            labels = data.test.labels
            m = _category_metrics(labels, p.decision, p.score)
            if cfg["mixer"]:
                m["class_acc"] = float(np.mean(p.category_index == k))
            per_cat[name] = m
            arrays["score"].append(p.score)
            arrays["decision"].append(p.decision)
            arrays["label"].append(labels)
            arrays["true_cat"].append(np.full(len(labels), k))
            arrays["pred_cat"].append(p.category_index)
            arrays["threshold"].append(p.threshold)
            n_test += len(labels)
    for k, (_name, data) in enumerate(bench.items()):  # validation decisions, for the ensemble
        pv = model.predict_multi(data.validation)
        arrays["val_decision"].append(pv.decision)
        arrays["val_label"].append(data.validation.labels)
        arrays["val_cat"].append(np.full(len(pv.decision), k))
    metrics = _summarise(per_cat)
    hist = model.history
    vd, vl, vc = (np.concatenate(arrays[k]) for k in ("val_decision", "val_label", "val_cat"))
    metrics["val_f1"] = float(np.mean([_f1(vl[vc == k], vd[vc == k]) for k in range(len(bench))]))
    model.save(ckpt_path)
    with atomic_path(pred_path) as tmp:
        with open(tmp, "wb") as fh:
            flat = {k: np.concatenate(v) for k, v in arrays.items()}
            np.savez_compressed(fh, categories=np.array(list(bench)), **flat)
    extra = {
        "image_size": cfg["image_size"], "width": cfg["width"], "epochs": cfg["epochs"],
        "epochs_run": len(hist.get("loss", [])), "n_train": int(sum(len(d.train) for d in bench.values())),
        "n_test": n_test, "fit_seconds": mem_fit.seconds,
        "predict_ms_per_image": 1000.0 * mem_pred.seconds / max(1, n_test),
        "peak_rss_mb": max(mem_fit.peak_rss, mem_pred.peak_rss) / 2**20,
        "n_parameters": int(sum(p.numel() for p in model.ae.parameters())),
        "n_classifier_parameters": int(sum(p.numel() for p in model.classifier.parameters()))
        if model.classifier is not None else 0,
        "categories": list(bench), "history": {k: list(map(float, v)) for k, v in hist.items()},
        "predictions": str(pred_path), "checkpoint": str(ckpt_path),
    }  # fmt: skip
    return store.put(CHAPTER, params, metrics, extra, device=device)


def run_ensemble(
    members: dict[str, dict[str, Any]],
    bench: dict[str, CategoryData],
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    store: ResultStore | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Eq. 10 over the trained variants: weighted vote of their test decisions, weights = each
    member's F1 on the validation split (normalised), the paper's "weights normalized according to
    performance metrics"."""
    store = store or ResultStore()
    params = ensemble_params([r["key"] for r in members.values()], profile, seed, device)
    if not force:
        done = store.get(CHAPTER, params)
        if done is not None:
            return done
    preds = {v: np.load(r["extra"]["predictions"]) for v, r in members.items()}
    names = list(preds)
    w = []
    for v in names:
        p = preds[v]
        f1s = []
        for k in range(len(bench)):
            sel = p["val_cat"] == k
            f1s.append(_f1(p["val_label"][sel], p["val_decision"][sel]))
        w.append(max(float(np.mean(f1s)), 1e-3))
    first = preds[names[0]]
    vote, decision = weighted_vote(np.stack([preds[v]["decision"] for v in names]), w)
    per_cat = {}
    for k, name in enumerate(bench):
        sel = first["true_cat"] == k
        per_cat[name] = _category_metrics(first["label"][sel], decision[sel], vote[sel])
    metrics = _summarise(per_cat)
    extra = {"weights": dict(zip(names, (np.asarray(w) / sum(w)).tolist())), "categories": list(bench)}
    return store.put(CHAPTER, params, metrics, extra, device=device)


def _f1(labels: np.ndarray, decision: np.ndarray) -> float:
    tp = float(np.sum(decision & (labels == 1)))
    fp = float(np.sum(decision & (labels == 0)))
    fn = float(np.sum(~decision & (labels == 1)))
    return 2 * tp / max(2 * tp + fp + fn, 1e-12)


def run(
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    results_dir: str | None = None,
    force: bool = False,
    data_root: str | None = None,
    variants: list[str] | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every Table 3 row (the variants, then the ensemble); returns ``{variant: record}``."""
    check_run_args(PROFILES, profile, device=device, seed=seed)
    variants = list(VARIANTS) if variants is None else list(variants)
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"unknown variant {v!r}; valid: {', '.join(VARIANTS)}")
    store = ResultStore(results_dir)
    bench = load_benchmark(profile, seed, data_root)
    out = {}
    for v in variants:
        out[v] = run_variant(v, bench, profile, seed, device, store, force, verbose)
    if len(out) >= 2:
        out[ENSEMBLE] = run_ensemble(out, bench, profile, seed, device, store, force)
    return out


def stored(
    profile: str = "quick", seed: int = 0, device: str = "auto", results_dir: str | None = None
) -> dict[str, dict[str, Any]]:
    """The finished records of the profile's current grid, read from the store (nothing is run);
    ``{variant: record}`` for the variants found, plus the ensemble when all its members are there."""
    get_profile(PROFILES, profile)
    store = ResultStore(results_dir)
    out: dict[str, dict[str, Any]] = {}
    for v in VARIANTS:
        rec = store.get(CHAPTER, variant_params(v, profile, seed, device))
        if rec is not None:
            out[v] = rec
    if len(out) == len(VARIANTS):
        rec = store.get(CHAPTER, ensemble_params([r["key"] for r in out.values()], profile, seed, device))
        if rec is not None:
            out[ENSEMBLE] = rec
    return out


def headline(
    results_dir: str | None = None, profile: str = "quick", device: str = "auto", seed: int = 0
) -> pd.DataFrame:
    """The chapter's headline for the book's front page: per Table 3 row the class-averaged F1 of
    the thresholded decisions (Eq. 6, Algorithm 1) from the store, beside the paper's F on MVTec AD
    (``book/reported/mixer_ae.csv``), plus the Mixer's category-classifier accuracy and macro-F1
    beside the paper's "0.99 F1 score in most of our trainings" (§4 text, no table). Empty when not
    run yet."""
    cols = ["chapter", "method", "dataset", "metric", "ours", "paper", "paper_dataset", "n_categories",
            "substitution"]  # fmt: skip
    recs = stored(profile, seed, device, results_dir)
    if not recs:
        return pd.DataFrame(columns=cols)
    rep_all = load_reported(REPORTED)
    rep = rep_all[(rep_all["table"] == "Table 3") & (rep_all["metric"] == "F")].set_index("method")["value"]
    cls_f1 = float(rep_all.loc[rep_all["metric"] == "classifier F1", "value"].iloc[0])
    cats = [category_name(d, c) for d, c, _ in PROFILES[profile]["categories"]]
    dataset = ", ".join(f"{d}/{c}" for d, c, _ in PROFILES[profile]["categories"])
    base = {"chapter": CHAPTER, "dataset": dataset, "n_categories": len(cats), "substitution": _substitution(profile)}
    rows = []
    for v in [*VARIANTS, ENSEMBLE]:
        if v not in recs:
            continue
        m = recs[v]["metrics"]
        rows.append({**base, "method": v, "metric": "f1 (class mean)", "ours": float(m["f1"]),
                     "paper": float(rep[v]) if v in rep.index else float("nan"),
                     "paper_dataset": "mvtec_ad" if v in rep.index else ""})  # fmt: skip
        if "class_acc" in m:
            rows.append({**base, "method": v, "metric": "mixer classifier accuracy", "ours": float(m["class_acc"]),
                         "paper": float("nan"), "paper_dataset": ""})  # fmt: skip
            if "predictions" in recs[v]["extra"]:
                rows.append({**base, "method": v, "metric": "mixer classifier F1 (macro)",
                             "ours": classifier_f1(recs[v]), "paper": cls_f1, "paper_dataset": "mvtec_ad"})  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def _substitution(profile: str) -> str:
    if profile == "full":
        return "MVTec AD (15 categories), paper's settings"
    cats = ", ".join(category_name(d, c) for d, c, _ in PROFILES[profile]["categories"])
    m = PROFILES[profile]["model"]
    out = (
        f"{cats} instead of the 15 MVTec AD categories; {m['image_size']} px, widths ×{m['width']:g}, "
        f"{m['epochs']} epochs"
    )
    cls = PROFILES[profile].get("classifier", {})
    if cls.get("classifier_features") == "multiscale" or cls.get("classifier_epochs"):
        out += (
            "; Mixer classifier: latent code + pooled encoder-stage statistics, "
            f"{cls.get('classifier_epochs', 0)} classifier-only epochs on the frozen encoder"
        )
    return out


def table3(records: dict[str, dict[str, Any]], profile: str = "quick") -> pd.DataFrame:
    """Table 3: precision / recall / F1 averaged over categories, ours beside the paper's."""
    rows = []
    for v, r in records.items():
        for metric, col in (("precision", "P"), ("recall", "R"), ("f1", "F")):
            rows.append({"method": v, "metric": col, "value": r["metrics"][metric]})
    ours = pd.DataFrame(rows)
    rep = load_reported(REPORTED)
    rep = rep[rep["table"] == "Table 3"]
    wide_ours = ours.pivot(index="method", columns="metric", values="value")[["P", "R", "F"]]
    wide_rep = rep.pivot(index="method", columns="metric", values="value")[["P", "R", "F"]]
    out = pd.concat({"paper (MVTec AD)": wide_rep, "reproduced": wide_ours}, axis=1)
    order = list(VARIANTS) + [ENSEMBLE]
    out = out.reindex([m for m in order if m in out.index])
    out[("reproduced", "AUROC")] = [records[m]["metrics"].get("image_auroc") if m in records else np.nan
                                    for m in out.index]  # fmt: skip
    out.attrs["substitution"] = _substitution(profile)
    return out


def flag_all_f1(records: dict[str, dict[str, Any]]) -> float:
    """Class-averaged F1 of the trivial detector that flags every test image, from the stored labels
    of any variant (the test parts are the same for all rows): the floor to read Table 3's F against,
    ``2p / (1 + p)`` per category with ``p`` its share of anomalous test images."""
    rec = next((r for r in records.values() if "predictions" in r.get("extra", {})), None)
    if rec is None:
        raise ConfigError("no variant record with stored predictions; run the chapter first")
    p = np.load(rec["extra"]["predictions"])
    return float(np.mean([_f1(p["label"][p["true_cat"] == k], np.ones(int((p["true_cat"] == k).sum()), bool))
                          for k in np.unique(p["true_cat"])]))  # fmt: skip


def best_mixer(records: dict[str, dict[str, Any]]) -> str:
    """The Mixer variant with the highest validation F1 (the paper picks its best model)."""
    cands = [v for v in MIXER_VARIANTS if v in records]
    if not cands:
        raise ConfigError("no Mixer variant among the records; run the CO+DE+MIX rows first")
    return max(cands, key=lambda v: np.nan_to_num(records[v]["metrics"].get("val_f1", np.nan), nan=-1.0))


def table4(records: dict[str, dict[str, Any]], variant: str | None = None) -> pd.DataFrame:
    """Table 4 for one Mixer variant: per category the ratio of correctly classified normal and
    anomalous test images, plus the classifier's accuracy; the last row is the class average and
    (in the "mean" column) the mean of the two ratios, as the paper's "overall performance"."""
    variant = variant or best_mixer(records)
    m = records[variant]["metrics"]
    rows = []
    for cat in records[variant]["extra"]["categories"]:
        rows.append({
            "category": cat, "normal": m[f"normal_ratio/{cat}"], "anomalous": m[f"anomalous_ratio/{cat}"],
            "AUROC": m[f"image_auroc/{cat}"], "classifier acc.": m.get(f"class_acc/{cat}", np.nan),
        })  # fmt: skip
    df = pd.DataFrame(rows).set_index("category")
    overall = df.mean()
    df.loc["overall performance"] = overall
    df["mean"] = np.nan
    df.loc["overall performance", "mean"] = 0.5 * (overall["normal"] + overall["anomalous"])
    df.attrs["variant"] = variant
    return df


def reported_table4() -> pd.DataFrame:
    """The paper's Table 4 (its three reference columns from Bergmann et al. 2019 and its Mixer)."""
    rep = load_reported(REPORTED)
    rep = rep[rep["table"] == "Table 4"]
    wide = rep.pivot_table(index="category", columns=["method", "metric"], values="value", sort=False)
    cols = [(m, k) for m in rep["method"].drop_duplicates() for k in ("normal", "anomalous", "mean")
            if (m, k) in wide.columns]  # fmt: skip
    return wide.reindex(index=list(rep["category"].drop_duplicates()), columns=cols)


def table4_side_by_side(records: dict[str, dict[str, Any]], variant: str | None = None) -> pd.DataFrame:
    """Ours beside the paper's "Ours MIXER L2" column on shared categories (full profile)."""
    ours = table4(records, variant)[["normal", "anomalous"]]
    rep = load_reported(REPORTED)
    rep = rep[(rep["table"] == "Table 4") & (rep["method"] == "Ours MIXER L2")]
    paper = rep.pivot_table(index="category", columns="metric", values="value")
    paper.index = [c.lower().replace(" ", "_") for c in paper.index]
    ours.index = [c.lower().replace(" ", "_") for c in ours.index]
    return pd.concat({"paper (MVTec AD)": paper[["normal", "anomalous"]], "reproduced": ours}, axis=1)


def table4_overall(records: dict[str, dict[str, Any]], profile: str = "quick", variant: str | None = None
                   ) -> pd.DataFrame:
    """Table 4's "overall performance" row: ours (class averages of the best Mixer on this profile's
    categories) beside the paper's four columns on MVTec AD (its Mixer and three per-category models
    quoted from Bergmann et al. 2019); the substitution is in ``attrs``."""
    ours = table4(records, variant)
    rep = reported_table4().loc["overall performance"]
    rows = {m: {k: rep.get((m, k), np.nan) for k in ("normal", "anomalous", "mean")}
            for m in dict.fromkeys(c[0] for c in rep.index)}  # fmt: skip
    out = pd.DataFrame(rows).T
    out.index = [f"paper: {m} (MVTec AD)" for m in out.index]
    o = ours.loc["overall performance"]
    out.loc[f"reproduced: {ours.attrs['variant']}"] = [o["normal"], o["anomalous"], o["mean"]]
    out.attrs["substitution"] = _substitution(profile)
    out.attrs["variant"] = ours.attrs["variant"]
    return out


def classifier_confusion(record: dict[str, Any], normalize: bool = True) -> pd.DataFrame:
    """The Mixer classifier's confusion matrix on the test images (rows: true category, columns:
    predicted), from the record's stored predictions; row-normalised unless ``normalize=False``."""
    if not record["params"].get("model_cfg", {}).get("mixer"):
        raise ConfigError(f"{record['params'].get('method')!r} has no classifier (not a Mixer variant)")
    p = np.load(record["extra"]["predictions"])
    cats = [str(c) for c in p["categories"]]
    n = len(cats)
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (p["true_cat"].astype(int), p["pred_cat"].astype(int)), 1)
    df = pd.DataFrame(counts, index=pd.Index(cats, name="true category"),
                      columns=pd.Index(cats, name="predicted category"))  # fmt: skip
    if normalize:
        df = df.div(df.sum(1).clip(lower=1), axis=0)
    return df


def classifier_f1(record: dict[str, Any]) -> float:
    """Macro-averaged F1 of the Mixer's category classifier on the test images (one-vs-rest F1 per
    category from :func:`classifier_confusion`'s counts, averaged), the paper's §4 classifier metric."""
    cm = classifier_confusion(record, normalize=False).to_numpy().astype(float)
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)  # 2·TP + FP + FN per category
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 0.0)))


def plot_classifier_confusion(record: dict[str, Any], ax: Any = None) -> Any:
    """Heatmap of :func:`classifier_confusion` (row-normalised; cell text = fraction of the row)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = classifier_confusion(record)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 4.5))
    sns.heatmap(df, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, square=True, cbar=False, ax=ax)
    acc = float(np.mean([df.iloc[i, i] for i in range(len(df))]))
    ax.set_title(f"{record['params']['method']}\ncategory classifier, mean accuracy {acc:.2f}", fontsize=10)
    return ax


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def training_scores_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Long frame of the per-class training score (mean ± std) and threshold per epoch (Figure 3)."""
    hist = record["extra"]["history"]
    rows = []
    for cat in record["extra"]["categories"]:
        for e, (mu, sd, t) in enumerate(zip(hist[f"score_mean/{cat}"], hist[f"score_std/{cat}"],
                                            hist[f"threshold/{cat}"])):  # fmt: skip
            rows.append({"epoch": e + 1, "category": cat, "score": mu, "std": sd, "threshold": t})
    return pd.DataFrame(rows)


def plot_training_scores(record: dict[str, Any], ax: Any = None) -> Any:
    """Figure 3: the anomaly score of every class during training (line: mean over the epoch's
    batches; band: ± one standard deviation; dashed: the class's running threshold of Eq. 6)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = training_scores_frame(record)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    pal = dict(zip(df["category"].unique(), sns.color_palette("tab10", df["category"].nunique())))
    sns.lineplot(df, x="epoch", y="score", hue="category", palette=pal, marker="o", ax=ax)
    for cat, g in df.groupby("category", sort=False):
        ax.fill_between(g["epoch"], g["score"] - g["std"], g["score"] + g["std"], color=pal[cat], alpha=0.12)
        ax.plot(g["epoch"], g["threshold"], ls="--", color=pal[cat], lw=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yscale("log")
    ax.set_ylabel("training anomaly score (log)")
    ax.set_title(f"{record['params']['method']}: scores per class during training (dashed: Eq. 6 threshold)")
    return ax


def scores_frame(record: dict[str, Any]) -> pd.DataFrame:
    """Per-image test scores with true category, label, predicted category and threshold used."""
    p = np.load(record["extra"]["predictions"])
    cats = list(p["categories"])
    return pd.DataFrame({
        "category": [cats[i] for i in p["true_cat"]], "predicted category": [cats[i] for i in p["pred_cat"]]
        if record["params"]["model_cfg"]["mixer"] else "all", "label": np.where(p["label"] == 1, "anomalous",
        "normal"), "score": p["score"], "threshold": p["threshold"], "decision": p["decision"],
    })  # fmt: skip


def plot_test_scores(record: dict[str, Any], ax: Any = None) -> Any:
    """Test scores per category (normal vs anomalous) with the thresholds the model applied."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = scores_frame(record)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    sns.stripplot(df, x="category", y="score", hue="label", dodge=True, alpha=0.7, size=4,
                  palette={"normal": "tab:blue", "anomalous": "tab:red"}, ax=ax)  # fmt: skip
    cats = list(df["category"].unique())
    for i, cat in enumerate(cats):
        thr = df.loc[df["category"] == cat, "threshold"]
        ax.hlines(float(np.median(thr)), i - 0.45, i + 0.45, colors="k", linestyles="--", lw=1.2)
    ax.set_yscale("log")
    ax.set_title(f"{record['params']['method']}: test scores and applied thresholds (dashed)")
    return ax


def plot_reconstructions(
    record: dict[str, Any], bench: dict[str, CategoryData], per_category: int = 1, device: str = "auto"
) -> Any:
    """Figures 5/7: per category a normal and an anomalous test image, the reconstruction and the
    per-pixel error map of the model's loss (squared error or 1 − SSIM)."""
    import matplotlib.pyplot as plt

    model = load_model(record["extra"]["checkpoint"], device=device)
    assert isinstance(model, AutoencoderDetector)
    picks = []
    for name, data in bench.items():
        labels = data.test.labels
        for lab in (0, 1):
            for i in np.flatnonzero(labels == lab)[:per_category]:
                picks.append((name, lab, data.test[int(i)].image))
    images = [p[2] for p in picks]
    size = model.image_size
    recs = model.reconstruct(images)
    _, maps = model.predict(np.stack([_resize_u8(im, size) for im in images]))
    n = len(picks)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    vmax = float(np.quantile(maps, 0.995))
    for j, (name, lab, im) in enumerate(picks):
        axes[0, j].imshow(_resize_u8(im, size))
        axes[0, j].set_title(f"{name}\n{'anomalous' if lab else 'normal'}", fontsize=7)
        axes[1, j].imshow(recs[j])
        axes[2, j].imshow(maps[j], cmap="inferno", vmin=0, vmax=vmax)
    for a, lab in zip(axes[:, 0], ("input", "reconstruction", "error map")):
        a.set_ylabel(lab, fontsize=8)
    for a in axes.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"{record['params']['method']}: reconstructions", fontsize=9)
    fig.tight_layout()
    return fig


def _resize_u8(im: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(im).convert("RGB")  # categories may mix grey and colour images
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.asarray(pil)


def records_frame(records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Provenance of each row: fit time, epochs run, parameters, device, commit."""
    rows = []
    for v, r in records.items():
        x = r["extra"]
        rows.append({
            "method": v, "fit s": x.get("fit_seconds"), "epochs run": x.get("epochs_run"),
            "AE params": x.get("n_parameters"), "classifier params": x.get("n_classifier_parameters"),
            "val F1": r["metrics"].get("val_f1"), "device": r["provenance"]["device"],
            "commit": r["provenance"]["commit"],
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("method")


def copy_profile(profile: str) -> dict[str, Any]:
    """A deep copy of a profile (to inspect or adapt in a notebook without touching the module)."""
    return copy.deepcopy(get_profile(PROFILES, profile))


__all__ = [
    "CHAPTER", "ENSEMBLE", "PROFILES", "VARIANTS", "CategoryData", "benchmark_table", "best_mixer",
    "classifier_confusion", "classifier_f1", "flag_all_f1", "plot_classifier_confusion", "table4_overall",
    "ensemble_params", "headline", "stored", "variant_params",
    "load_benchmark", "plot_reconstructions", "plot_test_scores", "plot_training_scores", "records_frame",
    "reported_table4", "run", "run_ensemble", "run_variant", "table3", "table4", "table4_side_by_side",
    "scores_frame", "training_scores_frame",
]  # fmt: skip
