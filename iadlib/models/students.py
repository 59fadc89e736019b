"""Uninformed Students (Bergmann, Fauser, Sattlegger, Steger, CVPR 2020): student–teacher anomaly detection.

The method in four parts, each a function or module below:

1. **Patch teachers** ``T̂`` (:class:`PatchNet`) with receptive fields p = 17, 33, 65 — the
   architectures of the supplement's Table 1b (p = 17), Table 1a (p = 33) and the main paper's
   Table 4 (p = 65); leaky ReLU of slope 5·10⁻³ after every convolution and a 1×1 *decode* layer
   ``D`` to the pretrained network's dimension.
2. **Distillation** (:func:`distill_teacher`, main paper Sec. 3.1) on patches of natural images with
   three switchable losses (:func:`knowledge_distillation_loss` L_k, Eq. 1;
   :func:`metric_learning_loss` L_m, Eq. 2 with hard negative mining; :func:`compactness_loss`
   L_c, Eq. 3), total ``λ_k L_k + λ_m L_m + λ_c L_c / d`` with each λ ∈ {0, 1} as in the ✓ columns
   of the supplement's Tables 2 and 3 (``L_c`` per descriptor dimension ``d``: see
   :func:`distill_teacher` for why). The pretrained network is ``efficientnet_lite0`` (ImageNet,
   offline), standing in for the paper's ResNet-18: a p×p patch is resized to ``target_size`` and
   described by the global average of the last stage (320 channels) — the counterpart of
   ResNet-18's 512-d pooled last layer; the decode layer maps the 128-d descriptor to 320.
3. **Fast dense evaluation** (:meth:`PatchNet.dense`): the patch network evaluated at every pixel
   of a whole image. Bailer et al.'s multi-pooling / Long et al.'s shift-and-stitch are computed
   here in their *à trous* form: every stride-2 max-pool becomes a stride-1 pool and every later
   layer is dilated by the accumulated stride. The result equals patch-wise evaluation exactly
   (``tests/test_students.py`` checks it against :meth:`PatchNet.patchwise`).
4. **Student ensembles** (:class:`StudentEnsemble`, Sec. 3.2–3.3): M students with the teacher's
   architecture (no decode), randomly initialised, regress the teacher's normalised dense
   descriptors ``(T̂(x) − μ) diag(σ)⁻¹`` on anomaly-free images (Eq. 5). Anomaly score per pixel
   (Eq. 6–8): regression error ``e = ‖μ̄ − y‖²`` of the ensemble mean and predictive variance
   ``v = (1/M) Σ‖μ_i‖² − ‖μ̄‖²``, each standardised with its mean and standard deviation over
   validation pixels: ``ẽ + ṽ``. Multi-scale (Eq. 9): the average of the scales' ``ẽ + ṽ``.

:class:`StudentsDetector` (registered as ``"students"``) wraps this behind the detector protocol.
Teachers are independent of the inspected data, so they are cached on disk by configuration
(``IADLIB_CACHE`` or ``~/.cache/iadlib``; ``cache=False`` disables it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CheckpointError, ConfigError, DatasetError
from ..utils import resolve_device, torch_save_atomic
from . import register_model
from .base import Detector, check_loss, images_to_tensor

LEAKY_SLOPE = 5e-3

#: Layer lists ``("conv", out_channels, kernel)`` / ``("pool",)``. ``out_channels`` of the hidden
#: layers scale with ``width``; the last convolution gives the descriptor (128 in the paper).
ARCHITECTURES: dict[int, list[tuple]] = {
    # Supplement Table 1b. The extraction lists Conv1 as 5×5 with output 12×12 from a 17×17 input,
    # which needs a 6×6 kernel (17 − 6 + 1 = 12); we follow the output sizes.
    17: [("conv", 128, 6), ("conv", 256, 5), ("conv", 256, 5), ("conv", 128, 4)],
    # Supplement Table 1a. The extraction lists Conv1 as 3×3 with output 29×29 from 33×33, which
    # needs 5×5 (33 − 5 + 1 = 29); we follow the output sizes.
    33: [("conv", 128, 5), ("pool",), ("conv", 256, 5), ("pool",), ("conv", 256, 2), ("conv", 128, 4)],
    # Main paper Table 4 (p = 65): 65→61→30→26→13→9→4→1→1. The main paper is not in our sources; the
    # layout is the one of the public re-implementations (denguir/student-teacher-anomaly-detection
    # src/AnomalyNet.py: conv 128-128-256-256-128 with kernels 5-5-5-4-1; LuyaooChen/
    # uninformed-students-pytorch models.py notes Table 4's 256-channel 4×4 map after the third pool
    # and a 3×3 kernel printed for Conv5, which must be 1×1 to map 1×1 to 1×1).
    65: [
        ("conv", 128, 5), ("pool",), ("conv", 128, 5), ("pool",), ("conv", 256, 5), ("pool",),
        ("conv", 256, 4), ("conv", 128, 1),
    ],
}
PATCH_SIZES = tuple(sorted(ARCHITECTURES))


def _check_p(p: int) -> int:
    if int(p) not in ARCHITECTURES:
        valid = ", ".join(map(str, PATCH_SIZES))
        raise ConfigError(f"patch size p={p!r} has no architecture; valid: {valid}")
    return int(p)


class PatchNet(nn.Module):
    """A patch network of receptive field ``p`` (teacher body ``T̂`` or student ``S_i``).

    ``forward`` / :meth:`patchwise` take ``p×p`` patches ``[B,3,p,p]`` → descriptors ``[B,d]``;
    :meth:`dense` takes images ``[B,3,H,W]`` → dense descriptors ``[B,d,H,W]`` (pixel ``(r,c)``
    describes the patch centred on it; borders reflect-padded). Inputs are images in [0, 1],
    normalised inside with ImageNet statistics.
    """

    def __init__(self, p: int, width: float = 1.0, out_dim: int = 128):
        super().__init__()
        self.p = _check_p(p)
        if width <= 0:
            raise ConfigError(f"width must be > 0, got {width}")
        self.width, self.out_dim = float(width), int(out_dim)
        arch = ARCHITECTURES[self.p]
        n_conv = sum(1 for layer in arch if layer[0] == "conv")
        self.layout: list[str] = []
        convs = []
        c_in, k_conv = 3, 0
        for layer in arch:
            if layer[0] == "pool":
                self.layout.append("pool")
                continue
            k_conv += 1
            c_out = self.out_dim if k_conv == n_conv else max(1, int(round(layer[1] * self.width)))
            convs.append(nn.Conv2d(c_in, c_out, layer[2]))
            self.layout.append("conv")
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    @property
    def receptive_field(self) -> int:
        """Pixels the output actually depends on (≤ p: floor pooling drops a border row)."""
        rf, jump, ci = 1, 1, 0
        for kind in self.layout:
            if kind == "pool":
                rf, jump = rf + jump, jump * 2
            else:
                rf += (self.convs[ci].kernel_size[0] - 1) * jump
                ci += 1
        return rf

    def _run(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        x = (x - self.mean) / self.std
        dil, ci = 1, 0
        for kind in self.layout:
            if kind == "pool":
                if dense:
                    x = F.max_pool2d(x, kernel_size=2, stride=1, dilation=dil)
                    dil *= 2
                else:
                    x = F.max_pool2d(x, kernel_size=2, stride=2)
            else:
                conv = self.convs[ci]
                x = F.conv2d(x, conv.weight, conv.bias, dilation=dil if dense else 1)
                x = F.leaky_relu(x, LEAKY_SLOPE)
                ci += 1
        return x

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Descriptors of ``p×p`` patches: ``[B,3,p,p]`` → ``[B,d]``."""
        if patches.shape[-2:] != (self.p, self.p):
            raise DatasetError(
                f"PatchNet(p={self.p}) expects {self.p}×{self.p} patches, got {tuple(patches.shape)}"
            )
        return self._run(patches, dense=False).flatten(1)

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Fast dense evaluation (multi-pooling in à-trous form): ``[B,3,H,W]`` → ``[B,d,H,W]``.

        Pixel ``(r, c)`` of the output equals ``forward`` on the ``p×p`` patch of the padded image
        whose top-left corner is ``(r, c)``, i.e. the patch centred on ``(r, c)`` of the input.
        """
        h, w = images.shape[-2:]
        lo, hi = (self.p - 1) // 2, self.p // 2
        mode = "reflect" if min(h, w) > max(lo, hi) else "replicate"
        x = F.pad(images, (lo, hi, lo, hi), mode=mode)
        out = self._run(x, dense=True)
        return out[..., :h, :w]

    def patchwise(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Reference: the same dense map computed patch by patch (slow; for verification only)."""
        h, w = images.shape[-2:]
        lo, hi = (self.p - 1) // 2, self.p // 2
        mode = "reflect" if min(h, w) > max(lo, hi) else "replicate"
        x = F.pad(images, (lo, hi, lo, hi), mode=mode)
        outs = []
        for img in x:
            cols = F.unfold(img[None], self.p)  # [1, 3p², H·W]
            patches = cols[0].T.reshape(-1, 3, self.p, self.p)
            desc = torch.cat([self.forward(patches[i : i + chunk]) for i in range(0, len(patches), chunk)])
            outs.append(desc.T.reshape(self.out_dim, h, w))
        return torch.stack(outs)


class Teacher(nn.Module):
    """Teacher ``T̂`` (:class:`PatchNet`, 128-d) plus the 1×1 decode layer ``D`` used in distillation."""

    def __init__(self, p: int, target_dim: int, width: float = 1.0, out_dim: int = 128):
        super().__init__()
        self.net = PatchNet(p, width, out_dim)
        self.decode = nn.Linear(out_dim, target_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.net(patches)


# --- pretrained descriptors (the distillation target P) ----------------------------------------


class PretrainedDescriptor(nn.Module):
    """The pretrained network ``P``: a patch resized to ``size``×``size`` → global average of stages.

    ``stages=(4,)`` (efficientnet_lite0's last stage, 320 channels, stride 32) is the literal
    counterpart of the pooled 512-d last layer of ResNet-18 that the paper distils. Several stages
    are concatenated after pooling, e.g. ``(2, 3, 4)`` → 40 + 112 + 320 = 472 dimensions.
    """

    def __init__(
        self, name: str = "efficientnet_lite0", stage: int | Sequence[int] = 4, size: int = 224,
        device: Any = "auto",
    ):
        super().__init__()
        from ..backbones import load_backbone

        stages = (int(stage),) if isinstance(stage, int) else tuple(int(s) for s in stage)
        self.backbone = load_backbone(name, layers=stages, device=device)
        self.size = int(size)
        self.dim = int(sum(self.backbone.channels))

    @torch.no_grad()
    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(patches, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.cat([f.mean(dim=(2, 3)) for f in self.backbone(x)], dim=1)


# --- the three distillation losses ------------------------------------------------------------


def knowledge_distillation_loss(decoded: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1: ``L_k = ‖D(T̂(p)) − P(p)‖²``, averaged over the batch."""
    return (decoded - target).pow(2).sum(dim=1).mean()


def metric_learning_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Eq. 2: triplet loss ``max(0, δ + δ⁺ − δ⁻)`` with hard negative mining.

    ``δ⁺ = ‖T̂(p) − T̂(p⁺)‖²`` and ``δ⁻ = min(‖T̂(p) − T̂(p⁻)‖², ‖T̂(p⁺) − T̂(p⁻)‖²)``.
    """
    d_pos = (anchor - positive).pow(2).sum(1)
    d_neg = torch.minimum((anchor - negative).pow(2).sum(1), (positive - negative).pow(2).sum(1))
    return F.relu(margin + d_pos - d_neg).mean()


def compactness_loss(desc: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``L_c = Σ_{i≠j} c_ij``, the off-diagonal entries of the descriptors' correlation matrix.

    ``c_ij`` is the Pearson correlation of descriptor dimensions ``i`` and ``j`` over the mini-batch.
    """
    z = desc - desc.mean(0, keepdim=True)
    z = z / (z.pow(2).sum(0, keepdim=True).sqrt() + 1e-8)
    corr = z.T @ z
    return corr.sum() - torch.diagonal(corr).sum()


# --- distillation data ------------------------------------------------------------------------

#: Natural images shipped with scikit-image, our offline stand-in for ImageNet patches. The pictures
#: the synthetic texture benchmark is cut from (brick, grass, gravel, moon, immunohistochemistry)
#: are left out, so the teacher never sees the inspected material.
NATURAL_IMAGES = (
    "astronaut", "chelsea", "coffee", "camera", "coins", "rocket", "hubble_deep_field",
    "colorwheel", "page", "text", "retina",
)


def natural_images(names: Sequence[str] = NATURAL_IMAGES, max_side: int = 512) -> list[np.ndarray]:
    """Load scikit-image's sample pictures as uint8 RGB (longest side ≤ ``max_side``)."""
    import skimage.data
    from PIL import Image

    out = []
    for n in names:
        fn = getattr(skimage.data, n, None)
        if fn is None:
            raise ConfigError(f"skimage.data has no image {n!r}")
        im = np.asarray(fn())
        if im.ndim == 2:
            im = np.repeat(im[:, :, None], 3, axis=2)
        im = im[:, :, :3].astype(np.uint8)
        pil = Image.fromarray(im)
        s = max_side / max(pil.size)
        if s < 1:
            pil = pil.resize((max(1, int(pil.width * s)), max(1, int(pil.height * s))), Image.BILINEAR)
        out.append(np.asarray(pil))
    return out


def sample_triplet_patches(
    images: Sequence[np.ndarray], p: int, n: int, rng: np.random.Generator, max_shift: int | None = None,
    noise: float = 0.02,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor patches ``p`` and positives ``p⁺`` (Sec. 3.1: a small translation, a luminance change
    and Gaussian noise), random scale ∈ [0.5, 1] and flips; negatives are other anchors."""
    max_shift = max(1, p // 8) if max_shift is None else max_shift
    ts = [torch.from_numpy(np.array(im, dtype=np.float32) / 255.0).permute(2, 0, 1) for im in images]
    q = p + 2 * max_shift  # the region holding the anchor and every shifted positive
    anchors, positives = [], []
    for _ in range(n):
        img = ts[int(rng.integers(len(ts)))]
        h, w = img.shape[1:]
        scale = float(rng.uniform(0.5, 1.0))  # zoom out: a source region of q/scale pixels → q
        src = min(h, w, max(q, int(round(q / scale))))
        r, c = int(rng.integers(0, h - src + 1)), int(rng.integers(0, w - src + 1))
        region = img[None, :, r : r + src, c : c + src]
        if src != q:
            region = F.interpolate(region, size=(q, q), mode="bilinear", align_corners=False, antialias=True)
        region = region[0]
        dr, dc = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        a = region[:, max_shift : max_shift + p, max_shift : max_shift + p]
        b = region[:, max_shift + dr : max_shift + dr + p, max_shift + dc : max_shift + dc + p]
        b = b * float(rng.uniform(0.8, 1.2)) + noise * torch.from_numpy(rng.standard_normal(b.shape)).float()
        if rng.random() < 0.5:
            a, b = a.flip(-1), b.flip(-1)
        anchors.append(a)
        positives.append(b.clamp(0, 1))
    return torch.stack(anchors), torch.stack(positives)


#: Part of every cached teacher's key: bump it when distillation or the architectures change.
TEACHER_CACHE_VERSION = 2


@dataclass
class DistillConfig:
    """Settings of teacher distillation; the defaults are the ``full`` profile's (see the chapter)."""

    p: int = 65
    lambda_k: float = 1.0
    lambda_m: float = 0.0
    lambda_c: float = 1.0
    width: float = 1.0
    n_patches: int = 50_000
    steps: int = 50_000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 1e-5
    margin: float = 1.0
    #: divide L_c by the descriptor dimension d (see :func:`distill_teacher`); False = Eq. 3 literally
    lc_per_dim: bool = True
    target_size: int = 224
    target_stages: tuple[int, ...] = (4,)
    backbone: str = "efficientnet_lite0"
    seed: int = 0

    def key(self) -> str:
        """Cache identity: every field plus :data:`TEACHER_CACHE_VERSION` (bumped when the code changes)."""
        blob = json.dumps({**self.__dict__, "version": TEACHER_CACHE_VERSION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    return Path(os.environ.get("IADLIB_CACHE", Path.home() / ".cache" / "iadlib")) / "students_teachers"


def distill_teacher(
    cfg: DistillConfig,
    device: Any = "auto",
    images: Sequence[np.ndarray] | None = None,
    cache: bool = True,
    verbose: bool = False,
) -> tuple[Teacher, dict[str, list[float]]]:
    """Distil a patch teacher from the pretrained network (main paper Sec. 3.1, Eqs. 1–3).

    ``n_patches`` anchor/positive pairs are cut from ``images`` (default: :data:`NATURAL_IMAGES`);
    their targets ``P(p)`` are computed once and standardised per dimension. Each step draws a
    batch, negatives being the batch's anchors rolled by one. Adam with ``lr`` and
    ``weight_decay``.

    Loss scaling. Eq. 3 sums ``d(d − 1)`` signed correlations, so ``L_c`` ranges over
    ``[−d, d(d − 1)]`` (``d`` = 128) against ``L_k ≈ D`` at the start (``D`` standardised target
    dimensions). Taken literally it dominates: within tens of steps the correlations are pinned at
    their minimum ``−1/(d − 1)`` by making descriptor dimensions strongly anti-correlated (mean
    ``|c_ij|`` 0.59 against 0.25 without ``L_c``) and the held-out ``L_k`` after 600 steps is 14 %
    higher than without ``L_c`` (p = 17, width 0.125; measured with this code). With
    ``lc_per_dim=True`` (default) ``L_c`` is divided by ``d`` — range ``[−1, d − 1]`` — which still
    drives the mean correlation to its minimum but leaves ``L_k`` as low as without ``L_c``
    (mean ``|c_ij|`` 0.30). The paper does not state its scaling; its targets (raw 512-d ResNet-18
    features) differ from ours anyway. Returns the teacher (eval mode) and per-term loss history (one value per
    logging interval). With ``cache=True`` a teacher of the same configuration is loaded from disk.
    """
    dev = resolve_device(device)
    if cfg.lambda_k == 0 and cfg.lambda_m == 0 and cfg.lambda_c == 0:
        raise ConfigError("at least one of lambda_k, lambda_m, lambda_c must be non-zero")
    if cfg.lambda_k == 0 and cfg.lambda_m == 0:
        raise ConfigError("L_c alone has a trivial minimum; switch on L_k or L_m as in the paper's tables")
    _check_p(cfg.p)
    path = _cache_dir() / f"teacher_p{cfg.p}_{cfg.key()}.pt"
    if cache and images is None and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            t = Teacher(cfg.p, blob["target_dim"], cfg.width)
            t.load_state_dict(blob["state"])
            return t.to(dev).eval(), blob["history"]
        except Exception as exc:  # a corrupt cache file: say which, retrain
            raise CheckpointError(
                f"{path}: corrupt teacher cache ({exc}); delete the file to retrain"
            ) from exc
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    imgs = list(images) if images is not None else natural_images()
    anchors, positives = sample_triplet_patches(imgs, cfg.p, cfg.n_patches, rng)
    target_net = PretrainedDescriptor(cfg.backbone, cfg.target_stages, size=cfg.target_size, device=dev)
    targets = torch.cat(
        [target_net(anchors[i : i + 256].to(dev)).cpu() for i in range(0, len(anchors), 256)]
    )
    del target_net
    t_mean, t_std = targets.mean(0), targets.std(0).clamp_min(1e-6)
    targets = (targets - t_mean) / t_std
    teacher = Teacher(cfg.p, targets.shape[1], cfg.width).to(dev)
    opt = torch.optim.Adam(teacher.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    hist: dict[str, list[float]] = {"L_k": [], "L_m": [], "L_c": [], "loss": []}
    acc = {k: 0.0 for k in hist}
    log_every = max(1, cfg.steps // 20)
    n = len(anchors)
    bs = min(cfg.batch_size, n)
    for step in tqdm(range(cfg.steps), desc=f"distil teacher p={cfg.p}", disable=not verbose):
        idx = torch.from_numpy(rng.choice(n, size=bs, replace=False))
        a, y = anchors[idx].to(dev), targets[idx].to(dev)
        da = teacher.net(a)
        l_k = knowledge_distillation_loss(teacher.decode(da), y)
        l_c = compactness_loss(da) / (da.shape[1] if cfg.lc_per_dim else 1)
        if cfg.lambda_m:
            dp = teacher.net(positives[idx].to(dev))
            l_m = metric_learning_loss(da, dp, da.roll(1, 0), cfg.margin)
        else:
            l_m = torch.zeros((), device=dev)
        loss = cfg.lambda_k * l_k + cfg.lambda_m * l_m + cfg.lambda_c * l_c
        check_loss(loss.detach(), step, f"teacher p={cfg.p}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for k, v in (("L_k", l_k), ("L_m", l_m), ("L_c", l_c), ("loss", loss)):
            acc[k] += float(v.detach())
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            cnt = log_every if (step + 1) % log_every == 0 else (step + 1) % log_every
            for k in hist:
                hist[k].append(acc[k] / cnt)
                acc[k] = 0.0
    teacher.eval()
    if cache and images is None:
        torch_save_atomic(
            {
                "state": teacher.state_dict(),
                "target_dim": targets.shape[1],
                "history": hist,
                "config": cfg.__dict__,
            },
            path,
        )
    return teacher, hist


# --- students --------------------------------------------------------------------------------


class StudentEnsemble(nn.Module):
    """M students of one scale and the statistics that normalise the teacher and the scores."""

    def __init__(self, p: int, n_students: int = 3, width: float = 1.0, out_dim: int = 128):
        super().__init__()
        if n_students < 1:
            raise ConfigError(f"n_students must be ≥ 1, got {n_students}")
        self.students = nn.ModuleList(PatchNet(p, width, out_dim) for _ in range(n_students))
        self.register_buffer("t_mean", torch.zeros(out_dim))
        self.register_buffer("t_std", torch.ones(out_dim))
        self.register_buffer("err_stats", torch.tensor([0.0, 1.0]))
        self.register_buffer("var_stats", torch.tensor([0.0, 1.0]))

    def predict_all(self, x: torch.Tensor, dense: bool) -> torch.Tensor:
        """Student predictions ``[M,B,d,H,W]`` (dense) or ``[M,B,d]`` (patch mode)."""
        return torch.stack([s.dense(x) if dense else s(x) for s in self.students])

    def error_and_variance(
        self, preds: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 6–7: regression error ``‖μ̄ − y‖²`` and predictive variance ``(1/M)Σ‖μ_i‖² − ‖μ̄‖²``."""
        mu = preds.mean(0)
        err = (mu - target).pow(2).sum(1)
        var = preds.pow(2).sum(2).mean(0) - mu.pow(2).sum(1)
        return err, var.clamp_min(0)

    def score(self, err: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Eq. 8: ``ẽ + ṽ``, each standardised with its validation mean and standard deviation."""
        return (err - self.err_stats[0]) / self.err_stats[1] + (var - self.var_stats[0]) / self.var_stats[1]


def normalize_target(t: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dense: bool) -> torch.Tensor:
    shape = (1, -1, 1, 1) if dense else (1, -1)
    return (t - mean.view(shape)) / std.view(shape)


def train_students(
    ens: StudentEnsemble,
    teacher: PatchNet,
    train: torch.Tensor,
    val: torch.Tensor,
    *,
    dense: bool,
    epochs: int,
    batch_size: int,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    device: Any = "cpu",
    seed: int = 0,
    verbose: bool = False,
) -> dict[str, list[float]]:
    """Fit the ensemble (Eq. 5) on float images ``[N,3,H,W]`` in [0, 1]; then set the validation
    statistics of the error and variance (Eq. 8) from ``val``. Returns the per-epoch loss history."""
    dev = resolve_device(device)
    teacher = teacher.to(dev).eval()
    ens = ens.to(dev)

    def teach(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return teacher.dense(x) if dense else teacher(x)

    # teacher statistics μ, σ over all training descriptors (Sec. 3.2), accumulated in float64
    with torch.no_grad():
        s1 = s2 = None
        cnt = 0
        for i in range(0, len(train), batch_size):
            f = teach(train[i : i + batch_size].to(dev))
            f = f.transpose(0, 1).reshape(f.shape[1], -1).double()
            s1 = f.sum(1) if s1 is None else s1 + f.sum(1)
            s2 = f.pow(2).sum(1) if s2 is None else s2 + f.pow(2).sum(1)
            cnt += f.shape[1]
        mean = s1 / cnt
        std = ((s2 / cnt - mean.pow(2)).clamp_min(0) * cnt / max(1, cnt - 1)).sqrt()
        ens.t_mean.copy_(mean.float())
        ens.t_std.copy_(std.float().clamp_min(1e-6))
    # all M students see the same batches (they differ by their random initialisation); the
    # teacher's target is computed once per batch
    hist: dict[str, list[float]] = {f"student{i}_loss_p{teacher.p}": [] for i in range(len(ens.students))}
    opts = [torch.optim.Adam(s.parameters(), lr=lr, weight_decay=weight_decay) for s in ens.students]
    g = torch.Generator().manual_seed(seed)
    ens.train()
    for ep in tqdm(range(epochs), desc=f"students p={teacher.p}", disable=not verbose):
        order = torch.randperm(len(train), generator=g)
        tot = torch.zeros(len(ens.students), dtype=torch.float64)
        for i in range(0, len(train), batch_size):
            x = train[order[i : i + batch_size]].to(dev)
            y = normalize_target(teach(x), ens.t_mean, ens.t_std, dense)
            for si, (student, opt) in enumerate(zip(ens.students, opts)):
                pred = student.dense(x) if dense else student(x)
                loss = (pred - y).pow(2).sum(1).mean()
                check_loss(loss.detach(), f"epoch {ep}", f"student {si} p={teacher.p}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                tot[si] += float(loss.detach()) * len(x)
        for si in range(len(ens.students)):
            hist[f"student{si}_loss_p{teacher.p}"].append(float(tot[si]) / len(train))
    ens.eval()
    with torch.no_grad():
        errs, vars_ = [], []
        for i in range(0, len(val), batch_size):
            x = val[i : i + batch_size].to(dev)
            y = normalize_target(teach(x), ens.t_mean, ens.t_std, dense)
            e, v = ens.error_and_variance(ens.predict_all(x, dense), y)
            errs.append(e.flatten())
            vars_.append(v.flatten())
        e, v = torch.cat(errs), torch.cat(vars_)
        ens.err_stats.copy_(torch.stack([e.mean(), e.std().clamp_min(1e-6)]))
        ens.var_stats.copy_(torch.stack([v.mean(), v.std().clamp_min(1e-6)]))
    return hist


@torch.no_grad()
def score_images(
    ens: StudentEnsemble, teacher: PatchNet, x: torch.Tensor, dense: bool, batch_size: int = 8
) -> torch.Tensor:
    """``ẽ + ṽ`` for float images: maps ``[N,H,W]`` (dense) or scores ``[N]`` (patch mode)."""
    dev = next(ens.parameters()).device
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(dev)
        t = teacher.dense(xb) if dense else teacher(xb)
        y = normalize_target(t, ens.t_mean, ens.t_std, dense)
        e, v = ens.error_and_variance(ens.predict_all(xb, dense), y)
        outs.append(ens.score(e, v).cpu())
    return torch.cat(outs)


# --- the detector ----------------------------------------------------------------------------


@register_model("students")
class StudentsDetector(Detector):
    """Multi-scale student–teacher detector (Uninformed Students, Eq. 9).

    ``patch_sizes`` picks the scales (paper: 17, 33, 65), ``n_students`` the ensemble size M
    (paper: 3). ``width`` scales the hidden channels of teachers and students (1.0 = paper; the
    quick profile uses less). ``distill`` overrides :class:`DistillConfig` fields (loss weights,
    steps, patches, target size). Students train ``epochs`` epochs with Adam(``lr``, weight decay
    1e-5) on ``1 − val_fraction`` of the training images; the rest give the validation statistics
    of Eq. 8. Image score: the maximum of the anomaly map.
    """

    default_image_size = 256

    def __init__(
        self,
        *,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 1,
        patch_sizes: Sequence[int] = (17, 33, 65),
        n_students: int = 3,
        width: float = 1.0,
        epochs: int = 100,
        lr: float = 1e-4,
        val_fraction: float = 0.1,
        distill: dict[str, Any] | None = None,
        backbone: str = "efficientnet_lite0",
        cache: bool = True,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        ps = tuple(_check_p(p) for p in patch_sizes)
        if not ps:
            raise ConfigError("patch_sizes is empty; give at least one of 17, 33, 65")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"val_fraction must lie in [0, 1), got {val_fraction}")
        distill = dict(distill or {})
        own = {"p", "width", "backbone", "seed"}
        bad = set(distill) - set(DistillConfig.__dataclass_fields__) | (own & set(distill))
        if bad:
            valid = sorted(set(DistillConfig.__dataclass_fields__) - own)
            raise ConfigError(f"unknown distill options {sorted(bad)}; valid: {valid}")
        self.config.update(
            patch_sizes=list(ps), n_students=n_students, width=width, epochs=epochs, lr=lr,
            val_fraction=val_fraction, distill=distill, cache=cache, verbose=verbose,
            backbone=backbone,
        )
        self.patch_sizes = ps
        self.teachers: dict[int, Teacher] = {}
        self.ensembles: dict[int, StudentEnsemble] = {}

    def _distill_cfg(self, p: int) -> DistillConfig:
        return DistillConfig(
            p=p, width=self.config["width"], seed=self.seed, backbone=self.config["backbone"],
            **self.config["distill"],
        )

    def _fit(self, images: list[np.ndarray]) -> None:
        x = images_to_tensor(images, self.image_size)
        n_val = int(round(self.config["val_fraction"] * len(x)))
        if n_val >= len(x):
            n_val = 0
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        val = x[perm[:n_val]] if n_val else x
        train = x[perm[n_val:]]
        for p in self.patch_sizes:
            teacher, th = distill_teacher(
                self._distill_cfg(p), self.device, cache=self.config["cache"], verbose=self.config["verbose"]
            )
            self.history.update({f"teacher_p{p}_{k}": v for k, v in th.items()})
            ens = StudentEnsemble(p, self.config["n_students"], self.config["width"])
            h = train_students(
                ens, teacher.net, train, val, dense=True, epochs=self.config["epochs"],
                batch_size=self.batch_size, lr=self.config["lr"], device=self.device, seed=self.seed,
                verbose=self.config["verbose"],
            )
            self.history.update(h)
            self.teachers[p], self.ensembles[p] = teacher, ens

    @torch.no_grad()
    def predict_scales(self, images: Any) -> dict[int, np.ndarray]:
        """Per-scale anomaly maps ``{p: [N,S,S]}`` at the model resolution (for per-scale AU-PRO)."""
        from ..data.base import as_image_list

        x = images_to_tensor(as_image_list(images), self.image_size)
        bs = max(1, self.batch_size)
        return {
            p: score_images(self.ensembles[p], self.teachers[p].net, x, dense=True, batch_size=bs).numpy()
            for p in self.patch_sizes
        }

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        per = self.predict_scales(images)
        maps = torch.from_numpy(np.mean([per[p] for p in self.patch_sizes], axis=0))
        return maps.flatten(1).amax(1), maps

    def _get_state(self) -> dict[str, Any]:
        return {
            "teachers": {p: t.state_dict() for p, t in self.teachers.items()},
            "target_dims": {p: t.decode.out_features for p, t in self.teachers.items()},
            "ensembles": {p: e.state_dict() for p, e in self.ensembles.items()},
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        for p in self.patch_sizes:
            if p not in state["teachers"]:
                raise CheckpointError(f"checkpoint has no teacher for p={p}")
            t = Teacher(p, state["target_dims"][p], self.config["width"])
            t.load_state_dict(state["teachers"][p])
            e = StudentEnsemble(p, self.config["n_students"], self.config["width"])
            e.load_state_dict(state["ensembles"][p])
            self.teachers[p], self.ensembles[p] = t.to(self.device).eval(), e.to(self.device).eval()


__all__ = [
    "ARCHITECTURES",
    "DistillConfig",
    "PatchNet",
    "PretrainedDescriptor",
    "StudentEnsemble",
    "StudentsDetector",
    "Teacher",
    "compactness_loss",
    "distill_teacher",
    "knowledge_distillation_loss",
    "metric_learning_loss",
    "natural_images",
    "score_images",
    "train_students",
]
