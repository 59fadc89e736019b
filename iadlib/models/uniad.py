"""UniAD (You et al., NeurIPS 2022): a unified model for multi-class anomaly detection; MIAD A.2.6.

*One* model is trained on the normal images of **all** categories together and reconstructs the
backbone's features with a transformer; the reconstruction error is the anomaly map. Three devices
keep the transformer from learning an identity shortcut (which would reconstruct anomalies too):

* **Features** (the MFCN neck of the official code): stages 1–4 of a frozen EfficientNet-b4 (strides
  2/4/8/16, 24+32+56+160 = 272 channels in the paper; ``efficientnet_lite0`` stages 0–3,
  16+24+40+112 = 192 channels, stand in here) are resized bilinearly to the stride-16 grid and
  concatenated: ``f ∈ R^{C×H×W}``, one token per cell, ``C → d`` by a linear input projection,
  plus a learnt positional embedding.
* **Feature jittering** (§3.3): during training every input token gets noise
  ``ε ~ N(0, (α‖f‖/C)²)`` with ``α = 20`` (probability ``p = 1``), and the model must reconstruct the
  *clean* features: a denoising task instead of copying.
* **Neighbour-masked attention** (§3.2): in the decoder's two attentions a token may not attend to the
  ``n × n`` neighbourhood of its own position (n = 7 on the 14×14 grid), so it cannot copy itself.
* **Layer-wise query** (§3.2): every decoder layer starts from its *own* learnt query embedding
  ``q_l ∈ R^{HW×d}``, which attends (masked) to the encoder memory, then (masked) to the previous
  decoder layer's output, then an FFN; post-norm residual layers as in the official code.
* **Loss**: ``L = ‖f − f̂‖²₂ / (C H W)`` (MSE of the reconstructed features).
* ``standardize=True`` (not in the paper, off by default) z-scores every channel with the training
  set's mean and standard deviation before reconstruction: the raw features reach magnitudes ~10
  that the output projection needs hundreds of epochs to match; standardised, short CPU schedules
  converge. The anomaly map is then the error in standardised units.
* **Anomaly map**: ``s(h, w) = ‖f(:, h, w) − f̂(:, h, w)‖₂``, up-sampled to the image; image score =
  the maximum of the map average-pooled over one feature cell (16 px at 224 px).

Training follows A.2.6: AdamW, lr 1e-4, weight decay 1e-4, lr × 0.1 after 80 % of the epochs (400 of
500), 224×224 inputs, no augmentation; transformer width 256, 8 heads, FFN 1024, 4 encoder and 4
decoder layers, dropout 0.1 (the official config). ``fit`` also takes several categories at once:
a mapping ``{category: split}`` or a list of splits / datasets (their training splits).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..data.base import ADDataset, Split, as_image_list
from ..errors import ConfigError, DatasetError
from . import register_model
from .base import Detector, check_loss, iter_batches

#: Cache the backbone features of the training set when they take at most this many bytes.
CACHE_LIMIT_BYTES = 2 * 2**30


def neighbor_mask(h: int, w: int, size: int) -> torch.Tensor:
    """Bool ``[HW, HW]`` attention mask, True (= may not attend) inside the ``size × size`` neighbourhood."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    r = size // 2
    return ((ys[:, None] - ys[None, :]).abs() <= r) & ((xs[:, None] - xs[None, :]).abs() <= r)


def feature_jitter(tokens: torch.Tensor, scale: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """§3.3: ``f + ε``, ``ε ~ N(0, (scale·‖f‖₂/C)²)`` per token (``tokens``: ``[B, L, C]``)."""
    sigma = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1] * scale
    noise = torch.randn(tokens.shape, generator=gen, device="cpu").to(tokens.device, tokens.dtype)
    return tokens + noise * sigma


class LearnedPositionEmbedding(nn.Module):
    """``pos(h, w) = [col_w, row_h]``: learnt row and column embeddings of ``d/2`` each (official code)."""

    def __init__(self, h: int, w: int, dim: int):
        super().__init__()
        self.h, self.w = h, w
        self.row = nn.Embedding(h, dim // 2)
        self.col = nn.Embedding(w, dim - dim // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)

    def forward(self) -> torch.Tensor:
        col = self.col.weight[None].expand(self.h, -1, -1)
        row = self.row.weight[:, None].expand(-1, self.w, -1)
        return torch.cat([col, row], dim=-1).flatten(0, 1)  # [HW, d]


class EncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; queries and keys carry the positional embedding."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ff, dim)
        )
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.drop1(self.attn(qk, qk, x, attn_mask=mask, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ff(x)))


class LayerwiseQueryDecoderLayer(nn.Module):
    """Decoder layer with its own learnt query ``q_l``: ``q_l`` → masked attention to the encoder
    memory → masked attention to the previous layer's output → FFN (post-norm residuals)."""

    def __init__(self, tokens: int, dim: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.query = nn.Embedding(tokens, dim)
        self.attn_memory = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_prev = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(ff, dim)
        )
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self, prev: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        q = self.query.weight[None].expand(memory.shape[0], -1, -1)
        t = self.attn_memory(q + pos, memory + pos, memory, attn_mask=mask, need_weights=False)[0]
        q = self.norm1(q + self.drop1(t))
        t = self.attn_prev(q + pos, prev + pos, prev, attn_mask=mask, need_weights=False)[0]
        q = self.norm2(q + self.drop2(t))
        return self.norm3(q + self.drop3(self.ff(q)))


class UniADNet(nn.Module):
    """Feature-reconstruction transformer: input projection, encoder, layer-wise-query decoder, output
    projection. ``forward(f)`` takes clean features ``[B,C,H,W]`` and returns their reconstruction."""

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        hidden_dim: int = 256,
        heads: int = 8,
        ff_dim: int = 1024,
        enc_layers: int = 4,
        dec_layers: int = 4,
        dropout: float = 0.1,
        neighbor_size: int = 7,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
    ):
        super().__init__()
        h, w = grid
        self.jitter_scale, self.jitter_prob = jitter_scale, jitter_prob
        self.input_proj = nn.Linear(channels, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, channels)
        self.pos = LearnedPositionEmbedding(h, w, hidden_dim)
        self.encoder = nn.ModuleList(
            EncoderLayer(hidden_dim, heads, ff_dim, dropout) for _ in range(enc_layers)
        )
        self.decoder = nn.ModuleList(
            LayerwiseQueryDecoderLayer(h * w, hidden_dim, heads, ff_dim, dropout) for _ in range(dec_layers)
        )
        self.register_buffer("mask", neighbor_mask(h, w, neighbor_size) if neighbor_size > 0 else None)
        # per-channel feature standardisation (identity unless `standardize`; see UniAD.__init__)
        self.register_buffer("feat_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feat_std", torch.ones(1, channels, 1, 1))
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("pos."):
                nn.init.xavier_uniform_(p)

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """The reconstruction target: ``(f − μ) / σ`` per channel (identity by default)."""
        return (feats - self.feat_mean) / self.feat_std

    def forward(self, feats: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruct standardised features ``[B,C,H,W]`` (jittered in training) from their tokens."""
        b, c, h, w = feats.shape
        tokens = feats.flatten(2).transpose(1, 2)  # [B, HW, C]
        if self.training and self.jitter_scale > 0:
            if self.jitter_prob >= 1 or float(torch.rand((), generator=gen)) <= self.jitter_prob:
                tokens = feature_jitter(tokens, self.jitter_scale, gen)
        x = self.input_proj(tokens)
        pos = self.pos()[None]
        for layer in self.encoder:
            x = layer(x, pos, None)
        memory, out = x, x
        for layer in self.decoder:
            out = layer(out, memory, pos, self.mask)
        return self.output_proj(out).transpose(1, 2).reshape(b, c, h, w)


def merge_training_sets(train: Any) -> list[np.ndarray]:
    """Images of one or several training sets: a split / array, ``{category: split}`` or a list of splits
    or :class:`ADDataset` s (their ``.train``) → one list (UniAD's unified, multi-class training)."""
    if isinstance(train, ADDataset):
        return as_image_list(train.train)
    if isinstance(train, Mapping):
        parts = list(train.values())
    elif isinstance(train, (list, tuple)) and train and all(isinstance(t, (Split, ADDataset)) for t in train):
        parts = list(train)
    else:
        return as_image_list(train)
    if not parts:
        raise DatasetError("uniad: empty collection of training sets")
    images: list[np.ndarray] = []
    for p in parts:
        images.extend(as_image_list(p.train if isinstance(p, ADDataset) else p))
    return images


@register_model("uniad")
class UniAD(Detector):
    """UniAD detector (see the module docstring for the equations)."""

    default_image_size = 224

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 64,
        epochs: int = 500,
        lr: float = 1e-4,
        weight_decay: float = 1e-4,
        lr_drop: float = 0.8,
        backbone: str = "efficientnet_lite0",
        layers: Sequence[int] = (0, 1, 2, 3),
        weights: str | None = None,
        hidden_dim: int = 256,
        heads: int = 8,
        ff_dim: int = 1024,
        enc_layers: int = 4,
        dec_layers: int = 4,
        dropout: float = 0.1,
        neighbor_size: int | None = None,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        standardize: bool = False,
        cache_features: bool | None = None,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        if epochs < 1 or lr <= 0 or not 0 < lr_drop <= 1:
            raise ConfigError(
                f"uniad: need epochs >= 1, lr > 0, 0 < lr_drop <= 1; got {epochs}, {lr}, {lr_drop}"
            )
        if hidden_dim % heads:
            raise ConfigError(f"uniad: hidden_dim={hidden_dim} must be a multiple of heads={heads}")
        layers = tuple(int(i) for i in layers)
        if not layers or list(layers) != sorted(set(layers)):
            raise ConfigError(f"uniad: layers must be increasing stage indices, got {layers}")
        self.backbone = load_backbone(backbone, layers, self.device, weights=weights)
        with torch.no_grad():
            probe = self.backbone(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))
        channels = sum(int(f.shape[1]) for f in probe)
        self.grid = (int(probe[-1].shape[-2]), int(probe[-1].shape[-1]))
        if neighbor_size is None:  # 7 on the paper's 14×14 grid: half the grid, odd
            neighbor_size = max(1, (min(self.grid) // 2) | 1)
        if neighbor_size >= min(self.grid):
            raise ConfigError(
                f"uniad: neighbor_size={neighbor_size} masks every token of the "
                f"{self.grid[0]}×{self.grid[1]} "
                f"feature grid (image_size={self.image_size}); use a smaller neighbor_size or larger images"
            )
        self.config.update(
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            lr_drop=lr_drop,
            backbone=backbone,
            layers=layers,
            weights=weights,
            hidden_dim=hidden_dim,
            heads=heads,
            ff_dim=ff_dim,
            enc_layers=enc_layers,
            dec_layers=dec_layers,
            dropout=dropout,
            neighbor_size=neighbor_size,
            jitter_scale=jitter_scale,
            jitter_prob=jitter_prob,
            standardize=standardize,
            cache_features=cache_features,
            verbose=verbose,
        )
        with torch.random.fork_rng(devices=[]):  # initial weights from `seed`, global RNG untouched
            torch.manual_seed(seed)
            self.net = UniADNet(
                channels,
                self.grid,
                hidden_dim,
                heads,
                ff_dim,
                enc_layers,
                dec_layers,
                dropout,
                neighbor_size,
                jitter_scale,
                jitter_prob,
            ).to(self.device)

    def fit(self, train: Any) -> UniAD:
        """Fit on normal images of one or several categories (see :func:`merge_training_sets`)."""
        return super().fit(merge_training_sets(train))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """MFCN neck: the stages resized (bilinear, align_corners) to the deepest grid and concatenated."""
        feats = self.backbone(x)
        return torch.cat(
            [
                f
                if f.shape[-2:] == self.grid
                else F.interpolate(f, size=self.grid, mode="bilinear", align_corners=True)
                for f in feats
            ],
            dim=1,
        ).contiguous()

    def _train_batches(self, images: list[np.ndarray], gen: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(len(images), generator=gen)
        bs = self.batch_size
        if self._cache is not None:
            for i in range(0, len(perm), bs):
                yield self._cache[perm[i : i + bs].to(self._cache.device)]
        else:
            order = [images[int(j)] for j in perm]
            for x in iter_batches(order, bs, self.image_size, self.device):
                yield self.features(x)

    def _fit(self, images: list[np.ndarray]) -> None:
        cfg = self.config
        per_image = self.net.input_proj.in_features * self.grid[0] * self.grid[1] * 4
        cache = cfg["cache_features"]
        if cache is None:
            cache = per_image * len(images) <= CACHE_LIMIT_BYTES
        self._cache = None
        if cache:
            self._cache = torch.cat(
                [
                    self.features(x)
                    for x in tqdm(
                        iter_batches(images, self.batch_size, self.image_size, self.device),
                        total=math.ceil(len(images) / self.batch_size),
                        desc="UniAD features",
                        disable=not cfg["verbose"],
                        leave=False,
                    )
                ]
            )
        if cfg["standardize"]:
            self._fit_standardization(images)
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, [max(1, int(round(cfg["lr_drop"] * cfg["epochs"])))], 0.1
        )
        gen = torch.Generator().manual_seed(self.seed)
        self.history["loss"] = []
        self.net.train()
        step = 0
        for epoch in tqdm(range(cfg["epochs"]), desc="uniad", disable=not cfg["verbose"]):
            total, n = 0.0, 0
            for feats in self._train_batches(images, gen):
                feats = self.net.standardize(feats)
                loss = F.mse_loss(self.net(feats, gen), feats)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += check_loss(loss.detach(), f"{step} (epoch {epoch})", self.name) * feats.shape[0]
                n += feats.shape[0]
                step += 1
            sched.step()
            self.history["loss"].append(total / max(n, 1))
        self._cache = None
        self.net.eval()

    @torch.no_grad()
    def _fit_standardization(self, images: list[np.ndarray]) -> None:
        """Per-channel mean and standard deviation of the training features (all cells, all images)."""
        if self._cache is not None:
            batches: Any = self._cache.split(self.batch_size)
        else:
            batches = (
                self.features(x) for x in iter_batches(images, self.batch_size, self.image_size, self.device)
            )
        n, s1, s2 = 0, 0.0, 0.0
        for f in batches:
            f = f.double()
            n += f.shape[0] * f.shape[2] * f.shape[3]
            s1 = s1 + f.sum((0, 2, 3))
            s2 = s2 + f.pow(2).sum((0, 2, 3))
        mean = s1 / n
        std = (s2 / n - mean.pow(2)).clamp_min(0).sqrt()
        self.net.feat_mean.copy_(mean.float().view(1, -1, 1, 1))
        self.net.feat_std.copy_(std.float().clamp_min(1e-3 * float(std.max()) + 1e-8).view(1, -1, 1, 1))

    @torch.no_grad()
    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        self.net.eval()
        size = (self.image_size, self.image_size)
        pool = max(1, round(self.image_size / self.grid[0]))
        scores, maps = [], []
        for x in iter_batches(images, self.batch_size, self.image_size, self.device):
            f = self.net.standardize(self.features(x))
            err = (self.net(f) - f).pow(2).sum(1, keepdim=True).sqrt()
            amap = F.interpolate(err, size=size, mode="bilinear", align_corners=False)
            scores.append(F.avg_pool2d(amap, pool, stride=1).flatten(1).amax(1).cpu())
            maps.append(amap[:, 0].cpu())
        return torch.cat(scores), torch.cat(maps)

    def _get_state(self) -> dict[str, Any]:
        return {"net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.net.eval()
