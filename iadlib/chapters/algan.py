"""Chapter 4 — ALGAN (Murase, thesis 2022): experiment grids, protocol, tables and figures.

Protocol (§5.2.4, §5.3): the test split is halved (seeded, stratified) into a validation half, used
to pick the best epoch by AUROC (every ``val_every`` epochs), and a test half on which the chosen
model is scored. Every number is written to the :class:`~iadlib.results.ResultStore` under
chapter ``"04_algan"`` with all of its parameters, so a rerun reuses finished records.

Substitutions (named in the tables): MVTec AD → ``synth_textures`` (real texture photographs with
synthetic defects) and ELPV solar cells; COIL-100 → Fashion-MNIST one-class (sklearn ``digits``
when the Fashion-MNIST files are absent); WideResNet-101 → ``efficientnet_lite0`` stage 4 (320-d);
256 px → 32 px for image methods in the quick profile, with far fewer epochs than the thesis
(512 / 192). In the quick profile the hyperparameter sweeps (Tables 5.9–5.12) run on
ALGAN-feature, whose cached features make a sweep point cost only the GAN training; the full
profile runs them on ALGAN-image as the thesis does.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data import get_dataset
from ..data.base import ADDataset, Split
from ..errors import ConfigError, DatasetError
from ..models import get_model
from ..models.algan import GANDetector, train_toy
from ..results import ResultStore, load_reported
from ..utils import PeakMemory, atomic_path, resolve_device
from . import check_choice, check_run_args, get_profile

CHAPTER = "04_algan"
PAPER = "Murase 2022, Anomaly Detection by Generating Pseudo Anomalous Data (thesis, SOKENDAI)"
IMAGE_METHODS = ("algan_image", "ganomaly", "skip_ganomaly", "alocc")
FEATURE_METHODS = ("algan_feature", "differnet", "patchcore")
METHOD_LABELS = {
    "algan_image": "ALGAN-image",
    "algan_feature": "ALGAN-feature",
    "ganomaly": "GANomaly",
    "skip_ganomaly": "Skip-GANomaly",
    "alocc": "ALOCC",
    "patchcore": "PatchCore-25",
    "differnet": "DifferNet",
}

# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------
_SMOKE_IMG = dict(image_size=32, base=8, epochs=2, val_every=1, batch_size=8)
_QUICK_IMG = dict(image_size=32, base=16, epochs=10, val_every=2, batch_size=16)
_FULL_IMG = dict(image_size=256, base=64, epochs=512, val_every=8, batch_size=16)
_SMOKE_FEAT = dict(image_size=64, epochs=2, val_every=1, batch_size=8, hidden=32, n_rot_train=1, n_rot_test=1)
_QUICK_FEAT = dict(image_size=128, epochs=24, val_every=4, batch_size=16, hidden=256, n_rot_train=2, n_rot_test=2)
_FULL_FEAT = dict(image_size=224, epochs=192, val_every=8, batch_size=16, hidden=1024, n_rot_train=24, n_rot_test=64)

_ABLATION = {  # Table 5.8: (buffered data, anomalous latent)
    "none": dict(use_buffer=False, use_anomalous_latent=False),
    "buffer": dict(use_buffer=True, use_anomalous_latent=False),
    "anomalous_latent": dict(use_buffer=False, use_anomalous_latent=True),
    "both": dict(use_buffer=True, use_anomalous_latent=True),
}
_THESIS_DEFAULTS = dict(
    alpha=0.75,
    xi=0.75,
    sigma=4.0,
    n_z=2,
    n_dis=2,
    use_buffer=True,
    use_anomalous_latent=True,
    latent="normal",
    truncation=2.0,
)
_LATENTS = {  # Table 5.14 / Fig. 5.8
    "N(0,1) / N(0,σ²), σ=4": dict(latent="normal", sigma=4.0),
    "N(0,1) / N(0,σ²), σ=4, th=±2": dict(latent="truncated_normal", sigma=4.0, truncation=2.0),
    "U(-1,1) / U(-2,2), th=±1": dict(latent="uniform"),
}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        datasets=[("elpv", {"category": "mono", "max_train": 16})],
        test_cap=12,
        image_methods=["algan_image", "ganomaly"],
        image_cfg=_SMOKE_IMG,
        feature_methods=["algan_feature"],
        feature_cfg=_SMOKE_FEAT,
        algan_seeds=[0],
        baseline_seeds=[0],
        sweep_variant="algan_feature",
        sweep_dataset=("elpv", {"category": "mono", "max_train": 16}),
        sweeps={"5.8": ["none", "both"], "5.9": [2.0, 4.0]},
        latents=[],
        oneclass=None,
        toy=dict(n_real=256, epochs=2),
        robustness=dict(sigmas=[5.0, 8.0], cutpaste=True),
        patchcore_cfg=dict(coreset_ratio=0.25, image_size=64),
    ),
    "quick": dict(
        datasets=[
            ("elpv", {"category": "mono", "max_train": 96}),
            (
                "synth_textures",
                {
                    "category": "brick",
                    "image_size": 64,
                    "n_train": 96,
                    "n_test_good": 40,
                    "n_test_defect": 40,
                },
            ),
        ],
        test_cap=40,
        image_methods=list(IMAGE_METHODS),
        image_cfg=_QUICK_IMG,
        feature_methods=["algan_feature", "differnet", "patchcore"],
        feature_cfg=_QUICK_FEAT,
        differnet_cfg=dict(
            image_size=128, epochs=24, val_every=4, batch_size=16, hidden=256, n_rot_train=2, n_rot_test=2
        ),
        algan_seeds=[0, 1],
        baseline_seeds=[0],
        sweep_variant="algan_feature",
        sweep_dataset=("elpv", {"category": "mono", "max_train": 96}),
        sweeps={
            "5.8": list(_ABLATION),
            "5.9": [1.0, 2.0, 4.0, 8.0],
            "5.10": [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)],
            "5.11": [1, 2, 4],
            "5.12": [1, 2, 4],
        },
        latents=list(_LATENTS),
        oneclass=dict(dataset="fashion_mnist", fallback="digits", classes=[0], n_train=128, n_test=200),
        toy=dict(n_real=2048, epochs=30),
        robustness=dict(sigmas=[5.0, 6.0, 7.0, 8.0], cutpaste=True),
        patchcore_cfg=dict(coreset_ratio=0.25, image_size=64),
    ),
    "full": dict(
        datasets=[
            ("mvtec_ad", {"category": c})
            for c in (
                "carpet",
                "grid",
                "leather",
                "tile",
                "wood",
                "bottle",
                "cable",
                "capsule",
                "hazelnut",
                "metal_nut",
                "pill",
                "screw",
                "toothbrush",
                "transistor",
                "zipper",
            )
        ]
        + [("mtd", {})],
        test_cap=None,
        image_methods=list(IMAGE_METHODS),
        image_cfg=_FULL_IMG,
        feature_methods=["algan_feature", "differnet", "patchcore"],
        feature_cfg=_FULL_FEAT,
        differnet_cfg=dict(
            image_size=224, epochs=192, val_every=8, batch_size=16, hidden=2048, n_rot_train=4, n_rot_test=64
        ),
        algan_seeds=list(range(10)),
        baseline_seeds=list(range(10)),
        sweep_variant="algan_image",
        sweep_dataset=("mvtec_ad", {"category": "bottle"}),
        sweeps={
            "5.8": list(_ABLATION),
            "5.9": [2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
            "5.10": [(a, x) for a in (0.25, 0.5, 0.75, 0.85) for x in (0.25, 0.5, 0.75, 0.85)],
            "5.11": [1, 2, 3, 4],
            "5.12": [1, 2, 3, 4],
        },
        latents=list(_LATENTS),
        oneclass=dict(dataset="coil100", fallback="fashion_mnist", classes=list(range(10)), n_train=None, n_test=None),
        toy=dict(n_real=4096, epochs=200),
        robustness=dict(sigmas=[5.0, 6.0, 7.0, 8.0], cutpaste=True),
        patchcore_cfg=dict(coreset_ratio=0.25, image_size=224),
    ),
}


def profile_config(profile: str) -> dict[str, Any]:
    return copy.deepcopy(get_profile(PROFILES, profile))


# ------------------------------------------------------------------------------------------------
# Data and protocol
# ------------------------------------------------------------------------------------------------
_DS_CACHE: dict[str, ADDataset] = {}


def load_dataset(name: str, cfg: dict[str, Any], seed: int) -> ADDataset:
    """``get_dataset`` with an in-process cache (sweeps reuse the same split)."""
    key = json.dumps([name, cfg, seed], sort_keys=True, default=str)
    if key not in _DS_CACHE:
        _DS_CACHE[key] = get_dataset(name, seed=seed, **cfg)
        _DS_CACHE[key].train.materialize()
        _DS_CACHE[key].test.materialize()
    return _DS_CACHE[key]


def split_validation(ds: ADDataset, seed: int, cap: int | None = None) -> tuple[Split, Split]:
    """§5.2.4: a seeded, stratified half of the test split for validation, the other half for test.

    With ``cap``, at most ``cap`` images per class go to each half (quick profiles). A dataset that
    brings its own ``.validation`` split keeps it.
    """
    rng = np.random.default_rng([seed, 4])
    if ds.validation is not None:
        val, test = ds.validation, ds.test
        if cap is not None:
            val, test = _cap(val, cap, rng), _cap(test, cap, rng)
        return val, test
    labels = ds.test.labels
    val_idx, test_idx = [], []
    for lab in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        if len(idx) < 2:
            raise DatasetError(
                f"{ds.name}/{ds.category}: need ≥ 2 test images of label {lab} to split off a validation half"
            )
        h = len(idx) // 2
        v, t = idx[:h], idx[h:]
        if cap is not None:
            v, t = v[:cap], t[:cap]
        val_idx += list(v)
        test_idx += list(t)
    return ds.test[np.sort(val_idx)], ds.test[np.sort(test_idx)]


def _cap(split: Split, cap: int, rng: np.random.Generator) -> Split:
    labels = split.labels
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == lab))[:cap] for lab in (0, 1)])
    return split[np.sort(keep)]


def _store(results_dir: str | Path | None) -> ResultStore:
    return ResultStore(results_dir)


def run_protocol(
    method: str,
    dataset: str,
    dataset_cfg: dict[str, Any],
    model_cfg: dict[str, Any],
    *,
    table: str,
    seed: int = 0,
    profile: str = "quick",
    device: str = "auto",
    test_cap: int | None = None,
    store: ResultStore | None = None,
    force: bool = False,
    keep_model: bool = False,
    tag: str = "",
) -> dict[str, Any] | None:
    """Fit with validation-based model selection, score the test half, write one record.

    Returns the record, or ``None`` when the method is not available here (e.g. PatchCore before
    it is installed), with a warning.
    """
    store = store or ResultStore()
    params = {
        "paper": PAPER,
        "table": table,
        "method": method,
        "dataset": dataset,
        "category": dataset_cfg.get("category"),
        "dataset_cfg": dataset_cfg,
        "model_cfg": model_cfg,
        "profile": profile,
        "seed": seed,
        "device": resolve_device(device).type,
        "protocol": "validation-half",
        "test_cap": test_cap,
        "tag": tag,
    }
    done = store.get(CHAPTER, params)
    if done is not None and not force and (not keep_model or Path(done["extra"].get("checkpoint", "")).is_file()):
        return done
    try:
        model = get_model(method, seed=seed, device=device, **model_cfg)
    except ConfigError as exc:
        warnings.warn(f"{method} skipped: {exc}", stacklevel=2)
        return None
    ds = load_dataset(dataset, dataset_cfg, seed)
    val, test = split_validation(ds, seed, test_cap)
    from ..metrics import image_auroc

    with PeakMemory() as mem_fit:
        if isinstance(model, GANDetector):
            model.fit(ds.train, validation=val)
        else:
            model.fit(ds.train)
    with PeakMemory() as mem_pred:
        scores, _ = model.predict(test)
    labels = test.labels
    metrics = {"image_auroc": image_auroc(labels, scores)}
    if "best_val_auroc" in model.history:
        metrics["val_auroc"] = model.history["best_val_auroc"][0]
    extra: dict[str, Any] = {
        "label": METHOD_LABELS.get(method, method),
        "backbone": model.config.get("backbone", ""),
        "image_size": model.config.get("image_size"),
        "epochs": model.config.get("epochs"),
        "n_train": len(ds.train),
        "n_val": len(val),
        "n_test": len(test),
        "fit_seconds": mem_fit.seconds,
        "predict_ms_per_image": 1000.0 * mem_pred.seconds / max(1, len(test)),
        "peak_rss_mb": max(mem_fit.peak_rss, mem_pred.peak_rss) / 2**20,
        "history": {
            k: list(map(float, v))
            for k, v in model.history.items()
            if k in ("val_epoch", "val_auroc", "loss_d", "loss_g", "best_epoch")
        },
        "scores": list(map(float, scores)),
        "labels": list(map(int, labels)),
    }
    if keep_model:
        from ..results import experiment_key

        path = store.root / CHAPTER / "models" / f"{experiment_key(params)}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        extra["checkpoint"] = str(path)
    return store.put(CHAPTER, params, metrics, extra, device=device)


# ------------------------------------------------------------------------------------------------
# Experiments the notebook runs
# ------------------------------------------------------------------------------------------------
def _progress(items: list, desc: str, verbose: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not verbose)


def run_main(
    profile: str = "quick",
    device: str = "auto",
    seed: int = 0,
    results_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Tables 5.2 (image methods) and 5.3 (feature methods) on the profile's datasets."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    P = profile_config(profile)
    store = _store(results_dir)
    jobs = []
    for ds_name, ds_cfg in P["datasets"]:
        for method in P["image_methods"]:
            seeds = P["algan_seeds"] if method == "algan_image" else P["baseline_seeds"]
            for s in seeds:
                jobs.append(("5.2", method, ds_name, ds_cfg, dict(P["image_cfg"]), s))
        for method in P["feature_methods"]:
            if method == "patchcore":
                cfg, seeds = dict(P["patchcore_cfg"]), P["baseline_seeds"]
            elif method == "differnet":
                cfg, seeds = dict(P["differnet_cfg"]), P["baseline_seeds"]
            else:
                cfg, seeds = dict(P["feature_cfg"]), P["algan_seeds"]
            for s in seeds:
                jobs.append(("5.3", method, ds_name, ds_cfg, cfg, s))
    for table, method, ds_name, ds_cfg, cfg, s in _progress(jobs, "Tables 5.2/5.3", verbose):
        try:
            run_protocol(
                method,
                ds_name,
                ds_cfg,
                cfg,
                table=table,
                seed=seed + s,
                profile=profile,
                device=device,
                test_cap=P["test_cap"],
                store=store,
                force=force,
                keep_model=(method == "algan_image" and s == P["algan_seeds"][0]),
            )
        except DatasetError as exc:
            warnings.warn(f"{ds_name}: {exc}", stacklevel=2)
    return frame(results_dir)


def _sweep_points(P: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    for table, values in P["sweeps"].items():
        for v in values:
            if table == "5.8":
                out.append((table, v, dict(_ABLATION[v])))
            elif table == "5.9":
                out.append((table, f"σ={v:g}", {"sigma": float(v)}))
            elif table == "5.10":
                out.append((table, f"α={v[0]:g}, ξ={v[1]:g}", {"alpha": float(v[0]), "xi": float(v[1])}))
            elif table == "5.11":
                out.append((table, f"n_z={v}", {"n_z": int(v)}))
            elif table == "5.12":
                out.append((table, f"n_dis={v}", {"n_dis": int(v)}))
    for name in P["latents"]:
        cfg = dict(_LATENTS[name])
        out.append(("5.14", name, cfg))
    return out


def run_sweeps(
    profile: str = "quick",
    device: str = "auto",
    seed: int = 0,
    results_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Tables 5.8–5.12 and 5.14: one factor changed at a time from the thesis defaults."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    P = profile_config(profile)
    store = _store(results_dir)
    ds_name, ds_cfg = P["sweep_dataset"]
    variant = P["sweep_variant"]
    base = dict(P["image_cfg"] if variant == "algan_image" else P["feature_cfg"])
    for table, tag, over in _progress(_sweep_points(P), "Tables 5.8-5.14", verbose):
        method = variant
        over = {k: v for k, v in over.items() if _THESIS_DEFAULTS.get(k, object()) != v}
        cfg = {**base, **over}
        if table == "5.14":  # ALGAN-feature without test-time rotations (§5.9)
            method = "algan_feature"
            cfg = {**P["feature_cfg"], **over, "n_rot_test": 1}
        alias = {
            "paper": PAPER,
            "table": table,
            "tag": tag,
            "method": method,
            "dataset": ds_name,
            "category": ds_cfg.get("category"),
            "profile": profile,
            "seed": seed,
            "model_cfg": cfg,
        }
        if not force and store.get(CHAPTER, alias) is not None:
            continue
        # identical settings (the defaults appear in several tables) share one experiment record
        rec = run_protocol(
            method,
            ds_name,
            ds_cfg,
            cfg,
            table="sweep",
            seed=seed,
            profile=profile,
            device=device,
            test_cap=P["test_cap"],
            store=store,
            force=force,
        )
        assert rec is not None
        store.put(
            CHAPTER, alias, rec["metrics"], {"label": METHOD_LABELS[method], "source_record": rec["key"]}, device=device
        )
    return frame(results_dir)


def run_oneclass(
    profile: str = "quick",
    device: str = "auto",
    seed: int = 0,
    results_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Table 5.5 stand-in: one-class classification (one class normal, all others anomalous)."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    P = profile_config(profile)
    oc = P["oneclass"]
    if oc is None:
        return frame(results_dir)
    store = _store(results_dir)
    name = oc["dataset"]
    try:
        get_dataset(name, category=oc["classes"][0], seed=seed, n_train=4, n_test=4)
    except DatasetError as exc:
        warnings.warn(f"{name} unavailable ({exc}); using {oc['fallback']} instead", stacklevel=2)
        name = oc["fallback"]
    for c in _progress(oc["classes"], f"one-class {name}", verbose):
        ds_cfg = {"category": c, "n_train": oc["n_train"], "n_test": oc["n_test"], "protocol": "algan"}
        if name == "coil100":
            ds_cfg = {"category": c}
        for method, cfg in (("algan_image", P["image_cfg"]), ("algan_feature", P["feature_cfg"])):
            run_protocol(
                method,
                name,
                ds_cfg,
                dict(cfg),
                table="5.5",
                seed=seed,
                profile=profile,
                device=device,
                test_cap=None,
                store=store,
                force=force,
            )
    return frame(results_dir)


def cutpaste(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """CutPaste-style image (§5.7, Fig. 5.7): a patch of 20–30 % of the area, aspect ratio 1:3–3:1,
    colour-jittered (brightness/contrast ±10 %), pasted at a random location of the same image."""
    img = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, 2)
    h, w = img.shape[:2]
    area = rng.uniform(0.2, 0.3) * h * w
    ratio = math.exp(rng.uniform(math.log(1 / 3), math.log(3)))
    ph = int(np.clip(round(math.sqrt(area / ratio)), 1, h))
    pw = int(np.clip(round(math.sqrt(area * ratio)), 1, w))
    y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    patch = img[y0 : y0 + ph, x0 : x0 + pw].astype(np.float64)
    patch = (patch - patch.mean()) * rng.uniform(0.9, 1.1) + patch.mean() * rng.uniform(0.9, 1.1)
    patch = patch * rng.uniform(0.9, 1.1, size=3)  # per-channel colour jitter
    y1, x1 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    out = img.copy()
    out[y1 : y1 + ph, x1 : x1 + pw] = np.clip(patch, 0, 255).astype(np.uint8)
    return out if image.ndim == 3 else out.mean(2).round().astype(np.uint8)


def run_robustness(
    profile: str = "quick",
    device: str = "auto",
    seed: int = 0,
    results_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    """Table 5.13: the trained ALGAN-image against fakes from σ = 5…8 and CutPaste-style images.

    Uses the checkpoint of the first main-table ALGAN-image run on the sweep dataset (run
    :func:`run_main` first). Normal = the real normal test images; anomalous = as many generated
    images (or CutPaste versions of those normal images).
    """
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    from ..metrics import image_auroc
    from ..models import load_model

    P = profile_config(profile)
    store = _store(results_dir)
    ds_name, ds_cfg = P["sweep_dataset"]
    rec = _find_record(store, table="5.2", method="algan_image", dataset=ds_name, seed=seed, profile=profile)
    if rec is None or not Path(rec["extra"].get("checkpoint", "")).is_file():
        raise ConfigError("Table 5.13 needs the ALGAN-image checkpoint of run_main(); run run_main() first")
    R = P["robustness"]
    kinds = [f"σ={s:g}" for s in R["sigmas"]] + (["CutPaste-style"] if R["cutpaste"] else [])
    params_base = {
        "paper": PAPER,
        "table": "5.13",
        "method": "algan_image",
        "dataset": ds_name,
        "category": ds_cfg.get("category"),
        "dataset_cfg": ds_cfg,
        "profile": profile,
        "seed": seed,
        "source_record": rec["key"],
    }
    todo = [k for k in kinds if force or store.get(CHAPTER, {**params_base, "tag": k}) is None]
    if todo:
        model = load_model(rec["extra"]["checkpoint"], device=device)
        ds = load_dataset(ds_name, ds_cfg, seed)
        _, test = split_validation(ds, seed, P["test_cap"])
        normal = [s.image for s in test if s.label == 0]
        s_norm = model.predict(normal)[0]
        n = len(normal)
        rng = np.random.default_rng([seed, 13])
        for k in todo:
            if k.startswith("σ="):
                s_anom = model.score_generated(n, float(k[2:]), seed=seed)
            else:
                s_anom = model.predict([cutpaste(im, rng) for im in normal])[0]
            lab = np.r_[np.zeros(n), np.ones(len(s_anom))]
            auc = image_auroc(lab, np.r_[s_norm, s_anom])
            store.put(
                CHAPTER,
                {**params_base, "tag": k},
                {"image_auroc": auc},
                {"n_normal": n, "n_anomalous": int(len(s_anom)), "label": "ALGAN-image"},
                device=device,
            )
    return frame(results_dir)


def run_toy(
    profile: str = "quick",
    device: str = "auto",
    seed: int = 0,
    results_dir: str | Path | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Fig. 4.5: the toy problem (100-d latents → N(0, I₂)); arrays cached as ``.npz`` in the store."""
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    P = profile_config(profile)
    store = _store(results_dir)
    cfg = P["toy"]
    params = {
        "paper": PAPER,
        "table": "Fig. 4.5",
        "method": "algan_toy",
        "profile": profile,
        "seed": seed,
        **cfg,
    }
    path = store.root / CHAPTER / "toy" / f"toy_{profile}_{seed}.npz"
    rec = store.get(CHAPTER, params)
    if rec is not None and not force and path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    r = train_toy(n_real=cfg["n_real"], epochs=cfg["epochs"], seed=seed, device=device, batch_size=64)
    arrays = {k: v for k, v in r.items() if isinstance(v, np.ndarray)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    from ..metrics import image_auroc

    n = len(r["score_real"])
    lab = np.r_[np.zeros(n), np.ones(n)]
    metrics = {
        "auroc_real_vs_fake_anomalous": image_auroc(lab, np.r_[r["score_real"], r["score_fake_anomalous"]]),
        "auroc_real_vs_fake_normal": image_auroc(lab, np.r_[r["score_real"], r["score_fake_normal"]]),
    }
    store.put(CHAPTER, params, metrics, {"npz": str(path)}, device=device)
    return arrays


def run_all(
    profile: str = "quick",
    device: str = "auto",
    seed: int = 0,
    results_dir: str | Path | None = None,
    force: bool = False,
    verbose: bool = True,
) -> pd.DataFrame:
    check_run_args(PROFILES, profile, device=device, seed=seed)  # fail before any work
    check_choice("profile", profile, list(PROFILES))
    kw = dict(profile=profile, device=device, seed=seed, results_dir=results_dir, force=force)
    run_toy(**kw)
    run_main(**kw, verbose=verbose)
    run_robustness(**kw, verbose=verbose)
    run_sweeps(**kw, verbose=verbose)
    run_oneclass(**kw, verbose=verbose)
    return frame(results_dir)


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def frame(results_dir: str | Path | None = None) -> pd.DataFrame:
    """All chapter records, one row per (experiment, metric), with a readable method label."""
    df = ResultStore(results_dir).frame(CHAPTER)
    if df.empty:
        return df
    for col in ("dataset", "category", "tag", "x_checkpoint", "x_scores", "x_labels", "x_history"):
        if col not in df:
            df[col] = None
    df["label"] = df["method"].map(METHOD_LABELS).fillna(df["method"])
    df["data"] = df["dataset"].astype(str) + np.where(df["category"].notna(), "/" + df["category"].astype(str), "")
    return df


def reported() -> pd.DataFrame:
    """``book/reported/algan.csv`` with the table column as ``"5.2"`` … ``"5.14"`` (strings)."""
    rep = load_reported("algan")
    rep["table"] = rep["table"].astype(str).str.replace("Table ", "", regex=False)
    return rep


def _find_record(store: ResultStore, **match: Any) -> dict[str, Any] | None:
    for doc in store.records(CHAPTER):
        p = doc["params"]
        if all(p.get(k) == v for k, v in match.items()):
            return doc
    return None


def _mean_std(v: pd.Series) -> str:
    if len(v) == 1:
        return f"{v.iloc[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


def table_main(df: pd.DataFrame, table: str, profile: str) -> pd.DataFrame:
    """Mean ± std (over seeds) test AUROC per dataset × method, for Table 5.2 or 5.3."""
    sel = df[(df["table"] == table) & (df["metric"] == "image_auroc") & (df["profile"] == profile)]
    if sel.empty:
        return pd.DataFrame()
    out = sel.groupby(["data", "label"])["value"].apply(_mean_std).unstack("label")
    means = sel.groupby(["label", "data"])["value"].mean().groupby("label").mean()
    out.loc["mean"] = {k: f"{v:.3f}" for k, v in means.items()}
    return out


def table_reported_vs_ours(df: pd.DataFrame, table: str, profile: str) -> pd.DataFrame:
    """The thesis' mean AUROC per method (MVTec AD) beside our mean over the substituted data."""
    rep = reported()
    rep = rep[(rep["table"] == table) & (rep["metric"] == "image_auroc") & (rep["category"] == "mean")]
    sel = df[(df["table"] == table) & (df["metric"] == "image_auroc") & (df["profile"] == profile)]
    ours = sel.groupby("label")["value"].mean().rename("reproduced")
    datasets = ", ".join(sorted(sel["data"].unique()))
    out = rep.set_index("method")[["value"]].rename(columns={"value": "reported (MVTec AD)"}).join(ours, how="outer")
    out["Δ"] = out["reproduced"] - out["reported (MVTec AD)"]
    out["substitution"] = f"MVTec AD → {datasets}"
    return out


def table_times(df: pd.DataFrame, profile: str) -> pd.DataFrame:
    """Tables 5.6 / 5.7: prediction ms/image and training minutes measured here, beside the thesis."""
    sel = df[df["table"].isin(["5.2", "5.3"]) & (df["metric"] == "image_auroc") & (df["profile"] == profile)]
    if sel.empty:
        return pd.DataFrame()
    ours = sel.groupby("label").agg(
        predict_ms_per_image=("x_predict_ms_per_image", "mean"),
        train_minutes=("x_fit_seconds", lambda s: s.mean() / 60),
        epochs=("x_epochs", "first"),
        image_size=("x_image_size", "first"),
    )
    rep = reported()
    r6 = rep[rep["table"] == "5.6"].set_index("method")["value"].rename("reported ms/img (A100)")
    r7 = rep[(rep["table"] == "5.7") & (rep["metric"] == "train_minutes")].set_index("method")["value"]
    return ours.join(r6, how="left").join(r7.rename("reported min (A100)"), how="left")


def table_sweep(df: pd.DataFrame, table: str, profile: str) -> pd.DataFrame:
    """A sweep table (5.8–5.14): mean AUROC per setting next to the thesis' value for that setting."""
    sel = df[(df["table"] == table) & (df["profile"] == profile) & (df["metric"] == "image_auroc")]
    if sel.empty:
        return pd.DataFrame()
    ours = (
        sel.groupby("tag", sort=False)["value"]
        .agg(["mean", "count"])
        .rename(columns={"mean": "reproduced", "count": "runs"})
    )
    rep = reported()
    rep = rep[(rep["table"] == table) & (rep["metric"] == "image_auroc")]
    if table == "5.14":
        rep = rep[rep["category"] == "mean"]
    rep = rep.set_index("method")["value"].rename("reported")
    out = ours.join(rep, how="left")
    out["Δ"] = out["reproduced"] - out["reported"]
    order = [tag for t, tag, _ in _sweep_points(profile_config(profile)) if t == table]
    order += [k for k in R_ORDER if k not in order]
    out = out.loc[[t for t in order if t in out.index] + [t for t in out.index if t not in order]]
    thesis = {
        "5.8": "MVTec AD (15 categories), ALGAN-image",
        "5.13": "MVTec AD bottle, ALGAN-image",
        "5.14": "MVTec AD (15 categories), ALGAN-feature",
    }.get(table, "MVTec AD bottle, ALGAN-image")
    ours_data = ", ".join(sorted(sel["data"].unique()))
    ours_method = ", ".join(sorted(sel["label"].unique()))
    out["substitution"] = f"{thesis} → {ours_data}, {ours_method}"
    return out


R_ORDER = ["σ=5", "σ=6", "σ=7", "σ=8", "CutPaste-style"]


def table_reported(table: str) -> pd.DataFrame:
    """The thesis' table as printed: mean (± std where given) per category × method."""
    rep = reported()
    rep = rep[rep["table"] == table]
    mean = rep[rep["metric"] == "image_auroc"].pivot_table(
        index="category", columns="method", values="value", aggfunc="first", sort=False
    )
    std = rep[rep["metric"] == "image_auroc_std"].pivot_table(
        index="category", columns="method", values="value", aggfunc="first", sort=False
    )
    out = mean.map(lambda v: "–" if pd.isna(v) else f"{v:.3f}")
    for c in std.columns:
        for r in std.index:
            if r in out.index and c in out.columns and pd.notna(std.loc[r, c]):
                out.loc[r, c] = f"{mean.loc[r, c]:.3f} ± {std.loc[r, c]:.3f}"
    return out


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def fig_toy(toy: dict[str, np.ndarray]):
    """Fig. 4.5: (a) fake-anomalous (red) around fake-normal (green); (b) real-normal (blue) overlaid,
    with the discriminator's anomaly score as contours."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="white")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), sharex=True, sharey=True)
    ax_ = toy["grid_axis"]
    for i, ax in enumerate(axes):
        ax.contour(ax_, ax_, toy["score_grid"], levels=8, cmap="Greys", linewidths=0.6)
        sns.scatterplot(
            x=toy["fake_anomalous"][:, 0],
            y=toy["fake_anomalous"][:, 1],
            ax=ax,
            s=6,
            color="tab:red",
            label="fake-anomalous $x'_a$ (σ=4)",
            linewidth=0,
        )
        sns.scatterplot(
            x=toy["fake_normal"][:, 0],
            y=toy["fake_normal"][:, 1],
            ax=ax,
            s=6,
            color="tab:green",
            label="fake-normal $x'_n$",
            linewidth=0,
        )
        if i == 1:
            sns.scatterplot(
                x=toy["real"][:, 0],
                y=toy["real"][:, 1],
                ax=ax,
                s=6,
                color="tab:blue",
                label="real-normal $x$",
                linewidth=0,
            )
        ax.set_title(["(a) generated data", "(b) with real-normal data"][i])
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8, markerscale=2)
    fig.tight_layout()
    return fig


def fig_fakes(df: pd.DataFrame, profile: str, n: int = 8, device: str = "auto"):
    """Fig. 4.4: fake-normal (top, z ~ N(0, I)) and fake-anomalous (bottom, σ = 4) images per dataset."""
    import matplotlib.pyplot as plt

    from ..models import load_model

    sel = df[
        (df["table"] == "5.2")
        & (df["method"] == "algan_image")
        & (df["profile"] == profile)
        & (df["metric"] == "image_auroc")
    ]
    sel = sel[sel["x_checkpoint"].notna()] if "x_checkpoint" in sel else sel.iloc[:0]
    rows = sel.drop_duplicates("data")
    if rows.empty:
        return None
    fig, axes = plt.subplots(2 * len(rows), n, figsize=(1.2 * n, 2.6 * len(rows)), squeeze=False)
    for r, (_, row) in enumerate(rows.iterrows()):
        m = load_model(row["x_checkpoint"], device=device)
        for k, anomalous in enumerate((False, True)):
            imgs = m.generate(n, anomalous=anomalous, seed=0)
            for j in range(n):
                ax = axes[2 * r + k, j]
                ax.imshow(imgs[j])
                ax.set_xticks([])
                ax.set_yticks([])
            axes[2 * r + k, 0].set_ylabel(f"{row['data']}\n{'N(0,σ²I)' if anomalous else 'N(0,I)'}", fontsize=8)
    fig.tight_layout()
    return fig


def fig_logit_histograms(df: pd.DataFrame, profile: str):
    """Fig. 5.4: histograms of ALGAN-image's raw discriminator outputs with the sign reversed."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sel = df[
        (df["table"].isin(["5.2", "5.5"]))
        & (df["method"] == "algan_image")
        & (df["profile"] == profile)
        & (df["metric"] == "image_auroc")
    ].drop_duplicates("data")
    if sel.empty:
        return None
    fig, axes = plt.subplots(1, len(sel), figsize=(4.2 * len(sel), 3.2), squeeze=False)
    for ax, (_, row) in zip(axes[0], sel.iterrows()):
        d = pd.DataFrame(
            {
                "anomaly score (−logit)": row["x_scores"],
                "test data": np.where(np.array(row["x_labels"]) == 1, "anomalous", "normal"),
            }
        )
        sns.histplot(
            d,
            x="anomaly score (−logit)",
            hue="test data",
            ax=ax,
            bins=20,
            stat="density",
            common_norm=False,
            element="step",
            hue_order=["normal", "anomalous"],
        )
        ax.set_title(f"{row['data']} (AUROC {row['value']:.3f})", fontsize=9)
    fig.tight_layout()
    return fig


def fig_auroc_vs_time(df: pd.DataFrame, profile: str):
    """Fig. 5.5: mean AUROC against prediction time per image, every method (measured here)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sel = df[df["table"].isin(["5.2", "5.3"]) & (df["metric"] == "image_auroc") & (df["profile"] == profile)]
    if sel.empty:
        return None
    agg = sel.groupby("label").agg(auroc=("value", "mean"), ms=("x_predict_ms_per_image", "mean")).reset_index()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    sns.scatterplot(agg, x="ms", y="auroc", hue="label", s=80, ax=ax)
    for _, r in agg.iterrows():
        ax.annotate(r["label"], (r["ms"], r["auroc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("prediction time per image [ms] (this machine)")
    ax.set_ylabel("mean AUROC (test halves)")
    ax.legend([], [], frameon=False)
    fig.tight_layout()
    return fig


def fig_validation_curves(df: pd.DataFrame, profile: str):
    """Fig. 5.6: validation AUROC during training (every ``val_every`` epochs), mean over seeds."""
    import seaborn as sns

    sel = df[df["table"].isin(["5.2", "5.3"]) & (df["metric"] == "image_auroc") & (df["profile"] == profile)]
    rows = []
    for _, r in sel.iterrows():
        h = r.get("x_history")
        if isinstance(h, dict) and h.get("val_epoch"):
            for e, a in zip(h["val_epoch"], h["val_auroc"]):
                rows.append(
                    {
                        "epoch": e,
                        "validation AUROC": a,
                        "method": r["label"],
                        "data": r["data"],
                        "seed": r["seed"],
                    }
                )
    if not rows:
        return None
    d = pd.DataFrame(rows)
    g = sns.relplot(
        d,
        x="epoch",
        y="validation AUROC",
        hue="method",
        col="data",
        kind="line",
        height=3.2,
        aspect=1.2,
        errorbar=None,
        marker="o",
    )
    return g.figure
