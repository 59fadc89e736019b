"""DRAEM side by side with anomalib's, in one process, on the same data, image size and budget.

    pip install .[compare]            # anomalib 2.x next to iadlib
    python benchmarks/compare_anomalib_draem.py [--datasets elpv textures] [--epochs 4] [--batch-size 8]
        [--image-size 128] [--width 16] [--n-train 128] [--n-test N] [--anomalib-source DIR] [--device cpu]
        [--no-warmup]

Setting (issue 11): ELPV mono (first ``--n-train`` of its 432 normal training cells; the whole
balanced test set) and the synthetic ``brick`` textures (80 train, 75 test with pixel masks); both
sides train from scratch (DRAEM has no backbone) on the same training images, for the same number
of epochs at the same batch size and image size, with reconstructive width ``--width`` and
discriminative width ``--width / 2`` on both sides (DRAEM's 128 / 64 shrunk for a CPU budget),
and both see the same [0, 1] images without ImageNet normalisation (anomalib's DRAEM
pre-processor only resizes). 128 px rather than 256 px and width 16 keep the whole script (both
datasets, both sides, 4 epochs) within ~4 minutes on a 2-core CPU. Before the timed runs, both
sides do an untimed one-epoch fit on two batches (``--no-warmup`` skips it), so that neither pays
the process's one-time start-up (oneDNN kernels, allocator, ours' texture photos) inside its
timing. Timed on each side:

* ours: ``iadlib.get_model("draem", …).fit(train images)`` — resizing the training set once,
  anomaly synthesis, the training loop — and ``predict(test images)`` (ms/image after a warm-up);
* anomalib: its ``Draem`` Lightning module is built (``dtd_dir`` = an empty temporary folder, so
  nothing is downloaded) for its ``augmenter`` (``PerlinAnomalyGenerator``), its ``DraemModel``,
  its ``DraemLoss`` and its ``configure_optimizers()`` (Adam 1e-4, MultiStepLR [400, 600] × 0.1
  stepped per epoch); fit = resizing the training set once + a plain PyTorch loop over
  ``augmenter`` → ``model`` (train mode) → ``loss`` → Adam, i.e. what its ``training_step`` does,
  *without* the Lightning Trainer (its overhead is left out, which favours anomalib); predict =
  eval-mode forward per batch, its ``InferenceBatch`` ``pred_score`` / ``anomaly_map`` as scores
  and maps.

How the two sides differ (each keeps what its library ships):

* **anomaly source** — ours pastes augmented crops of the offline :mod:`skimage.data` photos
  (``iadlib.perlin.TextureBank``, grey on ELPV's grey cells) standing in for DTD; anomalib, with no
  DTD folder here, uses its no-source fallback: the Perlin noise image itself, ``0.5·P + 0.25``
  replicated to 3 channels (``--anomalib-source DIR`` gives it a folder of images, e.g. DTD);
* **augmentation** — ours: 3 of {posterize, sharpness, solarize, equalize, brightness, colour,
  auto-contrast} on the source (PIL), opacity β ~ U[0, 0.8], normal images rotated by up to ±45°
  with p = 0.3, batched mask synthesis; anomalib: 3 of its 10 torchvision v2 transforms (incl.
  hue jitter, invert, AutoAugment, affine), β ~ U[0.1, 1.0], Perlin mask rotated by ±90°, no
  rotation of the normal image, a per-image Python loop (anomalies with p = 0.5 on both sides);
* **score** — ours: max of the anomaly map after a mean filter of 21 px at 256 px (DRAEM Eq. 6,
  scaled with the image size); anomalib: plain max of the map;
* **networks and losses** — the same architectures (parameter counts checked equal at start-up),
  same initialisation family (ours DRAEM's N(0, 0.02) conv / N(1, 0.02) BN, anomalib PyTorch's
  defaults); loss L2 + (1 − SSIM) + focal(γ = 2) on both (kornia's SSIM and focal on anomalib's
  side) — but anomalib's ``FocalLoss(alpha=1)`` under the installed kornia (0.9: class 0 weighted
  by 1 − α) puts weight 0 on normal pixels, so its segmentation loss only sees the anomalous ones;
  ours weights both classes by 1 (the record's settings hold the kornia version and this weight),
  and kornia's mean divides by 2 × the pixel count; LR schedules as shipped: ours ×0.2 at 80 % and
  90 % of the epochs (at 4 epochs: the last epoch runs at 2e-5), anomalib's ×0.1 at epochs 400 and
  600 (never reached here);
* **batches** — both drop an incomplete last batch (ours does; anomalib's DataLoader would keep
  it), so both take the same number of steps; both shuffle per epoch with their own generators.

At a few epochs the AUROCs are far from the papers' (700 epochs at 256 px, width 128); the point
is equal budgets. Prints one line per dataset with ratios (anomalib ÷ ours: > 1 means ours is
faster / smaller) and writes ``benchmarks/records/anomalib_draem.json`` (``--out``) atomically.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import anomalib_predict, batches, common_args, run_datasets, side, start, write_record  # noqa: E402

import iadlib  # noqa: E402


def n_params(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _kornia_version() -> str:
    import kornia

    return kornia.__version__


def _focal_weight_normal() -> float:
    """anomalib's DRAEM focal loss on a normal pixel predicted 50 / 50, relative to an anomalous one
    (1.0 when both classes count alike; 0.0 when normal pixels are ignored)."""
    from anomalib.models.image.draem.loss import DraemLoss

    focal = DraemLoss().focal_loss
    logits = torch.zeros(1, 2, 2, 2)
    normal = focal(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    anomalous = focal(logits, torch.ones(1, 2, 2, dtype=torch.long))
    return float(normal / anomalous)


def run_ours(train, test, a, device: torch.device) -> dict:
    model = iadlib.get_model(
        "draem",
        image_size=a.image_size,
        epochs=a.epochs,
        batch_size=a.batch_size,
        width=a.width,
        device=str(device),
        seed=a.seed,
    )
    out = side(lambda: model.fit(train), model.predict, test)
    out["n_params"] = n_params(model.reconstructive, model.discriminative)
    return out


def anomalib_module(a, source: str | None):
    """anomalib's ``Draem`` module with both sub-networks at ``--width`` (its own classes)."""
    from anomalib.models.image.draem.lightning_model import Draem
    from anomalib.models.image.draem.torch_model import DiscriminativeSubNetwork, ReconstructiveSubNetwork

    with tempfile.TemporaryDirectory() as empty:  # an existing, empty DTD folder: no download, noise source
        module = Draem(
            dtd_dir=source or empty, pre_processor=False, post_processor=False, evaluator=False, visualizer=False
        )
    model = module.model
    if a.width != 128:  # DraemModel hard-wires 128 / 64; same classes at the benchmark's width
        model.reconstructive_subnetwork = ReconstructiveSubNetwork(base_width=a.width)
        model.discriminative_subnetwork = DiscriminativeSubNetwork(
            in_channels=6, out_channels=2, base_width=max(1, a.width // 2)
        )
    return module


def run_anomalib(train, test, a, device: torch.device) -> dict:
    torch.manual_seed(a.seed)
    module = anomalib_module(a, a.anomalib_source)
    model = module.model.to(device)
    (opt,), (sched,) = module.configure_optimizers()
    images = train.images()

    def fit() -> None:
        data = next(batches(images, a.image_size, len(images), device, normalise=False))  # resized once
        n, bs = len(data), min(a.batch_size, len(data))
        gen = torch.Generator().manual_seed(a.seed)
        model.train()
        for _ in range(a.epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(0, n - bs + 1, bs):  # full batches only, like ours
                x = data[order[i : i + bs]]
                augmented, mask = module.augmenter(x)
                reconstruction, prediction = model(augmented)
                loss = module.loss(x, reconstruction, mask, prediction)
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        model.eval()

    predict = anomalib_predict(model, a, device, normalise=False)

    out = side(fit, predict, test)
    out["n_params"] = n_params(model)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(p, epochs=4, batch_size=8, image_size=128)
    p.set_defaults(n_train=128)
    p.add_argument("--width", type=int, default=16, help="reconstructive width (discriminative: half); paper 128")
    p.add_argument("--anomalib-source", default=None, help="anomaly source folder for anomalib (e.g. DTD)")
    a = p.parse_args()
    if a.anomalib_source and not Path(a.anomalib_source).is_dir():  # anomalib would try to download DTD
        raise SystemExit(f"--anomalib-source {a.anomalib_source}: no such folder")
    device = start(a)

    def pair(train, test, args):
        return run_ours(train, test, args, device), run_anomalib(train, test, args, device)

    rows = run_datasets(a, "DRAEM", pair)
    settings = {
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "image_size": a.image_size,
        "width": a.width,
        "disc_width": max(1, a.width // 2),
        "n_train": a.n_train,
        "n_test": a.n_test,
        "seed": a.seed,
        "backbone_ours": "none",
        "backbone_anomalib": "none",
        "weights": "none (trained from scratch on both sides)",
        "anomaly_source_ours": "skimage.data photos (iadlib.perlin.DEFAULT_TEXTURES), grey on grey data",
        "anomaly_source_anomalib": a.anomalib_source or "Perlin noise (no-source fallback; no DTD offline)",
        "score_ours": "max of the mean-filtered map (Eq. 6)",
        "score_anomalib": "max of the map",
        "kornia": _kornia_version(),
        "focal_weight_normal_pixels_anomalib": _focal_weight_normal(),
    }
    path = write_record("draem", rows, settings, device, a.out)
    print(f"written {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
