"""One experiment = build a dataset and a detector, fit, predict, score, record with provenance.

``run_experiment`` is what chapters call for every table cell. It reuses a finished record with
the same parameters (unless ``force=True``), measures fit time, prediction time per image and peak
memory, computes the metrics the data allows (image AUROC always; pixel AUROC and AU-PRO when the
test split has masks; AU-sPRO for LOCO-style regions) and writes one atomic record, plus an
``.npz`` beside it with the image scores and a few anomaly maps for the chapter's figures.

A run killed at any point (SIGKILL, power loss) leaves no partial record: both files are written
atomically, the ``.npz`` first, the record last; a rerun recomputes and removes the temp files the
killed run left. Unknown method or dataset names fail at once, before any data is built.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import data as _data
from . import models as _models
from .data import get_dataset, list_datasets
from .data.base import ADDataset, Split
from .errors import ConfigError
from .models import get_model, list_models
from .models.base import Detector
from .results import ResultStore, experiment_key
from .utils import PeakMemory, atomic_path, remove_stale_temp_files, resolve_device


def masks_of(split: Split, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Stack the split's masks as bool ``[N,H,W]`` (None when the dataset has no masks)."""
    masks = split.masks()
    if any(m is None for m in masks):
        return None
    return np.stack(masks).astype(bool)


def evaluate(split: Split, scores: np.ndarray, maps: np.ndarray | None) -> dict[str, float]:
    """Every metric the split's ground truth supports."""
    from . import metrics as M

    labels = split.labels
    out = {"image_auroc": M.image_auroc(labels, scores)}
    if hasattr(M, "image_aupr"):
        out["image_aupr"] = M.image_aupr(labels, scores)
    if hasattr(M, "f1_max"):
        f1 = M.f1_max(labels, scores)
        out["f1_max"] = f1[0] if isinstance(f1, tuple) else f1
    masks = masks_of(split)
    if maps is not None and masks is not None and masks.any():
        out["pixel_auroc"] = M.pixel_auroc(masks, maps)
        if hasattr(M, "au_pro"):
            out["au_pro"] = M.au_pro(maps, masks, fpr_limit=0.3)
    samples = list(split)
    if maps is not None and any(s.regions for s in samples) and hasattr(M, "au_spro"):
        regions = [np.stack(s.regions) if s.regions else np.zeros((0, *maps.shape[1:]), bool) for s in samples]
        sats = [list(s.saturations or []) for s in samples]
        defects = np.array(split.defects)
        out["au_spro"] = M.au_spro(maps, regions, sats, fpr_limit=0.05)
        for kind in ("logical_anomalies", "structural_anomalies"):
            sel = (defects == "good") | (defects == kind)
            if (defects == kind).any():
                idx = np.flatnonzero(sel)
                short = kind.split("_")[0]
                out[f"au_spro_{short}"] = M.au_spro(
                    maps[idx], [regions[i] for i in idx], [sats[i] for i in idx], fpr_limit=0.05
                )
                out[f"image_auroc_{short}"] = M.image_auroc(labels[idx], scores[idx])
    return out


def run_experiment(
    chapter: str,
    method: str,
    dataset: str | ADDataset,
    model_cfg: dict[str, Any] | None = None,
    dataset_cfg: dict[str, Any] | None = None,
    *,
    profile: str = "quick",
    seed: int = 0,
    device: str = "auto",
    paper: str = "",
    table: str = "",
    backbone: str | None = None,
    store: ResultStore | None = None,
    force: bool = False,
    n_maps: int = 8,
) -> dict[str, Any]:
    """Fit ``method`` on ``dataset``'s train split, evaluate on its test split, record the result.

    Returns the stored record (``record["metrics"]``, ``record["extra"]``) with the path of the
    ``.npz`` of predictions under ``record["extra"]["predictions"]``.
    """
    store = store or ResultStore()
    if method not in list_models():  # fail before building any data
        raise ConfigError(f"unknown method {method!r}; valid: {', '.join(list_models())}")
    if isinstance(dataset, str) and dataset not in list_datasets():
        raise ConfigError(f"unknown dataset {dataset!r}; valid: {', '.join(list_datasets())}")
    model_cfg = dict(model_cfg or {})
    dataset_cfg = dict(dataset_cfg or {})
    _check_options(f"model {method!r}", _models._MODELS[method], model_cfg, seed=seed, device=device)
    if isinstance(dataset, str):
        _check_options(f"dataset {dataset!r}", _data._DATASETS[dataset], dataset_cfg, seed=seed)
    ds_name = dataset if isinstance(dataset, str) else dataset.name
    category = dataset_cfg.get("category") if isinstance(dataset, str) else dataset.category
    params = {
        "paper": paper,
        "table": table,
        "method": method,
        "dataset": ds_name,
        "category": category,
        "dataset_cfg": dataset_cfg,
        "model_cfg": model_cfg,
        "profile": profile,
        "seed": seed,
        "device": resolve_device(device).type,
    }
    if not force:
        done = store.get(chapter, params)
        if done is not None and Path(done["extra"].get("predictions", "")).is_file():
            return done
    key = experiment_key(params)
    remove_stale_temp_files(store.root / chapter, f"{key}.*")  # what a killed earlier run left
    ds = get_dataset(ds_name, seed=seed, **dataset_cfg) if isinstance(dataset, str) else dataset
    model: Detector = get_model(method, seed=seed, device=device, **model_cfg)
    with PeakMemory() as mem_fit:
        model.fit(ds.train)
    with PeakMemory() as mem_pred:
        scores, maps = model.predict(ds.test)
    metrics = evaluate(ds.test, scores, maps)
    pred_path = save_predictions(store.root / chapter / f"{key}.npz", ds.test, scores, maps, n_maps)
    extra = {
        "backbone": backbone or model.config.get("backbone", ""),
        "n_train": len(ds.train),
        **run_extra(model, mem_fit, mem_pred, len(ds.test), pred_path),
    }
    return store.put(chapter, params, metrics, extra, device=device)


def _check_options(what: str, factory: Any, cfg: dict[str, Any], **fixed: Any) -> None:
    """Raise :class:`ConfigError` naming the unknown options of ``factory`` (and the valid ones)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    try:
        sig.bind(**{**cfg, **fixed})
    except TypeError as exc:
        valid = [n for n, p in sig.parameters.items() if n not in fixed and p.kind is not p.VAR_POSITIONAL]
        raise ConfigError(f"bad configuration for {what}: {exc}; valid options: {', '.join(valid)}") from exc


def run_extra(
    model: Detector, mem_fit: PeakMemory, mem_pred: PeakMemory, n_test: int, pred_path: Path
) -> dict[str, Any]:
    """The record fields every run shares: settings, timings, peak memory, training history, predictions."""
    return {
        "image_size": model.config.get("image_size"),
        "epochs": model.config.get("epochs"),
        "n_test": n_test,
        "fit_seconds": mem_fit.seconds,
        "predict_ms_per_image": 1000.0 * mem_pred.seconds / max(1, n_test),
        "peak_rss_mb": max(mem_fit.peak_rss, mem_pred.peak_rss) / 2**20,
        "peak_cuda_mb": max(mem_fit.peak_cuda, mem_pred.peak_cuda) / 2**20,
        "history": {k: list(map(float, v)) for k, v in model.history.items()},
        "predictions": str(pred_path),
        "timestamp_unix": time.time(),
    }


def save_predictions(
    path: Path, test: Split, scores: np.ndarray, maps: np.ndarray, n_maps: int = 8
) -> Path:
    """Write a run's scores, labels and ``n_maps`` example maps/images/masks to ``path`` (``.npz``), atomically."""
    labels = test.labels
    pick = _example_indices(labels, n_maps)
    shape = maps.shape[1:]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            scores=scores,
            labels=labels,
            example_idx=pick,
            example_maps=maps[pick].astype(np.float16),
            example_images=np.stack([_as_rgb(test[int(i)].image, shape) for i in pick]),
            example_masks=np.stack(
                [m if (m := test[int(i)].mask) is not None else np.zeros(shape, bool) for i in pick]
            ),
        )
    return path


def _example_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Half normal, half anomalous test images, chosen from the labels alone (deterministic).

    Every method on the same dataset therefore shows the *same* images in the chapter's figures.
    """
    rng = np.random.default_rng(seed)
    out = []
    for lab in (0, 1):
        idx = np.flatnonzero(labels == lab)
        k = min(len(idx), n // 2)
        if k:
            out.extend(np.sort(rng.choice(idx, size=k, replace=False)))
    return np.array(out, dtype=int)


def _as_rgb(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(image)
    if im.size != (shape[1], shape[0]):
        im = im.resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(im.convert("RGB"))
