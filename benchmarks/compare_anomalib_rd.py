"""Reverse Distillation side by side with anomalib's, in one process, on the same data, weights and size.

    pip install .[compare]            # anomalib 2.x next to iadlib
    python benchmarks/compare_anomalib_rd.py [--datasets elpv textures] [--epochs 2] [--batch-size 16]
                                             [--image-size 256] [--backbone resnet18] [--device cpu]
                                             [--n-train 160] [--n-test 200] [--no-warmup]

Setting (issue 11): ELPV mono (432 training cells, 469 test cells) and the synthetic ``brick``
texture (80 training images, 75 test images with pixel masks); the first ``--n-train`` training images
(default 160: all 80 textures) in the same seeded order on both sides, a class-stratified
``--n-test`` subset of the test set (default 200: all 75 textures), ``--epochs`` epochs at
``--batch-size``, ``--image-size`` px. The defaults keep the whole script within ~4 minutes on an
idle 2-core CPU; ``--n-train 432 --n-test 469`` runs the whole ELPV sets.

Backbone. anomalib's ``ReverseDistillationModel`` builds its one-class bottleneck and its student
decoder for ResNets only (``get_bottleneck_layer`` / ``get_decoder``: resnet18 … wide_resnet101_2),
so efficientnet_lite0 (the only backbone with ImageNet weights offline here) cannot be used on its
side. Both sides therefore run the *same* ResNet (``--backbone``, resnet18 by default: the CPU-sized
one; ``wide_resnet50_2`` is the paper's) as the frozen teacher, stages ``layer1..3`` (timm indices
1, 2, 3), with ONE shared random-init weights file: a seeded timm ``create_model(backbone)`` state
dict written to ``results/benchmarks/<backbone>_random_seed<seed>.pth``, loaded by our
``load_backbone(backbone, weights=file)`` and its extractor's state dict copied into anomalib's
``TimmFeatureExtractor`` (every tensor must map). With random teacher features the AUROCs are only a
sanity check (both sides learn the same kind of map), not the method's accuracy; the timings are the
point.

Before the timed runs both sides do an untimed one-epoch fit on two batches of the first dataset
(and a predict on four test images; ``--no-warmup`` skips it), so that neither pays the process's
one-time start-up (oneDNN kernels, allocator, imports) inside its timing. What is timed
(``_compare.side``):

* ours: ``iadlib`` ``reverse_distillation`` ``fit`` (teacher features of the training set computed
  once and cached, then the OCBE + decoder trained on them: Adam lr 0.005, β = (0.5, 0.999), the
  flattened cosine loss) and ``predict`` (score + Gaussian-smoothed map, σ = 4 px at 256 px);
* anomalib: ``ReverseDistillationModel`` in training mode, a plain PyTorch loop with what its
  Lightning module ships: Adam over decoder + bottleneck parameters, lr 0.005, β = (0.5, 0.99)
  (``configure_optimizers``), ``ReverseDistillationLoss``; the teacher runs on every batch of every
  epoch (its code has no feature cache). Then eval mode, its ``InferenceBatch`` (``pred_score``,
  ``anomaly_map``) on the test images. No Lightning ``Trainer`` is involved, which leaves out its
  overhead (callbacks, logging, metric updates) and so favours anomalib.

Every way the two sides differ: the optimiser's β₂ (0.999 vs 0.99, each library's own); the
bottleneck's OCE block count is set to anomalib's (``oce_blocks=2`` for resnet18/34, 3 for the
Bottleneck ResNets), the MFF convolutions (64→128→256 and 128→256 channels with stride 2 for resnet18)
and the embedding width (512 · expansion) are the same; each decoder stage is a 2×2 transposed
convolution + two residual blocks on our side (4 conv3×3) and two residual blocks whose first one
up-samples with a transposed convolution (3 conv3×3 + a transposed-convolution shortcut) on anomalib's,
so ours does ~20 % more decoder work per stage (trainable parameters, ``n_params`` in each row, for
resnet18: 15.5 M ours, 18.7 M anomalib's, which counts its OCBE's unused ``conv4``/``bn4`` 1×1 layer,
0.5 M, and the transposed-convolution shortcuts; with the Bottleneck ResNets, e.g. wide_resnet50_2,
anomalib's OCE and decoder use bottleneck blocks where ours keeps basic blocks, so the work differs
more); our last block of each stage has no final ReLU;
anomalib's anomaly map (``add`` mode, its Lightning default) up-samples with ``align_corners=True``,
ours with ``False``, both then smooth with σ = 4 px; initial weights come from each library's own
initialisation (both seeded with ``--seed``); our training features are cached in memory (the
teacher is frozen), anomalib recomputes them. Input tensors: ours takes [0, 1] images and normalises
inside its backbone; anomalib gets the same images ImageNet-normalised by ``_compare.batches`` (what
its pre-processor does), resized the same way.

Prints a line per dataset with ratios (anomalib ÷ ours: > 1 means ours is faster / smaller) and
writes ``benchmarks/records/anomalib_reverse_distillation.json`` (or ``--out``) atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import anomalib_predict, batches, common_args, n_params, run_datasets, side, start, write_record  # noqa: E402

import iadlib  # noqa: E402
from iadlib.utils import torch_save_atomic  # noqa: E402

METHOD = "reverse_distillation"
LAYERS = (1, 2, 3)  # timm stage indices of layer1..layer3
ANOMALIB_LAYERS = ["layer1", "layer2", "layer3"]
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "results" / "benchmarks"


def shared_weights(backbone: str, seed: int) -> Path:
    """One seeded random-init timm state dict of ``backbone``, written once, read by both sides."""
    import timm

    path = WEIGHTS_DIR / f"{backbone}_random_seed{seed}.pth"
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(backbone, pretrained=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch_save_atomic(model.state_dict(), path)
    return path


def oce_blocks(backbone: str) -> int:
    """anomalib's OCE depth: 2 BasicBlocks for resnet18/34, 3 Bottlenecks otherwise."""
    return 2 if backbone in {"resnet18", "resnet34"} else 3


def anomalib_model(ours, a, device: torch.device):
    """anomalib's ReverseDistillationModel, teacher weights copied from our encoder (all must map)."""
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    torch.manual_seed(a.seed)
    model = ReverseDistillationModel(
        backbone=a.backbone,
        input_size=(a.image_size, a.image_size),
        layers=ANOMALIB_LAYERS,
        anomaly_map_mode=AnomalyMapGenerationMode.ADD,  # the Lightning module's default
        pre_trained=False,
    )
    theirs = model.encoder.feature_extractor
    missing, unexpected = theirs.load_state_dict(ours.encoder.source_state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto anomalib's extractor: missing {missing}, unexpected {unexpected}")
    return model.to(device)


def run_ours(train, test, a, device: torch.device, weights: Path):
    model = iadlib.get_model(
        METHOD,
        image_size=a.image_size,
        device=str(device),
        seed=a.seed,
        batch_size=a.batch_size,
        epochs=a.epochs,
        backbone=a.backbone,
        layers=LAYERS,
        weights=str(weights),
        oce_blocks=oce_blocks(a.backbone),
    )
    n_params = sum(p.numel() for p in model.net.parameters())
    return side(lambda: model.fit(train), model.predict, test, n_params=n_params), model


def run_anomalib(ours_model, train, test, a, device: torch.device) -> dict:
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss

    model = anomalib_model(ours_model, a, device)
    loss_fn = ReverseDistillationLoss()
    images = train.images()

    def fit():
        # ReverseDistillation.configure_optimizers()
        opt = torch.optim.Adam(
            params=list(model.decoder.parameters()) + list(model.bottleneck.parameters()), lr=0.005, betas=(0.5, 0.99)
        )
        model.train()
        for epoch in range(a.epochs):
            for x in batches(images, a.image_size, a.batch_size, device, shuffle_seed=a.seed + epoch):
                loss = loss_fn(*model(x))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()

    predict = anomalib_predict(model, a, device)

    return side(fit, predict, test, n_params=n_params(model))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(p, epochs=2, batch_size=16, image_size=256)
    p.set_defaults(n_train=160, n_test=200)  # ~4 min for both datasets on an idle 2-core CPU
    p.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "wide_resnet50_2"])
    a = p.parse_args()
    device = start(a)
    weights = shared_weights(a.backbone, a.seed)

    def pair(train, test, args):
        torch.manual_seed(args.seed)
        ours, model = run_ours(train, test, args, device, weights)
        return ours, run_anomalib(model, train, test, args, device)

    rows = run_datasets(a, METHOD, pair)
    settings = {
        "image_size": a.image_size,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "n_train": a.n_train,
        "n_test": a.n_test,
        "seed": a.seed,
        "warmup": not a.no_warmup,
        "layers": ANOMALIB_LAYERS,
        "backbone_ours": a.backbone,
        "backbone_anomalib": a.backbone,
        "weights": f"shared seeded random init ({weights.name}); AUROC is a sanity check only",
        "ours_cfg": {"oce_blocks": oce_blocks(a.backbone), "decoder_blocks": 2, "loss": "flattened",
                     "betas": [0.5, 0.999], "lr": 0.005},
        "anomalib_cfg": {"anomaly_map_mode": "add", "betas": [0.5, 0.99], "lr": 0.005, "trainer": "plain loop"},
    }
    path = write_record(METHOD, rows, settings, device, a.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
