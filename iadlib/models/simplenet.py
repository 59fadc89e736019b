"""SimpleNet (Liu, Zhou, Xu, Wang — *SimpleNet: A Simple Network for Image Anomaly Detection and
Localization*, CVPR 2023).

The method, as in §3 of the paper and its official code:

1. **Feature extractor** (§3.1): a frozen ImageNet backbone; the maps of the chosen stages are made
   *locally aware* as in PatchCore (Roth et al. 2022, Eq. 3–4): every position is the average of its
   ``p × p`` neighbourhood, deeper stages are bilinearly resized to the first stage's grid and the
   stages are concatenated, ``o_{h,w} ∈ R^C``.
2. **Feature adaptor** (§3.2, Eq. 3): a single fully connected layer ``q_{h,w} = G_θ(o_{h,w})``; the
   paper's ablation (Table 5) finds one linear layer best.
3. **Anomalous feature generator** (§3.3, Eq. 4): ``q⁻_{h,w} = q_{h,w} + ε``, ``ε ~ N(0, σ² I)``.
4. **Discriminator** (§3.4): a two-layer MLP ``D_ψ`` (Linear → BatchNorm → LeakyReLU(0.2) → Linear)
   estimating the *normality* of each location.
5. **Loss** (§3.5, Eq. 5–6): the truncated L1 loss
   ``l = max(0, th⁺ − D(q)) + max(0, −th⁻ + D(q⁻))`` with ``th⁺ = th⁻ = 0.5``, averaged over all
   locations of the batch.
6. **Inference** (§3.6, Eq. 7–8): ``s_{h,w} = −D_ψ(q_{h,w})``; the map is bilinearly upsampled to
   the input resolution and smoothed with a Gaussian (σ = 4); the image score is the map's maximum.

Substitutions (named in the book): the backbone is ``efficientnet_lite0`` (stages 2 + 3, 152
channels) instead of WideResNet-50 (layers 2 + 3); because its features live on a different scale,
we divide them by one scalar — the mean per-channel standard deviation of the training features —
so the noise level ``noise_std`` is relative to the feature spread (the paper's σ = 0.015 is in
absolute WideResNet-50 units). The frozen features are extracted once and cached: the original
re-extracts them every epoch, which gives the same numbers because nothing augments the images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..errors import ConfigError, TrainingError
from . import register_model
from .base import Detector, check_loss, gaussian_blur, iter_batches


class PatchFeatures(nn.Module):
    """Locally aware patch features (PatchCore Eq. 3–4, reused by SimpleNet §3.1).

    ``forward(x [B,3,S,S] in [0,1]) -> [B, C, h, w]`` with ``h, w`` the grid of the first layer.
    Each layer is averaged over ``patch_size × patch_size`` neighbourhoods (stride 1, zero-padded
    like the official ``unfold``), resized bilinearly to the first layer's grid and concatenated;
    ``embed_dim`` (optional) averages groups of channels down to that many, as PatchCore's
    ``adaptive_avg_pool1d`` does.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] = (2, 3),
        patch_size: int = 3,
        embed_dim: int | None = None,
        device: str | torch.device = "auto",
    ):
        super().__init__()
        if patch_size < 1 or patch_size % 2 == 0:
            raise ConfigError(f"patch_size must be a positive odd number, got {patch_size}")
        self.backbone = load_backbone(backbone, layers, device)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        layer_channels = sum(self.backbone.channels)
        self.out_channels = embed_dim or layer_channels
        if embed_dim is not None and embed_dim > layer_channels:
            raise ConfigError(
                f"embed_dim={embed_dim} exceeds the {layer_channels} channels of layers {tuple(layers)}"
            )

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)
        size = feats[0].shape[-2:]
        out = []
        for f in feats:
            if self.patch_size > 1:
                f = F.avg_pool2d(f, self.patch_size, stride=1, padding=self.patch_size // 2,
                                 count_include_pad=True)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append(f)
        z = torch.cat(out, dim=1)
        if self.embed_dim is not None and self.embed_dim != z.shape[1]:
            b, c, h, w = z.shape
            z = F.adaptive_avg_pool1d(z.permute(0, 2, 3, 1).reshape(-1, 1, c), self.embed_dim)
            z = z.reshape(b, h, w, self.embed_dim).permute(0, 3, 1, 2)
        return z.contiguous()


class FeatureAdaptor(nn.Module):
    """``G_θ``: one fully connected layer applied at every location (SimpleNet Eq. 3)."""

    def __init__(self, channels: int, out_channels: int | None = None):
        super().__init__()
        self.fc = nn.Linear(channels, out_channels or channels)
        nn.init.xavier_normal_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[M, C]`` patch vectors → ``[M, C']``."""
        return self.fc(x)


class Discriminator(nn.Module):
    """``D_ψ``: two-layer MLP, Linear → BatchNorm1d → LeakyReLU(0.2) → Linear (SimpleNet §3.4).

    Returns the normality score of every patch vector (``[M, C] → [M]``): high for normal features.
    """

    def __init__(self, channels: int, hidden: int = 1024):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1, bias=False),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[:, 0]


def truncated_l1_loss(
    true_scores: torch.Tensor, fake_scores: torch.Tensor, th_pos: float = 0.5, th_neg: float = 0.5
) -> torch.Tensor:
    """SimpleNet Eq. 5–6: ``mean(max(0, th⁺ − D(q))) + mean(max(0, −th⁻ + D(q⁻)))``."""
    return torch.clamp(th_pos - true_scores, min=0).mean() + torch.clamp(fake_scores + th_neg, min=0).mean()


def to_patches(f: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w] → [B·h·w, C]`` (row-major over images, rows, columns)."""
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])


def from_patches(p: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`to_patches` for per-patch values: ``[B·h·w(, C)] → [B, h, w(, C)]``."""
    return p.reshape(b, h, w, *p.shape[1:])


def train_discriminator(
    features: torch.Tensor,
    adaptor: nn.Module,
    discriminator: Discriminator,
    *,
    epochs: int,
    batch_size: int,
    noise_std: float,
    margin: float,
    lr_adaptor: float,
    lr_disc: float,
    seed: int,
    history: dict[str, list[float]],
    name: str,
    monitor: Any = None,
    verbose: bool = False,
    batch_fn: Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> None:
    """SimpleNet's training loop (§3.5, official ``_train_discriminator``) on cached features.

    ``features``: ``[N, C, h, w]`` (the frozen extractor's output for the N training images);
    per step a batch of images contributes all of its ``h·w`` patch vectors; adaptor and
    discriminator are updated jointly (Adam, lr 1e-4 / 2e-4 in the paper; the discriminator with
    weight decay 1e-5 and cosine annealing as in the official code). ``monitor(epoch)`` (optional)
    returns a dict of numbers appended to ``history`` after each epoch (e.g. a held-out AUROC).

    Fakes: by default SimpleNet's ``q⁻ = G_θ(o) + ε``. ``batch_fn(idx, gen) -> (true, fake)``
    (optional) instead returns the adaptor *inputs* of the true and fake patch vectors of the
    images ``idx``, for fakes made before a non-linear cut (the LOCO ensemble's PatchCore member).
    """
    params = [p for p in adaptor.parameters() if p.requires_grad]
    opt_a = torch.optim.Adam(params, lr=lr_adaptor) if params else None
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=lr_disc, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_d, T_max=max(1, epochs), eta_min=lr_disc * 0.4)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = features.shape[0]
    bs = max(1, min(batch_size, n))
    step = 0
    for epoch in tqdm(range(epochs), desc=f"{name} training", disable=not verbose):
        adaptor.train()
        discriminator.train()
        perm = torch.randperm(n, generator=gen)
        losses, p_true, p_fake = [], [], []
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            if len(idx) < 2 and n >= 2:  # BatchNorm needs more than one image's worth of patches
                idx = torch.cat([idx, perm[:1]])
            if batch_fn is None:
                q = adaptor(to_patches(features[idx]))
                eps = torch.randn(q.shape, generator=gen).to(q.device, q.dtype) * noise_std
                q_fake = q + eps
            else:
                true_in, fake_in = batch_fn(idx, gen)
                q, q_fake = adaptor(true_in), adaptor(fake_in)
            scores = discriminator(torch.cat([q, q_fake]))
            s_true, s_fake = scores[: len(q)], scores[len(q) :]
            loss = truncated_l1_loss(s_true, s_fake, margin, margin)
            if opt_a is not None:
                opt_a.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            if opt_a is not None:
                opt_a.step()
            opt_d.step()
            losses.append(check_loss(loss.detach(), f"epoch {epoch} step {step}", name))
            p_true.append(float((s_true.detach() >= margin).float().mean()))
            p_fake.append(float((s_fake.detach() < -margin).float().mean()))
            step += 1
        sched.step()
        history.setdefault("loss", []).append(float(np.mean(losses)))
        history.setdefault("p_true", []).append(float(np.mean(p_true)))
        history.setdefault("p_fake", []).append(float(np.mean(p_fake)))
        if monitor is not None:
            adaptor.eval()
            discriminator.eval()
            for k, v in monitor(epoch).items():
                history.setdefault(k, []).append(float(v))
    adaptor.eval()
    discriminator.eval()


def score_maps(
    patch_scores: torch.Tensor, image_size: int, blur_sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimpleNet Eq. 7–8: upsample ``[B,h,w]`` scores to the input size, smooth, image score = max."""
    maps = F.interpolate(patch_scores[:, None], size=(image_size, image_size), mode="bilinear",
                         align_corners=False)[:, 0]
    maps = gaussian_blur(maps, blur_sigma)
    return maps.flatten(1).amax(dim=1), maps


@register_model("simplenet")
class SimpleNet(Detector):
    """SimpleNet: adapted local features, Gaussian-noise fakes, MLP discriminator (see module doc).

    ``score = max`` of the smoothed map ``−D_ψ(G_θ(o))``. ``history``: per-epoch ``loss``,
    ``p_true``/``p_fake`` (fraction of true/fake patches beyond the margin) and, after
    :meth:`set_monitor`, the image AUROC on a monitored set (``monitor_auroc``).
    """

    default_image_size = 256

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] = (2, 3),
        patch_size: int = 3,
        embed_dim: int | None = None,
        hidden: int = 1024,
        noise_std: float = 0.5,
        margin: float = 0.5,
        epochs: int = 40,
        lr_adaptor: float = 1e-4,
        lr_disc: float = 2e-4,
        blur_sigma: float = 4.0,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 8,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        for key, val in (("noise_std", noise_std), ("margin", margin), ("lr_adaptor", lr_adaptor),
                         ("lr_disc", lr_disc), ("hidden", hidden)):
            if not val > 0:
                raise ConfigError(f"SimpleNet: {key} must be > 0, got {val}")
        if epochs < 1:
            raise ConfigError(f"SimpleNet: epochs must be >= 1, got {epochs}")
        self.config.update(
            backbone=backbone, layers=list(layers), patch_size=patch_size, embed_dim=embed_dim, hidden=hidden,
            noise_std=noise_std, margin=margin, epochs=epochs, lr_adaptor=lr_adaptor, lr_disc=lr_disc,
            blur_sigma=blur_sigma, verbose=verbose,
        )
        self.verbose = verbose
        self.extractor = PatchFeatures(backbone, layers, patch_size, embed_dim, self.device)
        c = self.extractor.out_channels
        torch.manual_seed(seed)
        self.adaptor = FeatureAdaptor(c).to(self.device)
        self.discriminator = Discriminator(c, hidden).to(self.device)
        self.feature_scale = 1.0
        self._monitor: tuple[list[np.ndarray], np.ndarray] | None = None

    # --- features -----------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, images: list[np.ndarray]) -> torch.Tensor:
        """Frozen, rescaled local features ``[N, C, h, w]`` of uint8 images (before the adaptor)."""
        out = [self.extractor(x) for x in iter_batches(images, self.batch_size, self.image_size, self.device)]
        return torch.cat(out) * self.feature_scale

    @torch.no_grad()
    def adapted(self, features: torch.Tensor) -> torch.Tensor:
        """The feature stage where the LOCO ensemble cuts SimpleNet: ``G_θ(o)`` as ``[N, C, h, w]``."""
        b, _, h, w = features.shape
        q = self.adaptor(to_patches(features))
        return from_patches(q, b, h, w).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def patch_scores(self, features: torch.Tensor) -> torch.Tensor:
        """``s = −D_ψ(G_θ(o))`` per location, ``[N, h, w]`` (chunked to bound memory)."""
        b, _, h, w = features.shape
        out = []
        for i in range(0, b, 64):
            f = features[i : i + 64]
            out.append(-self.discriminator(self.adaptor(to_patches(f))).reshape(f.shape[0], h, w))
        return torch.cat(out)

    def set_monitor(self, images: Any, labels: Sequence[int]) -> SimpleNet:
        """Record the image AUROC on ``images`` after every epoch (``history["monitor_auroc"]``)."""
        from ..data.base import as_image_list

        imgs = as_image_list(images)
        lab = np.asarray(labels).astype(int)
        if len(lab) != len(imgs) or lab.min() == lab.max():
            raise ConfigError("set_monitor needs one label per image and both classes (0 and 1)")
        self._monitor = (imgs, lab)
        return self

    # --- protocol -----------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray]) -> None:
        if len(images) < 2:
            raise TrainingError(f"SimpleNet needs at least 2 training images, got {len(images)}")
        self.feature_scale = 1.0
        feats = self.extract(images)
        std = float(feats.std(dim=(0, 2, 3)).mean())
        if not np.isfinite(std) or std <= 0:
            raise TrainingError(
                f"SimpleNet: training features are constant (channel std {std}); check the images"
            )
        self.feature_scale = 1.0 / std
        feats = feats * self.feature_scale
        monitor = None
        if self._monitor is not None:
            from ..metrics import image_auroc

            m_feats = self.extract(self._monitor[0])
            m_lab = self._monitor[1]
            size, sigma = self.image_size, self.config["blur_sigma"]

            def monitor(epoch: int) -> dict[str, float]:
                s, _ = score_maps(self.patch_scores(m_feats), size, sigma)
                return {"monitor_auroc": image_auroc(m_lab, s.cpu().numpy())}

        cfg = self.config
        train_discriminator(
            feats, self.adaptor, self.discriminator, epochs=cfg["epochs"], batch_size=self.batch_size,
            noise_std=cfg["noise_std"], margin=cfg["margin"], lr_adaptor=cfg["lr_adaptor"],
            lr_disc=cfg["lr_disc"],
            seed=self.seed, history=self.history, name="SimpleNet", monitor=monitor, verbose=self.verbose,
        )

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        self.adaptor.eval()
        self.discriminator.eval()
        s = self.patch_scores(self.extract(images))
        return score_maps(s, self.image_size, self.config["blur_sigma"])

    def _get_state(self) -> dict[str, Any]:
        return {
            "adaptor": {k: v.cpu() for k, v in self.adaptor.state_dict().items()},
            "discriminator": {k: v.cpu() for k, v in self.discriminator.state_dict().items()},
            "feature_scale": self.feature_scale,
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.adaptor.load_state_dict(state["adaptor"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.feature_scale = float(state["feature_scale"])
        self.adaptor.eval()
        self.discriminator.eval()
