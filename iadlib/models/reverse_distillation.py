"""Reverse Distillation from a one-class embedding (Deng & Li, CVPR 2022), MIAD appendix A.2.1.

A teacher–student pair in which the student runs *backwards*: the teacher ``E`` is a frozen,
ImageNet-pretrained encoder; the student ``D`` is a decoder that must rebuild the teacher's
multi-scale features from a compact one-class embedding ``φ`` produced by a trainable *one-class
bottleneck embedding* (OCBE). Anomalies, never seen in training, are not carried through the
bottleneck, so the student cannot restore the teacher's features there.

* **Teacher** ``E``: stages ``k = 1..K`` of the backbone (``layers``), features ``f_E^k``
  (WideResNet50 ``layer1..3`` in the paper; ``efficientnet_lite0`` stages 1–3, strides 4/8/16,
  stand in here).
* **OCBE** (paper §3.2): *multi-scale feature fusion* (MFF) brings every ``f_E^k`` to the last
  stage's resolution with stride-2 3×3 conv + BN + ReLU layers and concatenates them; the
  *one-class embedding* (OCE) block, a residual stage with stride 2, compresses the fusion into
  ``φ`` (channels ``embed_dim``, stride twice the last stage's).
* **Student** ``D``: mirrors ``E`` as the official ``de_resnet`` does: per stage, from deep to
  shallow, residual blocks whose first one up-samples inside itself (2×2 transposed convolutions,
  stride 2, on its main path and its shortcut), giving ``f_D^k`` with ``f_E^k``'s channels (the last
  block without its final ReLU: EfficientNet's stage outputs take both signs).
* **Eq. (2)** per-location cosine distance
  ``M^k(h, w) = 1 − f_E^k(h,w)ᵀ f_D^k(h,w) / (‖f_E^k(h,w)‖ ‖f_D^k(h,w)‖)``.
* **Eq. (3)** knowledge-distillation loss ``L_KD = Σ_k 1/(H_k W_k) Σ_{h,w} M^k(h, w)`` (averaged over
  the batch): ``loss="pixel"``. The default, ``loss="flattened"``, is what the official code and
  Anomalib (which A.2.1 ran) optimise: one cosine distance per stage between the flattened maps,
  ``Σ_k 1 − cos(vec f_E^k, vec f_D^k)``; it trains to sharper maps in short schedules here.
* **Eq. (4)** anomaly map ``S_AL = Σ_k Ψ(M^k)`` with ``Ψ`` bilinear up-sampling to the image size,
  smoothed by a Gaussian (σ = 4 px at 256 px); the image score is the map's maximum.

Training follows A.2.1: Adam, lr 0.005, β = (0.5, 0.999), 256×256 inputs, no augmentation. The
teacher is frozen, so its features are computed once and cached (``cache_features``).
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
from ..errors import ConfigError, TrainingError
from . import register_model
from .base import Detector, check_loss, feature_batches, gaussian_blur, iter_batches

#: Cache the teacher features of the training set when they take at most this many bytes.
CACHE_LIMIT_BYTES = 2 * 2**30


def _log2_ratio(big: int, small: int) -> int:
    """Number of factor-2 steps between two feature resolutions (rounded: 50 → 13 is two steps)."""
    return max(0, round(math.log2(big / small)))


class BasicBlock(nn.Module):
    """ResNet basic block ``ReLU(x + BN(conv3×3(ReLU(BN(conv3×3(x))))))`` (optional stride / width change).

    ``relu_out=False`` drops the final ReLU: a student stage's output must be able to match teacher
    features of either sign (EfficientNet stages end in a linear projection, unlike ResNet's ReLU).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, relu_out: bool = True):
        super().__init__()
        self.relu_out = relu_out
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y)) + idt
        return F.relu(y, inplace=True) if self.relu_out else y


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """One-class bottleneck embedding (paper §3.2): multi-scale feature fusion + one-class embedding.

    MFF: stage ``k`` goes through ``log2(s_K / s_k)`` stride-2 3×3 conv + BN + ReLU layers to the last
    stage's resolution and ``c_K`` channels; the results are concatenated (``K · c_K`` channels).
    OCE: ``n_blocks`` residual blocks, the first with stride 2, to ``embed_dim`` channels: ``φ``.
    """

    def __init__(self, channels: Sequence[int], sizes: Sequence[int], embed_dim: int, n_blocks: int = 1):
        super().__init__()
        c_last, s_last = channels[-1], sizes[-1]
        self.mff = nn.ModuleList()
        for c, s in zip(channels, sizes):
            steps = _log2_ratio(s, s_last)
            layers: list[nn.Module] = []
            cin = c
            for i in range(steps):
                cout = c_last if i == steps - 1 else max(c, c_last // 2 ** (steps - 1 - i))
                layers.append(_conv_bn_relu(cin, cout, 2))
                cin = cout
            self.mff.append(nn.Sequential(*layers) if layers else nn.Identity())
        blocks = [BasicBlock(c_last * len(channels), embed_dim, stride=2)]
        blocks += [BasicBlock(embed_dim, embed_dim) for _ in range(n_blocks - 1)]
        self.oce = nn.Sequential(*blocks)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        size = feats[-1].shape[-2:]
        parts = [m(f) for m, f in zip(self.mff, feats)]
        parts = [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear") for p in parts]
        fused = torch.cat(parts, dim=1)
        return self.oce(fused)


class UpBlock(nn.Module):
    """The official decoder's up-sampling residual block (``DeBasicBlock`` of ``de_resnet``):
    ``ReLU(BN(conv3×3(ReLU(BN(deconv(x))))) + BN(deconv'(x)))``, both transposed convolutions with
    kernel = stride = ``factor`` (2 between ResNet stages). Up-sampling happens inside the block, not
    in an extra layer before it."""

    def __init__(self, cin: int, cout: int, factor: int, relu_out: bool = True):
        super().__init__()
        self.relu_out = relu_out
        self.conv1 = nn.ConvTranspose2d(cin, cout, factor, factor, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.up = nn.Sequential(nn.ConvTranspose2d(cin, cout, factor, factor, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y, idt = F.relu(self.bn1(self.conv1(x)), inplace=True), self.up(x)
        if tuple(y.shape[-2:]) != tuple(size):  # odd feature sizes (image sizes not a multiple of 32)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            idt = F.interpolate(idt, size=size, mode="bilinear", align_corners=False)
        y = self.bn2(self.conv2(y)) + idt
        return F.relu(y, inplace=True) if self.relu_out else y


class UpStage(nn.Module):
    """One student stage as a layer of the official ``de_resnet``: ``n_blocks`` residual blocks, the
    first of which up-samples 2^n× (:class:`UpBlock`; a plain block when the resolution stays)."""

    def __init__(self, cin: int, cout: int, factor: int, n_blocks: int):
        super().__init__()
        last = n_blocks == 1
        self.first: nn.Module = (
            UpBlock(cin, cout, factor, relu_out=not last) if factor > 1 else BasicBlock(cin, cout, relu_out=not last)
        )
        self.blocks = nn.Sequential(*[BasicBlock(cout, cout, relu_out=i < n_blocks - 2) for i in range(n_blocks - 1)])

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if isinstance(self.first, UpBlock):
            y = self.first(x, size)
        else:
            y = self.first(x)
            if tuple(y.shape[-2:]) != tuple(size):
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return self.blocks(y)


class StudentDecoder(nn.Module):
    """The student ``D``: mirrors the teacher, from ``φ`` to ``f_D^K``, …, ``f_D^1`` (shallow first)."""

    def __init__(self, channels: Sequence[int], sizes: Sequence[int], embed_dim: int, n_blocks: int = 2):
        super().__init__()
        stages = []
        cin, s_in = embed_dim, max(1, (sizes[-1] + 1) // 2)
        for c, s in zip(reversed(channels), reversed(sizes)):
            stages.append(UpStage(cin, c, 2 ** _log2_ratio(s, s_in), n_blocks))
            cin, s_in = c, s
        self.stages = nn.ModuleList(stages)

    def forward(self, phi: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        out = []
        x = phi
        for stage, size in zip(self.stages, reversed(sizes)):
            x = stage(x, size)
            out.append(x)
        return out[::-1]


class ReverseDistillationNet(nn.Module):
    """OCBE + student decoder (the trainable part); the frozen teacher lives in the detector."""

    def __init__(
        self,
        channels: Sequence[int],
        sizes: Sequence[int],
        embed_dim: int,
        oce_blocks: int = 1,
        decoder_blocks: int = 2,
    ):
        super().__init__()
        self.bottleneck = OCBE(channels, sizes, embed_dim, oce_blocks)
        self.decoder = StudentDecoder(channels, sizes, embed_dim, decoder_blocks)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.bottleneck(feats), [tuple(f.shape[-2:]) for f in feats])


def cosine_distance_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eq. (2): ``M^k = 1 − cos(f_E^k, f_D^k)`` along channels, one ``[B,H_k,W_k]`` map per stage."""
    return [1.0 - F.cosine_similarity(t, s, dim=1, eps=1e-6) for t, s in zip(teacher, student)]


def rd_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], mode: str = "flattened") -> torch.Tensor:
    """Eq. (3) ``L_KD = Σ_k mean_{h,w} M^k`` (batch mean); ``mode="flattened"``: official-code variant."""
    if mode == "pixel":
        return sum(m.mean() for m in cosine_distance_maps(teacher, student))
    return sum(
        (1.0 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1, eps=1e-6)).mean()
        for t, s in zip(teacher, student)
    )


@register_model("reverse_distillation")
class ReverseDistillation(Detector):
    """Reverse Distillation detector (see the module docstring for the equations)."""

    default_image_size = 256

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        epochs: int = 200,
        lr: float = 0.005,
        betas: tuple[float, float] = (0.5, 0.999),
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] = (1, 2, 3),
        weights: str | None = None,
        embed_dim: int | None = None,
        oce_blocks: int = 1,
        decoder_blocks: int = 2,
        loss: str = "flattened",
        sigma: float | None = None,
        cache_features: bool | None = None,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        if loss not in ("pixel", "flattened"):
            raise ConfigError(f"reverse_distillation: loss={loss!r}; valid: 'pixel' (Eq. 3), 'flattened'")
        if epochs < 1 or lr <= 0:
            raise ConfigError(f"reverse_distillation: need epochs >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
        if decoder_blocks < 1 or oce_blocks < 1:
            raise ConfigError(
                f"reverse_distillation: need decoder_blocks >= 1 and oce_blocks >= 1, got {decoder_blocks}, "
                f"{oce_blocks}"
            )
        layers = tuple(int(i) for i in layers)
        if len(layers) < 2 or list(layers) != sorted(set(layers)):
            raise ConfigError(f"reverse_distillation: layers must be >= 2 increasing stage indices, got {layers}")
        self.config.update(
            epochs=epochs,
            lr=lr,
            betas=tuple(betas),
            backbone=backbone,
            layers=layers,
            weights=weights,
            embed_dim=embed_dim,
            oce_blocks=oce_blocks,
            decoder_blocks=decoder_blocks,
            loss=loss,
            sigma=sigma,
            cache_features=cache_features,
            verbose=verbose,
        )
        self.sigma = 4.0 * self.image_size / 256 if sigma is None else float(sigma)
        self.encoder = load_backbone(backbone, layers, self.device, weights=weights)
        with torch.no_grad():
            probe = self.encoder(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))
        channels = [int(f.shape[1]) for f in probe]
        sizes = [int(f.shape[-1]) for f in probe]
        with torch.random.fork_rng(devices=[]):  # initial weights from `seed`, global RNG untouched
            torch.manual_seed(seed)
            self.net = ReverseDistillationNet(
                channels,
                sizes,
                embed_dim or 2 * channels[-1],
                oce_blocks=oce_blocks,
                decoder_blocks=decoder_blocks,
            ).to(self.device)

    # --- teacher features -----------------------------------------------------------------------
    @torch.no_grad()
    def _teacher(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)  # channels_last inside the backbone, outputs contiguous

    def _train_batches(self, images: list[np.ndarray], gen: torch.Generator) -> Iterator[list[torch.Tensor]]:
        """One epoch of shuffled frozen-feature batches (from the cache when it exists)."""
        return feature_batches(
            images, self._teacher, self._cache, self.batch_size, self.image_size, self.device, gen
        )

    def _fit(self, images: list[np.ndarray]) -> None:
        cfg = self.config
        if len(images) < 2:
            raise TrainingError("reverse_distillation: need at least 2 training images (BatchNorm)")
        with torch.no_grad():
            first = self._teacher(next(iter_batches(images[:1], 1, self.image_size, self.device)))
        per_image = sum(f[0].numel() for f in first) * 4
        cache = cfg["cache_features"]
        if cache is None:
            cache = per_image * len(images) <= CACHE_LIMIT_BYTES
        self._cache = None
        if cache:
            chunks = [
                self._teacher(x)
                for x in tqdm(
                    iter_batches(images, self.batch_size, self.image_size, self.device),
                    total=math.ceil(len(images) / self.batch_size),
                    desc="RD teacher features",
                    disable=not cfg["verbose"],
                    leave=False,
                )
            ]
            self._cache = [torch.cat(parts) for parts in zip(*chunks)]
        opt = torch.optim.Adam(self.net.parameters(), lr=cfg["lr"], betas=tuple(cfg["betas"]))
        gen = torch.Generator().manual_seed(self.seed)
        self.history["loss"] = []
        self.net.train()
        step = 0
        for epoch in tqdm(range(cfg["epochs"]), desc="reverse distillation", disable=not cfg["verbose"]):
            total, n = 0.0, 0
            for feats in self._train_batches(images, gen):
                if feats[0].shape[0] < 2:  # BatchNorm needs two samples; drop a last batch of one
                    continue
                loss = rd_loss(feats, self.net(feats), cfg["loss"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += check_loss(loss.detach(), f"{step} (epoch {epoch})", self.name) * feats[0].shape[0]
                n += feats[0].shape[0]
                step += 1
            self.history["loss"].append(total / max(n, 1))
        self._cache = None
        self.net.eval()

    def anomaly_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Eq. (4) for a float batch ``[B,3,S,S]``: the summed up-sampled map and the per-stage maps."""
        feats = self._teacher(x)
        maps = cosine_distance_maps(feats, self.net(feats))
        size = tuple(x.shape[-2:])
        total = sum(F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0] for m in maps)
        return total, maps

    @torch.no_grad()
    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        scores, maps = [], []
        for x in iter_batches(images, self.batch_size, self.image_size, self.device):
            amap, _ = self.anomaly_maps(x)
            amap = gaussian_blur(amap, self.sigma)
            scores.append(amap.flatten(1).amax(1).cpu())
            maps.append(amap.cpu())
        return torch.cat(scores), torch.cat(maps)

    def _get_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net.eval()
