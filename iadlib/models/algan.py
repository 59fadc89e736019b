"""ALGAN: anomalous-latent GAN whose discriminator is the anomaly detector (Murase, thesis 2022, ch. 4–5).

The generator G maps latents to data; the discriminator D separates *real-normal* data x from
three kinds of "other" data (§4.3):

* fake-normal data ``x'_n = G(z_n)``, ``z_n ~ N(0, I)``;
* fake-anomalous data ``x'_a = G(z_a)``, ``z_a ~ N(0, σ²I)`` with σ > 1 (the *anomalous latent*);
* buffered data ``x̂ = {x̂_n, x̂_a}``: earlier fakes kept in a buffer of twice the batch size, half
  of it replaced at random by the newest fakes after every batch.

Discriminator objective, Eq. (4.3) (we minimise its negative; ``-log D = softplus(-l)`` and
``-log(1 - D) = softplus(l)`` for the raw logit ``l``)::

    max_D  E_x[log D(x)]
         + α     { ξ E[log(1 - D(x'_n))] + (1 - ξ) E[log(1 - D(x̂_n))] }
         + (1-α) { ξ E[log(1 - D(x'_a))] + (1 - ξ) E[log(1 - D(x̂_a))] }

Generator objective, Eq. (4.2): ``min_G E[log(1 - D(G(z_n)))]``, used in its non-saturating form
``min_G E[-log D(G(z_n))]`` (same fixed point, usable gradients early on; Goodfellow et al. 2014).
Together: Eq. (4.4). Training follows Algorithm 1 line by line (:class:`ALGANTrainer`): latents
``z_d`` (a fraction α normal, 1 - α anomalous) and ``z_g`` are re-drawn every ``n_z`` epochs; per
batch D takes ``n_dis`` steps; no buffer term in the first epoch (line 11); the buffer receives
``x'`` (line 18); G takes one step on ``z_g`` (lines 19–20). Adam β = (0, 0.9), lr G 2e-4, D 1e-4,
latent 100-d, α = ξ = 0.75, σ = 4, n_z = n_dis = 2, batch 16 (§5.1.1).

Anomaly score: the discriminator's raw logit with the sign reversed (Eq. 5.1, Fig. 5.4). Model
selection (§5.3): validation AUROC every ``val_every`` epochs on a labelled validation split
(``fit(train, validation=...)``), the best discriminator is kept.

Two detectors are registered:

* ``"algan_image"`` — DCGAN-like G/D (7 transposed convolutions / 7 convolutions at 256 px; fewer at
  smaller sizes), BatchNorm + ReLU in G (no BN on the output layer, tanh), spectral norm +
  LeakyReLU in D; D's input is the image with its channel-wise max-pool and average-pool images
  concatenated (§5.2.5), 3 + 2 = 5 channels.
* ``"algan_feature"`` — three fully connected layers each for G and D on globally average-pooled
  last-stage features of a frozen backbone (the thesis: WideResNet-101, 2048-d; here by default
  ``efficientnet_lite0`` stage 4, 320-d, the backbone available offline), with the rotation
  augmentation of §5.2.5 (24 training and 64 test rotations in the paper; test scores are averaged
  over the rotations).

:func:`train_toy` is the 2-D toy problem of Fig. 4.5 (100-d latents mapped to N(0, I₂)).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm
from tqdm.auto import tqdm

from ..data.base import Split, as_image_list
from ..errors import ConfigError, DatasetError, TrainingError
from . import register_model
from .base import Detector, check_loss, images_to_tensor

LATENT_KINDS = ("normal", "truncated_normal", "uniform")
AUGMENTS = ("none", "hflip", "vflip", "flip", "rotate", "flip_rotate")


# ------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------
def _check_size(size: int) -> int:
    if size < 8 or size & (size - 1):
        raise ConfigError(
            f"image_size={size}: the DCGAN-like networks need a power of two ≥ 8 (e.g. 32, 64, 256)"
        )
    return int(math.log2(size)) - 2  # stride-2 stages between 4×4 and size×size


def _channels(size: int, res: int, base: int, max_ch: int) -> int:
    """Feature channels at resolution ``res``: ``base`` next to the image, doubling per halving."""
    return int(min(max_ch, base * size // (2 * res)))


class DCGANGenerator(nn.Module):
    """z ``[B,d]`` → image ``[B,C,S,S]`` in [-1, 1]: ConvT(4, 1, 0) to 4×4, then ConvT(4, 2, 1) stages.

    ``log2(S) - 1`` transposed convolutions (7 at 256 px, as §5.1.1); BatchNorm + ReLU after every
    layer except the output one (tanh).
    """

    def __init__(
        self, latent_dim: int, out_channels: int = 3, size: int = 64, base: int = 64, max_ch: int = 512
    ):
        super().__init__()
        n_up = _check_size(size)
        self.latent_dim = latent_dim
        ch = _channels(size, 4, base, max_ch)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        res = 4
        for i in range(n_up):
            res *= 2
            if i == n_up - 1:
                layers += [nn.ConvTranspose2d(ch, out_channels, 4, 2, 1), nn.Tanh()]
            else:
                nxt = _channels(size, res, base, max_ch)
                layers += [
                    nn.ConvTranspose2d(ch, nxt, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(nxt),
                    nn.ReLU(True),
                ]
                ch = nxt
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], -1, 1, 1))


class DCGANDiscriminator(nn.Module):
    """image ``[B,C,S,S]`` → logit ``[B]``: Conv(4, 2, 1) stages down to 4×4, then Conv(4, 1, 0) to 1×1.

    ``log2(S) - 1`` convolutions (7 at 256 px). ``spectral=True`` (ALGAN): spectral norm on every
    convolution (Miyato et al. 2018) and LeakyReLU(0.2), no BatchNorm. ``spectral=False,
    batchnorm=True``: the plain DCGAN discriminator/encoder of the GANomaly family. ``out_dim > 1``
    turns it into an encoder (``[B, out_dim]``).
    """

    def __init__(
        self,
        in_channels: int = 3,
        size: int = 64,
        base: int = 64,
        max_ch: int = 512,
        spectral: bool = True,
        batchnorm: bool = False,
        out_dim: int = 1,
    ):
        super().__init__()
        n_down = _check_size(size)
        sn = spectral_norm if spectral else (lambda m: m)
        layers: list[nn.Module] = []
        ch_in, res = in_channels, size
        for i in range(n_down):
            res //= 2
            ch = _channels(size, res, base, max_ch)
            layers.append(sn(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=not batchnorm)))
            if batchnorm and i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            ch_in = ch
        self.features = nn.Sequential(*layers)
        self.head = sn(nn.Conv2d(ch_in, out_dim, 4, 1, 0))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.features(x)).flatten(1)
        return out[:, 0] if self.out_dim == 1 else out

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        out = self.head(f).flatten(1)
        return (out[:, 0] if self.out_dim == 1 else out), f


class MLPGenerator(nn.Module):
    """Three fully connected layers (ALGAN-feature G, §5.1.1): BN + ReLU on the hidden ones, linear output."""

    def __init__(self, latent_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(True),
            nn.Linear(hidden, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(True),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """Three spectrally normalised fully connected layers with LeakyReLU(0.2) → logit ``[B]``."""

    def __init__(self, in_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Linear(in_dim, hidden)),
            nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Linear(hidden, hidden)),
            nn.LeakyReLU(0.2, inplace=True),
            spectral_norm(nn.Linear(hidden, 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


def channel_pool_input(x: torch.Tensor) -> torch.Tensor:
    """§5.2.5: concatenate the channel-wise max-pool and average-pool images to ``x`` (3 → 5 channels)."""
    return torch.cat([x, x.amax(1, keepdim=True), x.mean(1, keepdim=True)], 1)


# ------------------------------------------------------------------------------------------------
# Latents, buffer, losses (Eqs. 4.2–4.3)
# ------------------------------------------------------------------------------------------------
def sample_latent(
    n: int,
    dim: int,
    anomalous: bool,
    sigma: float = 4.0,
    kind: str = "normal",
    truncation: float = 2.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Latents for G (Table 5.14 / Fig. 5.8).

    ``kind="normal"``: normal ``N(0, I)``, anomalous ``N(0, σ²I)`` (Fig. 5.8a, the default).
    ``kind="truncated_normal"``: anomalous ``N(0, σ²I)`` with the values in (-th, th) cut out (5.8b).
    ``kind="uniform"``: normal ``U(-1, 1)``, anomalous ``U(-2, 2)`` with (-1, 1) cut out (5.8c).
    """
    if kind not in LATENT_KINDS:
        raise ConfigError(f"unknown latent kind {kind!r}; valid: {', '.join(LATENT_KINDS)}")
    g = generator
    if kind == "uniform":
        if not anomalous:
            z = torch.rand(n, dim, generator=g) * 2 - 1
        else:  # |z| ~ U(1, 2) with a random sign: U(-2, 2) truncated to |z| ≥ 1
            sign = torch.where(torch.rand(n, dim, generator=g) < 0.5, -1.0, 1.0)
            z = sign * (1 + torch.rand(n, dim, generator=g))
    elif not anomalous:
        z = torch.randn(n, dim, generator=g)
    elif kind == "normal":
        z = sigma * torch.randn(n, dim, generator=g)
    else:  # N(0, σ²) conditioned on |z| ≥ th, by inverse CDF of the half-normal tail
        lo = 0.5 * (1 + math.erf(truncation / sigma / math.sqrt(2)))
        u = lo + (1 - lo) * torch.rand(n, dim, generator=g, dtype=torch.float64)
        mag = sigma * math.sqrt(2) * torch.erfinv(2 * u.clamp(max=1 - 1e-12) - 1)
        sign = torch.where(torch.rand(n, dim, generator=g) < 0.5, -1.0, 1.0)
        z = (sign * mag).float()
    return z.to(device)


class FakeBuffer:
    """Buffer of earlier fakes (§4.3, §5.1.1): capacity ``2 × batch``; once full, each push replaces
    ``len(x')`` (= half) randomly chosen entries. Keeps which entries came from anomalous latents."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ConfigError(f"buffer capacity must be ≥ 1, got {capacity}")
        self.capacity = capacity
        self.x: torch.Tensor | None = None
        self.anomalous: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.x is None else len(self.x)

    def push(
        self, x: torch.Tensor, anomalous: torch.Tensor, generator: torch.Generator | None = None
    ) -> None:
        x, anomalous = x.detach(), anomalous.detach().bool()
        if self.x is None:
            self.x, self.anomalous = x[: self.capacity].clone(), anomalous[: self.capacity].clone()
            return
        free = self.capacity - len(self.x)
        if free > 0:
            self.x = torch.cat([self.x, x[:free]])
            self.anomalous = torch.cat([self.anomalous, anomalous[:free]])
            x, anomalous = x[free:], anomalous[free:]
            if len(x) == 0:
                return
        k = min(len(x), self.capacity)
        idx = torch.randperm(self.capacity, generator=generator)[:k].to(self.x.device)
        self.x[idx] = x[:k]
        self.anomalous[idx] = anomalous[:k]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x is None:
            raise TrainingError("sampled an empty buffer (no fakes pushed yet)")
        idx = torch.randperm(len(self.x), generator=generator)[: min(n, len(self.x))].to(self.x.device)
        return self.x[idx], self.anomalous[idx]


def _nll_real(logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-logits).mean()  # -log D(x)


def _nll_fake(logits: torch.Tensor | None) -> torch.Tensor | None:
    if logits is None or logits.numel() == 0:
        return None
    return F.softplus(logits).mean()  # -log(1 - D(x'))


def discriminator_loss(
    real: torch.Tensor,
    fake_normal: torch.Tensor | None,
    fake_anomalous: torch.Tensor | None,
    buffer_normal: torch.Tensor | None = None,
    buffer_anomalous: torch.Tensor | None = None,
    alpha: float = 0.75,
    xi: float = 0.75,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative of Eq. (4.3) from raw logits of the five kinds of data.

    ``L = -E log D(x) - α{ξ E log(1-D(x'_n)) + (1-ξ) E log(1-D(x̂_n))}
          - (1-α){ξ E log(1-D(x'_a)) + (1-ξ) E log(1-D(x̂_a))}``.

    A group without buffered logits (first epoch, Algorithm 1 line 11, or buffer ablation) uses
    ξ = 1 for that group; a missing fake group contributes nothing (α = 1 ablates the anomalous
    latent). Returns the loss and its five terms (for logging and tests).
    """
    terms = {"real": _nll_real(real)}
    loss = terms["real"]
    for weight, fake, buf, name in (
        (alpha, fake_normal, buffer_normal, "normal"),
        (1.0 - alpha, fake_anomalous, buffer_anomalous, "anomalous"),
    ):
        lf, lb = _nll_fake(fake), _nll_fake(buf)
        if lf is not None:
            terms[f"fake_{name}"] = lf
        if lb is not None:
            terms[f"buffer_{name}"] = lb
        if lf is not None and lb is not None:
            loss = loss + weight * (xi * lf + (1.0 - xi) * lb)
        elif lf is not None:
            loss = loss + weight * lf
        elif lb is not None:
            loss = loss + weight * lb
    return loss, {k: float(v.detach()) for k, v in terms.items()}


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Eq. (4.2) in non-saturating form: ``E[-log D(G(z_n))]``."""
    return F.softplus(-fake_logits).mean()


# ------------------------------------------------------------------------------------------------
# Algorithm 1
# ------------------------------------------------------------------------------------------------
@dataclass
class ALGANConfig:
    """Hyperparameters of Algorithm 1 and §5.1.1 (defaults = the thesis)."""

    epochs: int = 512
    batch_size: int = 16
    latent_dim: int = 100
    alpha: float = 0.75
    xi: float = 0.75
    sigma: float = 4.0
    n_z: int = 2
    n_dis: int = 2
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    beta1: float = 0.0
    beta2: float = 0.9
    use_buffer: bool = True
    use_anomalous_latent: bool = True
    latent: str = "normal"
    truncation: float = 2.0
    val_every: int = 8

    def validate(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or not 0.0 <= self.xi <= 1.0:
            raise ConfigError(f"alpha={self.alpha} and xi={self.xi} must lie in [0, 1]")
        if self.sigma <= 0:
            raise ConfigError(f"sigma={self.sigma} must be > 0 (the thesis uses σ > 1, default 4)")
        for k in ("epochs", "batch_size", "latent_dim", "n_z", "n_dis", "val_every"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"{k}={getattr(self, k)} must be ≥ 1")
        if self.latent not in LATENT_KINDS:
            raise ConfigError(f"unknown latent kind {self.latent!r}; valid: {', '.join(LATENT_KINDS)}")

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.use_anomalous_latent else 1.0

    @property
    def effective_xi(self) -> float:
        return self.xi if self.use_buffer else 1.0


class ALGANTrainer:
    """Algorithm 1 for any G/D pair on an in-memory tensor of real-normal data.

    ``d_input`` maps data to D's input (e.g. :func:`channel_pool_input`); ``augment`` is applied to
    each real batch; ``validate(epoch)`` is called every ``val_every`` epochs and at the end.
    Per epoch ``history`` gets ``loss_d``, ``loss_g`` and the mean logits of each data kind
    (the monitoring §5.8 recommends when no anomalies are available).

    BatchNorm detail: the fakes ``x' = G(z_d)`` for the discriminator are generated with G's
    running BatchNorm statistics, which come from the generator steps on normal latents only.
    In a training-mode forward pass the batch statistics of the mixed batch would rescale the
    normal latents down and the anomalous ones up (and a batch of anomalous latents alone would be
    normalised back to unit scale), so the anomalous latent would no longer be anomalous relative
    to what G learns from ``z_g``. The thesis does not say how its code handles this.
    """

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        cfg: ALGANConfig,
        device: torch.device,
        seed: int = 0,
        d_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        name: str = "algan",
    ):
        cfg.validate()
        self.G, self.D, self.cfg, self.device, self.name = G, D, cfg, device, name
        self.d_input = d_input or (lambda x: x)
        self.augment = augment
        self.gen = torch.Generator().manual_seed(int(seed))
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas, foreach=True)
        self.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas, foreach=True)
        self.buffer = FakeBuffer(2 * cfg.batch_size)
        self.history: dict[str, list[float]] = {}

    def _D(self, x: torch.Tensor) -> torch.Tensor:
        return self.D(self.d_input(x))

    def _latents(
        self, n_batches: int, sizes: Sequence[int]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Line 3–4: z_d (fraction α normal, 1 - α anomalous) and z_g ~ N(0, I), one set per batch."""
        c, a = self.cfg, self.cfg.effective_alpha
        zd, flags, zg = [], [], []
        for j in range(n_batches):
            b = sizes[j]
            n_a = 0 if a >= 1.0 else max(1, int(round((1.0 - a) * b)))
            n_n = b - n_a
            zn = sample_latent(n_n, c.latent_dim, False, c.sigma, c.latent, c.truncation, self.gen)
            za = sample_latent(n_a, c.latent_dim, True, c.sigma, c.latent, c.truncation, self.gen)
            zd.append(torch.cat([zn, za]).to(self.device))
            flags.append(
                torch.cat([torch.zeros(n_n, dtype=torch.bool), torch.ones(n_a, dtype=torch.bool)]).to(
                    self.device
                )
            )
            zg.append(
                sample_latent(b, c.latent_dim, False, c.sigma, c.latent, c.truncation, self.gen).to(
                    self.device
                )
            )
        return zd, flags, zg

    def _check_finite(self, step: str) -> None:
        for net, label in ((self.D, "discriminator"), (self.G, "generator")):
            for n, p in net.named_parameters():
                if not torch.isfinite(p).all():
                    raise TrainingError(
                        f"{self.name} diverged: {label} parameter {n} became NaN/inf at {step}; "
                        "lower lr_d/lr_g or check the input data"
                    )

    def train(
        self,
        real: torch.Tensor,
        validate: Callable[[int], float | None] | None = None,
        verbose: bool = False,
    ) -> dict[str, list[float]]:
        c = self.cfg
        n = len(real)
        if n < 2:
            raise DatasetError(f"{self.name}: need at least 2 training samples, got {n}")
        bs = min(c.batch_size, n)
        n_batches = max(1, n // bs)  # drop the last incomplete batch (BatchNorm needs > 1 sample)
        sizes = [bs] * n_batches
        zd = flags = zg = None
        a_eff, xi_eff = c.effective_alpha, c.effective_xi
        self.G.train()
        self.D.train()
        bar = tqdm(range(1, c.epochs + 1), desc=self.name, disable=not verbose, leave=False)
        for i in bar:
            if zd is None or i % c.n_z == 0:  # lines 2–5 (the first draw happens before epoch 1)
                zd, flags, zg = self._latents(n_batches, sizes)
            perm = torch.randperm(n, generator=self.gen)
            acc: dict[str, list[float]] = {}
            for j in range(n_batches):  # line 6
                x = real[perm[j * bs : (j + 1) * bs].to(real.device)].to(self.device)  # line 7
                if self.augment is not None:
                    x = self.augment(x, self.gen)
                with torch.no_grad():  # line 9 (G is not updated inside the n_dis loop)
                    self.G.eval()  # BN statistics of normal latents: see the class docstring
                    x_fake = self.G(zd[j])
                    self.G.train()
                fa = flags[j]
                for k in range(c.n_dis):  # line 8
                    l_real = self._D(x)
                    l_fake = self._D(x_fake)
                    bn = ba = None
                    if i > 1 and c.use_buffer and len(self.buffer) > 0:  # lines 10–14
                        xb, fb = self.buffer.sample(bs, self.gen)
                        lb = self._D(xb)
                        bn, ba = lb[~fb], lb[fb]
                    loss_d, parts = discriminator_loss(
                        l_real, l_fake[~fa], l_fake[fa], bn, ba, alpha=a_eff, xi=xi_eff
                    )
                    check_loss(loss_d.detach(), f"epoch {i}, batch {j}, D step {k}", self.name)
                    self.opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    self.opt_d.step()  # line 16
                    for key, v in parts.items():
                        acc.setdefault(f"nll_{key}", []).append(v)
                    acc.setdefault("logit_real", []).append(float(l_real.detach().mean()))
                    if (~fa).any():
                        acc.setdefault("logit_fake_normal", []).append(float(l_fake[~fa].detach().mean()))
                    if fa.any():
                        acc.setdefault("logit_fake_anomalous", []).append(float(l_fake[fa].detach().mean()))
                if c.use_buffer:
                    self.buffer.push(x_fake, fa, self.gen)  # line 18
                loss_g = generator_loss(self._D(self.G(zg[j])))  # line 19
                check_loss(loss_g.detach(), f"epoch {i}, batch {j}, G step", self.name)
                self.opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                self.opt_g.step()  # line 20
                acc.setdefault("loss_d", []).append(float(loss_d.detach()))
                acc.setdefault("loss_g", []).append(float(loss_g.detach()))
            self._check_finite(f"epoch {i}")
            for key, v in acc.items():
                self.history.setdefault(key, []).append(float(np.mean(v)))
            if verbose:
                bar.set_postfix(
                    loss_d=f"{self.history['loss_d'][-1]:.3f}", loss_g=f"{self.history['loss_g'][-1]:.3f}"
                )
            if validate is not None and (i % c.val_every == 0 or i == c.epochs):
                validate(i)
                self.G.train()
                self.D.train()
        return self.history


# ------------------------------------------------------------------------------------------------
# Shared detector machinery for the GAN family (validation, best model, augmentation, state)
# ------------------------------------------------------------------------------------------------
def rotate(x: torch.Tensor, angles_deg: torch.Tensor | float, padding: str = "zeros") -> torch.Tensor:
    """Rotate a batch ``[B,C,H,W]`` by ``angles_deg`` (one per image or one for all), bilinear."""
    b = x.shape[0]
    a = torch.as_tensor(angles_deg, dtype=x.dtype, device=x.device).reshape(-1).expand(b) * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def make_augment(kind: str) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """Random flips / rotation of a real batch (§5.2.5 per-category augmentation)."""
    if kind not in AUGMENTS:
        raise ConfigError(f"unknown augment {kind!r}; valid: {', '.join(AUGMENTS)}")
    if kind == "none":
        return None

    def aug(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        if kind in ("hflip", "flip", "flip_rotate"):
            m = (torch.rand(b, generator=g) < 0.5).to(x.device)
            x = torch.where(m[:, None, None, None], x.flip(-1), x)
        if kind in ("vflip", "flip", "flip_rotate"):
            m = (torch.rand(b, generator=g) < 0.5).to(x.device)
            x = torch.where(m[:, None, None, None], x.flip(-2), x)
        if kind in ("rotate", "flip_rotate"):
            x = rotate(x, (torch.rand(b, generator=g) * 360.0).to(x.device), padding="reflection")
        return x

    return aug


class GANDetector(Detector):
    """Base of the GAN detectors: images → [-1, 1] tensors, validation-based model selection (§5.3).

    Subclasses set ``module_names`` (the ``nn.Module`` attributes to checkpoint), build them in
    ``_build()``, train in ``_train(real, validate)`` and score ``[-1, 1]`` batches in ``_score()``
    (higher = more anomalous; maps optional).
    """

    module_names: tuple[str, ...] = ()
    default_image_size = 64

    def __init__(
        self,
        image_size: int | None,
        device: str,
        seed: int,
        batch_size: int,
        epochs: int,
        val_every: int,
        augment: str,
        verbose: bool,
    ):
        super().__init__(image_size, device, seed, batch_size)
        self.config.update(epochs=epochs, val_every=val_every, augment=augment)
        make_augment(augment)
        self.verbose = verbose
        self._val: tuple[torch.Tensor, np.ndarray] | None = None
        self._best: tuple[float, int, dict[str, Any]] | None = None

    # --- protocol ---------------------------------------------------------------------------
    def fit(self, train: Any, validation: Any = None, validation_labels: Any = None) -> GANDetector:  # type: ignore[override]
        """Fit on normal images; with a labelled ``validation`` split keep the model of best AUROC (§5.3)."""
        self._val = None
        self._best = None
        if validation is not None:
            labels = validation.labels if isinstance(validation, Split) else validation_labels
            if labels is None:
                raise DatasetError(
                    "validation images given without labels (pass a Split or validation_labels=)"
                )
            labels = np.asarray(labels).astype(int)
            imgs = as_image_list(validation)
            if len(labels) != len(imgs):
                raise DatasetError(f"validation: {len(imgs)} images but {len(labels)} labels")
            if labels.min() == labels.max():
                raise DatasetError(
                    "validation split needs normal and anomalous images for AUROC model selection"
                )
            self._val = (self._prepare(imgs), labels)
        super().fit(train)
        self._val = None
        return self

    def _prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 images → float ``[N,3,S,S]`` in [-1, 1] on the CPU (the training set is held in memory)."""
        return images_to_tensor(images, self.image_size).mul_(2).sub_(1)

    def _fit(self, images: list[np.ndarray]) -> None:
        self._build()
        real = self._prepare(images)
        self._train(real, self._validate)
        if self._best is not None:
            auc, epoch, state = self._best
            self._load_modules(state)
            self.history["best_epoch"] = [float(epoch)]
            self.history["best_val_auroc"] = [float(auc)]

    def _validate(self, epoch: int) -> float | None:
        if self._val is None:
            return None
        from ..metrics import image_auroc

        x, labels = self._val
        scores = self._score_tensor(x)[0].cpu().numpy()
        if not np.isfinite(scores).all():
            raise TrainingError(
                f"{self.name}: non-finite validation scores at epoch {epoch}; training diverged"
            )
        auc = image_auroc(labels, scores)
        self.history.setdefault("val_epoch", []).append(float(epoch))
        self.history.setdefault("val_auroc", []).append(float(auc))
        if self._best is None or auc > self._best[0]:
            self._best = (auc, epoch, copy.deepcopy(self._module_states()))
        return auc

    @torch.no_grad()
    def _score_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        for name in self.module_names:
            getattr(self, name).eval()
        scores, maps = [], []
        for i in range(0, len(x), self.batch_size):
            s, m = self._score(x[i : i + self.batch_size].to(self.device))
            scores.append(s.float().cpu())
            if m is not None:
                maps.append(m.float().cpu())
        return torch.cat(scores), (torch.cat(maps) if maps else None)

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = self._score_tensor(self._prepare(images))
        if maps is None:  # image-level method: a constant map per image
            maps = scores[:, None, None].clone()
        return scores, maps

    def _module_states(self) -> dict[str, Any]:
        return {n: getattr(self, n).state_dict() for n in self.module_names}

    def _load_modules(self, states: dict[str, Any]) -> None:
        for n in self.module_names:
            getattr(self, n).load_state_dict(states[n])

    def _get_state(self) -> dict[str, Any]:
        return {"modules": {n: {k: v.cpu() for k, v in s.items()} for n, s in self._module_states().items()}}

    def _set_state(self, state: dict[str, Any]) -> None:
        self._build()
        self._load_modules(state["modules"])

    # --- to implement -------------------------------------------------------------------------
    def _build(self) -> None:
        raise NotImplementedError

    def _train(self, real: torch.Tensor, validate: Callable[[int], float | None]) -> None:
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


def _algan_cfg(**kw: Any) -> ALGANConfig:
    cfg = ALGANConfig(**kw)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------------
# ALGAN-image
# ------------------------------------------------------------------------------------------------
@register_model("algan_image")
class ALGANImage(GANDetector):
    """ALGAN-image (§5.1.1): DCGAN-like G/D on images; D's logit (sign reversed) is the anomaly score.

    ``base`` is the channel width next to the image (64 in a DCGAN); ``channel_pool`` adds the
    max-pool and average-pool channel images to D's input (§5.2.5).
    """

    module_names = ("G", "D")
    default_image_size = 256

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 16,
        epochs: int = 512,
        val_every: int = 8,
        latent_dim: int = 100,
        alpha: float = 0.75,
        xi: float = 0.75,
        sigma: float = 4.0,
        n_z: int = 2,
        n_dis: int = 2,
        lr_g: float = 2e-4,
        lr_d: float = 1e-4,
        use_buffer: bool = True,
        use_anomalous_latent: bool = True,
        latent: str = "normal",
        truncation: float = 2.0,
        base: int = 64,
        max_channels: int = 512,
        channel_pool: bool = True,
        augment: str = "none",
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size, epochs, val_every, augment, verbose)
        self.algan = _algan_cfg(
            epochs=epochs,
            batch_size=batch_size,
            latent_dim=latent_dim,
            alpha=alpha,
            xi=xi,
            sigma=sigma,
            n_z=n_z,
            n_dis=n_dis,
            lr_g=lr_g,
            lr_d=lr_d,
            use_buffer=use_buffer,
            use_anomalous_latent=use_anomalous_latent,
            latent=latent,
            truncation=truncation,
            val_every=val_every,
        )
        _check_size(self.image_size)
        self.config.update(
            {k: v for k, v in asdict(self.algan).items() if k not in ("beta1", "beta2")},
            base=base,
            max_channels=max_channels,
            channel_pool=channel_pool,
        )

    def _build(self) -> None:
        c = self.config
        torch.manual_seed(self.seed)
        self.G = DCGANGenerator(c["latent_dim"], 3, self.image_size, c["base"], c["max_channels"]).to(
            self.device
        )
        in_ch = 5 if c["channel_pool"] else 3
        self.D = DCGANDiscriminator(in_ch, self.image_size, c["base"], c["max_channels"], spectral=True).to(
            self.device
        )

    def _d_input(self, x: torch.Tensor) -> torch.Tensor:
        return channel_pool_input(x) if self.config["channel_pool"] else x

    def _train(self, real: torch.Tensor, validate: Callable[[int], float | None]) -> None:
        trainer = ALGANTrainer(
            self.G,
            self.D,
            self.algan,
            self.device,
            self.seed,
            d_input=self._d_input,
            augment=make_augment(self.config["augment"]),
            name=self.name,
        )
        self.history.update(trainer.train(real, validate, verbose=self.verbose))

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -self.D(self._d_input(x)), None  # Eq. 5.1: low D(x) = anomalous

    def logits(self, images: Any) -> np.ndarray:
        """Raw discriminator logits (before the sigmoid) of images, as in Fig. 5.4."""
        return -self.predict(images)[0]

    @torch.no_grad()
    def generate(
        self, n: int, anomalous: bool = False, sigma: float | None = None, seed: int = 0
    ) -> np.ndarray:
        """Fake-normal (``anomalous=False``) or fake-anomalous images as uint8 ``[n,S,S,3]`` (Fig. 4.4)."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() before generate()")
        c = self.config
        g = torch.Generator().manual_seed(seed)
        z = sample_latent(n, c["latent_dim"], anomalous, sigma or c["sigma"], c["latent"], c["truncation"], g)
        self.G.eval()
        x = self.G(z.to(self.device)).clamp(-1, 1).add(1).mul(127.5).round().byte()
        return x.permute(0, 2, 3, 1).cpu().numpy()

    @torch.no_grad()
    def score_generated(self, n: int, sigma: float, seed: int = 0) -> np.ndarray:
        """Anomaly scores of ``G(z)``, ``z ~ N(0, σ²I)`` (Table 5.13: fakes from σ = 5…8)."""
        g = torch.Generator().manual_seed(seed)
        z = sample_latent(n, self.config["latent_dim"], True, sigma, "normal", 0.0, g)
        self.G.eval()
        x = self.G(z.to(self.device))
        return self._score_tensor(x)[0].numpy().astype(np.float64)


# ------------------------------------------------------------------------------------------------
# ALGAN-feature
# ------------------------------------------------------------------------------------------------
_FEATURE_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_FEATURE_CACHE_SIZE = 8


def rotation_angles(n: int) -> list[float]:
    """``n`` evenly spaced angles over 360° (the rotations of §5.2.5 / DifferNet)."""
    if n < 1:
        raise ConfigError(f"number of rotations must be ≥ 1, got {n}")
    return [360.0 * k / n for k in range(n)]


@register_model("algan_feature")
class ALGANFeature(GANDetector):
    """ALGAN-feature (§5.1.1, Fig. 5.1): ALGAN on globally average-pooled last-stage backbone features.

    Each image contributes ``n_rot_train`` rotated copies to training; a test image's score is the
    mean over ``n_rot_test`` rotations (§5.2.5). Features are standardised with the training mean
    and standard deviation (a numerical convenience; the thesis does not say).
    """

    module_names = ("G", "D")
    default_image_size = 224

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 16,
        epochs: int = 192,
        val_every: int = 8,
        latent_dim: int = 100,
        alpha: float = 0.75,
        xi: float = 0.75,
        sigma: float = 4.0,
        n_z: int = 2,
        n_dis: int = 2,
        lr_g: float = 2e-4,
        lr_d: float = 1e-4,
        use_buffer: bool = True,
        use_anomalous_latent: bool = True,
        latent: str = "normal",
        truncation: float = 2.0,
        hidden: int = 512,
        backbone: str = "efficientnet_lite0",
        layer: int = 4,
        n_rot_train: int = 24,
        n_rot_test: int = 64,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size, epochs, val_every, "none", verbose)
        self.config.pop("augment")  # rotations are the augmentation here (n_rot_train)
        self.algan = _algan_cfg(
            epochs=epochs,
            batch_size=batch_size,
            latent_dim=latent_dim,
            alpha=alpha,
            xi=xi,
            sigma=sigma,
            n_z=n_z,
            n_dis=n_dis,
            lr_g=lr_g,
            lr_d=lr_d,
            use_buffer=use_buffer,
            use_anomalous_latent=use_anomalous_latent,
            latent=latent,
            truncation=truncation,
            val_every=val_every,
        )
        rotation_angles(n_rot_train)
        rotation_angles(n_rot_test)
        self.config.update(
            {k: v for k, v in asdict(self.algan).items() if k not in ("beta1", "beta2")},
            hidden=hidden,
            backbone=backbone,
            layer=layer,
            n_rot_train=n_rot_train,
            n_rot_test=n_rot_test,
        )
        self._backbone: nn.Module | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.dim: int | None = None

    def _get_backbone(self) -> nn.Module:
        if self._backbone is None:
            from ..backbones import load_backbone

            self._backbone = load_backbone(self.config["backbone"], (self.config["layer"],), self.device)
        return self._backbone

    def _prepare(self, images: list[np.ndarray]) -> torch.Tensor:
        return images_to_tensor(images, self.image_size)  # [0, 1]: the backbone normalises itself

    @torch.no_grad()
    def features(self, x: torch.Tensor, n_rot: int) -> torch.Tensor:
        """Pooled features ``[n_rot, N, C]`` of ``[0, 1]`` images ``x`` under ``n_rot`` rotations.

        The backbone is frozen, so features of the same images are cached (a few sets, in memory):
        hyperparameter sweeps over the GAN then cost no feature extraction.
        """
        key = (
            self.config["backbone"],
            self.config["layer"],
            n_rot,
            tuple(x.shape),
            hashlib.sha1(x.numpy().tobytes()).hexdigest(),
        )
        if key in _FEATURE_CACHE:
            _FEATURE_CACHE.move_to_end(key)
            return _FEATURE_CACHE[key]
        out = self._extract(x, n_rot)
        _FEATURE_CACHE[key] = out
        while len(_FEATURE_CACHE) > _FEATURE_CACHE_SIZE:
            _FEATURE_CACHE.popitem(last=False)
        return out

    @torch.no_grad()
    def _extract(self, x: torch.Tensor, n_rot: int) -> torch.Tensor:
        bb = self._get_backbone()
        out = []
        angles = rotation_angles(n_rot)
        total = len(angles) * math.ceil(len(x) / self.batch_size)
        with tqdm(total=total, desc=f"{self.name} features", disable=not self.verbose, leave=False) as bar:
            for a in angles:
                fs = []
                for i in range(0, len(x), max(self.batch_size, 32)):
                    xb = x[i : i + max(self.batch_size, 32)].to(self.device)
                    if a:
                        xb = rotate(xb, a)
                    fs.append(bb(xb)[-1].mean(dim=(2, 3)).float().cpu())
                    bar.update(1)
                out.append(torch.cat(fs))
        return torch.stack(out)

    def _build(self) -> None:
        if self.dim is None:
            raise RuntimeError("feature dimension unknown before features are extracted")
        torch.manual_seed(self.seed)
        h = self.config["hidden"]
        self.G = MLPGenerator(self.config["latent_dim"], self.dim, h).to(self.device)
        self.D = MLPDiscriminator(self.dim, h).to(self.device)

    def _fit(self, images: list[np.ndarray]) -> None:
        feats = self.features(self._prepare(images), self.config["n_rot_train"]).flatten(0, 1)
        self.dim = feats.shape[1]
        self.mean = feats.mean(0)
        self.std = feats.std(0).clamp_min(1e-6)
        real = (feats - self.mean) / self.std
        if self._val is not None:  # validation images → their rotated, standardised features once
            xv, lv = self._val
            self._val_feats = (self._standardise(self.features(xv, self.config["n_rot_test"])), lv)
        self._build()
        trainer = ALGANTrainer(self.G, self.D, self.algan, self.device, self.seed, name=self.name)
        self.history.update(trainer.train(real, self._validate, verbose=self.verbose))
        if self._best is not None:
            auc, epoch, state = self._best
            self._load_modules(state)
            self.history["best_epoch"] = [float(epoch)]
            self.history["best_val_auroc"] = [float(auc)]
        self._val_feats = None

    def _standardise(self, f: torch.Tensor) -> torch.Tensor:
        return (f - self.mean) / self.std

    def fit(self, train: Any, validation: Any = None, validation_labels: Any = None) -> ALGANFeature:  # type: ignore[override]
        # validation images are prepared as [0, 1] tensors by _prepare, featurised inside _fit
        return super().fit(train, validation, validation_labels)  # type: ignore[return-value]

    @torch.no_grad()
    def _score_feats(self, f: torch.Tensor) -> torch.Tensor:
        """Mean over rotations of -D(feature): ``f`` is ``[R,N,C]`` standardised."""
        self.D.eval()
        r, n, c = f.shape
        out = []
        flat = f.reshape(r * n, c)
        for i in range(0, len(flat), 4096):
            out.append(-self.D(flat[i : i + 4096].to(self.device)).float().cpu())
        return torch.cat(out).view(r, n).mean(0)

    def _validate(self, epoch: int) -> float | None:
        if getattr(self, "_val_feats", None) is None:
            return None
        from ..metrics import image_auroc

        fv, labels = self._val_feats
        scores = self._score_feats(fv).numpy()
        if not np.isfinite(scores).all():
            raise TrainingError(
                f"{self.name}: non-finite validation scores at epoch {epoch}; training diverged"
            )
        auc = image_auroc(labels, scores)
        self.history.setdefault("val_epoch", []).append(float(epoch))
        self.history.setdefault("val_auroc", []).append(float(auc))
        if self._best is None or auc > self._best[0]:
            self._best = (auc, epoch, copy.deepcopy(self._module_states()))
        return auc

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._standardise(self.features(self._prepare(images), self.config["n_rot_test"]))
        scores = self._score_feats(f)
        return scores, scores[:, None, None].clone()

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state.update(mean=self.mean, std=self.std, dim=self.dim)
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self.mean, self.std, self.dim = state["mean"], state["std"], int(state["dim"])
        super()._set_state(state)


# ------------------------------------------------------------------------------------------------
# Fig. 4.5: the 2-D toy problem
# ------------------------------------------------------------------------------------------------
def train_toy(
    n_real: int = 2000,
    epochs: int = 200,
    hidden: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
    n_show: int = 1000,
    grid: int = 80,
    verbose: bool = False,
    **algan_kw: Any,
) -> dict[str, Any]:
    """Fig. 4.5: ALGAN mapping 100-d latents to real-normal data ``x ~ N(0, I₂)``.

    Returns real samples, fake-normal ``G(z_n)`` and fake-anomalous ``G(z_a)`` (σ from
    ``algan_kw``, default 4) samples, the discriminator's anomaly score on a grid (for a contour)
    and on each sample set, and the training history.
    """
    from ..utils import resolve_device

    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = _algan_cfg(**{"epochs": epochs, "batch_size": 64, **algan_kw})
    real = torch.randn(n_real, 2, generator=g)
    G = MLPGenerator(cfg.latent_dim, 2, hidden).to(dev)
    D = MLPDiscriminator(2, hidden).to(dev)
    trainer = ALGANTrainer(G, D, cfg, dev, seed, name="algan_toy")
    history = trainer.train(real, verbose=verbose)
    G.eval()
    D.eval()
    with torch.no_grad():
        gs = torch.Generator().manual_seed(seed + 1)
        x_real = torch.randn(n_show, 2, generator=gs)
        zn = sample_latent(n_show, cfg.latent_dim, False, cfg.sigma, cfg.latent, cfg.truncation, gs)
        za = sample_latent(n_show, cfg.latent_dim, True, cfg.sigma, cfg.latent, cfg.truncation, gs)
        x_n, x_a = G(zn.to(dev)).cpu(), G(za.to(dev)).cpu()
        lim = float(max(4.0, x_a.abs().quantile(0.99)))
        ax = torch.linspace(-lim, lim, grid)
        gx, gy = torch.meshgrid(ax, ax, indexing="xy")
        score_grid = -D(torch.stack([gx.ravel(), gy.ravel()], 1).to(dev)).cpu().view(grid, grid)

        def s(v: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return (-D(v.to(dev))).cpu().numpy()

    return {
        "real": x_real.numpy(),
        "fake_normal": x_n.numpy(),
        "fake_anomalous": x_a.numpy(),
        "score_real": s(x_real),
        "score_fake_normal": s(x_n),
        "score_fake_anomalous": s(x_a),
        "grid_axis": ax.numpy(),
        "score_grid": score_grid.numpy(),
        "history": history,
        "config": asdict(cfg),
    }
