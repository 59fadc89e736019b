"""The MIAD auto-encoder baseline: an MVTec-AD-style reconstruction auto-encoder with a U-Net backbone.

Bergmann et al. (MVTec AD, CVPR 2019, Sec. 4.2) train a convolutional auto-encoder on normal images
only, with the per-pixel L2 loss or the SSIM loss, and segment anomalies from the residual map
between an image ``x`` and its reconstruction ``x̂``:

* ``L2``:   ``r(p) = ‖x(p) − x̂(p)‖²`` (squared error summed over channels),
* ``SSIM``: ``r(p) = 1 − SSIM(x, x̂)(p)`` (Wang et al. 2004, Eq. 13, 11×11 window; averaged over
  channels; :func:`iadlib.losses.ssim`).

MIAD (appendix A.2.5) keeps that setting but replaces the plain stack of convolutions by "a
modified U-Net" (Ronneberger et al., MICCAI 2015): RGB inputs normalised with mean 0.5 and std 0.5,
256×256 px, no augmentation, 100 epochs, batch 16, Adam lr 1e-4 with weight decay 5e-4.

**The modification.** A U-Net's skip connections copy encoder features to the decoder at every
resolution; at full (and half) resolution they let the network learn the identity, so an anomaly
is reconstructed as faithfully as normal texture and its residual vanishes. Here the skips are
*cut at every fine level*: only the ``skips`` deepest levels above the bottleneck (default 1: the
level at stride ``2^(depth−1)``, i.e. 16 px at depth 5) pass features across, and each skip is
squeezed through a 1×1 convolution to ``skip_channels`` channels (an information bottleneck of its
own). The decoder therefore receives the coarse layout (where the bricks or cell fingers are, which
keeps reconstructions sharper than the MVTec AE's ``d = 100`` vector bottleneck), while every
detail finer than that stride must be *regenerated* from what the normal training images taught
it — which is what makes the residual of a defect large. ``skips=0`` gives a plain convolutional
auto-encoder; ``skips=depth`` is refused (it would include the full-resolution copy path).

The image score is the maximum of the residual map after Gaussian smoothing (σ = 4 px at 256 px):
MVTec AD thresholds residual maps to segment, and "some pixel above the threshold" ranks images
by this maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.base import as_image_list
from ..errors import ConfigError, DatasetError
from ..losses import ssim
from . import register_model
from .base import Detector, check_loss, gaussian_blur, images_to_tensor

__all__ = ["UNetAE", "UNetAutoEncoder"]

LOSSES = ("l2", "ssim")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    """U-Net's two 3×3 convolutions, here with BatchNorm and LeakyReLU(0.2) as in the MVTec AE."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2, inplace=True),
    )


class UNetAutoEncoder(nn.Module):
    """U-Net auto-encoder with skips only at the ``skips`` coarsest levels (see the module docstring).

    Encoder level ``l`` (``0…depth``) works at stride ``2^l`` with ``width · 2^min(l, 3)`` channels;
    level ``depth`` is squeezed by 1×1 convolutions to ``latent`` channels and back (the bottleneck).
    The decoder mirrors the encoder (bilinear ×2 up-sampling + double conv) and ends with a 1×1
    convolution and ``tanh`` (inputs live in [−1, 1] after the mean/std 0.5 normalisation).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        depth: int = 5,
        latent: int = 32,
        skips: int = 1,
        skip_channels: int = 8,
    ):
        super().__init__()
        if depth < 1:
            raise ConfigError(f"unet_ae: depth must be >= 1, got {depth}")
        if not 0 <= skips < depth:
            raise ConfigError(
                f"unet_ae: skips={skips} must lie in 0..{depth - 1} (depth − 1); skips at the "
                "full-resolution level would let the network copy its input"
            )
        self.depth = depth
        ch = [width * 2 ** min(level, 3) for level in range(depth + 1)]
        self.enc = nn.ModuleList([_double_conv(in_channels, ch[0])])
        self.enc.extend(_double_conv(ch[level - 1], ch[level]) for level in range(1, depth + 1))
        self.squeeze = nn.Sequential(
            nn.Conv2d(ch[depth], latent, 1), nn.BatchNorm2d(latent), nn.LeakyReLU(0.2, inplace=True)
        )
        self.expand = nn.Sequential(
            nn.Conv2d(latent, ch[depth], 1), nn.BatchNorm2d(ch[depth]), nn.LeakyReLU(0.2, inplace=True)
        )
        #: encoder levels whose features cross to the decoder (never level 0)
        self.skip_levels = list(range(depth - skips, depth))
        self.skip_proj = nn.ModuleDict(
            {str(level): nn.Conv2d(ch[level], skip_channels, 1) for level in self.skip_levels}
        )
        self.dec = nn.ModuleList()
        for level in range(depth - 1, -1, -1):
            extra = skip_channels if level in self.skip_levels else 0
            self.dec.append(_double_conv(ch[level + 1] + extra, ch[level]))
        self.out = nn.Conv2d(ch[0], in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for level, blk in enumerate(self.enc):
            x = blk(x if level == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        x = self.expand(self.squeeze(x))
        for i, level in enumerate(range(self.depth - 1, -1, -1)):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if level in self.skip_levels:
                x = torch.cat([x, self.skip_proj[str(level)](feats[level])], dim=1)
            x = self.dec[i](x)
        return torch.tanh(self.out(x))


@register_model("unet_ae")
class UNetAE(Detector):
    """MIAD's auto-encoder baseline (MVTec AD AE with a modified U-Net; see the module docstring)."""

    default_image_size = 256

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 16,
        epochs: int = 100,
        lr: float = 1e-4,
        weight_decay: float = 5e-4,
        width: int = 32,
        depth: int = 5,
        latent: int = 32,
        skips: int = 1,
        skip_channels: int = 8,
        loss: str = "l2",
        residual: str | None = None,
        score_sigma: float | None = None,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        if loss not in LOSSES:
            raise ConfigError(f"unet_ae: loss={loss!r}; valid: {', '.join(LOSSES)}")
        residual = residual or loss
        if residual not in LOSSES:
            raise ConfigError(f"unet_ae: residual={residual!r}; valid: {', '.join(LOSSES)}")
        if self.image_size % 2**depth:
            raise ConfigError(
                f"unet_ae: image_size {self.image_size} must be a multiple of 2^depth = {2**depth}"
            )
        for name, val in {"epochs": epochs, "width": width, "latent": latent, "skip_channels": skip_channels,
                          "batch_size": batch_size}.items():  # fmt: skip
            if int(val) < 1:
                raise ConfigError(f"unet_ae: {name} must be >= 1, got {val}")
        if lr <= 0 or weight_decay < 0:
            raise ConfigError(f"unet_ae: need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        if score_sigma is None:
            score_sigma = 4.0 * self.image_size / 256
        self.config.update(
            epochs=int(epochs), lr=float(lr), weight_decay=float(weight_decay), width=int(width),
            depth=int(depth), latent=int(latent), skips=int(skips), skip_channels=int(skip_channels),
            loss=loss, residual=residual, score_sigma=float(score_sigma), verbose=verbose,
        )  # fmt: skip
        self.net = UNetAutoEncoder(3, int(width), int(depth), int(latent), int(skips), int(skip_channels))
        self.net.to(self.device)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """[0, 1] → [−1, 1]: mean 0.5, std 0.5 per channel (MIAD A.2.5)."""
        return (x - 0.5) / 0.5

    def _batch(self, images: list[np.ndarray]) -> torch.Tensor:
        return self.normalise(images_to_tensor(images, self.image_size).to(self.device))

    def _loss(self, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.config["loss"] == "l2":
            return F.mse_loss(rec, x)
        return 1.0 - ssim(rec, x, data_range=2.0)

    def residual_map(self, rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel residual ``[N,H,W]``: squared L2 over channels, or ``1 − SSIM`` (MVTec AD Sec. 4.2)."""
        if self.config["residual"] == "l2":
            return (rec - x).pow(2).sum(dim=1)
        return 1.0 - ssim(rec, x, data_range=2.0, reduction="none")

    def _fit(self, images: list[np.ndarray]) -> None:
        cfg = self.config
        data = (images_to_tensor(images, self.image_size) * 255).round_().to(torch.uint8)
        n = len(data)
        if n < 2:
            raise DatasetError(f"unet_ae: got {n} training image; BatchNorm training needs at least 2")
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        gen = torch.Generator().manual_seed(self.seed)
        bs = min(self.batch_size, n)
        self.history = {"loss": []}
        self.net.train()
        bar = tqdm(range(cfg["epochs"]), desc="unet_ae", disable=not cfg["verbose"])
        step = 0
        for epoch in bar:
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for i in range(0, n - bs + 1, bs):  # drop the last incomplete batch (BatchNorm)
                x = self.normalise(data[order[i : i + bs]].to(self.device).float() / 255.0)
                loss = self._loss(self.net(x), x)
                check_loss(loss.detach(), f"{epoch}:{step}", "unet_ae")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(x)
                count += len(x)
                step += 1
            self.history["loss"].append(total / max(1, count))
            bar.set_postfix(loss=f"{self.history['loss'][-1]:.4f}")
        self.net.eval()

    @torch.no_grad()
    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        maps = []
        for i in range(0, len(images), self.batch_size):
            x = self._batch(images[i : i + self.batch_size])
            maps.append(self.residual_map(self.net(x), x).cpu())
        res = torch.cat(maps)
        smooth = gaussian_blur(res, self.config["score_sigma"])
        return smooth.amax(dim=(1, 2)), res

    @torch.no_grad()
    def reconstruct(self, images: Any) -> np.ndarray:
        """Reconstructions ``x̂`` as uint8 ``[N,S,S,3]`` in image space (for figures)."""
        if not self.fitted:
            raise RuntimeError("unet_ae: call fit() (or load()) before reconstruct()")
        self.net.eval()
        imgs = as_image_list(images)
        out = []
        for i in range(0, len(imgs), self.batch_size):
            x = self._batch(imgs[i : i + self.batch_size])
            out.append(((self.net(x) + 1) * 127.5).clamp(0, 255).round().byte().permute(0, 2, 3, 1).cpu())
        return torch.cat(out).numpy()

    def _get_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net.eval()
