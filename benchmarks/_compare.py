"""Shared harness of the anomalib side-by-side scripts (``compare_anomalib_<method>.py``).

One place for what every comparison does the same way, so that the method scripts hold only the
two models: the datasets and their splits, the input tensors both sides see, timing and peak
memory, the metrics, the printed table of ratios and the committed record with its provenance.

Conventions (issue 11): both sides train on the same normal images for the same number of epochs
at the same batch size and image size, with the same backbone weights where the method has one;
``fit_s`` is the whole training (+ any fitting after it), ``predict_ms_per_image`` the mean over the
test set after a warm-up batch, ``peak_rss_mb`` the process's peak resident memory during the fit
(the process's memory before the fit is recorded beside it as ``rss_before_mb``: both sides share
one process). Ratios are *anomalib ÷ ours*: > 1 means ours is faster / smaller.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import iadlib
from iadlib.backbones import IMAGENET_MEAN, IMAGENET_STD
from iadlib.metrics import image_auroc, pixel_auroc
from iadlib.models.base import images_to_tensor
from iadlib.results import provenance
from iadlib.utils import PeakMemory, _rss_bytes, atomic_write_text, resolve_device, seed_everything

RECORDS = Path(__file__).resolve().parent / "records"
#: ImageNet statistics (what our backbones apply inside and anomalib's extractors expect outside).
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def load_data(name: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0):
    """``"elpv"``: ELPV mono (432 train, balanced test of 2·N anomalous); ``"textures"``: the
    synthetic ``brick`` texture benchmark (80 train, 25 good + 50 defective with pixel masks).

    ``n_train`` / ``n_test`` cap the sets (first ``n_train`` training images; an evenly spaced,
    class-stratified subset of the test set) for quick runs; ``None`` keeps them whole.
    """
    if name == "elpv":
        ds = iadlib.get_dataset("elpv", category="mono", test_normal_ratio=0.5, seed=seed)
    elif name == "textures":
        ds = iadlib.get_dataset("synth_textures", category="brick", seed=seed)
    else:
        raise SystemExit(f"unknown dataset {name!r}; use elpv or textures")
    train = ds.train if n_train is None else ds.train[: min(n_train, len(ds.train))]
    test = ds.test
    if n_test is not None and n_test < len(test):
        labels = np.asarray(test.labels)
        keep: list[int] = []
        for c in (0, 1):
            idx = np.flatnonzero(labels == c)
            k = max(1, round(n_test * len(idx) / len(labels)))
            keep += idx[np.linspace(0, len(idx) - 1, min(k, len(idx))).round().astype(int)].tolist()
        test = test[sorted(set(keep))]
    return ds, train, test


def batches(
    images: Sequence[np.ndarray],
    size: int,
    batch_size: int,
    device: torch.device,
    normalise: bool = True,
    shuffle_seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """The float tensors ``[B,3,S,S]`` fed to anomalib (ImageNet-normalised unless ``normalise``
    is False, for the methods that take [0, 1] images), in order or shuffled with a seed."""
    order = np.arange(len(images))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(images))
    for i in range(0, len(order), batch_size):
        x = images_to_tensor([images[j] for j in order[i : i + batch_size]], size).to(device)
        yield (x - MEAN.to(device)) / STD.to(device) if normalise else x


def evaluate(test, scores: Any, maps: Any | None) -> dict[str, float | None]:
    """Image AUROC, and pixel AUROC where the test set has masks and ``maps`` are given."""
    out: dict[str, float | None] = {"image_auroc": image_auroc(test.labels, np.asarray(scores, dtype=np.float64))}
    out["pixel_auroc"] = None
    masks = test.masks()
    labels = np.asarray(test.labels)
    if maps is not None and all(m is not None for m, y in zip(masks, labels) if y == 1):
        maps = torch.as_tensor(np.asarray(maps, dtype=np.float32))
        size = next(m.shape for m in masks if m is not None)
        m = np.stack([np.zeros(size, bool) if k is None else k > 0 for k in masks])
        if maps.shape[-2:] != m.shape[-2:]:
            maps = torch.nn.functional.interpolate(
                maps[:, None], size=m.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
        out["pixel_auroc"] = pixel_auroc(m, maps.numpy())
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float, float]:
    """Run ``fn``; return its result, seconds, peak RSS (MiB) during it and RSS before it (MiB)."""
    before = _rss_bytes() / 2**20
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
    return result, seconds, mem.peak_rss / 2**20, before


def time_predict(
    predict: Callable[[Sequence[np.ndarray]], Any], images: Sequence[np.ndarray], warmup: int = 4
) -> tuple[Any, float]:
    """``predict(images)`` after a warm-up call on the first ``warmup`` images; (result, ms/image)."""
    predict(images[:warmup])
    t0 = time.perf_counter()
    out = predict(images)
    return out, 1000 * (time.perf_counter() - t0) / len(images)


def side(
    fit: Callable[[], Any], predict: Callable[[Sequence[np.ndarray]], tuple[Any, Any]], test, **extra: Any
) -> dict[str, Any]:
    """Time ``fit()`` then ``predict(test images) -> (scores, maps or None)``; metrics + timings."""
    _, fit_s, peak, before = timed(fit)
    (scores, maps), ms = time_predict(predict, test.images() if hasattr(test, "images") else test)
    return {
        "fit_s": fit_s,
        "predict_ms_per_image": ms,
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        **evaluate(test, scores, maps),
        **extra,
    }


def anomalib_predict(model: torch.nn.Module, a: argparse.Namespace, device: torch.device,
                     normalise: bool = True, maps: bool = True) -> Callable[[Sequence[np.ndarray]], tuple]:
    """anomalib's inference as a ``predict(images) -> (scores, maps or None)``: eval-mode forward of its
    torch model on the same tensors as ours, its ``InferenceBatch.pred_score`` / ``.anomaly_map``
    (reshaped to ``[N,H,W]``)."""

    @torch.no_grad()
    def predict(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        model.eval()
        scores, out_maps = [], []
        for x in batches(images, a.image_size, a.batch_size, device, normalise=normalise):
            out = model(x)
            scores.append(out.pred_score.flatten().float().cpu())
            if maps:
                out_maps.append(out.anomaly_map.reshape(len(x), *out.anomaly_map.shape[-2:]).float().cpu())
        return torch.cat(scores).numpy(), torch.cat(out_maps).numpy() if maps else None

    return predict


def n_params(model: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """anomalib ÷ ours for the time and memory columns (> 1: ours is faster / smaller)."""
    out = {}
    for key in ("fit_s", "predict_ms_per_image", "peak_rss_mb"):
        if ours.get(key) and theirs.get(key):
            out[f"speedup_{key}"] = theirs[key] / ours[key]
    return out


def _fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def line(method: str, dataset: str, row: dict[str, Any]) -> str:
    o, t = row["ours"], row["anomalib"]
    return (
        f"{method} on {dataset}: fit {o['fit_s']:.1f} vs {t['fit_s']:.1f} s "
        f"(×{_fmt(row.get('speedup_fit_s'), '.2f')}); "
        f"predict {o['predict_ms_per_image']:.1f} vs {t['predict_ms_per_image']:.1f} ms/img "
        f"(×{_fmt(row.get('speedup_predict_ms_per_image'), '.2f')}); image AUROC {o['image_auroc']:.4f} vs "
        f"{t['image_auroc']:.4f}; pixel AUROC {_fmt(o['pixel_auroc'], '.4f')} vs {_fmt(t['pixel_auroc'], '.4f')}; "
        f"peak RSS {o['peak_rss_mb']:.0f} vs {t['peak_rss_mb']:.0f} MiB"
    )


def write_record(
    method: str,
    rows: list[dict[str, Any]],
    settings: dict[str, Any],
    device: torch.device,
    out: str | Path | None = None,
) -> Path:
    """Write ``records/anomalib_<method>.json`` atomically, keeping rows of other datasets."""
    import anomalib

    path = Path(out) if out is not None else RECORDS / f"anomalib_{method}.json"
    datasets = {r["dataset"] for r in rows}
    if path.is_file():
        kept = [r for r in json.loads(path.read_text()).get("rows", []) if r["dataset"] not in datasets]
        rows = sorted(kept + rows, key=lambda r: r["dataset"])
    doc = {
        "benchmark": f"anomalib_{method}",
        "method": method,
        "anomalib": anomalib.__version__,
        "settings": settings,
        "rows": rows,
        "provenance": provenance(str(device)),
        "threads": torch.get_num_threads(),
    }
    atomic_write_text(path, json.dumps(doc, indent=1, default=float))
    return path


def common_args(p, epochs: int, batch_size: int, image_size: int):
    """The arguments every comparison takes."""
    p.add_argument("--device", default="auto")
    p.add_argument("--datasets", nargs="+", default=["elpv", "textures"], choices=["elpv", "textures"])
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--n-train", type=int, default=None, help="cap the training set (quick runs)")
    p.add_argument("--n-test", type=int, default=None, help="cap the test set, class-stratified")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="record path (default records/anomalib_<method>.json)")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed one-epoch warm-up of both sides")
    return p


def run_datasets(
    a: argparse.Namespace,
    label: str,
    pair: Callable[[Any, Any, argparse.Namespace], tuple[dict[str, Any], dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Both sides on every dataset of ``a.datasets``: ``pair(train, test, args) -> (ours, anomalib)``.

    First (unless ``--no-warmup``) an untimed one-epoch run of both sides on a few images, so that
    neither pays the process's one-time start-up (library imports, oneDNN kernels) inside its timing.
    Returns the record's rows (``dataset``, sizes, both sides, :func:`ratios`) and prints a line each.
    """
    if not a.no_warmup:
        _, train, test = load_data(a.datasets[0], 2 * a.batch_size, 4, seed=a.seed)
        pair(train, test, argparse.Namespace(**{**vars(a), "epochs": 1}))
    rows = []
    for name in a.datasets:
        _, train, test = load_data(name, a.n_train, a.n_test, seed=a.seed)
        print(f"{name}: {len(train)} train, {len(test)} test", flush=True)
        ours, theirs = pair(train, test, a)
        row = {"dataset": name, "n_train": len(train), "n_test": len(test), "ours": ours, "anomalib": theirs,
               **ratios(ours, theirs)}
        rows.append(row)
        extra = ""
        if "n_params" in ours and "n_params" in theirs:
            extra = f"; parameters {ours['n_params']} vs {theirs['n_params']}"
        print(line(label, name, row) + extra, flush=True)
    return rows


def start(a) -> torch.device:
    """Check anomalib is importable, seed, print the set-up line; the resolved device."""
    try:
        import anomalib
    except ImportError as e:
        raise SystemExit(f"anomalib is not installed ({e}); pip install '.[compare]'") from e
    seed_everything(a.seed)
    device = resolve_device(a.device)
    print(f"anomalib {anomalib.__version__}; device={device}; torch threads {torch.get_num_threads()}", flush=True)
    return device
