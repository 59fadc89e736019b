"""Simulated surface anomalies: Perlin-noise masks filled with augmented texture (DRAEM, Sec. 3.3).

DRAEM (Zavrtanik, Kristan & Skočaj, ICCV 2021) never sees a real defect. It pastes *just-out-of-
distribution* patches onto normal images:

1. a Perlin noise image ``P`` (Perlin 1985/2002: gradient noise with the quintic fade
   ``6t⁵ − 15t⁴ + 10t³``) with random lattice resolutions ``2^k`` per axis, ``k ∈ {0, …, 5}``, is
   rotated by a random angle and thresholded (``P > 0.5``) into the anomaly mask ``M_a``;
2. an anomaly source image ``A`` — a texture photo (DTD in the paper; here the offline texture and
   scene photos of :mod:`skimage.data` stand in) — is augmented by 3 operations drawn at random from
   {posterize, sharpness, solarize, equalize, brightness, colour, auto-contrast} (MIAD appendix
   A.2.4);
3. the augmented image is (DRAEM Eq. 1)
   ``I_a = ¬M_a ⊙ I + (1 − β)(M_a ⊙ A) + β(M_a ⊙ I)`` with the opacity ``β ~ U[0, 0.8]``.

Half of the training images stay anomaly-free (empty mask), as in the reference implementation.
Everything here is deterministic given a :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from scipy import ndimage

from .errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_TEXTURES",
    "TextureBank",
    "augment_source",
    "perlin_mask",
    "perlin_noise",
    "rotate_batch",
    "synthesize_anomalies",
]

#: Offline photos standing in for the Describable Textures Dataset (DTD) as anomaly sources. The
#: materials of the ``synth_textures`` benchmark (brick, grass, gravel, moon, immunohistochemistry)
#: are left out on purpose: like DTD for MVTec AD, the sources must be unrelated to the test defects.
DEFAULT_TEXTURES: tuple[str, ...] = (
    "camera",
    "coins",
    "cell",
    "clock",
    "page",
    "text",
    "coffee",
    "chelsea",
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "retina",
    "colorwheel",
)


def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic interpolant ``6t⁵ − 15t⁴ + 10t³`` (Perlin 2002, "Improving noise")."""
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin gradient noise of ``shape`` with ``res = (ry, rx)`` lattice cells per axis.

    Random unit gradients ``g`` sit on the ``(ry+1) × (rx+1)`` lattice corners; each pixel blends the
    four dot products ``g · (p − corner)`` with the fade curve. Values lie in about ``[−1, 1]``
    (scaled by √2 as in DRAEM's ``rand_perlin_2d_np``). Any ``shape`` works (no divisibility rule).
    """
    h, w = int(shape[0]), int(shape[1])
    ry, rx = int(res[0]), int(res[1])
    if h < 1 or w < 1 or ry < 1 or rx < 1:
        raise ConfigError(f"perlin_noise: shape {shape} and res {res} must be positive")
    y = np.arange(h) * (ry / h)
    x = np.arange(w) * (rx / w)
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = y - yi, x - xi
    angles = rng.uniform(0.0, 2 * math.pi, size=(ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (yf - dy)[:, None] + g[..., 1] * (xf - dx)[None, :]

    ty, tx = _fade(yf)[:, None], _fade(xf)[None, :]
    n0 = corner(0, 0) + ty * (corner(1, 0) - corner(0, 0))
    n1 = corner(0, 1) + ty * (corner(1, 1) - corner(0, 1))
    return math.sqrt(2.0) * (n0 + tx * (n1 - n0))


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
    coverage: float | None = None,
    rotate: bool = True,
) -> np.ndarray:
    """A binary anomaly mask ``M_a`` from thresholded, rotated Perlin noise (DRAEM Sec. 3.3).

    The lattice resolution per axis is ``2^k`` with ``k`` uniform in ``[min_scale, max_scale)``
    (DRAEM: 0…5); the noise is rotated by an angle in ``[−90°, 90°]``. With ``coverage=None`` the
    mask is ``noise > threshold`` (DRAEM's 0.5; often empty for coarse lattices, then the sample
    acts as a normal one); with ``coverage=c`` the threshold is the ``1 − c`` quantile of the noise,
    so exactly ``round(c · H · W)`` pixels are set (ties aside).
    """
    if not 0 <= min_scale < max_scale:
        raise ConfigError(f"perlin_mask: need 0 <= min_scale < max_scale, got {min_scale}, {max_scale}")
    if coverage is not None and not 0.0 <= coverage <= 1.0:
        raise ConfigError(f"perlin_mask: coverage must lie in [0, 1], got {coverage}")
    ky, kx = rng.integers(min_scale, max_scale, size=2)
    noise = perlin_noise(shape, (2**ky, 2**kx), rng)
    if rotate:
        angle = float(rng.uniform(-90.0, 90.0))
        noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="reflect")
    if coverage is None:
        return noise > threshold
    k = int(round(coverage * noise.size))
    mask = np.zeros(noise.size, dtype=bool)
    if k > 0:
        mask[np.argpartition(noise.ravel(), noise.size - k)[noise.size - k :]] = True
    return mask.reshape(noise.shape)


# --- anomaly-source augmentations (MIAD A.2.4; parameter ranges of DRAEM's imgaug pipeline) ---------
def _posterize(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.posterize(im, int(rng.integers(1, 8)))


def _sharpness(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Sharpness(im).enhance(float(rng.uniform(0.0, 2.0)))


def _solarize(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.solarize(im, int(rng.integers(32, 129)))


def _equalize(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.equalize(im)


def _brightness(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Multiply by ``U[0.8, 1.2]`` and add ``U[−30, 30]`` (imgaug ``MultiplyAndAddToBrightness``)."""
    a = np.asarray(im, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode=im.mode)


def _colour(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shift hue and saturation by ``U[−50, 50]`` each (imgaug ``AddToHueAndSaturation``); grey: no-op."""
    if im.mode != "RGB":
        return im
    hsv = np.asarray(im.convert("HSV"), dtype=np.int16).copy()
    hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-50, 51))) % 256
    hsv[..., 1] = np.clip(hsv[..., 1] + int(rng.integers(-50, 51)), 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")


def _autocontrast(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.autocontrast(im)


AUGMENTATIONS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "posterize": _posterize,
    "sharpness": _sharpness,
    "solarize": _solarize,
    "equalize": _equalize,
    "brightness": _brightness,
    "colour": _colour,
    "autocontrast": _autocontrast,
}


def augment_source(image: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply ``n_ops`` distinct augmentations drawn at random from :data:`AUGMENTATIONS`, in random order."""
    if not 0 <= n_ops <= len(AUGMENTATIONS):
        raise ConfigError(f"augment_source: n_ops must lie in 0..{len(AUGMENTATIONS)}, got {n_ops}")
    im = Image.fromarray(image)
    names = list(AUGMENTATIONS)
    for i in rng.choice(len(names), size=n_ops, replace=False):
        im = AUGMENTATIONS[names[int(i)]](im, rng)
    return np.asarray(im)


@functools.lru_cache(maxsize=32)
def _load_texture(name: str) -> np.ndarray:
    import skimage.data

    fn = getattr(skimage.data, name, None)
    if fn is None:
        raise ConfigError(f"unknown skimage.data texture {name!r}; e.g. {', '.join(DEFAULT_TEXTURES)}")
    img = np.asarray(fn())
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        raise ConfigError(f"skimage.data.{name} is not a uint8 photo (dtype {img.dtype}); pick another one")
    return img


class TextureBank:
    """Anomaly source images ``A``: random crops of texture photos, resized and augmented.

    ``textures``: names of :mod:`skimage.data` photos or uint8 arrays; ``grayscale=True`` turns the
    sources grey (for grey inspection data, colour patches would be trivially easy to spot).
    """

    def __init__(self, textures: Sequence[str | np.ndarray] = DEFAULT_TEXTURES, grayscale: bool = False):
        if len(textures) == 0:
            raise ConfigError("TextureBank needs at least one texture")
        self.grayscale = grayscale
        self.images: list[np.ndarray] = []
        for t in textures:
            img = _load_texture(t) if isinstance(t, str) else np.asarray(t)
            if img.dtype != np.uint8 or img.ndim not in (2, 3):
                what = t if isinstance(t, str) else f"array of shape {img.shape}"
                raise ConfigError(f"texture {what}: need a uint8 H×W or H×W×3 image")
            if grayscale and img.ndim == 3:
                img = np.asarray(Image.fromarray(img).convert("L"))
            elif not grayscale and img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            self.images.append(img)

    def sample(self, size: tuple[int, int], rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
        """One augmented source image of ``size`` as uint8 ``H×W×3`` (grey replicated when grayscale)."""
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(h, w))
        side = max(side, 8)
        y0 = int(rng.integers(0, h - side + 1))
        x0 = int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(np.ascontiguousarray(img[y0 : y0 + side, x0 : x0 + side]))
        crop = crop.resize((size[1], size[0]), Image.BILINEAR)
        out = augment_source(np.asarray(crop), rng, n_ops)
        return np.repeat(out[..., None], 3, axis=2) if out.ndim == 2 else out


def rotate_batch(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate ``[B,C,H,W]`` images about their centres by ``angles_deg`` ``[B]`` (mirror padding)."""
    a = angles_deg.to(x.device, x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    zero = torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(
        x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def synthesize_anomalies(
    images: torch.Tensor,
    bank: TextureBank,
    rng: np.random.Generator,
    *,
    p_anomaly: float = 0.5,
    beta_max: float = 0.8,
    n_ops: int = 3,
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DRAEM Eq. 1 on a batch of normal images ``[B,3,H,W]`` in [0, 1].

    Each image receives, with probability ``p_anomaly``, a Perlin mask filled with an augmented
    texture at opacity ``1 − β``, ``β ~ U[0, beta_max]``. Returns ``(augmented [B,3,H,W],
    masks [B,1,H,W] in {0, 1})``.
    """
    b, _, h, w = images.shape
    masks = np.zeros((b, 1, h, w), dtype=np.float32)
    sources = np.zeros((b, h, w, 3), dtype=np.uint8)
    betas = np.zeros((b, 1, 1, 1), dtype=np.float32)
    for i in range(b):
        if rng.random() >= p_anomaly:
            continue
        masks[i, 0] = perlin_mask((h, w), rng, min_scale=min_scale, max_scale=max_scale, threshold=threshold)
        sources[i] = bank.sample((h, w), rng, n_ops)
        betas[i] = rng.uniform(0.0, beta_max)
    m = torch.from_numpy(masks).to(images.device, images.dtype)
    a = torch.from_numpy(sources).to(images.device).permute(0, 3, 1, 2).to(images.dtype) / 255.0
    beta = torch.from_numpy(betas).to(images.device, images.dtype)
    augmented = (1 - m) * images + (1 - beta) * (m * a) + beta * (m * images)
    return augmented, m
