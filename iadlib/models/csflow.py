"""CS-Flow (Rudolph, Wehrbein, Rosenhahn, Wandt — *Fully Convolutional Cross-Scale-Flows for
Image-based Defect Detection*, WACV 2022).

The method, as in §3 of the paper and its official code (``marco-rudolph/cs-flow``):

1. **Multi-scale features** (§3.1): one frozen pretrained extractor applied to the image at three
   resolutions ``S, S/2, S/4`` gives maps ``y⁽¹⁾, y⁽²⁾, y⁽³⁾`` whose grids differ by factors of two
   (the paper: EfficientNet-B5 block 36 at 768/384/192 px → 24², 12², 6² × 304 channels).
2. **Cross-scale coupling blocks** (§3.2, Eq. 2–4): each block splits every scale's channels into
   two halves ``y₁, y₂`` and applies two affine couplings (Real-NVP / GLOW style)
   ``y₂' = y₂ ⊙ e^{γ₁(s₁(y₁))} + t₁(y₁)``, ``y₁' = y₁ ⊙ e^{γ₂(s₂(y₂'))} + t₂(y₂')``, where the
   sub-networks ``s, t`` are **cross-convolutions** that see all three scales at once: per scale a
   3×3 conv, LeakyReLU, then a 3×3 conv of the same scale plus a bilinearly upsampled coarser
   scale and a strided (downsampling) finer scale, each output scaled by a learnt ``γ`` that
   starts at zero (so the flow starts as the identity). Scale factors are soft-clamped,
   ``γ(s) = 0.636 α · arctan(s/α)`` with ``α = 3``. A fixed random channel permutation precedes
   every block; the paper stacks four blocks, the official code with 3×3 cross-convolutions in the
   first three and 5×5 in the last (``kernel_sizes``).
3. **Training** (§3.3, Eq. 5): maximum likelihood under a standard normal,
   ``L = (½‖z‖² − log|det J|) / D`` averaged over the batch (``D`` = all output dimensions);
   Adam (lr 2·10⁻⁴) with gradients clipped to norm 1 as in the official code (``max_grad_norm``).
4. **Scoring** (§3.4): image score = mean of ``z²`` over all scales, positions and channels (the
   official ``score = mean(z_concat ** 2)``); localisation: the per-position mean over channels of
   ``z²`` at each scale, upsampled to the input size and averaged over the scales.

Substitutions (named in the book): ``efficientnet_lite0`` stage 3 (112 channels, stride 16)
replaces EfficientNet-B5 block 36; the hidden width of the cross-convolutions and the epochs are
profile settings (paper: 1024 channels, 240 epochs). The features are standardised per channel
with the training mean and standard deviation — an invertible affine map whose log-determinant is
a constant, so it changes no ranking but lets the flow start near its prior. The frozen features
are extracted once and cached (no augmentation is used, so this is exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..errors import ConfigError, TrainingError
from . import register_model
from .base import Detector, check_loss, images_to_tensor

N_SCALES = 3


class CrossConvolutions(nn.Module):
    """The cross-scale sub-network of a coupling (CS-Flow §3.2, official ``CrossConvolutions``).

    Inputs and outputs: three maps with grids ``h, h/2, h/4``; output ``k`` of scale ``i`` is
    ``γᵢ · (conv_i(lrelu(conv_i0(xᵢ))) + up(conv(lrelu(conv_{i+1,0}(x_{i+1})))) + down(...))``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, kernel_size: int = 3,
                 leaky_slope: float = 0.1):
        super().__init__()
        pad = kernel_size // 2
        self.lrelu = nn.LeakyReLU(leaky_slope)
        self.conv_in = nn.ModuleList(nn.Conv2d(in_channels, hidden, kernel_size, padding=pad) for _ in range(3))
        self.conv_out = nn.ModuleList(nn.Conv2d(hidden, out_channels, kernel_size, padding=pad) for _ in range(3))
        self.up = nn.ModuleList(nn.Conv2d(hidden, out_channels, kernel_size, padding=pad) for _ in range(2))
        self.down = nn.ModuleList(
            nn.Conv2d(hidden, out_channels, kernel_size, padding=pad, stride=2) for _ in range(2)
        )
        self.gamma = nn.Parameter(torch.zeros(3))

    def forward(self, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        h = [self.lrelu(c(x)) for c, x in zip(self.conv_in, xs)]
        out = [c(hi) for c, hi in zip(self.conv_out, h)]
        for i in range(2):  # coarser scale i+1 → scale i (upsample ×2), finer scale i → scale i+1
            up = F.interpolate(h[i + 1], size=h[i].shape[-2:], mode="bilinear", align_corners=False)
            out[i] = out[i] + self.up[i](up)
            down = self.down[i](h[i])
            out[i + 1] = out[i + 1] + down[..., : out[i + 1].shape[-2], : out[i + 1].shape[-1]]
        return [g * o for g, o in zip(self.gamma, out)]


class CrossScaleCoupling(nn.Module):
    """Parallel GLOW coupling over the three scales (CS-Flow Eq. 2–4, official
    ``parallel_glow_coupling_layer``) with soft clamping ``0.636 α arctan(s/α)``."""

    def __init__(self, channels: int, hidden: int, clamp: float = 3.0, kernel_size: int = 3):
        super().__init__()
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.clamp = clamp
        self.s1 = CrossConvolutions(self.c1, 2 * self.c2, hidden, kernel_size)
        self.s2 = CrossConvolutions(self.c2, 2 * self.c1, hidden, kernel_size)

    def log_e(self, s: torch.Tensor) -> torch.Tensor:
        return self.clamp * 0.636 * torch.atan(s / self.clamp)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``xs`` → ``(ys, log|det J|)`` with ``log|det J|`` of shape ``[B]`` summed over scales."""
        x1 = [x[:, : self.c1] for x in xs]
        x2 = [x[:, self.c1 :] for x in xs]
        r2 = self.s2(x2)
        y1, logdet = [], 0.0
        for a, r in zip(x1, r2):
            s, t = r[:, : self.c1], r[:, self.c1 :]
            ls = self.log_e(s)
            y1.append(a * torch.exp(ls) + t)
            logdet = logdet + ls.flatten(1).sum(1)
        r1 = self.s1(y1)
        y2 = []
        for b, r in zip(x2, r1):
            s, t = r[:, : self.c2], r[:, self.c2 :]
            ls = self.log_e(s)
            y2.append(b * torch.exp(ls) + t)
            logdet = logdet + ls.flatten(1).sum(1)
        return [torch.cat([a, b], 1) for a, b in zip(y1, y2)], logdet  # type: ignore[return-value]


class CrossScaleFlow(nn.Module):
    """``n_blocks`` × (fixed channel permutation → :class:`CrossScaleCoupling`).

    ``kernel_sizes``: the cross-convolutions' kernel per block; default as the official code
    (``kernel_sizes = [3] * (n_coupling_blocks - 1) + [5]``): 3×3, and 5×5 in the last block.
    """

    def __init__(self, channels: int, hidden: int, n_blocks: int = 4, clamp: float = 3.0, seed: int = 0,
                 kernel_sizes: Sequence[int] | None = None):
        super().__init__()
        kernel_sizes = official_kernel_sizes(n_blocks) if kernel_sizes is None else list(kernel_sizes)
        if len(kernel_sizes) != n_blocks or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ConfigError(f"CSFlow: kernel_sizes {kernel_sizes} must be {n_blocks} odd sizes, one per block")
        gen = np.random.default_rng(seed)
        for k in range(n_blocks):
            self.register_buffer(f"perm{k}", torch.from_numpy(gen.permutation(channels)).long())
        self.blocks = nn.ModuleList(CrossScaleCoupling(channels, hidden, clamp, k) for k in kernel_sizes)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        logdet = torch.zeros(xs[0].shape[0], device=xs[0].device)
        ys = list(xs)
        for k, block in enumerate(self.blocks):
            perm = getattr(self, f"perm{k}")
            ys, ld = block([y[:, perm] for y in ys])
            logdet = logdet + ld
        return ys, logdet


def official_kernel_sizes(n_blocks: int) -> list[int]:
    """The official code's kernel sizes: 3×3 in every block but the last, 5×5 there."""
    return [3] * (n_blocks - 1) + [5]


def nll_loss(zs: Sequence[torch.Tensor], logdet: torch.Tensor) -> torch.Tensor:
    """CS-Flow Eq. 5: ``mean_batch(½‖z‖² − log|det J|) / D``."""
    z = torch.cat([z.flatten(1) for z in zs], dim=1)
    return torch.mean(0.5 * z.pow(2).sum(1) - logdet) / z.shape[1]


@register_model("csflow")
class CSFlow(Detector):
    """CS-Flow: a fully convolutional cross-scale normalizing flow on three-scale features.

    ``history["loss"]``: the per-epoch mean of Eq. 5; after :meth:`set_monitor`, also the image
    AUROC on the monitored set (``monitor_auroc``).
    """

    default_image_size = 256

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layer: int = 3,
        hidden: int = 1024,
        n_blocks: int = 4,
        clamp: float = 3.0,
        kernel_sizes: Sequence[int] | None = None,
        max_grad_norm: float | None = 1.0,
        epochs: int = 240,
        lr: float = 2e-4,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 16,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        if epochs < 1 or hidden < 1 or n_blocks < 1 or not lr > 0 or not clamp > 0:
            raise ConfigError(
                f"CSFlow: need epochs, hidden, n_blocks >= 1 and lr, clamp > 0; got epochs={epochs}, "
                f"hidden={hidden}, n_blocks={n_blocks}, lr={lr}, clamp={clamp}"
            )
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ConfigError(f"CSFlow: max_grad_norm must be > 0 or None, got {max_grad_norm}")
        kernel_sizes = official_kernel_sizes(n_blocks) if kernel_sizes is None else [int(k) for k in kernel_sizes]
        self.config.update(backbone=backbone, layer=layer, hidden=hidden, n_blocks=n_blocks, clamp=clamp,
                           kernel_sizes=kernel_sizes, max_grad_norm=max_grad_norm, epochs=epochs, lr=lr,
                           verbose=verbose)
        self.verbose = verbose
        self.extractor = load_backbone(backbone, (layer,), self.device)
        channels = self.extractor.channels[0]
        stride = self.extractor.strides[0]
        if self.image_size % (4 * stride):
            raise ConfigError(
                f"CSFlow: image_size {self.image_size} must be a multiple of {4 * stride} so that the three "
                f"feature grids (stride {stride} at scales 1, 1/2, 1/4) halve exactly"
            )
        torch.manual_seed(seed)
        self.flow = CrossScaleFlow(channels, hidden, n_blocks, clamp, seed, kernel_sizes).to(self.device)
        self.mean = torch.zeros(channels)
        self.std = torch.ones(channels)
        self._monitor: tuple[list[np.ndarray], np.ndarray] | None = None

    @torch.no_grad()
    def extract(self, images: list[np.ndarray]) -> list[torch.Tensor]:
        """Standardised features at the three scales, ``[N, C, h/2^k, w/2^k]`` for k = 0, 1, 2."""
        out: list[list[torch.Tensor]] = [[] for _ in range(N_SCALES)]
        s = self.image_size
        for i in range(0, len(images), self.batch_size):
            x = images_to_tensor(images[i : i + self.batch_size], s).to(self.device)
            for k in range(N_SCALES):
                xk = x if k == 0 else F.interpolate(x, size=(s >> k, s >> k), mode="bilinear",
                                                    align_corners=False, antialias=True)
                out[k].append(self.extractor(xk)[0])
        feats = [torch.cat(o) for o in out]
        m, sd = self.mean.to(self.device).view(1, -1, 1, 1), self.std.to(self.device).view(1, -1, 1, 1)
        return [(f - m) / sd for f in feats]

    def set_monitor(self, images: Any, labels: Sequence[int]) -> CSFlow:
        """Record the image AUROC on ``images`` after every epoch (``history["monitor_auroc"]``)."""
        from ..data.base import as_image_list

        imgs = as_image_list(images)
        lab = np.asarray(labels).astype(int)
        if len(lab) != len(imgs) or lab.min() == lab.max():
            raise ConfigError("set_monitor needs one label per image and both classes (0 and 1)")
        self._monitor = (imgs, lab)
        return self

    @torch.no_grad()
    def _score(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.flow.eval()
        scores, maps = [], []
        s = self.image_size
        for i in range(0, feats[0].shape[0], 32):
            zs, _ = self.flow([f[i : i + 32] for f in feats])
            z_all = torch.cat([z.flatten(1) for z in zs], 1)
            scores.append(z_all.pow(2).mean(1))
            per_scale = [
                F.interpolate(z.pow(2).mean(1, keepdim=True), size=(s, s), mode="bilinear", align_corners=False)
                for z in zs
            ]
            maps.append(torch.cat(per_scale, 1).mean(1))
        return torch.cat(scores), torch.cat(maps)

    def _fit(self, images: list[np.ndarray]) -> None:
        if len(images) < 2:
            raise TrainingError(f"CSFlow needs at least 2 training images, got {len(images)}")
        self.mean = torch.zeros(self.flow.perm0.numel())
        self.std = torch.ones_like(self.mean)
        raw = self.extract(images)
        cat = torch.cat([f.permute(1, 0, 2, 3).flatten(1) for f in raw], 1)
        self.mean = cat.mean(1).cpu()
        self.std = cat.std(1).clamp_min(1e-6).cpu()
        m, sd = self.mean.to(self.device).view(1, -1, 1, 1), self.std.to(self.device).view(1, -1, 1, 1)
        feats = [(f - m) / sd for f in raw]
        mon = None
        if self._monitor is not None:
            mon = (self.extract(self._monitor[0]), self._monitor[1])
        opt = torch.optim.Adam(self.flow.parameters(), lr=self.config["lr"], eps=1e-4, weight_decay=1e-5)
        gen = torch.Generator().manual_seed(self.seed)
        n = len(images)
        bs = max(1, min(self.batch_size, n))
        for epoch in tqdm(range(self.config["epochs"]), desc="CSFlow training", disable=not self.verbose):
            self.flow.train()
            perm = torch.randperm(n, generator=gen)
            losses = []
            for i in range(0, n, bs):
                idx = perm[i : i + bs].to(self.device)
                zs, logdet = self.flow([f[idx] for f in feats])
                loss = nll_loss(zs, logdet)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.config["max_grad_norm"] is not None:  # official code: clip_grad_norm_(…, 1)
                    torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.config["max_grad_norm"])
                opt.step()
                losses.append(check_loss(loss.detach(), f"epoch {epoch}", "CSFlow"))
            self.history.setdefault("loss", []).append(float(np.mean(losses)))
            if mon is not None:
                from ..metrics import image_auroc

                s, _ = self._score(mon[0])
                self.history.setdefault("monitor_auroc", []).append(image_auroc(mon[1], s.cpu().numpy()))
        self.flow.eval()

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._score(self.extract(images))

    def _get_state(self) -> dict[str, Any]:
        return {
            "flow": {k: v.cpu() for k, v in self.flow.state_dict().items()},
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.flow.load_state_dict(state["flow"])
        self.mean = state["mean"].float()
        self.std = state["std"].float()
        self.flow.eval()
