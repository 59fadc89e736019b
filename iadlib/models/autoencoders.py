"""Convolutional autoencoders and the Mixer-AE (Rotondi & Lavalle, *Unsupervised anomaly detection
in industrial image data with autoencoders*).

What lives here, with the paper's numbering:

* :class:`ConvAE` — the CAE of **Table 1** (256 px input, seven 4×4 convolutions 3→16→…→1024, an
  MLP to the latent code ``l_d = 128``, a mirrored ConvTranspose decoder, BatchNorm + LeakyReLU 0.2,
  ``tanh`` output for inputs scaled to (−1, 1)); Eq. 3–5.
* :class:`FullyConvAE` — the fully convolutional variant of **Table 2** (224 px, convolutional
  triplets over ``[3, 64, 128, 256, 512, 1024]``), the base architecture of every row of Table 3.
* :func:`add_noise` — the denoising corruption of **Eq. 7**, ``clamp(x + v·W)``, ``W ~ N(0, 1)``.
* :func:`jacobian_frobenius_sq` — the contractive penalty of **Eq. 8**, ``‖J_E(x)‖_F²``, estimated
  without ever forming ``J``: Hutchinson's identity ``E_v ‖J_Eᵀ v‖² = tr(J_E J_Eᵀ) = ‖J_E‖_F²``
  with one vector–Jacobian product (a backward pass) per random projection ``v``.
* :class:`LatentClassifier` — the Mixer's category classifier on the latent code (§3.4: a 3-layer
  MLP with dropout; a 3×3/1/0 convolution block before it for the Table 2 variant; < 1 M params).
  Options for small budgets (the book's quick profile): ``classifier_features="multiscale"`` (also
  the channel mean/std of every encoder stage, :func:`encoder_stages`, :func:`pooled_stats`),
  ``classifier_norm`` (BatchNorm in the block) and ``classifier_epochs`` (extra epochs for the
  classifier alone on the frozen trained encoder, :meth:`AutoencoderDetector._refine_classifier`).
* :func:`ssim`, :func:`ms_ssim`, :func:`ssim_map` — SSIM of **Eq. 9** (Wang et al. 2004, Gaussian
  window σ = 1.5, 11×11) and multi-scale SSIM (Wang et al. 2003), our own implementation (the tests
  check it against scikit-image); :func:`reconstruction_error` turns L2 / SSIM / MS-SSIM into
  per-image scores and per-pixel maps.
* :class:`ClassThresholds` — the per-class running threshold of **Eq. 6**,
  ``T_i = (1 − α)·T_{i−1} + α·(μ + β·σ)`` (:class:`iadlib.thresholds.RunningThreshold`), updated
  once per epoch from the batch means and standard deviations of the reconstruction error, and
  **Algorithm 1** at inference.
* :func:`weighted_vote` — the weighted voting ensemble of **Eq. 10**.
* Detectors ``"cae"`` (one model, one threshold) and ``"mixer_ae"`` (CO+DE+MIX by default: one
  model for all categories, a threshold per predicted category). Both follow the single-category
  :class:`~iadlib.models.base.Detector` protocol *and* offer :meth:`AutoencoderDetector.fit_multi`
  / :meth:`AutoencoderDetector.predict_multi` for the paper's multi-category setting.

Training follows §3.7: Adam (lr 1e-3, eps 1e-6), ReduceLROnPlateau, early stopping on the validation
F1 averaged over categories (patience 20) when a validation set is given, weights drawn from
N(0, 0.02), loss = reconstruction (weight 1) + 3·cross-entropy (Mixer) + λ·‖J‖_F² (contractive).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.base import as_image_list
from ..errors import ConfigError, DatasetError
from ..thresholds import RunningThreshold
from ..utils import seed_everything
from . import register_model
from .base import Detector, check_loss, images_to_tensor, iter_batches

LOSSES = ("l2", "ssim", "mssim")
ARCHS = ("table1", "table2")
#: What the Mixer's classifier sees: the latent code only (the paper) or, in addition, the pooled
#: statistics of every encoder stage (:func:`pooled_stats`).
CLASSIFIER_FEATURES = ("latent", "multiscale")
#: MS-SSIM exponents of Wang, Simoncelli & Bovik (2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ------------------------------------------------------------------------------------------------
# Architectures (Tables 1 and 2)
# ------------------------------------------------------------------------------------------------
def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """§3.7: weights from N(0, 0.02) (as in CycleGAN [29]); BatchNorm scales from N(1, 0.02); biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def _cbl(conv: nn.Module, ch: int) -> list[nn.Module]:
    """Convolution → BatchNorm → LeakyReLU(0.2), the unit of Tables 1 and 2."""
    return [conv, nn.BatchNorm2d(ch), nn.LeakyReLU(0.2, inplace=True)]


def _scaled(channels: Sequence[int], width: float) -> list[int]:
    return [max(4, int(round(c * width))) for c in channels]


class ConvAE(nn.Module):
    """The CAE of Table 1 (Eq. 3–4: ``z = E(x)``, ``x̂ = D(z)``).

    Encoder: ``n`` convolutions 4×4/2/1 (3→16→32→64→128→256→512 at 256 px), a 4×4/1/0 convolution
    to ``bottleneck`` = 1024 channels on the remaining 4×4 map, an MLP (linear layer) to ``l_d``.
    Decoder: the mirror with ConvTranspose layers; ``tanh`` at the end. Every convolution is
    followed by BatchNorm and LeakyReLU(0.2). At other sizes the number of stride-2 convolutions is
    ``log2(image_size / 4)`` (the first ones of ``channels``), so the 4×4/1/0 layer still sees 4×4.
    """

    def __init__(
        self,
        image_size: int = 256,
        channels: Sequence[int] = (16, 32, 64, 128, 256, 512),
        bottleneck: int = 1024,
        latent_dim: int = 128,
        width: float = 1.0,
        in_channels: int = 3,
    ):
        super().__init__()
        n_down = math.log2(image_size / 4) if image_size >= 8 else -1
        if n_down < 1 or n_down != int(n_down):
            raise ConfigError(f"Table 1 CAE needs image_size = 4·2^k (8, 16, …, 256), got {image_size}")
        n_down = int(n_down)
        if n_down > len(channels):
            raise ConfigError(
                f"image_size {image_size} needs {n_down} stride-2 convolutions; channels has {len(channels)}"
            )
        chs = _scaled(channels[:n_down], width)
        bott = max(8, int(round(bottleneck * width)))
        enc: list[nn.Module] = []
        prev = in_channels
        for c in chs:
            enc += _cbl(nn.Conv2d(prev, c, 4, 2, 1, bias=False), c)
            prev = c
        enc += _cbl(nn.Conv2d(prev, bott, 4, 1, 0, bias=False), bott)
        enc += [nn.Flatten(), nn.Linear(bott, latent_dim)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [
            nn.Linear(latent_dim, bott),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Unflatten(1, (bott, 1, 1)),
        ]
        dec += _cbl(nn.ConvTranspose2d(bott, chs[-1], 4, 1, 0, bias=False), chs[-1])
        rev = chs[::-1]
        for c_in, c_out in zip(rev[:-1], rev[1:]):
            dec += _cbl(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), c_out)
        dec += [nn.ConvTranspose2d(rev[-1], in_channels, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)
        self.latent_shape: tuple[int, ...] = (latent_dim,)
        init_normal(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.decoder(h)


class FullyConvAE(nn.Module):
    """The fully convolutional AE of Table 2 (the base architecture of every model in Table 3).

    Encoder: for consecutive ``(i, i+1)`` of ``[3, 64, 128, 256, 512, 1024]`` a triplet
    Conv 3×3/1/1 (i→i+1), Conv 3×3/1/1 (i+1→i+1), MaxPool 2×2 — no MaxPool in the last triplet, so
    224 px → a 1024×14×14 latent map. Decoder: for consecutive ``(j, j+1)`` of
    ``[1024, 512, 256, 128, 64, 3]`` a triplet ConvT 2×2/2 (j→j), Conv (j→j+1), Conv (j+1→j+1) — no
    ConvT in the last one; ``tanh`` output. BatchNorm + LeakyReLU(0.2) after every convolution but
    the last. The extracted table text is garbled for the decoder rows ("ConvT 2×2/2/1",
    "Conv 4×4/2/1", which would not restore the input size); we read them as ConvT 2×2/2/0 and the
    encoder's 3×3/1/1 convolutions, the only reading under which the decoder mirrors the encoder.
    ``width`` scales every channel count but the image's (1.0 = the paper's).
    """

    def __init__(
        self,
        image_size: int = 224,
        channels: Sequence[int] = (3, 64, 128, 256, 512, 1024),
        width: float = 1.0,
    ):
        super().__init__()
        n_pool = len(channels) - 2
        if image_size % (2**n_pool) != 0 or image_size // (2**n_pool) < 3:
            raise ConfigError(
                f"Table 2 AE needs image_size divisible by {2**n_pool}, ≥ {3 * 2**n_pool}; got {image_size}"
            )
        chs = [channels[0]] + _scaled(channels[1:], width)
        enc: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(chs[:-1], chs[1:])):
            enc += _cbl(nn.Conv2d(a, b, 3, 1, 1, bias=False), b)
            enc += _cbl(nn.Conv2d(b, b, 3, 1, 1, bias=False), b)
            if k < len(chs) - 2:
                enc.append(nn.MaxPool2d(2))
        self.encoder = nn.Sequential(*enc)
        rev = chs[::-1]
        dec: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
            last = k == len(rev) - 2
            if not last:
                dec += _cbl(nn.ConvTranspose2d(a, a, 2, 2, 0, bias=False), a)
            dec += _cbl(nn.Conv2d(a, b, 3, 1, 1, bias=False), b)
            if last:
                dec += [nn.Conv2d(b, b, 3, 1, 1), nn.Tanh()]
            else:
                dec += _cbl(nn.Conv2d(b, b, 3, 1, 1, bias=False), b)
        self.decoder = nn.Sequential(*dec)
        s = image_size // 2**n_pool
        self.latent_shape = (chs[-1], s, s)
        init_normal(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.decoder(h)


class LatentClassifier(nn.Module):
    """The Mixer's category classifier on the latent code ``h`` (§3.4, Figure 4).

    A 3-layer MLP with ReLU and dropout; for a spatial latent (Table 2) a 3×3/1/0 convolution block
    comes first (followed by average pooling to at most 4×4, so the MLP's size does not depend on
    the image size). Well under 1 M parameters at the paper's sizes.

    Options beyond the paper's text (off by default): ``norm`` puts BatchNorm in the convolution
    block (the "block" of Tables 1–2 is Conv → BatchNorm → activation) and standardises the extra
    input; ``extra_dims`` > 0 concatenates extra features (the pooled statistics of the encoder's
    stages, :func:`pooled_stats`) to the pooled code before the MLP.
    """

    def __init__(
        self,
        latent_shape: tuple[int, ...],
        n_classes: int,
        hidden: tuple[int, int] = (256, 128),
        dropout: float = 0.3,
        conv_channels: int = 32,
        pool: int = 4,
        init: str = "normal",
        extra_dims: int = 0,
        norm: bool = False,
    ):
        super().__init__()
        if init not in ("normal", "default"):
            raise ConfigError(f"classifier init {init!r}; valid: 'normal' (N(0, 0.02), §3.7), 'default' (PyTorch's)")
        if pool < 1:
            raise ConfigError(f"the Mixer classifier's pooled size must be >= 1, got {pool}")
        if n_classes < 1:
            raise ConfigError(f"the Mixer classifier needs at least one class, got {n_classes}")
        layers: list[nn.Module] = []
        if len(latent_shape) == 3:
            c, s, _ = latent_shape
            pool = max(1, min(pool, s - 2))
            layers += [nn.Conv2d(c, conv_channels, 3, 1, 0, bias=not norm)]
            layers += [nn.BatchNorm2d(conv_channels)] if norm else []
            layers += [
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(pool),
                nn.Flatten(),
            ]
            n_in = conv_channels * pool * pool
        else:
            n_in = int(latent_shape[0])
        self.features = nn.Sequential(*layers)
        self.extra_dims = int(extra_dims)
        # the pooled stage statistics live on very different scales (means vs standard deviations,
        # shallow vs deep stages): standardised per feature, like the latent path's BatchNorm
        self.extra_norm = nn.BatchNorm1d(self.extra_dims) if (norm and self.extra_dims) else nn.Identity()
        layers = [
            nn.Linear(n_in + self.extra_dims, hidden[0]),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden[1], n_classes),
        ]
        self.mlp = nn.Sequential(*layers)
        if init == "normal":
            init_normal(self)

    def forward(self, h: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        z = self.features(h).flatten(1)
        if self.extra_dims:
            if extra is None or extra.shape[1] != self.extra_dims:
                got = None if extra is None else tuple(extra.shape)
                raise ConfigError(f"classifier expects {self.extra_dims} extra features, got {got}")
            z = torch.cat([z, self.extra_norm(extra)], 1)
        return self.mlp(z)


def build_autoencoder(arch: str, image_size: int, width: float = 1.0, latent_dim: int = 128) -> nn.Module:
    """``"table1"`` → :class:`ConvAE`, ``"table2"`` → :class:`FullyConvAE`."""
    if arch == "table1":
        return ConvAE(image_size=image_size, latent_dim=latent_dim, width=width)
    if arch == "table2":
        return FullyConvAE(image_size=image_size, width=width)
    raise ConfigError(f"unknown autoencoder architecture {arch!r}; valid: {', '.join(ARCHS)}")


def encoder_stages(encoder: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``encoder`` on ``x`` and also return the feature map of every resolution stage: the
    input of each MaxPool (Table 2) or the output of each stride-2 convolution block (Table 1);
    the latent code itself is not among them. Used by the Mixer's ``"multiscale"`` classifier."""
    stages: list[torch.Tensor] = []
    mods = list(encoder)
    for i, m in enumerate(mods):
        if isinstance(m, nn.MaxPool2d) or isinstance(m, nn.Flatten):
            stages.append(x)
        elif (
            isinstance(m, nn.LeakyReLU)
            and isinstance(mods[i - 2], nn.Conv2d)
            and mods[i - 2].stride == (2, 2)
        ):
            x = m(x)
            stages.append(x)
            continue
        x = m(x)
    if isinstance(encoder[-1], nn.Linear) and stages:
        stages.pop()  # Table 1: the map entering Flatten is the 4×4/1/0 block, part of the code's MLP
    return x, stages


def stage_channels(ae: nn.Module, image_size: int) -> list[int]:
    """Channel counts of :func:`encoder_stages`' maps (from a dry run on one blank image)."""
    p = next(ae.parameters())
    was = ae.training
    ae.eval()
    with torch.no_grad():
        _, st = encoder_stages(ae.encoder, torch.zeros(1, 3, image_size, image_size, device=p.device))
    ae.train(was)
    return [int(t.shape[1]) for t in st]


def pooled_stats(stages: Sequence[torch.Tensor]) -> torch.Tensor:
    """Channel-wise mean and standard deviation over the spatial positions of every stage map,
    concatenated ``[B, 2·Σ C_s]`` (first- and second-order texture statistics, translation invariant)."""
    out = []
    for t in stages:
        f = t.flatten(2)
        out += [f.mean(2), f.std(2, unbiased=False)]
    return torch.cat(out, 1)


# ------------------------------------------------------------------------------------------------
# Denoising (Eq. 7) and contractive (Eq. 8) terms
# ------------------------------------------------------------------------------------------------
def add_noise(x: torch.Tensor, v: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 7: ``x_noise = clamp(x + v·W, −1, 1)`` with ``W ~ N(0, 1)`` elementwise."""
    if v <= 0:
        return x
    w = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + v * w).clamp_(-1.0, 1.0)


def jacobian_frobenius_sq(
    encoder: nn.Module,
    x: torch.Tensor,
    n_projections: int = 1,
    create_graph: bool = True,
    distribution: str = "rademacher",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8's ``‖J_E(x)‖_F²`` per sample, without forming the Jacobian.

    Hutchinson: for ``v`` with ``E[v vᵀ] = I`` (Rademacher ±1 or standard normal),
    ``E_v ‖J_Eᵀ v‖² = E_v[vᵀ J J ᵀ v] = tr(J Jᵀ) = ‖J‖_F²``; ``J_Eᵀ v`` is one vector–Jacobian
    product, i.e. one backward pass of the encoder (kept in the graph with ``create_graph`` so the
    penalty is differentiable). Unbiased for any ``n_projections``; the cost is that of one extra
    backward per projection instead of ``dim(h)`` backwards for the exact Jacobian. Returns the
    latent code ``h = E(x)`` (so the caller does not run the encoder twice) and the estimate ``[B]``.

    With BatchNorm in training mode the samples of a batch are coupled; the estimate then includes
    the (small) cross-sample terms of the batch-normalised encoder.
    """
    if distribution not in ("rademacher", "normal"):
        raise ConfigError(f"distribution={distribution!r}; valid: 'rademacher', 'normal'")
    if n_projections < 1:
        raise ConfigError(f"n_projections must be ≥ 1, got {n_projections}")
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        h = encoder(x_in)
        acc = torch.zeros(x.shape[0], device=x.device, dtype=h.dtype)
        for k in range(n_projections):
            if distribution == "rademacher":
                v = torch.randint(0, 2, h.shape, device=h.device).to(h.dtype).mul_(2).sub_(1)
            else:
                v = torch.randn_like(h)
            (g,) = torch.autograd.grad(
                h, x_in, grad_outputs=v, create_graph=create_graph,
                retain_graph=create_graph or k < n_projections - 1,
            )
            acc = acc + g.pow(2).flatten(1).sum(1)
    return h, acc / n_projections


def jacobian_frobenius_sq_exact(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``‖J_E(x)‖_F²`` per sample from the full Jacobian (``torch.func.jacrev``); for tests and tiny nets."""
    from torch.func import jacrev, vmap

    def f(xi: torch.Tensor) -> torch.Tensor:
        return encoder(xi[None])[0]

    jac = vmap(jacrev(f))(x)
    return jac.pow(2).flatten(1).sum(1)


# ------------------------------------------------------------------------------------------------
# SSIM (Eq. 9) and MS-SSIM — our own implementation, checked against scikit-image in the tests
# ------------------------------------------------------------------------------------------------
def _gaussian_window(win_size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    r = win_size // 2
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _filter(x: torch.Tensor, k: torch.Tensor, same: bool) -> torch.Tensor:
    """Separable depthwise filtering of ``[B,C,H,W]``; ``same`` pads by reflection, else 'valid'."""
    c = x.shape[1]
    r = k.numel() // 2
    if same:
        mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
        x = F.pad(x, (r, r, r, r), mode=mode)
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    same: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9 with α = β = γ = 1 (Wang et al. 2004): the SSIM and contrast–structure maps ``[B,C,h,w]``.

    ``SSIM = l·c·s = (2μxμy + C1)(2σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))`` with local
    Gaussian-weighted statistics (σ = 1.5, 11×11), ``C1 = (k1·L)²``, ``C2 = (k2·L)²``; ``cs`` is the
    contrast–structure factor ``(2σxy + C2) / (σx² + σy² + C2)`` used by MS-SSIM. ``same=False``
    returns the 'valid' region (the border ``win_size // 2`` cropped, as scikit-image averages);
    ``same=True`` pads by reflection and keeps the input size (for anomaly maps).
    """
    if x.shape != y.shape or x.ndim != 4:
        raise DatasetError(
            f"ssim: expected two [B,C,H,W] tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if not same and min(x.shape[-2:]) < win_size:
        raise DatasetError(
            f"ssim: images of size {tuple(x.shape[-2:])} are smaller than the {win_size}×{win_size} window"
        )
    k = _gaussian_window(win_size, sigma, x.device, x.dtype)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x = _filter(x, k, same)
    mu_y = _filter(y, k, same)
    sxx = _filter(x * x, k, same) - mu_x * mu_x
    syy = _filter(y * y, k, same) - mu_y * mu_y
    sxy = _filter(x * y, k, same) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return lum * cs, cs


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, **kw: Any) -> torch.Tensor:
    """Mean SSIM per image ``[B]`` (channels averaged) — equals ``skimage.metrics.structural_similarity``
    with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range``."""
    s, _ = ssim_map(x, y, data_range=data_range, **kw)
    return s.flatten(1).mean(1)


def ms_ssim_scales(size: int, win_size: int = 11, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many dyadic scales fit: the coarsest image must still hold one ``win_size`` window."""
    n = 0
    while n < max_scales and size // 2**n >= win_size:
        n += 1
    return n


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 2.0,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    win_size: int = 11,
    **kw: Any,
) -> torch.Tensor:
    """Multi-scale SSIM per image ``[B]`` (Wang, Simoncelli & Bovik 2003).

    ``MS-SSIM = l_M^{w_M} · Π_{j=1..M} cs_j^{w_j}``: contrast–structure at every scale, luminance at
    the coarsest, 2×2 average-pool downsampling between scales. When the image is too small for
    five scales (the window must fit the coarsest one), the first ``M`` exponents are used and
    renormalised to sum to the original total. Negative ``cs`` (anti-correlated patches) are
    clamped to a small positive value before the fractional powers.
    """
    m = ms_ssim_scales(min(x.shape[-2:]), win_size, len(weights))
    if m == 0:
        raise DatasetError(
            f"ms_ssim: images of size {tuple(x.shape[-2:])} are smaller than the {win_size}-px window"
        )
    w = torch.tensor(weights[:m], device=x.device, dtype=x.dtype)
    w = w * (sum(weights) / w.sum())
    vals = []
    for j in range(m):
        s, cs = ssim_map(x, y, data_range=data_range, win_size=win_size, **kw)
        if j < m - 1:
            vals.append(cs.flatten(1).mean(1))
            x = F.avg_pool2d(x, 2)
            y = F.avg_pool2d(y, 2)
        else:
            vals.append(s.flatten(1).mean(1))
    v = torch.stack(vals, 1).clamp_min(1e-6)
    return torch.exp((w * v.log()).sum(1))


def reconstruction_error(
    x: torch.Tensor, x_hat: torch.Tensor, loss: str, with_map: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-image reconstruction error ``[B]`` (the loss and the anomaly score) and optionally a map.

    ``"l2"``: Eq. 5, the mean squared error ``‖x − x̂‖²/d`` (map: squared error averaged over
    channels); ``"ssim"``: ``1 − SSIM`` (map: ``1 − SSIM`` map, same size); ``"mssim"``:
    ``1 − MS-SSIM`` (map: the finest scale's ``1 − SSIM`` map). Inputs in (−1, 1), so L = 2.
    """
    if loss == "l2":
        err = (x - x_hat).pow(2)
        score = err.flatten(1).mean(1)
        return score, (err.mean(1) if with_map else None)
    if loss == "ssim":
        score = 1.0 - ssim(x, x_hat, data_range=2.0)
    elif loss == "mssim":
        score = 1.0 - ms_ssim(x, x_hat, data_range=2.0)
    else:
        raise ConfigError(f"unknown reconstruction loss {loss!r}; valid: {', '.join(LOSSES)}")
    amap = None
    if with_map:
        s, _ = ssim_map(x, x_hat, data_range=2.0, same=True)
        amap = 1.0 - s.mean(1)
    return score, amap


# ------------------------------------------------------------------------------------------------
# Thresholds (Eq. 6, Algorithm 1) and the voting ensemble (Eq. 10)
# ------------------------------------------------------------------------------------------------
class ClassThresholds:
    """Per-class running thresholds of Eq. 6, ``T_i = (1 − α)·T_{i−1} + α·(μ + β·σ)``, indexed by class.

    A thin adapter over :class:`iadlib.thresholds.RunningThreshold` (which holds the statistics:
    the epoch averages of the per-batch mean and standard deviation of the reconstruction error of
    each class, §3.1, and ``T_1 = μ_1 + β·σ_1``) that exposes the thresholds as an array in class
    order and applies Algorithm 1. ``n_classes == 1`` is the single pooled threshold of a plain CAE.
    """

    def __init__(self, n_classes: int, alpha: float = 0.5, beta: float = 0.5):
        self.n_classes = int(n_classes)
        self.running = RunningThreshold(alpha, beta)

    def observe_batch(self, errors: np.ndarray, classes: np.ndarray) -> None:
        """Record one training batch's per-image errors (and their classes)."""
        self.running.add_batch(errors, np.asarray(classes, int) if self.n_classes > 1 else None)

    def end_epoch(self) -> np.ndarray:
        """Apply Eq. 6 with this epoch's statistics; classes unseen this epoch keep their ``T``."""
        self.running.end_epoch()
        return self.values

    @property
    def values(self) -> np.ndarray:
        t = self.running.thresholds
        if self.n_classes == 1:
            return np.array([t.get("__all__", np.nan)], dtype=np.float64)
        return np.array([t.get(k, np.nan) for k in range(self.n_classes)], dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes, "running": copy.deepcopy(self.running.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_classes = int(state["n_classes"])
        self.running.load_state_dict(copy.deepcopy(state["running"]))

    def decide(self, scores: np.ndarray, classes: np.ndarray | None = None) -> np.ndarray:
        """Algorithm 1: anomalous iff ``score > thresholds[c]`` (class 0 when ``classes`` is None)."""
        values = self.values
        if np.isnan(values).any():
            raise ConfigError("thresholds are not set yet: train for at least one epoch")
        scores = np.asarray(scores, dtype=np.float64)
        classes = np.zeros(len(scores), int) if classes is None else np.asarray(classes, int)
        return scores > values[classes]


def weighted_vote(
    decisions: np.ndarray, weights: Sequence[float] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 10: ``y(x) = argmax_c Σ_m w_m·I(y_m(x) = c)`` over ``c ∈ {anomaly, normal}``.

    ``decisions`` is ``[M, N]`` (True = anomaly) for ``M`` detectors; ``weights`` are positive and
    normalised to sum to 1 (equal when None). Returns the anomaly vote ``Σ_m w_m·I(y_m = anomaly)``
    (a score in [0, 1]) and the decision ``vote ≥ 1/2``: ties go to c₁ = anomaly, the first class
    of the paper's arg max (the conservative choice).
    """
    d = np.asarray(decisions, dtype=bool)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ConfigError(f"weighted_vote: decisions must be [M detectors, N images], got shape {d.shape}")
    w = np.ones(d.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (d.shape[0],):
        raise ConfigError(f"weighted_vote: {d.shape[0]} detectors but {w.size} weights")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ConfigError(f"weighted_vote: weights must be positive (Eq. 10), got {w.tolist()}")
    w = w / w.sum()
    vote = w @ d.astype(np.float64)
    return vote, vote >= 0.5 - 1e-12


# ------------------------------------------------------------------------------------------------
# Detectors
# ------------------------------------------------------------------------------------------------
@dataclass
class MultiPrediction:
    """Per-image output of :meth:`AutoencoderDetector.predict_multi` (Algorithm 1)."""

    category: list[str]
    category_index: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    decision: np.ndarray
    maps: np.ndarray | None = None


def _to_unit_range(x01: torch.Tensor) -> torch.Tensor:
    return x01 * 2.0 - 1.0


@register_model("cae")
class AutoencoderDetector(Detector):
    """A convolutional autoencoder (Table 1 or 2) with the paper's optional strategies.

    ``noise_std`` > 0 → denoising (Eq. 7, paper: 0.3); ``contractive`` > 0 → the Jacobian penalty
    of Eq. 8 with weight λ (paper: ≈ 1e-4); ``mixer=True`` → the latent classifier, its
    cross-entropy (weight ``ce_weight`` = 3) and per-class thresholds (Algorithm 1); ``loss`` in
    ``"l2" | "ssim" | "mssim"`` is both the training loss and the anomaly score. Defaults are the
    paper's *baseline* (plain CAE, L2, Table 2 architecture). ``width`` scales the channel counts
    (1.0 = the paper; the book's quick profile uses less on a CPU).
    """

    default_image_size = 224

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 128,
        arch: str = "table2",
        width: float = 1.0,
        latent_dim: int = 128,
        loss: str = "l2",
        noise_std: float = 0.0,
        contractive: float = 0.0,
        n_projections: int = 1,
        mixer: bool = False,
        ce_weight: float = 3.0,
        dropout: float = 0.3,
        classifier_pool: int = 4,
        classifier_lr: float | None = None,
        classifier_init: str = "normal",
        classifier_features: str = "latent",
        classifier_norm: bool = False,
        classifier_epochs: int = 0,
        alpha: float = 0.5,
        beta: float = 0.5,
        epochs: int = 100,
        lr: float = 1e-3,
        eps: float = 1e-6,
        patience: int = 20,
        lr_patience: int = 5,
        lr_factor: float = 0.5,
        precise_bn: bool = True,
        verbose: bool = False,
    ):
        if arch not in ARCHS:
            raise ConfigError(f"unknown autoencoder architecture {arch!r}; valid: {', '.join(ARCHS)}")
        if loss not in LOSSES:
            raise ConfigError(f"unknown reconstruction loss {loss!r}; valid: {', '.join(LOSSES)}")
        if noise_std < 0 or contractive < 0 or ce_weight < 0:
            raise ConfigError(
                f"noise_std, contractive, ce_weight must be ≥ 0; got {noise_std}, {contractive}, {ce_weight}"
            )
        if classifier_features not in CLASSIFIER_FEATURES:
            raise ConfigError(
                f"classifier_features={classifier_features!r}; valid: {', '.join(CLASSIFIER_FEATURES)}"
            )
        if classifier_epochs < 0:
            raise ConfigError(f"classifier_epochs must be ≥ 0, got {classifier_epochs}")
        if classifier_lr is not None and not classifier_lr > 0:
            raise ConfigError(f"classifier_lr must be > 0 (or None: lr), got {classifier_lr}")
        if epochs < 1 or batch_size < 2:
            raise ConfigError(f"epochs must be ≥ 1 and batch_size ≥ 2, got {epochs} and {batch_size}")
        if image_size is None:
            image_size = 256 if arch == "table1" else 224
        super().__init__(image_size, device, seed, batch_size)
        self.config.update(
            arch=arch, width=width, latent_dim=latent_dim, loss=loss, noise_std=noise_std,
            contractive=contractive, n_projections=n_projections, mixer=mixer, ce_weight=ce_weight,
            dropout=dropout, classifier_pool=classifier_pool, classifier_lr=classifier_lr,
            classifier_init=classifier_init, classifier_features=classifier_features,
            classifier_norm=classifier_norm, classifier_epochs=classifier_epochs, alpha=alpha, beta=beta,
            epochs=epochs, lr=lr,
            eps=eps, patience=patience, lr_patience=lr_patience, lr_factor=lr_factor, precise_bn=precise_bn,
            verbose=verbose,
        )
        ClassThresholds(1, alpha, beta)  # validates alpha/beta now
        seed_everything(seed)  # the initial weights (§3.7's N(0, 0.02)) depend on the seed only
        self.ae = build_autoencoder(arch, self.image_size, width, latent_dim).to(self.device)
        self.classifier: LatentClassifier | None = None
        self.categories: list[str] = []
        self.thresholds = ClassThresholds(1, alpha, beta)

    # --- building blocks -------------------------------------------------------------------------
    def _make_head(self, n_classes: int) -> None:
        c = self.config
        self.categories = self.categories or [str(i) for i in range(n_classes)]
        self.classifier = (
            LatentClassifier(
                tuple(self.ae.latent_shape), n_classes, dropout=c["dropout"], pool=c["classifier_pool"],
                init=c.get("classifier_init", "normal"),
                extra_dims=self._extra_dims(), norm=c.get("classifier_norm", False),
            ).to(self.device)
            if c["mixer"]
            else None
        )
        self.thresholds = ClassThresholds(n_classes if c["mixer"] else 1, c["alpha"], c["beta"])

    def _extra_dims(self) -> int:
        if self.config.get("classifier_features", "latent") != "multiscale":
            return 0
        return 2 * sum(stage_channels(self.ae, self.image_size))

    def _encode_for_classifier(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The latent code of ``x`` and, for the ``"multiscale"`` classifier, the pooled stage statistics."""
        if self.config.get("classifier_features", "latent") != "multiscale":
            return self.ae.encoder(x), None
        h, stages = encoder_stages(self.ae.encoder, x)
        return h, pooled_stats(stages)

    # --- training ----------------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray]) -> None:
        self.categories = ["all"]
        self._train(images, np.zeros(len(images), int), None)

    def fit_multi(
        self,
        splits_by_category: Mapping[str, Any],
        validation: Mapping[str, Any] | None = None,
    ) -> AutoencoderDetector:
        """Train one model on every category at once (the paper's setting).

        ``splits_by_category`` maps a category name to its normal training images (a Split, samples
        or an array); ``validation`` optionally maps the same names to labelled splits (normal and
        anomalous) for early stopping on the class-averaged F1 and for ReduceLROnPlateau (§3.7).
        Without it the learning rate is reduced on the training loss and all epochs run.
        """
        if not splits_by_category:
            raise DatasetError("fit_multi: no categories given")
        names = list(splits_by_category)
        images: list[np.ndarray] = []
        cats: list[int] = []
        for k, name in enumerate(names):
            imgs = as_image_list(splits_by_category[name])
            images += imgs
            cats += [k] * len(imgs)
        val = None
        if validation is not None:
            unknown = set(validation) - set(names)
            if unknown:
                raise DatasetError(f"fit_multi: validation categories {sorted(unknown)} lack training data")
            val = {names.index(n): s for n, s in validation.items()}
        self.categories = names
        seed_everything(self.seed)
        self._train(images, np.asarray(cats), val)
        self.fitted = True
        return self

    def _train(self, images: list[np.ndarray], cats: np.ndarray, val: dict[int, Any] | None) -> None:
        c = self.config
        n_classes = int(cats.max()) + 1
        self._make_head(n_classes)
        if len(images) < 2:
            raise DatasetError(f"{self.name}: need at least 2 training images, got {len(images)}")
        # keep the training set as uint8 at the working resolution (4× smaller than float)
        data = (images_to_tensor(images, self.image_size) * 255.0).round_().to(torch.uint8)
        labels = torch.as_tensor(cats, dtype=torch.long)
        groups: list[dict[str, Any]] = [{"params": list(self.ae.parameters())}]
        if self.classifier is not None:
            head_lr = c.get("classifier_lr") or c["lr"]
            groups.append({"params": list(self.classifier.parameters()), "lr": head_lr})
        opt = torch.optim.Adam(groups, lr=c["lr"], eps=c["eps"])
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max" if val else "min", factor=c["lr_factor"], patience=c["lr_patience"]
        )
        gen = torch.Generator().manual_seed(self.seed)
        noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        val_data = self._prepare_validation(val) if val else None
        bs = min(self.batch_size, len(images))
        hist: dict[str, list[float]] = {}
        best = (-math.inf, None)
        bad_epochs = 0
        pbar = tqdm(range(c["epochs"]), desc=f"{self.name} fit", disable=not c["verbose"])
        step = 0
        for epoch in pbar:
            self.ae.train()
            if self.classifier is not None:
                self.classifier.train()
            perm = torch.randperm(len(images), generator=gen)
            sums = {"loss": 0.0, "rec": 0.0, "ce": 0.0, "jac": 0.0, "acc": 0.0}
            n_seen = 0
            per_class: dict[int, list[np.ndarray]] = {}
            for i in range(0, len(perm), bs):
                idx = perm[i : i + bs]
                if len(idx) < 2:  # BatchNorm cannot train on one sample
                    continue
                x = _to_unit_range(data[idx].to(self.device).float() / 255.0)
                y = labels[idx].to(self.device)
                x_in = add_noise(x, c["noise_std"], noise_gen)
                if c["contractive"] > 0:
                    h, jac = jacobian_frobenius_sq(self.ae.encoder, x_in, c["n_projections"])
                    jac_term = jac.mean()
                else:
                    h = self.ae.encoder(x_in)
                    jac_term = torch.zeros((), device=self.device)
                x_hat = self.ae.decoder(h)
                rec, _ = reconstruction_error(x, x_hat, c["loss"])
                loss = rec.mean() + c["contractive"] * jac_term
                ce = torch.zeros((), device=self.device)
                if self.classifier is not None:
                    # Algorithm 1 classifies the latent code of the *clean* image; under the
                    # denoising corruption (Eq. 7) the classifier is trained on that code too
                    # (noise v = 0.3 erases the fine texture that tells similar categories apart).
                    if c["noise_std"] <= 0 and c.get("classifier_features", "latent") == "latent":
                        h_cls, extra = h, None
                    else:
                        h_cls, extra = self._encode_for_classifier(x)
                    logits = self.classifier(h_cls, extra)
                    ce = F.cross_entropy(logits, y)
                    loss = loss + c["ce_weight"] * ce
                    sums["acc"] += float((logits.argmax(1) == y).float().sum())
                check_loss(loss.detach(), f"epoch {epoch} step {step}", self.name)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                err = rec.detach().cpu().numpy()
                ycpu = y.cpu().numpy()
                thr_cls = ycpu if self.classifier is not None else np.zeros_like(ycpu)
                self.thresholds.observe_batch(err, thr_cls)
                for k in np.unique(ycpu):
                    per_class.setdefault(int(k), []).append(err[ycpu == k])
                b = len(idx)
                n_seen += b
                sums["loss"] += float(loss.detach()) * b
                sums["rec"] += float(rec.detach().mean()) * b
                sums["ce"] += float(ce.detach()) * b
                sums["jac"] += float(jac_term.detach()) * b
            thr = self.thresholds.end_epoch()
            if c["precise_bn"] and (val_data is not None or epoch == c["epochs"] - 1):
                self._recalibrate_bn(data)
            for k in ("loss", "rec", "ce", "jac"):
                hist.setdefault(k, []).append(sums[k] / max(n_seen, 1))
            if self.classifier is not None:
                hist.setdefault("train_class_acc", []).append(sums["acc"] / max(n_seen, 1))
            for k, name in enumerate(self.categories):
                errs = np.concatenate(per_class.get(k, [np.array([np.nan])]))
                hist.setdefault(f"score_mean/{name}", []).append(float(np.mean(errs)))
                hist.setdefault(f"score_std/{name}", []).append(float(np.std(errs)))
                hist.setdefault(f"threshold/{name}", []).append(float(thr[k if len(thr) > 1 else 0]))
            hist.setdefault("lr", []).append(opt.param_groups[0]["lr"])
            self.fitted = True
            if val_data is not None:
                f1 = self._validation_f1(val_data)
                hist.setdefault("val_f1", []).append(f1)
                sched.step(f1)
                if f1 > best[0]:
                    best = (f1, self._snapshot())
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                pbar.set_postfix(loss=hist["loss"][-1], val_f1=f1)
                if bad_epochs >= c["patience"]:
                    break
            else:
                sched.step(hist["loss"][-1])
                pbar.set_postfix(loss=hist["loss"][-1])
        if best[1] is not None:
            self._restore(best[1])
            hist["best_epoch"] = [float(int(np.argmax(hist["val_f1"])))]
        if self.classifier is not None and c.get("classifier_epochs", 0) > 0:
            self._refine_classifier(data, labels, hist)
        self.history = hist

    def _refine_classifier(self, data: torch.Tensor, labels: torch.Tensor, hist: dict[str, list[float]]) -> None:
        """Extra epochs for the Mixer's classifier alone, on the frozen trained encoder
        (``classifier_epochs``; 0 = the paper's joint training only).

        The joint training of §3.7 gives the classifier one step per batch; with few epochs (the
        quick profile) it stops far from convergence although the codes already separate the
        categories. Here the evaluation-mode codes of the clean training images (the very codes
        Algorithm 1 classifies at inference) are computed once and the classifier is trained on them
        with the same cross-entropy, Adam (``classifier_lr`` or ``lr``) and a cosine decay of the
        learning rate to 0; the classifier's own BatchNorm statistics are then re-estimated on those
        codes. The autoencoder, its reconstructions and the thresholds of Eq. 6 are untouched.
        """
        c = self.config
        assert self.classifier is not None
        self.ae.eval()
        feats: list[torch.Tensor] = []
        extras: list[torch.Tensor] = []
        with torch.no_grad():
            for i in range(0, len(data), self.batch_size):
                x = _to_unit_range(data[i : i + self.batch_size].to(self.device).float() / 255.0)
                h, extra = self._encode_for_classifier(x)
                feats.append(h)
                if extra is not None:
                    extras.append(extra)
        h_all = torch.cat(feats)
        e_all = torch.cat(extras) if extras else None
        y_all = labels.to(self.device)
        n_epochs = int(c["classifier_epochs"])
        head_lr = c.get("classifier_lr") or c["lr"]
        opt = torch.optim.Adam(self.classifier.parameters(), lr=head_lr, eps=c["eps"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs)
        gen = torch.Generator().manual_seed(self.seed + 3)
        bs = min(self.batch_size, len(h_all))
        for epoch in range(n_epochs):
            self.classifier.train()
            perm = torch.randperm(len(h_all), generator=gen)
            ce_sum, acc_sum, n = 0.0, 0.0, 0
            for i in range(0, len(perm), bs):
                idx = perm[i : i + bs]
                if len(idx) < 2:
                    continue
                logits = self.classifier(h_all[idx], None if e_all is None else e_all[idx])
                ce = F.cross_entropy(logits, y_all[idx])
                check_loss(ce.detach(), f"classifier epoch {epoch}", self.name)
                opt.zero_grad(set_to_none=True)
                ce.backward()
                opt.step()
                ce_sum += float(ce.detach()) * len(idx)
                acc_sum += float((logits.argmax(1) == y_all[idx]).float().sum())
                n += len(idx)
            sched.step()
            hist.setdefault("head_ce", []).append(ce_sum / max(n, 1))
            hist.setdefault("head_acc", []).append(acc_sum / max(n, 1))
        # precise BatchNorm for the classifier's own layers, on the same (shuffled) codes
        bns = [m for m in self.classifier.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if bns:
            saved = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            self.classifier.train()
            perm = torch.randperm(len(h_all), generator=gen)
            with torch.no_grad():
                for i in range(0, len(perm), bs):
                    idx = perm[i : i + bs]
                    if len(idx) >= 2:
                        self.classifier(h_all[idx], None if e_all is None else e_all[idx])
            for m, mom in zip(bns, saved):
                m.momentum = mom
        self.classifier.eval()

    @torch.no_grad()
    def _recalibrate_bn(self, data: torch.Tensor) -> None:
        """Precise BatchNorm (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"): re-estimate the
        running statistics as exact averages over the clean training images with the final
        weights. The exponential running averages lag behind the weights early in training and
        were collected on noisy inputs (Eq. 7), while inference sees clean ones; without this the
        evaluation-mode network (and the Mixer's classifier) can drift from the training-mode one.
        The optimised weights are untouched."""
        nets = [self.ae] + ([self.classifier] if self.classifier is not None else [])
        bns = [m for net in nets for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average = the exact mean over the batches
        for net in nets:
            net.train()
        # Training batches are drawn at random from every category; the training data are stored
        # category by category, so batches taken in order would hold one category each and their
        # averaged variances would miss the between-category variance the training-mode network
        # was normalised with (the evaluation-mode features then come out several times too large).
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed + 2))
        bs = min(self.batch_size, len(data))
        for i in range(0, len(perm), bs):
            idx = perm[i : i + bs]
            if len(idx) < 2:
                continue
            h, extra = self._encode_for_classifier(_to_unit_range(data[idx].to(self.device).float() / 255.0))
            self.ae.decoder(h)
            if self.classifier is not None:
                self.classifier(h, extra)
        for m, mom in zip(bns, saved):
            m.momentum = mom

    def _snapshot(self) -> dict[str, Any]:
        return {
            "ae": copy.deepcopy(self.ae.state_dict()),
            "cls": copy.deepcopy(self.classifier.state_dict()) if self.classifier is not None else None,
            "thr": self.thresholds.state_dict(),
        }

    def _restore(self, snap: dict[str, Any]) -> None:
        self.ae.load_state_dict(snap["ae"])
        if self.classifier is not None and snap["cls"] is not None:
            self.classifier.load_state_dict(snap["cls"])
        self.thresholds.load_state_dict(snap["thr"])

    def _prepare_validation(self, val: dict[int, Any]) -> list[tuple[int, list[np.ndarray], np.ndarray]]:
        out = []
        for k, split in val.items():
            imgs = as_image_list(split)
            labels = getattr(split, "labels", None)
            if labels is None:
                labels = np.array([s.label for s in split])
            out.append((k, imgs, np.asarray(labels, int)))
        return out

    def _validation_f1(self, val_data: list[tuple[int, list[np.ndarray], np.ndarray]]) -> float:
        """F1 of the anomalous class per category (Algorithm 1 decisions), averaged over categories."""
        f1s = []
        for _, imgs, labels in val_data:
            pred = self._infer(imgs, with_maps=False)
            dec = pred.decision
            tp = float(np.sum(dec & (labels == 1)))
            fp = float(np.sum(dec & (labels == 0)))
            fn = float(np.sum(~dec & (labels == 1)))
            f1s.append(2 * tp / max(2 * tp + fp + fn, 1e-12))
        return float(np.mean(f1s))

    # --- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def _infer(self, images: list[np.ndarray], with_maps: bool = True) -> MultiPrediction:
        c = self.config
        self.ae.eval()
        if self.classifier is not None:
            self.classifier.eval()
        scores, maps, cls = [], [], []
        for x01 in iter_batches(images, self.batch_size, self.image_size, self.device):
            x = _to_unit_range(x01)
            h, extra = self._encode_for_classifier(x)
            x_hat = self.ae.decoder(h)
            s, m = reconstruction_error(x, x_hat, c["loss"], with_map=with_maps)
            scores.append(s.cpu())
            if with_maps:
                maps.append(m.cpu())
            if self.classifier is not None:
                cls.append(self.classifier(h, extra).argmax(1).cpu())
            else:
                cls.append(torch.zeros(len(x), dtype=torch.long))
        score = torch.cat(scores).double().numpy()
        k = torch.cat(cls).numpy()
        thr_idx = k if self.classifier is not None else np.zeros_like(k)
        thr = self.thresholds.values[thr_idx]
        names = [self.categories[i] if self.classifier is not None else "all" for i in k]
        return MultiPrediction(
            category=names,
            category_index=k,
            score=score,
            threshold=thr,
            decision=self.thresholds.decide(score, thr_idx),
            maps=torch.cat(maps).numpy() if with_maps else None,
        )

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._infer(images, with_maps=True)
        return torch.from_numpy(p.score), torch.from_numpy(p.maps)

    @torch.no_grad()
    def predict_multi(self, images: Any, with_maps: bool = False) -> MultiPrediction:
        """Algorithm 1 on ``images``: per image the predicted category (the Mixer's classifier; "all"
        for a plain CAE), the anomaly score, the threshold applied and the decision (True = anomaly)."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit()/fit_multi() (or load()) before predict_multi()")
        return self._infer(as_image_list(images), with_maps=with_maps)

    @torch.no_grad()
    def reconstruct(self, images: Any) -> np.ndarray:
        """Reconstructions as float images ``[N,S,S,3]`` in [0, 1] at the working resolution."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before reconstruct()")
        self.ae.eval()
        outs = []
        for x01 in iter_batches(as_image_list(images), self.batch_size, self.image_size, self.device):
            _, x_hat = self.ae(_to_unit_range(x01))
            outs.append(((x_hat + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu())
        return torch.cat(outs).numpy()

    # --- checkpoints -----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "ae": self.ae.state_dict(),
            "classifier": self.classifier.state_dict() if self.classifier is not None else None,
            "thresholds": self.thresholds.state_dict(),
            "categories": list(self.categories),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.categories = list(state["categories"])
        n = len(self.categories)
        self._make_head(n)
        self.ae.load_state_dict(state["ae"])
        if self.classifier is not None:
            if state.get("classifier") is None:
                raise DatasetError("mixer checkpoint without classifier weights")
            self.classifier.load_state_dict(state["classifier"])
        self.thresholds.load_state_dict(state["thresholds"])


@register_model("mixer_ae")
class MixerAE(AutoencoderDetector):
    """The Mixer-AE of §3.4 with the paper's final set-up (§3.7): CO+DE+MIX on the Table 2 AE —
    denoising v = 0.3 (Eq. 7), contractive λ = 1e-4 (Eq. 8), latent classifier with cross-entropy
    weight 3 and a running threshold per category (Eq. 6, Algorithm 1)."""

    def __init__(self, *, noise_std: float = 0.3, contractive: float = 1e-4, mixer: bool = True, **kw: Any):
        super().__init__(noise_std=noise_std, contractive=contractive, mixer=mixer, **kw)
