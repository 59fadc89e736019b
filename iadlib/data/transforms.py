"""Explicit image transforms applied on load: resizing (images bilinear, masks nearest) and colour.

Datasets mix grey and RGB files and vary in size (MTD tiles, COIL-100 vs. MVTec AD). Loaders never
change an image silently: ``image_size`` and ``color`` are loader options that call these functions,
and the resulting sample records what was done in ``sample.meta["transform"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError

COLOR_MODES = (None, "rgb", "grey")


def size_hw(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``256`` → ``(256, 256)``; ``(h, w)`` → ``(h, w)``; ``None`` → ``None`` (keep the file's size)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        try:
            h, w = (int(v) for v in size)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"image_size={size!r}: expected an int or a pair (height, width)") from exc
        hw = (h, w)
    if min(hw) < 1:
        raise ConfigError(f"image_size={size!r}: sizes must be positive")
    return hw


def check_color(color: str | None) -> str | None:
    if color not in COLOR_MODES:
        raise ConfigError(f"color={color!r}; valid: None (keep), 'rgb', 'grey'")
    return color


def resize_image(image: np.ndarray, size: int | Sequence[int] | None) -> np.ndarray:
    """Resize a uint8 ``H×W(×3)`` image to ``size`` with antialiased bilinear interpolation (PIL)."""
    hw = size_hw(size)
    if hw is None or image.shape[:2] == hw:
        return image
    im = Image.fromarray(image)
    return np.asarray(im.resize((hw[1], hw[0]), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int | Sequence[int] | None) -> np.ndarray:
    """Resize a bool mask with nearest-neighbour sampling (labels never blend)."""
    hw = size_hw(size)
    if hw is None or mask.shape[:2] == hw:
        return mask
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.resize((hw[1], hw[0]), Image.NEAREST)) > 127


def convert_color(image: np.ndarray, color: str | None) -> np.ndarray:
    """``"rgb"`` → ``H×W×3`` (grey replicated), ``"grey"`` → ``H×W`` (ITU-R 601 luma), ``None`` → as is."""
    check_color(color)
    if color is None:
        return image
    if color == "rgb":
        return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim == 2:
        return image
    return np.asarray(Image.fromarray(image).convert("L"))


def apply_transforms(
    image: np.ndarray,
    mask: np.ndarray | None,
    regions: list[np.ndarray] | None,
    image_size: int | Sequence[int] | None,
    color: str | None,
) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray] | None]:
    """Colour conversion then resize of an image with its mask and LOCO regions (nearest)."""
    image = resize_image(convert_color(image, color), image_size)
    if mask is not None:
        mask = resize_mask(mask, image_size)
    if regions is not None:
        regions = [resize_mask(r, image_size) for r in regions]
    # PIL-backed arrays are read-only; samples hand out writable arrays (torch.from_numpy warns otherwise)
    image = image if image.flags.writeable else image.copy()
    if mask is not None and not mask.flags.writeable:
        mask = mask.copy()
    return image, mask, regions


def rescale_saturation(saturation: float, src_hw: tuple[int, int], dst_hw: tuple[int, int] | None) -> float:
    """A saturation area in pixels measured at ``src_hw``, expressed at the resized resolution."""
    if dst_hw is None or tuple(src_hw) == tuple(dst_hw):
        return float(saturation)
    return float(saturation) * (dst_hw[0] * dst_hw[1]) / float(src_hw[0] * src_hw[1])
