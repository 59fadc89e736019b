"""GAN-based baselines of Table 5.2, built on the same DCGAN-like networks as ALGAN-image (§5.1.1).

* ``"ganomaly"`` — GANomaly (Akçay, Atapour-Abarghouei & Breckon, ACCV 2018): encoder G_E, decoder
  G_D, second encoder E; ``L_G = w_adv ‖f(x) - f(x̂)‖² + w_con ‖x - x̂‖₁ + w_enc ‖G_E(x) - E(x̂)‖²``
  with ``f`` the discriminator's penultimate features and weights 1 / 50 / 1; D is a DCGAN
  discriminator trained with BCE and re-initialised when its loss collapses below 1e-5. Anomaly
  score: the latent distance ``A(x) = ‖G_E(x) - E(G(x))‖²`` (paper Eq. 8); latent 100-d.
* ``"skip_ganomaly"`` — Skip-GANomaly (Akçay et al., IJCNN 2019): U-Net generator with skip
  connections and a 512-d bottleneck; ``L_G = w_adv L_adv + w_con ‖x - x̂‖₁ + w_lat ‖f(x) - f(x̂)‖²``
  with weights 1 / 40 / 1; score ``A(x) = λ R(x) + (1 - λ) L(x)``, λ = 0.9, R the L1 reconstruction
  error and L the feature-matching error (paper Eq. 5; the min-max scaling over the test set does
  not change the AUROC and is left out so that scores do not depend on the batch).
* ``"alocc"`` — ALOCC (Sabokrou et al., CVPR 2018): a refiner R (encoder–decoder) reconstructs
  noisy inputs ``x̃ = x + η``, ``η ~ N(0, σ_n² I)``, and D separates x from R(x̃);
  ``L_R = -log D(R(x̃)) + λ ‖x - R(x̃)‖²``, λ = 0.4. Score: ``1 - D(R(x))`` (here the reversed logit).

* ``"differnet"`` — a DifferNet-style normalizing flow (Rudolph et al., WACV 2021) on pooled
  multi-scale backbone features, the feature-based comparison of Table 5.3.

The GAN baselines use Adam (lr 2e-4, β = (0.5, 0.999)), batch 16, 512 epochs with validation every 8 (§5.3) in
the full profile, and return the per-pixel reconstruction error as an anomaly map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError, DatasetError
from . import register_model
from .algan import DCGANDiscriminator, DCGANGenerator, GANDetector, _channels, _check_size, make_augment
from .base import check_loss


class UNetGenerator(nn.Module):
    """Skip-GANomaly's generator: DCGAN-like encoder to a ``latent_dim``×1×1 bottleneck and a decoder
    that concatenates the encoder feature map of the same resolution before every up-sampling step."""

    def __init__(self, size: int = 64, latent_dim: int = 512, base: int = 64, max_ch: int = 512):
        super().__init__()
        n = _check_size(size)
        self.down = nn.ModuleList()
        ch_in, res, chans = 3, size, []
        for i in range(n):
            res //= 2
            ch = _channels(size, res, base, max_ch)
            layers: list[nn.Module] = [nn.Conv2d(ch_in, ch, 4, 2, 1, bias=False)]
            if i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            chans.append(ch)
            ch_in = ch
        self.bottleneck = nn.Sequential(
            nn.Conv2d(ch_in, latent_dim, 4, 1, 0), nn.LeakyReLU(0.2, inplace=True)
        )
        self.up0 = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, chans[-1], 4, 1, 0, bias=False),
            nn.BatchNorm2d(chans[-1]),
            nn.ReLU(True),
        )
        self.up = nn.ModuleList()
        for i in range(n - 1, -1, -1):
            cin = 2 * chans[i]
            if i == 0:
                self.up.append(nn.Sequential(nn.ConvTranspose2d(cin, 3, 4, 2, 1), nn.Tanh()))
            else:
                cout = chans[i - 1]
                self.up.append(
                    nn.Sequential(
                        nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                        nn.BatchNorm2d(cout),
                        nn.ReLU(True),
                    )
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for d in self.down:
            x = d(x)
            skips.append(x)
        h = self.up0(self.bottleneck(x))
        for u, s in zip(self.up, reversed(skips)):
            h = u(torch.cat([h, s], 1))
        return h


def _weights_init(m: nn.Module) -> None:
    """DCGAN initialisation N(0, 0.02) for convolutions, N(1, 0.02) for BatchNorm scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class _ReconGAN(GANDetector):
    """Shared loop of the reconstruction-based GAN baselines."""

    default_image_size = 256

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
        latent_dim: int,
        base: int,
        max_channels: int,
        lr: float,
    ):
        super().__init__(image_size, device, seed, batch_size, epochs, val_every, augment, verbose)
        _check_size(self.image_size)
        if epochs < 1 or val_every < 1 or latent_dim < 1 or lr <= 0:
            raise ConfigError(
                f"epochs={epochs}, val_every={val_every}, latent_dim={latent_dim}, lr={lr}: must be > 0"
            )
        self.config.update(latent_dim=latent_dim, base=base, max_channels=max_channels, lr=lr)

    def _make_d(self) -> DCGANDiscriminator:
        c = self.config
        return DCGANDiscriminator(
            3, self.image_size, c["base"], c["max_channels"], spectral=False, batchnorm=True
        )

    def _optim(self, module: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=self.config["lr"], betas=(0.5, 0.999), foreach=True)

    def _step(self, x: torch.Tensor, it: int) -> tuple[float, float]:
        raise NotImplementedError

    def _train(self, real: torch.Tensor, validate: Callable[[int], float | None]) -> None:
        n = len(real)
        if n < 2:
            raise DatasetError(f"{self.name}: need at least 2 training images, got {n}")
        bs = min(self.batch_size, n)
        n_batches = max(1, n // bs)
        gen = torch.Generator().manual_seed(self.seed)
        augment = make_augment(self.config["augment"])
        epochs = self.config["epochs"]
        it = 0
        for ep in tqdm(range(1, epochs + 1), desc=self.name, disable=not self.verbose, leave=False):
            for m in self.module_names:
                getattr(self, m).train()
            perm = torch.randperm(n, generator=gen)
            ld, lg = [], []
            for j in range(n_batches):
                x = real[perm[j * bs : (j + 1) * bs]].to(self.device)
                if augment is not None:
                    x = augment(x, gen)
                d, g = self._step(x, it)
                check_loss(d, f"epoch {ep}, batch {j} (D)", self.name)
                check_loss(g, f"epoch {ep}, batch {j} (G)", self.name)
                ld.append(d)
                lg.append(g)
                it += 1
            self.history.setdefault("loss_d", []).append(sum(ld) / len(ld))
            self.history.setdefault("loss_g", []).append(sum(lg) / len(lg))
            if ep % self.config["val_every"] == 0 or ep == epochs:
                validate(ep)


@register_model("ganomaly")
class GANomaly(_ReconGAN):
    """GANomaly (Akçay et al. 2018) with DCGAN-like encoder/decoder/encoder and discriminator."""

    module_names = ("GE", "GD", "E", "D")

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
        base: int = 64,
        max_channels: int = 512,
        lr: float = 2e-4,
        w_adv: float = 1.0,
        w_con: float = 50.0,
        w_enc: float = 1.0,
        augment: str = "none",
        verbose: bool = False,
    ):
        super().__init__(
            image_size,
            device,
            seed,
            batch_size,
            epochs,
            val_every,
            augment,
            verbose,
            latent_dim,
            base,
            max_channels,
            lr,
        )
        self.config.update(w_adv=w_adv, w_con=w_con, w_enc=w_enc)

    def _build(self) -> None:
        c, s = self.config, self.image_size
        torch.manual_seed(self.seed)
        enc = dict(spectral=False, batchnorm=True, out_dim=c["latent_dim"])
        self.GE = DCGANDiscriminator(3, s, c["base"], c["max_channels"], **enc).to(self.device)
        self.GD = DCGANGenerator(c["latent_dim"], 3, s, c["base"], c["max_channels"]).to(self.device)
        self.E = DCGANDiscriminator(3, s, c["base"], c["max_channels"], **enc).to(self.device)
        self.D = self._make_d().to(self.device)
        for m in (self.GE, self.GD, self.E, self.D):
            m.apply(_weights_init)
        self.opt_g = torch.optim.Adam(
            [*self.GE.parameters(), *self.GD.parameters(), *self.E.parameters()],
            lr=c["lr"],
            betas=(0.5, 0.999),
            foreach=True,
        )
        self.opt_d = self._optim(self.D)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.GE(x)
        x_hat = self.GD(z)
        return x_hat, z, self.E(x_hat)

    def _step(self, x: torch.Tensor, it: int) -> tuple[float, float]:
        c = self.config
        x_hat, z, z_hat = self._forward(x)
        # one D pass on the real batch serves both losses: its features (detached) for L_adv, its
        # logit for D's BCE (D's weights do not change in the G step)
        l_real, f_real = self.D.forward_features(x)
        _, f_fake = self.D.forward_features(x_hat)
        loss_g = (
            c["w_adv"] * F.mse_loss(f_fake, f_real.detach())
            + c["w_con"] * F.l1_loss(x_hat, x)
            + c["w_enc"] * F.mse_loss(z_hat, z)
        )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        l_fake = self.D(x_hat.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(l_real, torch.ones_like(l_real))
            + F.binary_cross_entropy_with_logits(l_fake, torch.zeros_like(l_fake))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        if float(loss_d.detach()) < 1e-5:  # GANomaly re-initialises a discriminator that has won
            self.D.apply(_weights_init)
        return float(loss_d.detach()), float(loss_g.detach())

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat, z, z_hat = self._forward(x)
        return (z - z_hat).pow(2).mean(1), (x - x_hat).abs().mean(1)


@register_model("skip_ganomaly")
class SkipGANomaly(_ReconGAN):
    """Skip-GANomaly (Akçay et al. 2019): U-Net generator (512-d bottleneck) and DCGAN discriminator."""

    module_names = ("G", "D")

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 16,
        epochs: int = 512,
        val_every: int = 8,
        latent_dim: int = 512,
        base: int = 64,
        max_channels: int = 512,
        lr: float = 2e-4,
        w_adv: float = 1.0,
        w_con: float = 40.0,
        w_lat: float = 1.0,
        lam: float = 0.9,
        augment: str = "none",
        verbose: bool = False,
    ):
        super().__init__(
            image_size,
            device,
            seed,
            batch_size,
            epochs,
            val_every,
            augment,
            verbose,
            latent_dim,
            base,
            max_channels,
            lr,
        )
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"lam={lam} must lie in [0, 1]")
        self.config.update(w_adv=w_adv, w_con=w_con, w_lat=w_lat, lam=lam)

    def _build(self) -> None:
        c = self.config
        torch.manual_seed(self.seed)
        self.G = UNetGenerator(self.image_size, c["latent_dim"], c["base"], c["max_channels"]).to(self.device)
        self.D = self._make_d().to(self.device)
        self.G.apply(_weights_init)
        self.D.apply(_weights_init)
        self.opt_g, self.opt_d = self._optim(self.G), self._optim(self.D)

    def _step(self, x: torch.Tensor, it: int) -> tuple[float, float]:
        c = self.config
        x_hat = self.G(x)
        l_fake, f_fake = self.D.forward_features(x_hat)
        _, f_real = self.D.forward_features(x)
        loss_g = (
            c["w_adv"] * F.binary_cross_entropy_with_logits(l_fake, torch.ones_like(l_fake))
            + c["w_con"] * F.l1_loss(x_hat, x)
            + c["w_lat"] * F.mse_loss(f_fake, f_real.detach())
        )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        l_real = self.D(x)
        l_fake = self.D(x_hat.detach())
        loss_d = 0.5 * (
            F.binary_cross_entropy_with_logits(l_real, torch.ones_like(l_real))
            + F.binary_cross_entropy_with_logits(l_fake, torch.zeros_like(l_fake))
        )
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        if float(loss_d.detach()) < 1e-5:
            self.D.apply(_weights_init)
        return float(loss_d.detach()), float(loss_g.detach())

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat = self.G(x)
        _, f_real = self.D.forward_features(x)
        _, f_fake = self.D.forward_features(x_hat)
        rec = (x - x_hat).abs()
        lat = (f_real - f_fake).pow(2).flatten(1).mean(1)
        lam = self.config["lam"]
        return lam * rec.flatten(1).mean(1) + (1 - lam) * lat, rec.mean(1)


@register_model("alocc")
class ALOCC(_ReconGAN):
    """ALOCC (Sabokrou et al. 2018): refiner R (DCGAN encoder–decoder) + discriminator D."""

    module_names = ("RE", "RD", "D")

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
        base: int = 64,
        max_channels: int = 512,
        lr: float = 2e-4,
        lam: float = 0.4,
        noise_std: float = 0.155,
        augment: str = "none",
        verbose: bool = False,
    ):
        super().__init__(
            image_size,
            device,
            seed,
            batch_size,
            epochs,
            val_every,
            augment,
            verbose,
            latent_dim,
            base,
            max_channels,
            lr,
        )
        if noise_std < 0:
            raise ConfigError(f"noise_std={noise_std} must be ≥ 0")
        self.config.update(lam=lam, noise_std=noise_std)

    def _build(self) -> None:
        c, s = self.config, self.image_size
        torch.manual_seed(self.seed)
        self.RE = DCGANDiscriminator(
            3, s, c["base"], c["max_channels"], spectral=False, batchnorm=True, out_dim=c["latent_dim"]
        ).to(self.device)
        self.RD = DCGANGenerator(c["latent_dim"], 3, s, c["base"], c["max_channels"]).to(self.device)
        self.D = self._make_d().to(self.device)
        for m in (self.RE, self.RD, self.D):
            m.apply(_weights_init)
        self.opt_g = torch.optim.Adam(
            [*self.RE.parameters(), *self.RD.parameters()], lr=c["lr"], betas=(0.5, 0.999), foreach=True
        )
        self.opt_d = self._optim(self.D)
        self._noise_gen = torch.Generator().manual_seed(self.seed + 1)

    def _refine(self, x: torch.Tensor) -> torch.Tensor:
        return self.RD(self.RE(x))

    def _step(self, x: torch.Tensor, it: int) -> tuple[float, float]:
        c = self.config
        noise = torch.randn(x.shape, generator=self._noise_gen).to(x.device) * c["noise_std"]
        x_ref = self._refine(x + noise)
        l_ref = self.D(x_ref)
        loss_g = F.binary_cross_entropy_with_logits(l_ref, torch.ones_like(l_ref)) + c["lam"] * F.mse_loss(
            x_ref, x
        )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        l_real = self.D(x)
        l_fake = self.D(x_ref.detach())
        loss_d = F.binary_cross_entropy_with_logits(
            l_real, torch.ones_like(l_real)
        ) + F.binary_cross_entropy_with_logits(l_fake, torch.zeros_like(l_fake))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        return float(loss_d.detach()), float(loss_g.detach())

    def _score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_ref = self._refine(x)
        return -self.D(x_ref), (x - x_ref).abs().mean(1)


# ------------------------------------------------------------------------------------------------
# DifferNet-style normalizing flow on pooled multi-scale features (Table 5.3 comparison)
# ------------------------------------------------------------------------------------------------
class AffineCoupling(nn.Module):
    """Real-NVP affine coupling with DifferNet's soft clamping ``s ↦ 0.636·c·atan(s / c)``.

    The input is split in halves ``(u1, u2)``; ``u2' = u2 · exp(s(u1)) + t(u1)`` and vice versa in a
    second step, so both halves are transformed; ``log|det J|`` is the sum of the log scales.
    """

    def __init__(self, dim: int, hidden: int, clamp: float = 3.0):
        super().__init__()
        self.d1 = dim // 2
        self.d2 = dim - self.d1
        self.clamp = clamp
        self.net1 = nn.Sequential(nn.Linear(self.d1, hidden), nn.ReLU(), nn.Linear(hidden, 2 * self.d2))
        self.net2 = nn.Sequential(nn.Linear(self.d2, hidden), nn.ReLU(), nn.Linear(hidden, 2 * self.d1))

    def _scale(self, s: torch.Tensor) -> torch.Tensor:
        return 0.636 * self.clamp * torch.atan(s / self.clamp)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u1, u2 = x[:, : self.d1], x[:, self.d1 :]
        s2, t2 = self.net1(u1).chunk(2, 1)
        s2 = self._scale(s2)
        v2 = u2 * torch.exp(s2) + t2
        s1, t1 = self.net2(v2).chunk(2, 1)
        s1 = self._scale(s1)
        v1 = u1 * torch.exp(s1) + t1
        return torch.cat([v1, v2], 1), s1.sum(1) + s2.sum(1)


class FeatureFlow(nn.Module):
    """DifferNet's flow: ``n_blocks`` coupling blocks with fixed random permutations in between."""

    def __init__(self, dim: int, n_blocks: int = 8, hidden: int = 2048, clamp: float = 3.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList(AffineCoupling(dim, hidden, clamp) for _ in range(n_blocks))
        for i in range(n_blocks):
            self.register_buffer(f"perm{i}", torch.randperm(dim, generator=g))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(x.shape[0], device=x.device)
        for i, b in enumerate(self.blocks):
            x, ld = b(x[:, getattr(self, f"perm{i}")])
            logdet = logdet + ld
        return x, logdet


def flow_nll(z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
    """DifferNet's loss: ``mean(‖z‖²/2 − log|det J|) / dim`` (negative log-likelihood under N(0, I))."""
    return (0.5 * z.pow(2).sum(1) - logdet).mean() / z.shape[1]


@register_model("differnet")
class DifferNet(GANDetector):
    """DifferNet-style detector (Rudolph, Wandt & Rosenhahn, WACV 2021) on an offline backbone.

    Features: the backbone's last-stage output, globally averaged, at three image scales (S, S/2,
    S/4) and concatenated (DifferNet: AlexNet at 448/224/112 px); a flow of 8 affine coupling blocks
    maps them to N(0, I). Training on ``n_rot_train`` rotations per image, score = mean over
    ``n_rot_test`` rotations of ``mean(z²)``; Adam lr 2e-4, β = (0.8, 0.8), weight decay 1e-5.
    """

    module_names = ("flow",)
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
        n_blocks: int = 8,
        hidden: int = 2048,
        clamp: float = 3.0,
        lr: float = 2e-4,
        backbone: str = "efficientnet_lite0",
        layer: int = 4,
        n_scales: int = 3,
        n_rot_train: int = 4,
        n_rot_test: int = 64,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size, epochs, val_every, "none", verbose)
        self.config.pop("augment")
        if n_blocks < 1 or n_scales < 1 or n_rot_train < 1 or n_rot_test < 1 or epochs < 1 or val_every < 1:
            raise ConfigError(
                "differnet: n_blocks, n_scales, n_rot_train, n_rot_test, epochs, val_every must be ≥ 1"
            )
        self.config.update(
            n_blocks=n_blocks,
            hidden=hidden,
            clamp=clamp,
            lr=lr,
            backbone=backbone,
            layer=layer,
            n_scales=n_scales,
            n_rot_train=n_rot_train,
            n_rot_test=n_rot_test,
        )
        self._fx: Any = None
        self.dim: int | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def _prepare(self, images: list) -> torch.Tensor:
        from .base import images_to_tensor

        return images_to_tensor(images, self.image_size)

    def _extractor(self) -> Any:
        if self._fx is None:  # ALGAN-feature's cached, rotation-aware extractor
            from .algan import ALGANFeature

            self._fx = ALGANFeature(
                image_size=self.image_size,
                device=str(self.device),
                backbone=self.config["backbone"],
                layer=self.config["layer"],
                batch_size=self.batch_size,
                verbose=self.verbose,
            )
        return self._fx

    def features(self, x: torch.Tensor, n_rot: int) -> torch.Tensor:
        """``[n_rot, N, n_scales·C]``: pooled features at S, S/2, S/4 concatenated."""
        fx = self._extractor()
        out = []
        for k in range(self.config["n_scales"]):
            xs = x if k == 0 else F.interpolate(x, scale_factor=0.5**k, mode="bilinear", antialias=True)
            out.append(fx.features(xs, n_rot))
        return torch.cat(out, 2)

    def _build(self) -> None:
        c = self.config
        torch.manual_seed(self.seed)
        self.flow = FeatureFlow(self.dim, c["n_blocks"], c["hidden"], c["clamp"], self.seed).to(self.device)

    def _fit(self, images: list) -> None:
        import copy

        from ..metrics import image_auroc

        c = self.config
        f = self.features(self._prepare(images), c["n_rot_train"]).flatten(0, 1)
        self.dim = f.shape[1]
        self.mean, self.std = f.mean(0), f.std(0).clamp_min(1e-6)
        real = (f - self.mean) / self.std
        val = None
        if self._val is not None:
            xv, lv = self._val
            val = ((self.features(xv, c["n_rot_test"]) - self.mean) / self.std, lv)
        self._build()
        opt = torch.optim.Adam(
            self.flow.parameters(), lr=c["lr"], betas=(0.8, 0.8), eps=1e-4, weight_decay=1e-5
        )
        gen = torch.Generator().manual_seed(self.seed)
        n, bs = len(real), min(self.batch_size, len(real))
        for ep in tqdm(range(1, c["epochs"] + 1), desc=self.name, disable=not self.verbose, leave=False):
            self.flow.train()
            perm = torch.randperm(n, generator=gen)
            losses = []
            for j in range(0, n - bs + 1, bs):
                z, ld = self.flow(real[perm[j : j + bs]].to(self.device))
                loss = flow_nll(z, ld)
                losses.append(check_loss(loss.detach(), f"epoch {ep}, batch {j // bs}", self.name))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.history.setdefault("loss", []).append(sum(losses) / max(1, len(losses)))
            if val is not None and (ep % c["val_every"] == 0 or ep == c["epochs"]):
                auc = image_auroc(val[1], self._score_feats(val[0]).numpy())
                self.history.setdefault("val_epoch", []).append(float(ep))
                self.history.setdefault("val_auroc", []).append(float(auc))
                if self._best is None or auc > self._best[0]:
                    self._best = (auc, ep, copy.deepcopy(self._module_states()))
        if self._best is not None:
            self._load_modules(self._best[2])
            self.history["best_epoch"] = [float(self._best[1])]
            self.history["best_val_auroc"] = [float(self._best[0])]

    @torch.no_grad()
    def _score_feats(self, f: torch.Tensor) -> torch.Tensor:
        self.flow.eval()
        r, n, d = f.shape
        z, _ = self.flow(f.reshape(r * n, d).to(self.device))
        return z.pow(2).mean(1).view(r, n).mean(0).cpu()

    def _predict(self, images: list) -> tuple[torch.Tensor, torch.Tensor]:
        f = (self.features(self._prepare(images), self.config["n_rot_test"]) - self.mean) / self.std
        s = self._score_feats(f)
        return s, s[:, None, None].clone()

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state.update(mean=self.mean, std=self.std, dim=self.dim)
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        self.mean, self.std, self.dim = state["mean"], state["std"], int(state["dim"])
        super()._set_state(state)
