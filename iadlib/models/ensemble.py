"""The feature-level ensemble of the LOCO thesis (Saghir 2024, §4.3), a SimpleNet-style detector
on the fused feature maps of PatchCore and SimpleNet, with a calibrated output.

Pipeline (the thesis' section numbers; where the draft is silent the cited originals decide):

1. **Ensemble members cut at their feature stage** (§4.3.1).
   *SimpleNet* (Liu et al. 2023) is trained as usual and cut after its feature adaptor:
   ``q = G_θ(o)``. *PatchCore* (Roth et al. 2022) contributes, per patch, the absolute difference
   to its nearest memory-bank patch, ``m_i^final = |m_i^test − m*|`` with
   ``m* = argmin_{m ∈ M} ‖m_i^test − m‖₂`` (its Eq. 2.1), followed by a one-layer projection
   "similar to [SimpleNet's adaptor]" that is trained jointly with the discriminator.
2. **Independent transformation block** (§4.3.2, after Heller et al. 2023): a PCA per member,
   fitted on that member's training features, keeps ``α_k`` components; the reduced maps are
   bilinearly resized to the largest member grid and concatenated. The channel budget is the
   channel count of the first member, split evenly; a remainder goes one map each to the
   remaining members (:func:`channel_budget`).
3. **Discriminator** (§4.3.3): SimpleNet's two-layer MLP trained with the truncated L1 loss on the
   fused features against Gaussian-noise fakes; the anomaly map is ``−D`` upsampled and smoothed
   (σ = 4), the image score its maximum.
4. **Calibration** (§2.4, §4.3.4): the final image scores are mapped to probabilities by Platt
   scaling or, for perfectly separated categories, the bounded sigmoid
   (:mod:`iadlib.calibration`); :meth:`FeatureEnsemble.calibrate` fits it on labelled held-out
   images and :meth:`FeatureEnsemble.predict_proba` applies it.

Choices the thesis leaves open, each with its reason:

* **Cross-fitted PatchCore differences** (``crossfit=True``). A memory bank built from the
  training images contains (or covers, by the coreset's k-center guarantee) every training patch,
  so their nearest-neighbour differences are near zero, while a normal *test* patch is never in
  the bank. A discriminator trained on such differences would call every test patch anomalous.
  We therefore split the training images into two halves A, B, fit PatchCore on each, compute
  the differences of A's images against B's bank and vice versa, and score test images against
  A's bank — so a normal test image meets exactly the situation of a training image.
* **Fakes made at the members' cuts.** Gaussian noise added to ``|m_test − m*|`` is symmetric,
  but an anomaly only makes the difference larger, so a discriminator trained that way learns
  "small difference = fake" and ranks anomalies *below* normal patches (measured: AUROC < 0.5 on
  the PatchCore block alone). The fakes are therefore made before each member's non-linearity —
  ``q + ε₁`` for SimpleNet (exactly its generator) and ``|(m_test − m*) + ε₂|`` for PatchCore (a
  patch displaced by noise, its neighbour held) — with ``ε_k ~ N(0, (noise_std · s_k)² I)``, ``s_k``
  the member's mean training channel std, and then go through the same transformation block.
* **The projection after the PCA.** The PCA is fitted once; the trainable projection acts on the
  PatchCore block's PCA coefficients (a linear map after a linear PCA, equal to a projection of
  the differences restricted to the kept subspace), so the PCA never goes stale while it trains.
* **Block scale.** Each member's block is divided by the root mean square of its kept components,
  so both members enter the discriminator on the same scale and ``noise_std`` is relative to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError, TrainingError
from . import get_model, register_model
from .base import Detector, iter_batches
from .simplenet import Discriminator, from_patches, score_maps, to_patches, train_discriminator

MEMBERS = ("simplenet", "patchcore")


def channel_budget(member_channels: Sequence[int], budget: int | None = None) -> list[int]:
    """Maps kept per member (thesis §4.3.2).

    The budget is the first member's channel count (or ``budget``), divided evenly; when it is not
    divisible, the excess maps go one each to the remaining members (members 2, 3, …).
    ``channel_budget([152, 152]) == [76, 76]``; ``channel_budget([152, 152, 152]) == [50, 51, 51]``.
    """
    if len(member_channels) == 0:
        raise ConfigError("channel_budget: no ensemble members")
    total = int(member_channels[0] if budget is None else budget)
    k = len(member_channels)
    if total < k:
        raise ConfigError(f"channel budget {total} is smaller than the number of members {k}")
    base, rest = divmod(total, k)
    alphas = [base] * k
    for j in range(rest):
        alphas[1 + j] += 1
    for a, c in zip(alphas, member_channels):
        if a > c:
            raise ConfigError(f"channel budget {alphas} asks for {a} maps of a member with {c} channels")
    return alphas


class MemberPCA(nn.Module):
    """PCA of one member's patch vectors (fitted on training features) with block scaling.

    ``forward([N, C, h, w]) -> [N, α, h, w]``: ``((x − μ) Vα) / r`` with ``Vα`` the top-α
    eigenvectors of the training covariance and ``r`` the RMS of the kept components.
    """

    def __init__(self, channels: int, n_components: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("components", torch.zeros(channels, n_components))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("explained", torch.zeros(n_components))

    @torch.no_grad()
    def fit(self, features: torch.Tensor) -> MemberPCA:
        x = to_patches(features).double()
        alpha = self.components.shape[1]
        if x.shape[0] <= alpha:
            raise TrainingError(f"PCA with {alpha} components needs more than {x.shape[0]} training patches")
        mu = x.mean(0)
        cov = (x - mu).T @ (x - mu) / (x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(evals, descending=True)[:alpha]
        v = evecs[:, order]
        # deterministic sign: largest-magnitude loading of each component positive
        sign = torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
        v = v * torch.where(sign == 0, torch.ones_like(sign), sign)
        kept = evals[order].clamp_min(0)
        rms = float(kept.mean().sqrt())
        if not np.isfinite(rms) or rms <= 0:
            raise TrainingError("PCA: the member's training features are constant")
        self.mean.copy_(mu.float())
        self.components.copy_(v.float())
        self.scale.fill_(rms)
        self.explained.copy_((kept / evals.clamp_min(0).sum()).float())
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, h, w = features.shape
        z = (to_patches(features) - self.mean) @ self.components / self.scale
        return from_patches(z, b, h, w).permute(0, 3, 1, 2).contiguous()


def fuse(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Bilinear resize of every block to the largest grid, then channel concatenation (§4.3.2)."""
    size = max((b.shape[-2:] for b in blocks), key=lambda s: s[0] * s[1])
    out = [b if b.shape[-2:] == size else F.interpolate(b, size=tuple(size), mode="bilinear", align_corners=False)
           for b in blocks]
    return torch.cat(out, 1)


class BlockProjection(nn.Module):
    """The trainable one-layer projections of the fused vector (§4.3.1): ``Linear(α_k, α_k)`` on the
    blocks listed in ``projected`` (PatchCore's), identity on the others (SimpleNet's block is
    already projected by its own adaptor). Acts on patch vectors ``[M, Σα]``."""

    def __init__(self, alphas: Sequence[int], projected: Sequence[bool]):
        super().__init__()
        self.alphas = list(alphas)
        self.projected = list(projected)
        self.layers = nn.ModuleList(
            nn.Linear(a, a) if p else nn.Identity() for a, p in zip(self.alphas, self.projected)
        )
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.eye_(m.weight)  # start as the identity: PCA coefficients pass unchanged
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.alphas, dim=1)
        return torch.cat([layer(p) for layer, p in zip(self.layers, parts)], 1)


@register_model("feature_ensemble")
class FeatureEnsemble(Detector):
    """Feature-level ensemble of SimpleNet and PatchCore with a SimpleNet-style discriminator.

    ``history``: ``simplenet_loss`` (the member's own training), then the ensemble's per-epoch
    ``loss``, ``p_true``, ``p_fake`` and, after :meth:`set_monitor`, ``monitor_auroc``.
    """

    default_image_size = 256

    def __init__(
        self,
        *,
        members: Sequence[str] = MEMBERS,
        budget: int | None = None,
        simplenet_cfg: dict[str, Any] | None = None,
        patchcore_cfg: dict[str, Any] | None = None,
        crossfit: bool = True,
        hidden: int = 1024,
        noise_std: float = 1.0,
        margin: float = 0.5,
        epochs: int = 40,
        lr_projection: float = 1e-4,
        lr_disc: float = 2e-4,
        blur_sigma: float = 4.0,
        calibration: str = "platt",
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 8,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        members = list(members)
        bad = [m for m in members if m not in MEMBERS]
        if bad or not members or len(set(members)) != len(members):
            raise ConfigError(f"feature_ensemble: members {members}; valid (each at most once): {', '.join(MEMBERS)}")
        if calibration not in ("platt", "bounded"):
            raise ConfigError(f"feature_ensemble: calibration={calibration!r}; valid: 'platt', 'bounded'")
        if epochs < 1 or not noise_std > 0 or not margin > 0:
            raise ConfigError(f"feature_ensemble: need epochs >= 1, noise_std > 0, margin > 0; got "
                              f"{epochs}, {noise_std}, {margin}")
        simplenet_cfg = dict(simplenet_cfg or {})
        patchcore_cfg = dict(patchcore_cfg or {})
        self.config.update(
            members=members, budget=budget, simplenet_cfg=simplenet_cfg, patchcore_cfg=patchcore_cfg,
            crossfit=crossfit, hidden=hidden, noise_std=noise_std, margin=margin, epochs=epochs,
            lr_projection=lr_projection, lr_disc=lr_disc, blur_sigma=blur_sigma, calibration=calibration,
            verbose=verbose,
        )
        self.verbose = verbose
        common = {"image_size": self.image_size, "device": device, "seed": seed}
        self.simplenet = (
            get_model("simplenet", **{**common, "batch_size": batch_size, **simplenet_cfg})
            if "simplenet" in members else None
        )
        n_pc = (2 if crossfit else 1) if "patchcore" in members else 0
        # border means over real cells only: on the small grids of this ensemble (8×8 at 64 px) zero
        # padding would darken almost half of the patches relative to SimpleNet's features
        pc_cfg = {"padding": "valid", **patchcore_cfg}
        self.patchcores = [get_model("patchcore", **{**common, **pc_cfg}) for _ in range(n_pc)]
        self.pca: nn.ModuleList | None = None
        self.projection: BlockProjection | None = None
        self.discriminator: Discriminator | None = None
        self.calibrator: Any = None
        self.noise_scale: list[float] = []
        self._monitor: tuple[list[np.ndarray], np.ndarray] | None = None

    # --- members ------------------------------------------------------------------------------
    @torch.no_grad()
    def _patchcore_diffs(self, pc: Detector, images: list[np.ndarray]) -> torch.Tensor:
        """Signed ``m_test − m*`` per patch as ``[N, C, h, w]`` against ``pc``'s memory bank (§4.3.1)."""
        out = []
        for x in iter_batches(images, self.batch_size, self.image_size, self.device):
            f = pc.embed(x).float()
            b, c, h, w = f.shape
            flat = to_patches(f)
            _, idx = pc.nearest(flat)
            d = flat - pc.memory_bank[idx.to(pc.memory_bank.device)].to(flat.device).float()
            out.append(from_patches(d, b, h, w).permute(0, 3, 1, 2))
        return torch.cat(out)

    @torch.no_grad()
    def member_raw(self, images: list[np.ndarray], train_folds: np.ndarray | None = None) -> list[torch.Tensor]:
        """Each member's features just before its cut, ``[N, C_k, h_k, w_k]``, in ``members`` order:
        SimpleNet's adapted ``q = G_θ(o)``; PatchCore's *signed* ``m_test − m*`` (:meth:`cut` takes
        the absolute value). ``train_folds`` (training images, with ``crossfit``): the fold of every
        image; its differences are taken against the other fold's memory bank."""
        feats = []
        for name in self.config["members"]:
            if name == "simplenet":
                sn = self.simplenet
                feats.append(sn.adapted(sn.extract(images)))
            elif train_folds is None or len(self.patchcores) == 1:
                feats.append(self._patchcore_diffs(self.patchcores[0], images))
            else:
                out: torch.Tensor | None = None
                for fold in (0, 1):
                    sel = np.flatnonzero(train_folds == fold)
                    d = self._patchcore_diffs(self.patchcores[1 - fold], [images[i] for i in sel])
                    if out is None:
                        out = d.new_zeros((len(images), *d.shape[1:]))
                    out[torch.from_numpy(sel).to(d.device)] = d
                feats.append(out)
        return feats

    def cut(self, raw: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The members' feature stages: ``q`` for SimpleNet, ``|m_test − m*|`` for PatchCore."""
        return [r.abs() if name == "patchcore" else r for name, r in zip(self.config["members"], raw)]

    def fused(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """The independent transformation block on the cut features: PCA per member → resize → concat."""
        assert self.pca is not None
        return fuse([pca(f) for pca, f in zip(self.pca, self.cut(raw))])

    def fake_fused(self, raw: Sequence[torch.Tensor], gen: torch.Generator) -> torch.Tensor:
        """Gaussian-noise fakes (SimpleNet Eq. 4) made at each member's cut and fused like real features:
        ``q + ε₁`` and ``|(m_test − m*) + ε₂|`` (a patch displaced by noise, its neighbour held), with
        ``ε_k ~ N(0, (noise_std · s_k)² I)``, ``s_k`` the member's mean training channel std."""
        noisy = [
            r + torch.randn(r.shape, generator=gen).to(r.device, r.dtype) * (self.config["noise_std"] * float(sk))
            for r, sk in zip(raw, self.noise_scale)
        ]
        return self.fused(noisy)

    @torch.no_grad()
    def patch_scores(self, fused: torch.Tensor) -> torch.Tensor:
        """``−D(P(fused))`` per location, ``[N, h, w]``."""
        assert self.discriminator is not None and self.projection is not None
        b, _, h, w = fused.shape
        out = []
        for i in range(0, b, 64):
            f = fused[i : i + 64]
            out.append(-self.discriminator(self.projection(to_patches(f))).reshape(f.shape[0], h, w))
        return torch.cat(out)

    def set_monitor(self, images: Any, labels: Sequence[int]) -> FeatureEnsemble:
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
        cfg = self.config
        n = len(images)
        if n < 4:
            raise TrainingError(f"feature_ensemble needs at least 4 training images, got {n}")
        # 1. members
        if self.simplenet is not None:
            self.simplenet.fit(images)
            self.history["simplenet_loss"] = list(self.simplenet.history.get("loss", []))
        folds = None
        if self.patchcores:
            if cfg["crossfit"]:
                perm = np.random.default_rng(self.seed).permutation(n)
                folds = np.zeros(n, dtype=int)
                folds[perm[n // 2 :]] = 1
                for fold, pc in enumerate(self.patchcores):
                    pc.fit([images[i] for i in np.flatnonzero(folds == fold)])
            else:
                self.patchcores[0].fit(images)
        raw = self.member_raw(images, folds)
        self.noise_scale = [float(r.std(dim=(0, 2, 3)).mean()) for r in raw]
        cut = self.cut(raw)
        # 2. independent transformation block
        alphas = channel_budget([f.shape[1] for f in cut], cfg["budget"])
        self.pca = nn.ModuleList(MemberPCA(f.shape[1], a).fit(f) for f, a in zip(cut, alphas)).to(self.device)
        with torch.no_grad():
            fused = self.fused(raw)
        # 3. projection + discriminator, fakes made at the members' cuts
        torch.manual_seed(self.seed)
        self.projection = BlockProjection(alphas, [m == "patchcore" for m in cfg["members"]]).to(self.device)
        self.discriminator = Discriminator(fused.shape[1], cfg["hidden"]).to(self.device)

        def batch_fn(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                fake = self.fake_fused([r[idx.to(r.device)] for r in raw], gen)
            return to_patches(fused[idx.to(fused.device)]), to_patches(fake)

        monitor = None
        if self._monitor is not None:
            from ..metrics import image_auroc

            with torch.no_grad():
                m_fused = self.fused(self.member_raw(self._monitor[0]))
            m_lab = self._monitor[1]

            def monitor(epoch: int) -> dict[str, float]:
                s, _ = score_maps(self.patch_scores(m_fused), self.image_size, cfg["blur_sigma"])
                return {"monitor_auroc": image_auroc(m_lab, s.cpu().numpy())}

        train_discriminator(
            fused, self.projection, self.discriminator, epochs=cfg["epochs"], batch_size=self.batch_size,
            noise_std=cfg["noise_std"], margin=cfg["margin"], lr_adaptor=cfg["lr_projection"],
            lr_disc=cfg["lr_disc"], seed=self.seed, history=self.history, name="feature_ensemble",
            monitor=monitor, verbose=self.verbose, batch_fn=batch_fn,
        )
        self.calibrator = None

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.patch_scores(self.fused(self.member_raw(images)))
        return score_maps(s, self.image_size, self.config["blur_sigma"])

    # --- calibration (§2.4, §4.3.4) -----------------------------------------------------------
    def calibrate(self, images: Any, labels: Sequence[int], method: str | None = None) -> FeatureEnsemble:
        """Fit the output calibration on labelled held-out images (normal and anomalous).

        ``method``: ``"platt"`` (Platt scaling, Guo et al. 2017) or ``"bounded"`` (the thesis'
        bounded sigmoid for perfectly separated scores); default: the ``calibration`` option.
        """
        from .. import calibration as C

        method = method or self.config["calibration"]
        if method not in ("platt", "bounded"):
            raise ConfigError(f"calibrate: method={method!r}; valid: 'platt', 'bounded'")
        scores, _ = self.predict(images)
        cal = C.PlattScaler() if method == "platt" else C.BoundedSigmoid()
        self.calibrator = cal.fit(scores, np.asarray(labels))
        self.config["calibration"] = method
        return self

    def predict_proba(self, images: Any) -> np.ndarray:
        """Calibrated probability that each image is anomalous (needs :meth:`calibrate` first)."""
        if self.calibrator is None:
            raise RuntimeError("feature_ensemble: call calibrate(held_out_images, labels) before predict_proba()")
        scores, _ = self.predict(images)
        return np.asarray(self.calibrator.predict_proba(scores), dtype=np.float64)

    # --- state --------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "simplenet": self.simplenet._get_state() if self.simplenet is not None else None,
            "memory_banks": [pc.memory_bank.cpu() for pc in self.patchcores],
            "alphas": self.projection.alphas,
            "pca": [{k: v.cpu() for k, v in p.state_dict().items()} for p in self.pca],
            "projection": {k: v.cpu() for k, v in self.projection.state_dict().items()},
            "discriminator": {k: v.cpu() for k, v in self.discriminator.state_dict().items()},
            "calibrator": self.calibrator,
            "noise_scale": list(self.noise_scale),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        if self.simplenet is not None:
            self.simplenet._set_state(state["simplenet"])
            self.simplenet.fitted = True
        for pc, bank in zip(self.patchcores, state["memory_banks"]):
            pc._set_state({"memory_bank": bank})
            pc.fitted = True
        alphas = list(state["alphas"])
        chans = [p["mean"].numel() for p in state["pca"]]
        self.pca = nn.ModuleList(MemberPCA(c, a) for c, a in zip(chans, alphas))
        for p, sd in zip(self.pca, state["pca"]):
            p.load_state_dict(sd)
        self.pca.to(self.device)
        self.projection = BlockProjection(alphas, [m == "patchcore" for m in self.config["members"]])
        self.projection.load_state_dict(state["projection"])
        self.projection.to(self.device).eval()
        self.discriminator = Discriminator(sum(alphas), self.config["hidden"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.discriminator.to(self.device).eval()
        self.calibrator = state.get("calibrator")
        self.noise_scale = list(state.get("noise_scale", []))
