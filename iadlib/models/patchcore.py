"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

1. Locally aware patch features (§3.1): mid-level feature maps of two backbone stages, each
   averaged over a p×p neighbourhood (p = 3, Eq. 1–2; zero padding at the border as the official
   code's unfold does, ``padding="zeros"``, or means over the cells inside, ``"valid"``), the
   deeper one bilinearly upsampled to the finer grid, concatenated per position.
2. Memory bank ``M`` of all training patches, reduced by greedy k-center coreset selection
   (§3.2, Alg. 1) on a random projection (Johnson–Lindenstrauss, d* = 128).
3. Scoring (§3.3, Eq. 6–7): each test patch scores its distance to the nearest memory patch;
   the image score is the largest patch score ``s*``, re-weighted by
   ``w = 1 − exp‖m_test,* − m*‖ / Σ_{m ∈ N_b(m*)} exp‖m_test,* − m‖`` (``reweight=True``;
   the official code skips this, ``reweight=False``).
4. Segmentation: the patch-score grid is bilinearly upsampled and smoothed by a Gaussian (σ = 4).

Speed (see ``benchmarks/bench_patchcore.py``): bf16 autocast + channels_last for the backbone,
exact greedy coreset with triangle-inequality and projection pruning
(:func:`iadlib.kernels.greedy_coreset`), blocked matrix-product nearest neighbours (torch; exact bf16
pre-selection re-scored in float32 on GPUs and on CPUs with native bf16, ``knn_precision``) or a faiss
index (``search="faiss"``; a GPU index when CUDA is present and faiss has GPU support). Fit checks
that the memory bank fits in memory before building it and says how much it needs.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..backbones import load_backbone
from ..errors import ConfigError
from ..kernels import greedy_coreset, knn, random_projection, require_memory
from . import register_model
from .base import Detector, iter_batches, upsample_blur


@register_model("patchcore")
class PatchCore(Detector):
    """PatchCore detector; see the module docstring for the method and its equations."""

    default_image_size = 224

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        layers: tuple[int, ...] | list[int] = (2, 3),
        coreset_ratio: float = 0.01,
        projection_dim: int = 128,
        patch_size: int = 3,
        padding: str = "zeros",
        reweight: bool = True,
        num_neighbors: int = 9,
        sigma: float = 4.0,
        max_train_images: int = 2000,
        amp: bool = True,
        jit: bool = False,
        search: str = "torch",
        knn_precision: str = "auto",
        weights: str | None = None,
        image_size: int | None = None,
        device: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        verbose: bool = False,
    ):
        super().__init__(image_size, device, seed, batch_size)
        if not 0 < coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must lie in (0, 1], got {coreset_ratio}")
        if search not in ("torch", "faiss"):
            raise ConfigError(f"search={search!r}; valid: 'torch', 'faiss'")
        if padding not in ("zeros", "valid"):
            raise ConfigError(f"padding={padding!r}; valid: 'zeros' (official code), 'valid' (means over real cells)")
        if knn_precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"knn_precision={knn_precision!r}; valid: 'auto', 'fp32', 'bf16'")
        self.config.update(
            backbone=backbone,
            layers=list(layers),
            coreset_ratio=coreset_ratio,
            projection_dim=projection_dim,
            patch_size=patch_size,
            padding=padding,
            reweight=reweight,
            num_neighbors=num_neighbors,
            sigma=sigma,
            max_train_images=max_train_images,
            amp=amp,
            jit=jit,
            search=search,
            knn_precision=knn_precision,
            weights=weights,
        )
        self.verbose = verbose
        self.backbone = load_backbone(backbone, layers, self.device, weights=weights)  # channels_last inside
        self.memory_bank: torch.Tensor | None = None
        self._index = None

    # --- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Locally aware patch features ``[B, C, h, w]`` of float images ``[B,3,S,S]`` in [0, 1] (Eq. 1–2)."""
        p = self.config["patch_size"]
        x = x.to(self.device)
        use_amp = self.config["amp"]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            feats = self._frozen_backbone(x)(x)
        feats = [f.float() for f in feats]
        zeros = self.config.get("padding", "zeros") == "zeros"
        feats = [F.avg_pool2d(f, p, stride=1, padding=p // 2, count_include_pad=zeros) for f in feats]
        size = feats[0].shape[-2:]
        feats = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return torch.cat(feats, 1).contiguous()

    def _frozen_backbone(self, x: torch.Tensor) -> Any:
        """With ``jit=True`` on CPU: the backbone as a frozen TorchScript graph (BatchNorm folded into
        the convolutions, oneDNN-fused), traced once per input layout; else (or if tracing fails) the
        eager module. Measured on 2 cores, ELPV mono, batch 32, before the eager backbone had its
        BatchNorms folded (benchmarks/README.md): bf16 4.9 ms/image against 9.1 eager; its features
        deviate 8 % from float32 (eager bf16: 4 %), which left the image AUROC unchanged within the
        coreset's start-point noise (seeds 0–2, 1 %: 0.947 vs 0.947 eager; one run moves by ±0.01).
        Off by default: the eager path is the faithful one and already meets the 15 ms target."""
        if not self.config.get("jit", False) or self.device.type != "cpu":
            return self.backbone
        key = (tuple(x.shape[1:]), x.dtype, bool(self.config["amp"]))
        cache = self.__dict__.setdefault("_traced", {})
        if key not in cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cache[key] = torch.jit.freeze(torch.jit.trace(self.backbone.eval(), x[:2], check_trace=False))
            except Exception:  # noqa: BLE001 - an optimisation only: fall back to the eager module
                cache[key] = self.backbone
        return cache[key]

    def _embed_all(self, images: list[np.ndarray], desc: str) -> torch.Tensor:
        """Patch features of all images as rows ``[N·h·w, C]``, written into one preallocated bank."""
        bank = None
        batches = iter_batches(images, self.batch_size, self.image_size, self.device)
        total = (len(images) + self.batch_size - 1) // self.batch_size
        row = 0
        for x in tqdm(batches, total=total, desc=desc, disable=not self.verbose):
            f = self.embed(x)
            B, C, h, w = f.shape
            if bank is None:
                n_rows = len(images) * h * w
                # the bank, its projection and the coreset's working copies (≈ 2.5 × the bank)
                what = f"patchcore memory bank ({n_rows} patches × {C})"
                require_memory(int(2.5 * n_rows * C * 4), what, self.device)
                bank = torch.empty(n_rows, C, device=self.device)
            bank[row : row + B * h * w] = f.permute(0, 2, 3, 1).reshape(-1, C)
            row += B * h * w
        return bank

    # --- fit -----------------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray]) -> None:
        cap = self.config["max_train_images"]
        if cap and len(images) > cap:  # MIAD A.2.2: at most 2000 randomly sampled training images
            rng = np.random.default_rng(self.seed)
            images = [images[i] for i in np.sort(rng.choice(len(images), cap, replace=False))]
        bank = self._embed_all(images, "patchcore features")
        n = max(1, int(round(self.config["coreset_ratio"] * bank.shape[0])))
        if n < bank.shape[0]:
            proj = random_projection(bank, self.config["projection_dim"], seed=self.seed)
            start = int(torch.randint(bank.shape[0], (1,), generator=torch.Generator().manual_seed(self.seed)))
            idx = greedy_coreset(proj, n, start=start, progress=self.verbose)
            del proj
            bank = bank[idx]
        self.memory_bank = bank.contiguous()
        self._index = None

    # --- scoring -------------------------------------------------------------------------------
    def nearest(self, features: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and indices of the nearest memory-bank patches of ``features [M, C]``."""
        if self.memory_bank is None:
            raise RuntimeError("patchcore: fit() first")
        features = features.to(self.memory_bank.device, torch.float32)
        if self.config["search"] == "faiss":
            index = self._faiss_index()
            d, i = index.search(features.cpu().numpy(), k)
            d = torch.from_numpy(d).clamp_(min=0).sqrt_().to(features.device)
            i = torch.from_numpy(i).to(features.device)
            return (d[:, 0], i[:, 0]) if k == 1 else (d, i)
        return knn(features, self.memory_bank, k=k, precision=self._precision())

    def _precision(self) -> str:
        p = self.config["knn_precision"]
        if p != "auto":
            return p
        # bf16 on GPUs. On CPUs with native bf16 (AVX512-BF16/AMX) the exact bf16 pre-selection
        # (kernels._nearest_bf16) is ~2x faster than float32 from ~1k bank rows on (ELPV mono, 1 %
        # coreset: 3,387 rows); below that its per-query bookkeeping outweighs the cheaper product
        if self.device.type == "cuda":
            return "bf16"
        try:
            native = torch.cpu._is_avx512_bf16_supported()
        except AttributeError:  # pragma: no cover - older torch
            native = False
        return "bf16" if native and self.memory_bank is not None and len(self.memory_bank) >= 1024 else "fp32"

    def _faiss_index(self):
        if self._index is None:
            import faiss

            bank = self.memory_bank.cpu().numpy().astype(np.float32)
            index = faiss.IndexFlatL2(bank.shape[1])
            if self.device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
                index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
            index.add(bank)
            self._index = index
        return self._index

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        scores, maps = [], []
        batches = iter_batches(images, self.batch_size, self.image_size, self.device)
        total = (len(images) + self.batch_size - 1) // self.batch_size
        for x in tqdm(batches, total=total, desc="patchcore predict", disable=not self.verbose):
            f = self.embed(x)
            B, C, h, w = f.shape
            flat = f.permute(0, 2, 3, 1).reshape(-1, C)
            dist, idx = self.nearest(flat)
            dist = dist.view(B, h * w)
            idx = idx.view(B, h * w)
            s_star, arg = dist.max(1)
            if self.config["reweight"]:
                s = self._reweight(flat.view(B, h * w, C), arg, idx, s_star)
            else:
                s = s_star
            scores.append(s)
            size = (self.image_size, self.image_size)
            maps.append(upsample_blur(dist.view(B, h, w), size, self.config["sigma"]))
        return torch.cat(scores), torch.cat(maps)

    def _reweight(
        self, feats: torch.Tensor, arg: torch.Tensor, idx: torch.Tensor, s_star: torch.Tensor
    ) -> torch.Tensor:
        """Eq. 7: ``s = (1 − softmax([‖m_test,* − m‖ for m in N_b(m*)])[m*]) · s*``."""
        B = feats.shape[0]
        rows = torch.arange(B, device=feats.device)
        m_test = feats[rows, arg]  # [B, C]
        m_star = idx[rows, arg]  # [B]
        bank = self.memory_bank
        b = min(self.config["num_neighbors"], bank.shape[0])
        _, nb = knn(bank[m_star], bank, k=b)  # N_b(m*), includes m* itself first
        nb[:, 0] = m_star
        d = (bank[nb] - m_test[:, None, :]).norm(dim=2)  # [B, b]
        w = 1.0 - torch.softmax(d, dim=1)[:, 0]
        return w * s_star

    # --- state ---------------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {"memory_bank": self.memory_bank.cpu()}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.memory_bank = state["memory_bank"].to(self.device)
        self._index = None
