"""DRAEM — a discriminatively trained reconstruction embedding (Zavrtanik, Kristan & Skočaj, ICCV 2021).

Two networks are trained end to end on normal images with *simulated* anomalies
(:mod:`iadlib.perlin`: Perlin masks filled with augmented texture, DRAEM Eq. 1):

* the **reconstructive sub-network** ``R`` — an encoder–decoder *without* skip connections (five
  encoder blocks, widths ``w, 2w, 4w, 8w, 8w``; ``w = 128`` in the paper) — learns to remove the
  pasted anomaly, ``I_r = R(I_a) ≈ I``, with the loss ``L_rec = L2(I, I_r) + λ L_SSIM(I, I_r)``
  (Eq. 3, ``λ = 1``; :func:`iadlib.losses.ssim_loss`);
* the **discriminative sub-network** ``D`` — a U-Net (six encoder blocks, widths
  ``w_d, 2w_d, 4w_d, 8w_d, 8w_d, 8w_d`` with skip connections; ``w_d = 64``) — sees the
  channel-wise concatenation ``[I_r, I_a]`` and segments the anomaly, ``M_o = D(I_r, I_a)``,
  trained with the focal loss ``L_seg = Focal(M_o, M_a)`` (Lin et al. 2017, γ = 2;
  :func:`iadlib.losses.focal_loss`). The total loss is ``L = L_rec + L_seg`` (Eq. 4).

At test time the pixel map is the anomaly channel of ``softmax(M_o)`` and the image score is
``η = max(M_o^{(1)} ∗ f_{s_f×s_f})``, the maximum of the map after a ``21×21`` mean filter
(Eq. 6; the filter size is scaled with the image size here, 21 px at 256 px).

Training follows MIAD appendix A.2.4: 256×256 inputs, 700 epochs, batch 8, Adam lr 1e-4
multiplied by 0.2 after 80 % and 90 % of the epochs; 3 random augmentations of the anomaly source
out of {posterize, sharpness, solarize, equalize, brightness, colour, auto-contrast}; normal images
rotated by up to ±45°. ``width``/``epochs``/``image_size`` shrink it for CPU profiles; the
skimage texture photos stand in for DTD as anomaly sources.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, DatasetError
from ..losses import focal_loss, ssim_loss
from ..perlin import DEFAULT_TEXTURES, TextureBank, rotate_batch, synthesize_anomalies
from . import register_model
from .base import Detector, check_loss, images_to_tensor

__all__ = ["DRAEM", "DiscriminativeSubNetwork", "ReconstructiveSubNetwork"]


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3×3 conv–BN–ReLU layers (the building block of both DRAEM sub-networks)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _up(cin: int, cout: int) -> nn.Sequential:
    """×2 bilinear upsampling followed by a 3×3 conv–BN–ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _decoder_block(cin: int, cmid: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cmid, 3, padding=1),
        nn.BatchNorm2d(cmid),
        nn.ReLU(inplace=True),
        nn.Conv2d(cmid, cout, 3, padding=1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _init_weights(m: nn.Module) -> None:
    """DRAEM's initialisation: conv weights ~ N(0, 0.02), BN weights ~ N(1, 0.02), BN biases 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ReconstructiveSubNetwork(nn.Module):
    """DRAEM's reconstructive encoder–decoder ``R`` (Sec. 3.1): no skips, stride-16 bottleneck of ``8w``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 128):
        super().__init__()
        w = width
        chans = [w, 2 * w, 4 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList([_block(in_channels, chans[0])])
        self.encoder.extend(_block(chans[i - 1], chans[i]) for i in range(1, 5))
        self.decoder = nn.Sequential(
            _up(8 * w, 8 * w),
            _decoder_block(8 * w, 8 * w, 4 * w),
            _up(4 * w, 4 * w),
            _decoder_block(4 * w, 4 * w, 2 * w),
            _up(2 * w, 2 * w),
            _decoder_block(2 * w, 2 * w, w),
            _up(w, w),
            _decoder_block(w, w, w),
            nn.Conv2d(w, out_channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.encoder):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
        return self.decoder(x)


class DiscriminativeSubNetwork(nn.Module):
    """DRAEM's discriminative U-Net ``D`` (Sec. 3.2): input ``[I_r, I_a]`` (6 channels), 2 logits/pixel."""

    def __init__(self, in_channels: int = 6, out_channels: int = 2, width: int = 64):
        super().__init__()
        w = width
        chans = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.encoder = nn.ModuleList([_block(in_channels, chans[0])])
        self.encoder.extend(_block(chans[i - 1], chans[i]) for i in range(1, 6))
        # decoder: level by level from the bottom, each up-step then a block over [up, skip]
        self.ups = nn.ModuleList(
            [_up(8 * w, 8 * w), _up(8 * w, 4 * w), _up(4 * w, 2 * w), _up(2 * w, w), _up(w, w)]
        )
        self.blocks = nn.ModuleList(
            [
                _decoder_block(8 * w + 8 * w, 8 * w, 8 * w),
                _decoder_block(4 * w + 8 * w, 4 * w, 4 * w),
                _decoder_block(2 * w + 4 * w, 2 * w, 2 * w),
                _decoder_block(w + 2 * w, w, w),
                _decoder_block(w + w, w, w),
            ]
        )
        self.out = nn.Conv2d(w, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for i, blk in enumerate(self.encoder):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        for up, blk, skip in zip(self.ups, self.blocks, reversed(feats[:-1])):
            x = blk(torch.cat([up(x), skip], dim=1))
        return self.out(x)


@register_model("draem")
class DRAEM(Detector):
    """DRAEM detector (see the module docstring for the method and the MIAD settings)."""

    default_image_size = 256

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 8,
        epochs: int = 700,
        lr: float = 1e-4,
        width: int = 128,
        disc_width: int | None = None,
        textures: tuple[str, ...] | list[str] = DEFAULT_TEXTURES,
        grayscale: str | bool = "auto",
        p_anomaly: float = 0.5,
        beta_max: float = 0.8,
        n_augment: int = 3,
        rotate_p: float = 0.3,
        rotate_deg: float = 45.0,
        focal_gamma: float = 2.0,
        score_kernel: int | None = None,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        disc_width = disc_width or max(1, width // 2)
        if self.image_size % 32:
            raise ConfigError(
                f"draem: image_size must be a multiple of 32 (five 2× poolings), got {self.image_size}"
            )
        sizes = {"epochs": epochs, "width": width, "disc_width": disc_width, "batch_size": batch_size}
        for name, val in sizes.items():
            if int(val) < 1:
                raise ConfigError(f"draem: {name} must be >= 1, got {val}")
        if lr <= 0:
            raise ConfigError(f"draem: lr must be positive, got {lr}")
        if grayscale not in ("auto", True, False):
            raise ConfigError(f"draem: grayscale={grayscale!r}; valid: 'auto', True, False")
        if score_kernel is None:
            score_kernel = max(1, int(round(21 * self.image_size / 256)) | 1)
        if score_kernel < 1 or score_kernel % 2 == 0:
            raise ConfigError(f"draem: score_kernel must be a positive odd integer, got {score_kernel}")
        self.config.update(
            epochs=int(epochs),
            lr=float(lr),
            width=int(width),
            disc_width=int(disc_width),
            textures=list(textures),
            grayscale=grayscale,
            p_anomaly=float(p_anomaly),
            beta_max=float(beta_max),
            n_augment=int(n_augment),
            rotate_p=float(rotate_p),
            rotate_deg=float(rotate_deg),
            focal_gamma=float(focal_gamma),
            score_kernel=int(score_kernel),
            verbose=verbose,
        )
        self.reconstructive = ReconstructiveSubNetwork(3, 3, int(width)).to(self.device)
        self.discriminative = DiscriminativeSubNetwork(6, 2, int(disc_width)).to(self.device)
        self.is_grayscale = bool(grayscale) if grayscale != "auto" else False

    # --- training ---------------------------------------------------------------------------
    @staticmethod
    def _looks_grey(images: list[np.ndarray]) -> bool:
        """True when every image is H×W or has three identical channels."""
        for im in images:
            if im.ndim == 3 and not (
                np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 0], im[..., 2])
            ):
                return False
        return True

    def _fit(self, images: list[np.ndarray]) -> None:
        cfg = self.config
        if cfg["grayscale"] == "auto":
            self.is_grayscale = self._looks_grey(images)
        bank = TextureBank(cfg["textures"], grayscale=self.is_grayscale)
        rng = np.random.default_rng(self.seed)
        # normal images resized once, kept as uint8 [N,3,S,S]
        data = (images_to_tensor(images, self.image_size) * 255).round_().to(torch.uint8)
        n = len(data)
        if n < 2:
            raise DatasetError(f"draem: got {n} training image; BatchNorm training needs at least 2")
        self.reconstructive.apply(_init_weights)
        self.discriminative.apply(_init_weights)
        params = list(self.reconstructive.parameters()) + list(self.discriminative.parameters())
        opt = torch.optim.Adam(params, lr=cfg["lr"])
        epochs = cfg["epochs"]
        milestones = sorted({max(1, int(0.8 * epochs)), max(1, int(0.9 * epochs))})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.2)
        self.history = {"loss": [], "l2": [], "ssim": [], "focal": [], "lr": []}
        self.reconstructive.train()
        self.discriminative.train()
        bs = min(self.batch_size, n)
        step = 0
        bar = tqdm(range(epochs), desc="draem", disable=not cfg["verbose"])
        for epoch in bar:
            sums = np.zeros(4)
            n_batches = 0
            order = rng.permutation(n)
            for i in range(0, n - bs + 1, bs):  # drop the last incomplete batch (BatchNorm)
                x = data[order[i : i + bs]].to(self.device).float() / 255.0
                rot = rng.random(bs) < cfg["rotate_p"]
                if rot.any() and cfg["rotate_deg"] > 0:
                    ang = rng.uniform(-cfg["rotate_deg"], cfg["rotate_deg"], bs) * rot
                    x = rotate_batch(x, torch.from_numpy(ang).float())
                x_aug, mask = synthesize_anomalies(
                    x, bank, rng, p_anomaly=cfg["p_anomaly"], beta_max=cfg["beta_max"], n_ops=cfg["n_augment"]
                )
                rec = self.reconstructive(x_aug)
                logits = self.discriminative(torch.cat([rec, x_aug], dim=1))
                l2 = F.mse_loss(rec, x)
                ls = ssim_loss(rec, x)
                lf = focal_loss(logits, mask, gamma=cfg["focal_gamma"])
                loss = l2 + ls + lf
                check_loss(loss.detach(), f"{epoch}:{step}", "draem")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += [float(loss.detach()), float(l2.detach()), float(ls.detach()), float(lf.detach())]
                n_batches += 1
                step += 1
            self.history["lr"].append(float(opt.param_groups[0]["lr"]))  # the rate this epoch used
            sched.step()
            means = sums / max(1, n_batches)
            for k, v in zip(("loss", "l2", "ssim", "focal"), means):
                self.history[k].append(float(v))
            bar.set_postfix(loss=f"{means[0]:.4f}")
        self.reconstructive.eval()
        self.discriminative.eval()

    # --- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.reconstructive(x)
        prob = torch.softmax(self.discriminative(torch.cat([rec, x], dim=1)), dim=1)[:, 1]
        return rec, prob

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        self.reconstructive.eval()
        self.discriminative.eval()
        k = self.config["score_kernel"]
        scores, maps = [], []
        for i in range(0, len(images), self.batch_size):
            x = images_to_tensor(images[i : i + self.batch_size], self.image_size).to(self.device)
            _, prob = self._forward(x)
            smooth = F.avg_pool2d(prob[:, None], k, stride=1, padding=k // 2)  # Eq. 6 mean filter
            scores.append(smooth.amax(dim=(1, 2, 3)).cpu())
            maps.append(prob.cpu())
        return torch.cat(scores), torch.cat(maps)

    @torch.no_grad()
    def reconstruct(self, images: Any) -> np.ndarray:
        """The reconstructive sub-network's output ``I_r`` as uint8 ``[N,S,S,3]`` (for figures)."""
        from ..data.base import as_image_list

        if not self.fitted:
            raise RuntimeError("draem: call fit() (or load()) before reconstruct()")
        self.reconstructive.eval()
        out = []
        imgs = as_image_list(images)
        for i in range(0, len(imgs), self.batch_size):
            x = images_to_tensor(imgs[i : i + self.batch_size], self.image_size).to(self.device)
            out.append(self.reconstructive(x).clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu())
        return torch.cat(out).numpy()

    # --- checkpoint -------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "reconstructive": {k: v.detach().cpu() for k, v in self.reconstructive.state_dict().items()},
            "discriminative": {k: v.detach().cpu() for k, v in self.discriminative.state_dict().items()},
            "is_grayscale": self.is_grayscale,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.reconstructive.load_state_dict(state["reconstructive"])
        self.discriminative.load_state_dict(state["discriminative"])
        self.is_grayscale = bool(state["is_grayscale"])
        self.reconstructive.eval()
        self.discriminative.eval()
