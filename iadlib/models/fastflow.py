"""FastFlow (Yu et al., 2021): unsupervised anomaly detection with 2D normalizing flows; MIAD A.2.3.

A frozen ImageNet backbone gives feature maps ``f_k`` of its first three stages (WideResNet50-2
``layer1..3`` in the paper; ``efficientnet_lite0`` stages 1–3, strides 4/8/16, stand in here). Each
stage gets its own 2D flow ``z_k = g_k(LN(f_k))`` that maps normal features to a standard normal
distribution *while keeping the spatial layout*; a pixel is anomalous where its ``z`` is unlikely.

* **Normalisation**: a trainable LayerNorm over ``[C, H, W]`` per stage (the paper's setting for
  ResNet-style backbones).
* **Flow step** (paper §3.2, Fig. 2; FrEIA's ``AllInOneBlock`` as in the official code): split the
  channels ``x = [x_1, x_2]``; ``(s, t) = NN(x_1)`` with ``NN`` = conv(k) → ReLU → conv(k), hidden
  width ``hidden_ratio·C_1`` (``C_1 = ⌈C/2⌉`` the subnet's input channels, as in the official code's
  ``subnet_conv(in_channels, …)``); the kernel size ``k`` alternates 3×3 (even steps) and 1×1 (odd steps);
  affine coupling ``y_2 = x_2 ⊙ exp(α·tanh(0.1 s)) + 0.1 t`` with clamp ``α = 2``; ``y = [x_1, y_2]``,
  then a learnt global affine (softplus scale, offset) and a fixed random channel permutation.
  ``log|det J| = Σ_{c,h,w} α·tanh(0.1 s) + H·W·Σ_c log scale_c``.
* **Loss** (change of variables, per image and stage):
  ``−log p(f) = ½‖z‖² − log|det ∂z/∂f|`` (+ const), summed over the stages, averaged over the batch.
* **Anomaly map**: per stage the per-pixel likelihood ``p_k(h, w) = exp(−½ mean_c z_k(c, h, w)²)``,
  up-sampled bilinearly to the image; the map is ``−mean_k p_k`` (the stages' heat-maps averaged as
  in A.2.3); the image score is the map's maximum.

Training follows A.2.3: 8 flow steps per stage, Adam lr 1e-3, weight decay 1e-5, no augmentation,
256×256 inputs. The backbone is frozen, so its features are computed once and cached.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..errors import ConfigError
from . import register_model
from .base import Detector, check_loss, feature_batches, iter_batches

#: Cache the backbone features of the training set when they take at most this many bytes.
CACHE_LIMIT_BYTES = 2 * 2**30


class AffineCouplingStep(nn.Module):
    """One flow step: affine coupling with a conv subnet, global affine, fixed channel permutation.

    Follows FrEIA's ``AllInOneBlock(subnet, affine_clamping=clamp, permute_soft=False)`` used by the
    official FastFlow code: ``forward`` returns ``(y, log|det J|)`` per image.
    """

    def __init__(
        self, channels: int, kernel_size: int, hidden_ratio: float, clamp: float, perm: torch.Tensor
    ):
        super().__init__()
        self.c1 = channels - channels // 2  # conditioning half
        self.c2 = channels // 2  # transformed half
        hidden = max(1, int(self.c1 * hidden_ratio))  # official subnet_conv: int(in_channels * ratio)
        pad = kernel_size // 2
        self.subnet = nn.Sequential(
            nn.Conv2d(self.c1, hidden, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 2 * self.c2, kernel_size, padding=pad),
        )
        self.clamp = clamp
        # global affine, scale = 0.1·softplus_{β=0.5}(g) initialised to 1 (FrEIA's SOFTPLUS activation)
        self.global_scale = nn.Parameter(torch.full((1, channels, 1, 1), 2.0 * math.log(math.exp(5.0) - 1.0)))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("perm", perm.clone())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        a = 0.1 * self.subnet(x1)
        s = self.clamp * torch.tanh(a[:, : self.c2])
        y2 = x2 * torch.exp(s) + a[:, self.c2 :]
        y = torch.cat([x1, y2], dim=1)
        scale = 0.1 * F.softplus(self.global_scale, beta=0.5)
        y = y * scale + self.global_offset
        logdet = s.flatten(1).sum(1) + x.shape[-2] * x.shape[-1] * torch.log(scale).sum()
        return y[:, self.perm], logdet


class Flow2D(nn.Module):
    """A 2D normalizing flow of ``steps`` coupling steps; kernels alternate 3×3 / 1×1 (or all 3×3)."""

    def __init__(
        self,
        channels: int,
        steps: int,
        hidden_ratio: float,
        clamp: float,
        conv3x3_only: bool,
        gen: torch.Generator,
    ):
        super().__init__()
        self.steps = nn.ModuleList(
            AffineCouplingStep(
                channels,
                1 if (i % 2 == 1 and not conv3x3_only) else 3,
                hidden_ratio,
                clamp,
                torch.randperm(channels, generator=gen),
            )
            for i in range(steps)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return x, logdet


class FastFlowNet(nn.Module):
    """Per-stage LayerNorm + 2D flow (the trainable part); the frozen backbone lives in the detector."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, int, int]],
        steps: int = 8,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        conv3x3_only: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.norms = nn.ModuleList(nn.LayerNorm(list(s), elementwise_affine=True) for s in shapes)
        self.flows = nn.ModuleList(
            Flow2D(s[0], steps, hidden_ratio, clamp, conv3x3_only, gen) for s in shapes
        )

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        zs, lds = [], []
        for f, norm, flow in zip(feats, self.norms, self.flows):
            z, ld = flow(norm(f))
            zs.append(z)
            lds.append(ld)
        return zs, lds


def fastflow_loss(zs: Sequence[torch.Tensor], logdets: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_k mean_batch(½‖z_k‖² − log|det J_k|)``: the negative log-likelihood up to a constant."""
    return sum((0.5 * z.pow(2).flatten(1).sum(1) - ld).mean() for z, ld in zip(zs, logdets))


def likelihood_maps(zs: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Anomaly map ``−mean_k Ψ(exp(−½ mean_c z_k²))`` at ``size`` (``Ψ``: bilinear up-sampling)."""
    maps = [
        F.interpolate(
            torch.exp(-0.5 * z.pow(2).mean(1, keepdim=True)), size=size, mode="bilinear", align_corners=False
        )
        for z in zs
    ]
    return -torch.cat(maps, dim=1).mean(1)


@register_model("fastflow")
class FastFlow(Detector):
    """FastFlow detector (see the module docstring for the equations)."""

    default_image_size = 256

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        epochs: int = 500,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        weights: str | None = None,
        flow_steps: int = 8,
        hidden_ratio: float = 1.0,
        clamp: float = 2.0,
        conv3x3_only: bool = False,
        cache_features: bool | None = None,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        if epochs < 1 or lr <= 0 or flow_steps < 1 or hidden_ratio <= 0 or clamp <= 0:
            raise ConfigError(
                "fastflow: need epochs >= 1, lr > 0, flow_steps >= 1, hidden_ratio > 0, clamp > 0; got "
                f"epochs={epochs}, lr={lr}, flow_steps={flow_steps}, hidden_ratio={hidden_ratio}, "
                f"clamp={clamp}"
            )
        layers = tuple(int(i) for i in layers)
        if not layers or list(layers) != sorted(set(layers)):
            raise ConfigError(f"fastflow: layers must be increasing stage indices, got {layers}")
        self.config.update(
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            backbone=backbone,
            layers=layers,
            weights=weights,
            flow_steps=flow_steps,
            hidden_ratio=hidden_ratio,
            clamp=clamp,
            conv3x3_only=conv3x3_only,
            cache_features=cache_features,
            verbose=verbose,
        )
        self.backbone = load_backbone(backbone, layers, self.device, weights=weights)
        with torch.no_grad():
            probe = self.backbone(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))
        shapes = [tuple(int(d) for d in f.shape[1:]) for f in probe]
        with torch.random.fork_rng(devices=[]):  # initial weights from `seed`, global RNG untouched
            torch.manual_seed(seed)
            self.net = FastFlowNet(shapes, flow_steps, hidden_ratio, clamp, conv3x3_only, seed).to(
                self.device
            )

    @torch.no_grad()
    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone(x)  # channels_last inside the backbone, outputs contiguous

    def _train_batches(self, images: list[np.ndarray], gen: torch.Generator) -> Iterator[list[torch.Tensor]]:
        """One epoch of shuffled frozen-feature batches (from the cache when it exists)."""
        return feature_batches(
            images, self._features, self._cache, self.batch_size, self.image_size, self.device, gen
        )

    def _fit(self, images: list[np.ndarray]) -> None:
        cfg = self.config
        per_image = sum(math.prod(n.normalized_shape) for n in self.net.norms) * 4
        cache = cfg["cache_features"]
        if cache is None:
            cache = per_image * len(images) <= CACHE_LIMIT_BYTES
        self._cache = None
        if cache:
            chunks = [
                self._features(x)
                for x in tqdm(
                    iter_batches(images, self.batch_size, self.image_size, self.device),
                    total=math.ceil(len(images) / self.batch_size),
                    desc="FastFlow features",
                    disable=not cfg["verbose"],
                    leave=False,
                )
            ]
            self._cache = [torch.cat(parts) for parts in zip(*chunks)]
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        gen = torch.Generator().manual_seed(self.seed)
        self.history["loss"] = []
        self.net.train()
        step = 0
        for epoch in tqdm(range(cfg["epochs"]), desc="fastflow", disable=not cfg["verbose"]):
            total, n = 0.0, 0
            for feats in self._train_batches(images, gen):
                zs, lds = self.net(feats)
                loss = fastflow_loss(zs, lds)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                b = feats[0].shape[0]
                total += check_loss(loss.detach(), f"{step} (epoch {epoch})", self.name) * b
                n += b
                step += 1
            self.history["loss"].append(total / max(n, 1))
        self._cache = None
        self.net.eval()

    @torch.no_grad()
    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        scores, maps = [], []
        for x in iter_batches(images, self.batch_size, self.image_size, self.device):
            zs, _ = self.net(self._features(x))
            amap = likelihood_maps(zs, tuple(x.shape[-2:]))
            scores.append(amap.flatten(1).amax(1).cpu())
            maps.append(amap.cpu())
        return torch.cat(scores), torch.cat(maps)

    def _get_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net.eval()
