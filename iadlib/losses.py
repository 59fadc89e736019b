"""Image-comparison losses shared by the reconstruction methods: SSIM and the focal loss.

* :func:`ssim` — the structural similarity index of Wang, Bovik, Sheikh & Simoncelli, *Image quality
  assessment: from error visibility to structural similarity* (IEEE TIP 2004), Eq. 13, computed
  per pixel with an 11×11 Gaussian window (σ = 1.5) and the constants ``C1 = (0.01 L)²``,
  ``C2 = (0.03 L)²`` of the paper (``L`` = dynamic range of the data). Used as a loss
  (``1 − SSIM``) by DRAEM and by the SSIM auto-encoder of Bergmann et al. (VISAPP 2019), and as a
  residual map (``1 − SSIM(x, x̂)`` per pixel) by the MVTec AD auto-encoder baselines.
* :func:`focal_loss` — Lin, Goyal, Girshick, He & Dollár, *Focal loss for dense object detection*
  (ICCV 2017), Eq. 4/5: ``FL(p_t) = −α_t (1 − p_t)^γ log p_t``, used by DRAEM's discriminative
  sub-network (γ = 2).

Both are plain tensor functions (no state) that work on CPU and CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError

__all__ = ["focal_loss", "gaussian_window", "ssim", "ssim_loss", "ssim_map"]


def gaussian_window(window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian of odd length ``window`` (the SSIM paper's 11-tap, σ = 1.5)."""
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"SSIM window must be a positive odd integer, got {window}")
    if sigma <= 0:
        raise ConfigError(f"SSIM sigma must be positive, got {sigma}")
    x = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).float()


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ConfigError(f"ssim: inputs of different shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4:
        raise ConfigError(f"ssim: expected [N,C,H,W] tensors, got shape {tuple(x.shape)}")


def ssim_map(
    x: torch.Tensor,
    y: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Per-pixel, per-channel SSIM of ``[N,C,H,W]`` tensors (Wang et al. 2004, Eq. 13).

    Local means ``μ``, variances ``σ²`` and covariance ``σ_xy`` are Gaussian-weighted averages
    (Eqs. 14–16); the borders are handled by mirror (``reflect``) padding so the map has
    the input's size. Returns ``[N,C,H,W]``:

    ``SSIM = (2 μ_x μ_y + C1)(2 σ_xy + C2) / ((μ_x² + μ_y² + C1)(σ_x² + σ_y² + C2))``.
    """
    _check_pair(x, y)
    n, c, h, w = x.shape
    g = gaussian_window(window, sigma).to(device=x.device, dtype=x.dtype)
    r = window // 2
    mode = "reflect" if min(h, w) > r else "replicate"

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (r, r, r, r), mode=mode)
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(t.shape[1], 1, 1, window), groups=t.shape[1])
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(t.shape[1], 1, window, 1), groups=t.shape[1])

    # one grouped pass over the five moments: x, y, x², y², xy
    stats = blur(torch.cat([x, y, x * x, y * y, x * y], dim=1))
    mu_x, mu_y, xx, yy, xy = stats.split(c, dim=1)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Structural similarity of ``[N,C,H,W]`` image batches (Wang et al. 2004, Eq. 13; MSSIM Eq. 17).

    ``reduction="mean"``: the mean SSIM over everything (a scalar, 1 for identical inputs);
    ``"image"``: one mean per image ``[N]``; ``"none"``: the per-pixel map averaged over channels
    ``[N,H,W]`` (the residual maps of the MVTec AD auto-encoder use ``1 − ssim(..., "none")``).
    """
    m = ssim_map(x, y, window=window, sigma=sigma, data_range=data_range)
    if reduction == "mean":
        return m.mean()
    if reduction == "image":
        return m.mean(dim=(1, 2, 3))
    if reduction == "none":
        return m.mean(dim=1)
    raise ConfigError(f"ssim reduction={reduction!r}; valid: 'mean', 'image', 'none'")


def ssim_loss(
    x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """``1 − SSIM(x, y)`` averaged over the batch: the structural loss ``L_SSIM`` of DRAEM (Eq. 3)."""
    return 1.0 - ssim(x, y, window=window, sigma=sigma, data_range=data_range)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Focal loss of Lin et al. (ICCV 2017), Eq. 5, on two-class segmentation logits.

    ``logits``: ``[N,2,H,W]`` (channel 1 = anomalous); ``target``: ``[N,1,H,W]`` or ``[N,H,W]`` in
    {0, 1}. With ``p_t`` the softmax probability of the true class,
    ``FL = −α_t (1 − p_t)^γ log p_t`` averaged over pixels; ``α`` (weight of the anomalous class,
    ``α_t = α`` for anomalous and ``1 − α`` for normal pixels) is off by default, as in DRAEM.
    ``γ = 0`` and no ``α`` give the ordinary cross-entropy.
    """
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise ConfigError(f"focal_loss: expected logits [N,2,H,W], got {tuple(logits.shape)}")
    if target.ndim == 4:
        target = target[:, 0]
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ConfigError(
            f"focal_loss: target {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    logp = F.log_softmax(logits.float(), dim=1)
    t = target.float()
    logp_t = t * logp[:, 1] + (1 - t) * logp[:, 0]
    p_t = logp_t.exp().clamp(eps, 1.0)
    loss = -((1 - p_t) ** gamma) * logp_t
    if alpha is not None:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.mean()
