"""Synthetic benchmarks with exact pixel ground truth, written to disk in the upstream layouts.

``synth_textures`` (MVTec AD layout, read back through the ``mvtec_ad`` loader)
    Real texture photographs shipped offline with scikit-image (brick, grass, gravel, the lunar
    surface ``moon`` and the ``tissue`` immunohistochemistry slide) cut into varied normal crops
    (position, ±10 % scale, flips/rotations where the texture allows, ±4 % gain, sensor noise).
    Defective test images get one structural defect of type ``scratch``, ``crack``, ``hole``,
    ``stain`` (colour), ``foreign_body`` (a patch of another material), ``missing`` (a torn-out piece
    showing the backing) or ``cutpaste`` (CutPaste, Li et al. CVPR 2021: a rectangle of the same
    texture moved and rotated), each at a ``subtle``/``medium``/``strong`` severity that scales its
    size and contrast. **The mask is exactly the set of pixels the defect changed**: the defect is
    rendered on the normal crop, every pixel of its footprint is forced to differ by at least one
    grey level and the mask is ``defective != normal``.

``synth_loco`` (MVTec LOCO AD layout, read back through the ``mvtec_loco`` loader)
    ``flat_connector`` — modelled on the flat-connector class of Saghir (2024, §4.2): a galvanised
    100×35 mm plate with two rows of seven drilled holes on black cloth, mild pose and lighting
    jitter. Logical anomalies: ``missing_hole``, ``extra_hole``, ``wrong_hole_size``; structural:
    ``edge_damage``, ``cut_corner``, ``deep_scratch``. As in the thesis the saturation threshold of
    every defect is its full area (relative 1.0).
    ``compartments`` — a tray of 2×3 compartments that must each hold exactly one part (washer, nut
    or ball, anywhere inside its compartment). Logical: ``missing_item``, ``extra_item`` — annotated
    as the whole compartment with an *absolute* saturation of one part's area (the pushpins rule of
    Bergmann et al. IJCV 2022: any part-sized detection inside the compartment suffices);
    structural: ``broken_item``, ``contamination`` (relative 1.0).
    Each region is one mask file ``ground_truth/<type>/<id>/00k.png`` whose pixel value names the
    defect in ``defects_config.json``; an anomalous image holds one or two regions.

Everything is deterministic from ``seed``: each image draws from its own
``np.random.SeedSequence((seed, category, split, index))``, PNGs are written with fixed settings,
so the same seed gives the same bytes. Trees are generated on first use into a temporary folder
and renamed into place atomically (concurrent first uses are safe).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset
from .folder import default_data_root

GENERATOR_VERSION = 1

# (scikit-image loader, rotations by 90° allowed, flips allowed)
_TEXTURE_SOURCES: dict[str, tuple[str, bool, bool]] = {
    "brick": ("brick", False, True),
    "grass": ("grass", True, True),
    "gravel": ("gravel", True, True),
    "moon": ("moon", False, False),  # lit from one side: no flips
    "tissue": ("immunohistochemistry", True, True),
}
TEXTURE_CATEGORIES: tuple[str, ...] = tuple(_TEXTURE_SOURCES)
TEXTURE_DEFECTS: tuple[str, ...] = (
    "scratch", "crack", "hole", "stain", "foreign_body", "missing", "cutpaste",
)  # fmt: skip
SEVERITIES = ("subtle", "medium", "strong")
_SEV_P = (0.3, 0.4, 0.3)
_SEV_CONTRAST = {"subtle": 0.35, "medium": 0.65, "strong": 1.0}
_SEV_SIZE = {"subtle": 0.65, "medium": 1.0, "strong": 1.35}

LOCO_CATEGORIES: tuple[str, ...] = ("flat_connector", "compartments")
#: defect name → (kind, pixel value, saturation threshold, relative?) per LOCO category.
#: Absolute thresholds are given in pixels at 256 px and scaled with the image area.
LOCO_DEFECTS: dict[str, dict[str, tuple[str, int, float, bool]]] = {
    "flat_connector": {
        "missing_hole": ("logical_anomalies", 255, 1.0, True),
        "extra_hole": ("logical_anomalies", 254, 1.0, True),
        "wrong_hole_size": ("logical_anomalies", 253, 1.0, True),
        "edge_damage": ("structural_anomalies", 252, 1.0, True),
        "cut_corner": ("structural_anomalies", 251, 1.0, True),
        "deep_scratch": ("structural_anomalies", 250, 1.0, True),
    },
    "compartments": {
        "missing_item": ("logical_anomalies", 255, -1.0, False),  # -1: one part's area (set at generation)
        "extra_item": ("logical_anomalies", 254, -1.0, False),
        "broken_item": ("structural_anomalies", 253, 1.0, True),
        "contamination": ("structural_anomalies", 252, 1.0, True),
    },
}


# --------------------------------------------------------------------------------------- helpers
def _key(x: Any) -> int:
    return zlib.crc32(str(x).encode()) & 0x7FFFFFFF


def image_rng(seed: int, *keys: Any) -> np.random.Generator:
    """The generator of one image: independent of generation order, identical across runs."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *map(_key, keys)]))


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx + 0.5, yy + 0.5


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Antialiased coverage of the inside (sdf < 0) of a signed distance field in pixels."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _stroke(size: int, points: Sequence[tuple[float, float]], width: float, ss: int = 4) -> np.ndarray:
    """Antialiased alpha ``[size,size]`` of a polyline (``ss``× supersampled PIL stroke)."""
    im = Image.new("L", (size * ss, size * ss), 0)
    ImageDraw.Draw(im).line(
        [(x * ss, y * ss) for x, y in points], fill=255, width=max(1, int(round(width * ss))), joint="curve"
    )
    a = np.asarray(im, dtype=np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3))
    return a / 255.0


def _blob(size: int, cx: float, cy: float, radius: float, irregularity: float, rng: np.random.Generator) -> np.ndarray:
    """Star-shaped blob: radius r(θ) = R·(1 + Σ_k a_k cos(kθ + φ_k)), k = 2..5 (bool mask)."""
    xx, yy = _grid(size, size)
    dx, dy = xx - cx, yy - cy
    th = np.arctan2(dy, dx)
    r = np.ones_like(th)
    for k in range(2, 6):
        r += irregularity / k * rng.uniform(-1, 1) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    return np.hypot(dx, dy) < radius * np.clip(r, 0.3, None)


@functools.cache
def _texture_source(category: str) -> np.ndarray:
    """The category's photograph as float RGB in [0, 1] (grey photos replicated to 3 channels)."""
    import skimage.data

    name = _TEXTURE_SOURCES[category][0]
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3].astype(np.float32) / 255.0


def _crop(category: str, size: int, rng: np.random.Generator, scale: float = 0.5) -> np.ndarray:
    """A random crop of ``scale``·side (±10 %) of the source, resized to ``size``, flipped/rotated."""
    src = _texture_source(category)
    h, w = src.shape[:2]
    c = int(round(min(h, w) * scale * rng.uniform(0.9, 1.1)))
    c = min(c, h, w)
    y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    patch = to_uint8(src[y0 : y0 + c, x0 : x0 + c])
    patch = np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    _, rot, flip = _TEXTURE_SOURCES[category]
    if flip and rng.random() < 0.5:
        patch = patch[:, ::-1]
    if flip and rng.random() < 0.5:
        patch = patch[::-1]
    if rot:
        patch = np.rot90(patch, int(rng.integers(0, 4)))
    return np.ascontiguousarray(patch)


def normal_texture(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One defect-free texture image (float RGB): crop, ±4 % gain, ±1.5 % offset, σ = 0.6 grey-level noise."""
    img = _crop(category, size, rng)
    img = img * rng.uniform(0.96, 1.04) + rng.uniform(-0.015, 0.015)
    img = img + rng.normal(0.0, 0.6 / 255.0, size=img.shape[:2])[:, :, None]
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------- texture defects
#: a defect renderer returns (float image with the defect, its footprint, parameters for the record)
_DefectOut = tuple[np.ndarray, np.ndarray, dict[str, Any]]


def _defect_scratch(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    L = size * rng.uniform(0.2, 0.5) * _SEV_SIZE[sev]
    x0, y0 = rng.uniform(0.15, 0.85, 2) * size
    th = rng.uniform(0, 2 * np.pi)
    bend = rng.normal(0, 0.25) * L
    x2, y2 = x0 + L * np.cos(th), y0 + L * np.sin(th)
    mx, my = (x0 + x2) / 2 - bend * np.sin(th), (y0 + y2) / 2 + bend * np.cos(th)
    t = np.linspace(0, 1, 24)[:, None]
    pts = (1 - t) ** 2 * [x0, y0] + 2 * t * (1 - t) * [mx, my] + t**2 * [x2, y2]
    alpha = _stroke(size, [tuple(p) for p in pts], rng.uniform(1.0, 2.5) * size / 256)
    sign = 1.0 if rng.random() < 0.7 else -1.0
    delta = rng.uniform(0.15, 0.35) * _SEV_CONTRAST[sev]
    return img + sign * delta * alpha[:, :, None], alpha > 0.02, {"length_px": float(L)}


def _defect_crack(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    def walk(x, y, th, n, step):
        pts = [(x, y)]
        for _ in range(n):
            th += rng.normal(0, 0.4)
            x, y = x + step * np.cos(th), y + step * np.sin(th)
            pts.append((x, y))
        return pts, th

    step = size / 45
    n = int(rng.integers(6, 14) * _SEV_SIZE[sev])
    x, y = rng.uniform(0.2, 0.8, 2) * size
    main, _ = walk(x, y, rng.uniform(0, 2 * np.pi), n, step)
    alpha = _stroke(size, main, rng.uniform(1.2, 2.2) * size / 256)
    for _ in range(int(rng.integers(1, 3))):
        bx, by = main[int(rng.integers(1, len(main)))]
        br, _ = walk(bx, by, rng.uniform(0, 2 * np.pi), max(2, n // 3), step * 0.8)
        alpha = np.maximum(alpha, _stroke(size, br, size / 256))
    depth = rng.uniform(0.45, 0.8) * _SEV_CONTRAST[sev]
    return img * (1 - depth * alpha[:, :, None]), alpha > 0.02, {"segments": n}


def _defect_hole(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    r = size * rng.uniform(0.025, 0.055) * _SEV_SIZE[sev]
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    inner = _blob(size, cx, cy, r, 0.25, rng)
    outer = ndi.binary_dilation(inner, iterations=max(1, int(round(r * 0.3))))
    xx, yy = _grid(size, size)
    d = np.clip(np.hypot(xx - cx, yy - cy) / r, 0, 1.5)
    dark = rng.uniform(0.03, 0.12) + 0.05 * d
    k = rng.uniform(0.6, 0.95) * (0.5 + 0.5 * _SEV_CONTRAST[sev])
    out = img.copy()
    out[inner] = (1 - k) * img[inner] + k * dark[inner][:, None]
    rim = outer & ~inner
    out[rim] = img[rim] + 0.12 * _SEV_CONTRAST[sev]  # raised burr around the hole
    return out, outer, {"radius_px": float(r)}


_STAIN_COLOURS = {
    "rust": (0.55, 0.27, 0.07),
    "oil": (0.12, 0.10, 0.08),
    "ink": (0.15, 0.25, 0.60),
    "coffee": (0.40, 0.25, 0.12),
    "paint": (0.80, 0.75, 0.20),
}


def _defect_stain(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    r = size * rng.uniform(0.05, 0.12) * _SEV_SIZE[sev]
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    blob = _blob(size, cx, cy, r, 0.45, rng)
    w = ndi.gaussian_filter(blob.astype(np.float32), sigma=max(1.0, r / 5)) * blob
    w = w / max(float(w.max()), 1e-6)
    name = list(_STAIN_COLOURS)[int(rng.integers(0, len(_STAIN_COLOURS)))]
    colour = np.array(_STAIN_COLOURS[name], np.float32)
    a = rng.uniform(0.35, 0.7) * _SEV_CONTRAST[sev] * w[:, :, None]
    return (1 - a) * img + a * colour, blob, {"colour": name, "radius_px": float(r)}


def _defect_foreign_body(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    others = [c for c in TEXTURE_CATEGORIES if c != category]
    other = others[int(rng.integers(0, len(others)))]
    foreign = _crop(other, size, rng, scale=rng.uniform(0.25, 0.6))
    r = size * rng.uniform(0.04, 0.09) * _SEV_SIZE[sev]
    cx, cy = rng.uniform(0.15, 0.85, 2) * size
    blob = _blob(size, cx, cy, r, 0.35, rng)
    if sev != "strong":  # match the local mean so that only texture (and colour) differ
        foreign = foreign - foreign[blob].mean(0) + img[blob].mean(0)
    out = img.copy()
    out[blob] = foreign[blob]
    return out, blob, {"material": other, "radius_px": float(r)}


def _defect_missing(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    side = int(rng.integers(0, 4))
    t = rng.uniform(0.2, 0.8) * size
    cx, cy = [(t, 0.0), (size, t), (t, size), (0.0, t)][side]
    r = size * rng.uniform(0.1, 0.18) * _SEV_SIZE[sev]
    blob = _blob(size, cx, cy, r, 0.4, rng)
    backing = rng.uniform(0.04, 0.18) + rng.normal(0, 0.01, size=(size, size)).astype(np.float32)
    edge = ndi.binary_dilation(~blob, iterations=2) & blob
    backing = np.where(edge, backing * 0.5, backing)  # shadow of the torn edge
    out = img.copy()
    out[blob] = backing[blob][:, None]
    return out, blob, {"side": side, "radius_px": float(r)}


def _defect_cutpaste(img: np.ndarray, rng: np.random.Generator, size: int, sev: str, category: str) -> _DefectOut:
    area = size * size * rng.uniform(0.01, 0.03) * _SEV_SIZE[sev] ** 2
    aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
    h = int(np.clip(round(np.sqrt(area / aspect)), 4, size // 2))
    w = int(np.clip(round(np.sqrt(area * aspect)), 4, size // 2))
    sy, sx = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
    patch = img[sy : sy + h, sx : sx + w].copy()
    if sev == "strong" or rng.random() < 0.5:
        patch = patch.transpose(1, 0, 2)[::-1] if rng.random() < 0.5 else patch[::-1, ::-1]
    ph, pw = patch.shape[:2]
    patch = patch * rng.uniform(0.85, 1.15) ** _SEV_CONTRAST[sev]  # CutPaste colour jitter
    ty, tx = int(rng.integers(0, size - ph)), int(rng.integers(0, size - pw))
    out = img.copy()
    out[ty : ty + ph, tx : tx + pw] = patch
    region = np.zeros((size, size), bool)
    region[ty : ty + ph, tx : tx + pw] = True
    return out, region, {"box": [tx, ty, pw, ph]}


_TEXTURE_DEFECT_FNS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, dict[str, Any]]]] = {
    "scratch": _defect_scratch,
    "crack": _defect_crack,
    "hole": _defect_hole,
    "stain": _defect_stain,
    "foreign_body": _defect_foreign_body,
    "missing": _defect_missing,
    "cutpaste": _defect_cutpaste,
}


def apply_exact(good: np.ndarray, out: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise a defect so that the changed pixels are exactly ``region``.

    Outside ``region`` the normal image is kept; inside, any pixel the rounding left unchanged is
    moved by one grey level (down where it is at 255). Returns ``(defective uint8, mask)`` with
    ``mask == (defective != good).any(-1) == region``.
    """
    out8 = to_uint8(out)
    out8[~region] = good[~region]
    same = region & (out8 == good).all(axis=-1)
    g = good[same].astype(np.int16)
    out8[same] = np.where(g < 255, g + 1, g - 1).astype(np.uint8)
    mask = (out8 != good).any(axis=-1)
    assert np.array_equal(mask, region)  # by construction
    return out8, mask


def texture_defect(
    good: np.ndarray, category: str, defect: str, rng: np.random.Generator, severity: str | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Render ``defect`` on the uint8 normal image ``good``: ``(defective, mask, info)``, exact mask."""
    if defect not in _TEXTURE_DEFECT_FNS:
        raise ConfigError(f"unknown texture defect {defect!r}; valid: {', '.join(TEXTURE_DEFECTS)}")
    sev = severity or SEVERITIES[int(rng.choice(3, p=_SEV_P))]
    size = good.shape[0]
    img = good.astype(np.float32) / 255.0
    for _ in range(8):  # a defect that fell outside the image (tiny sizes) is redrawn
        out, region, info = _TEXTURE_DEFECT_FNS[defect](img, rng, size, sev, category)
        if region.any():
            break
    else:  # pragma: no cover - only for degenerate sizes
        raise DatasetError(f"could not place a {defect} defect on a {size}px image")
    out8, mask = apply_exact(good, out, region)
    diff = np.abs(out8.astype(np.int16) - good.astype(np.int16)).max(axis=-1)
    info = {
        "defect": defect,
        "severity": sev,
        "area_px": int(mask.sum()),
        "mean_abs_change": float(diff[mask].mean()),
        **info,
    }
    return out8, mask, info


def texture_sample(
    category: str, seed: int, split: str, index: int, image_size: int = 256, defect: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """One image of the benchmark: ``(image, normal image it came from, mask, info)``.

    ``defect=None`` gives a normal image (mask and normal source ``None``). Used by the generator
    and by tests that check masks against the pixels that changed.
    """
    if category not in _TEXTURE_SOURCES:
        raise ConfigError(f"unknown synth_textures category {category!r}; valid: {', '.join(TEXTURE_CATEGORIES)}")
    rng = image_rng(seed, "synth_textures", category, split, index, defect or "good")
    good = to_uint8(normal_texture(category, image_size, rng))
    if defect is None:
        return good, None, None, {"defect": "good"}
    out, mask, info = texture_defect(good, category, defect, rng)
    return out, good, mask, info


# ---------------------------------------------------------------------------- generation driver
def _stamp(kind: str, category: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "generator": f"iadlib.data.synth/{kind}",
        "version": GENERATOR_VERSION,
        "category": category,
        **params,
    }


def _ensure_tree(
    base: Path, kind: str, category: str, params: dict[str, Any], write: Callable[[Path], dict[str, Any]]
) -> Path:
    """Generate ``base/category`` once (into a temp folder renamed atomically); check its stamp."""
    target = base / category
    stamp_path = target / "synth_stamp.json"
    want = _stamp(kind, category, params)
    if target.exists():
        if not stamp_path.is_file():
            raise ConfigError(
                f"{target} exists but was not written by the {kind} generator (no synth_stamp.json); "
                "pass another root or remove the folder"
            )
        have = json.loads(stamp_path.read_text())
        if {k: have.get(k) for k in want} != want:
            raise ConfigError(
                f"{target} holds {kind} generated with {have}, not {want}; pass another root "
                "(root=None picks a folder per configuration) or remove the folder"
            )
        return target
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{category}.", dir=base))
    try:
        meta = write(tmp)
        (tmp / "synth_meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        stamp_path_tmp = tmp / "synth_stamp.json"
        stamp_path_tmp.write_text(json.dumps(want, indent=1, sort_keys=True))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "synth_stamp.json").is_file():  # not a concurrent generator winning
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _default_root(kind: str, params: dict[str, Any]) -> Path:
    tag = "-".join(f"{k}{v}" for k, v in params.items() if k != "defects")
    if params.get("defects"):
        tag += "-" + "+".join(params["defects"])
    return default_data_root(kind) / f"v{GENERATOR_VERSION}-{tag}"


def _check_count(name: str, value: int, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name}={value!r}: must be an integer ≥ {minimum}")
    return int(value)


def generate_textures(
    category: str,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 80,
    n_test_good: int = 25,
    n_test_defect: int = 50,
    defects: Sequence[str] | None = None,
) -> Path:
    """Write one ``synth_textures`` category in the MVTec AD layout; returns the dataset root.

    Defect types are assigned round-robin over the defective test images (``defects`` restricts
    them), files are named ``000.png, 001.png …`` per folder, masks ``ground_truth/<type>/000_mask.png``.
    """
    if category not in _TEXTURE_SOURCES:
        raise ConfigError(f"unknown synth_textures category {category!r}; valid: {', '.join(TEXTURE_CATEGORIES)}")
    kinds = tuple(defects) if defects else TEXTURE_DEFECTS
    bad = [d for d in kinds if d not in TEXTURE_DEFECTS]
    if bad:
        raise ConfigError(f"unknown texture defect(s) {bad}; valid: {', '.join(TEXTURE_DEFECTS)}")
    image_size = _check_count("image_size", image_size, 32)
    params = {
        "seed": int(seed), "px": image_size, "train": _check_count("n_train", n_train, 1),
        "good": _check_count("n_test_good", n_test_good, 1),
        "defect": _check_count("n_test_defect", n_test_defect, 1),
        "defects": list(kinds) if defects else None,
    }  # fmt: skip
    base = Path(root) if root is not None else _default_root("synth_textures", params)

    def write(out: Path) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        for i in range(n_train):
            img, _, _, _ = texture_sample(category, seed, "train", i, image_size)
            _save_png(img, out / "train" / "good" / f"{i:03d}.png")
        for i in range(n_test_good):
            img, _, _, _ = texture_sample(category, seed, "test", i, image_size)
            _save_png(img, out / "test" / "good" / f"{i:03d}.png")
        counters = dict.fromkeys(kinds, 0)
        for i in range(n_test_defect):
            kind = kinds[i % len(kinds)]
            j = counters[kind]
            counters[kind] += 1
            img, _, mask, info = texture_sample(category, seed, "test", i, image_size, defect=kind)
            _save_png(img, out / "test" / kind / f"{j:03d}.png")
            _save_png(mask.astype(np.uint8) * 255, out / "ground_truth" / kind / f"{j:03d}_mask.png")
            meta[f"test/{kind}/{j:03d}.png"] = info
        return meta

    _ensure_tree(base, "synth_textures", category, params, write)
    return base


def _with_meta(loader: Callable[[], Any], info: dict[str, Any]) -> Callable[[], Any]:
    def load() -> Any:
        sample = loader()
        sample.meta.update(info)
        return sample

    return load


def _attach_meta(ds: ADDataset, cat_dir: Path) -> ADDataset:
    meta_path = cat_dir / "synth_meta.json"
    if not meta_path.is_file():
        return ds
    meta = json.loads(meta_path.read_text())
    for split in (ds.train, ds.test, ds.validation):
        if split is None:
            continue
        for rec in split.records:
            if not rec.path:
                continue
            info = meta.get(Path(rec.path).relative_to(cat_dir).as_posix())
            if info is None:
                continue
            if rec.sample is not None:
                rec.sample.meta.update(info)
            elif rec.loader is not None:  # lazy split: add the record on load
                rec.loader = _with_meta(rec.loader, info)
    ds.info["synth_meta"] = str(meta_path)
    return ds


@register_dataset("synth_textures")
def synth_textures(
    category: str = "brick",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 80,
    n_test_good: int = 25,
    n_test_defect: int = 50,
    defects: Sequence[str] | None = None,
    color: str | None = None,
    protocol: str = "all",
    cache: bool | None = None,
) -> ADDataset:
    """The texture benchmark for one category (generated on first use, then read as MVTec AD).

    Defective samples carry the generator's record in ``sample.meta`` (``severity``, ``area_px``,
    ``mean_abs_change`` …). ``protocol="algan"`` moves half of the test set into ``.validation``.
    """
    from .mvtec import load_mvtec_layout

    base = generate_textures(category, root, seed, image_size, n_train, n_test_good, n_test_defect, defects)
    ds = load_mvtec_layout(
        "synth_textures",
        base,
        category,
        TEXTURE_CATEGORIES,
        seed=seed,
        color=color,
        protocol=protocol,
        cache=cache,
    )
    ds.info.update(source="synthetic (scikit-image texture photographs)", generator_version=GENERATOR_VERSION)
    return _attach_meta(ds, base / category)


# ------------------------------------------------------------------------------------ synth_loco
def _sdf_round_box(u: np.ndarray, v: np.ndarray, a: float, b: float, r: float) -> np.ndarray:
    qx, qy = np.abs(u) - a + r, np.abs(v) - b + r
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) - r


def _local(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, th: float) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(th), np.sin(th)
    return c * dx + s * dy, -s * dx + c * dy


def _to_image(u: float, v: float, cx: float, cy: float, th: float) -> tuple[float, float]:
    c, s = np.cos(th), np.sin(th)
    return cx + c * u - s * v, cy + s * u + c * v


class _Scene:
    """Fixed random fields of one image (noise, lighting, pose) shared by every render of it."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size = size
        self.xx, self.yy = _grid(size, size)
        self.noise = rng.normal(0, 0.008, (size, size)).astype(np.float32)
        self.cloth = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 1.0).astype(np.float32) * 0.03
        gain = rng.uniform(0.93, 1.07)
        gx, gy = rng.uniform(-0.08, 0.08, 2)
        self.light = (gain * (1 + gx * (self.xx / size - 0.5) + gy * (self.yy / size - 0.5))).astype(np.float32)
        self.cx = size / 2 + rng.uniform(-0.03, 0.03) * size
        self.cy = size / 2 + rng.uniform(-0.03, 0.03) * size

    def finish(self, img: np.ndarray) -> np.ndarray:
        out = img * self.light[:, :, None] + self.noise[:, :, None]
        return to_uint8(out)


# flat connector: 100×35 mm plate, holes Ø5 mm in two rows of seven
_FC_LEN, _FC_WID = 0.86, 0.86 * 35 / 100


def _fc_nominal(size: int) -> dict[str, Any]:
    a, b = _FC_LEN * size / 2, _FC_WID * size / 2
    r = 0.025 * _FC_LEN * size  # Ø5 mm on a 100 mm plate
    us = np.linspace(-a + a / 7, a - a / 7, 7)
    holes = [(float(u), float(v), float(r)) for v in (-b * 0.45, b * 0.45) for u in us]
    return {"a": a, "b": b, "corner": 0.03 * size, "holes": holes, "cuts": [], "bites": [], "scratches": []}


def _render_fc(scene: _Scene, spec: dict[str, Any], th: float, plate_fields: dict[str, np.ndarray]) -> np.ndarray:
    size = scene.size
    u, v = _local(scene.xx, scene.yy, scene.cx, scene.cy, th)
    plate = _coverage(_sdf_round_box(u, v, spec["a"], spec["b"], spec["corner"]))
    for nu, nv, d in spec["cuts"]:  # half-plane cuts n·q > d removed
        plate = plate * _coverage(-(d - (nu * u + nv * v)))
    dent = np.zeros_like(plate)
    for bu, bv, br in spec["bites"]:
        dist = np.hypot(u - bu, v - bv)
        plate = plate * (1 - _coverage(dist - br))
        dent = np.maximum(dent, np.clip(1 - (dist - br) / 3.0, 0, 1) * (dist >= br - 0.5))
    hole = np.zeros_like(plate)
    chamfer = np.zeros_like(plate)
    for hu, hv, hr in spec["holes"]:
        dist = np.hypot(u - hu, v - hv)
        hole = np.maximum(hole, _coverage(dist - hr))
        chamfer = np.maximum(chamfer, np.clip(1 - np.abs(dist - hr - 0.8) / 1.2, 0, 1))
    metal = 0.6 + plate_fields["spangle"] + plate_fields["grain"] + 0.12 * chamfer - 0.25 * dent
    for pts, width, depth in spec["scratches"]:
        alpha = _stroke(size, pts, width)
        metal = metal * (1 - depth * alpha) + 0.1 * _stroke(size, pts, width + 2) * (1 - alpha)
    cov = plate * (1 - hole)
    bg = 0.07 + scene.cloth
    img = bg * (1 - cov) + metal * cov
    rgb = np.stack([img * 0.98, img, img * 1.03], axis=-1)  # zinc is slightly bluish
    return scene.finish(rgb)


def _fc_fields(scene: _Scene, rng: np.random.Generator, th: float) -> dict[str, np.ndarray]:
    """Galvanised spangle: Voronoi cells fixed to the plate, per-cell brightness ±4 %, fine grain."""
    size = scene.size
    u, v = _local(scene.xx, scene.yy, scene.cx, scene.cy, th)
    n = 60
    seeds = np.stack([rng.uniform(-0.5, 0.5, n) * size, rng.uniform(-0.2, 0.2, n) * size], 1)
    from scipy.spatial import cKDTree

    _, idx = cKDTree(seeds).query(np.stack([u.ravel(), v.ravel()], 1))
    shade = rng.normal(0, 0.04, n).astype(np.float32)
    spangle = shade[idx].reshape(size, size)
    grain = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 0.7).astype(np.float32) * 0.012
    return {"spangle": spangle, "grain": grain}


def _fc_defect(kind: str, spec: dict[str, Any], rng: np.random.Generator, size: int, used: set[int]) -> dict:
    spec = {k: (list(v) if isinstance(v, list) else v) for k, v in spec.items()}
    a, b = spec["a"], spec["b"]
    holes = spec["holes"]
    free = [i for i in range(len(holes)) if i not in used]
    if kind == "missing_hole":
        i = int(rng.choice(free))
        used.add(i)
        spec["holes"] = [h for j, h in enumerate(holes) if j != i]
    elif kind == "wrong_hole_size":
        i = int(rng.choice(free))
        used.add(i)
        hu, hv, hr = holes[i]
        f = rng.uniform(1.5, 1.8) if rng.random() < 0.5 else rng.uniform(0.45, 0.6)
        spec["holes"] = [h if j != i else (hu, hv, hr * f) for j, h in enumerate(holes)]
    elif kind == "extra_hole":
        us = sorted({h[0] for h in holes})
        cand = [(float(u), 0.0) for u in us] + [((us[k] + us[k + 1]) / 2, 0.0) for k in range(len(us) - 1)]
        slot = int(rng.integers(0, len(cand)))
        while 100 + slot in used:
            slot = (slot + 1) % len(cand)
        used.add(100 + slot)
        spec["holes"] = holes + [(cand[slot][0], cand[slot][1], holes[0][2] * rng.uniform(0.9, 1.1))]
    elif kind == "cut_corner":
        corners = [c for c in range(4) if 200 + c not in used]
        c = int(rng.choice(corners))
        used.add(200 + c)
        su, sv = (1 if c in (1, 2) else -1), (1 if c >= 2 else -1)
        l1, l2 = rng.uniform(0.35, 0.8) * b, rng.uniform(0.35, 0.8) * b
        # line through (su·(a−l1), sv·b) and (su·a, sv·(b−l2)); remove the corner side
        p, q = np.array([su * (a - l1), sv * b]), np.array([su * a, sv * (b - l2)])
        t = q - p
        n = np.array([t[1], -t[0]]) / np.hypot(*t)
        if n @ np.array([su * a, sv * b]) < n @ p:
            n = -n
        spec["cuts"] = spec["cuts"] + [(float(n[0]), float(n[1]), float(n @ p))]
    elif kind == "edge_damage":
        side = int(rng.integers(0, 2))
        while 300 + side in used:
            side = 1 - side
        used.add(300 + side)
        bu = rng.uniform(-0.8, 0.8) * a
        bv = (b if side else -b) + rng.uniform(-0.1, 0.2) * b * (1 if side else -1)
        br = rng.uniform(0.12, 0.25) * b
        spec["bites"] = (
            spec["bites"]
            + [
                (float(bu + rng.normal(0, br * 0.4)), float(bv), float(br * rng.uniform(0.5, 0.9)))
                for _ in range(int(rng.integers(1, 3)))
            ]
            + [(float(bu), float(bv), float(br))]
        )
    elif kind == "deep_scratch":
        th = spec["theta"]
        u0, u1 = sorted(rng.uniform(-0.85, 0.85, 2) * a)
        if u1 - u0 < 0.3 * a:
            u1 = min(u0 + 0.4 * a, 0.9 * a)
        v0, v1 = rng.uniform(-0.9, 0.9, 2) * b
        pts = [
            _to_image(float(uu), float(vv), spec["cx"], spec["cy"], th)
            for uu, vv in zip(np.linspace(u0, u1, 12), np.linspace(v0, v1, 12) + rng.normal(0, 0.02 * b, 12))
        ]
        spec["scratches"] = spec["scratches"] + [(pts, rng.uniform(1.2, 2.2) * size / 256, rng.uniform(0.45, 0.7))]
    else:  # pragma: no cover
        raise ConfigError(f"unknown flat_connector defect {kind!r}")
    return spec


# compartments: a tray with 2×3 cells, one part per cell
_TRAY_A, _TRAY_B = 0.46, 0.34


def _cells(size: int) -> list[tuple[float, float, float, float]]:
    """Cell interiors (u0, v0, u1, v1) in tray coordinates (origin at the tray centre)."""
    A, B, wall = _TRAY_A * size, _TRAY_B * size, 0.02 * size
    out = []
    for r in range(2):
        for c in range(3):
            u0 = -A + wall + c * (2 * A - wall) / 3
            v0 = -B + wall + r * (2 * B - wall) / 2
            out.append((u0, v0, u0 + (2 * A - wall) / 3 - wall, v0 + (2 * B - wall) / 2 - wall))
    return out


def _part_radius(size: int) -> float:
    return 0.045 * size


def _render_parts(u: np.ndarray, v: np.ndarray, parts: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and colour of the parts: washer (ring), nut (hexagon with bore), ball (shaded disk)."""
    cov = np.zeros(u.shape, np.float32)
    col = np.zeros((*u.shape, 3), np.float32)
    for p in parts:
        du, dv = u - p["u"], v - p["v"]
        r = p["r"]
        d = np.hypot(du, dv)
        if p["kind"] == "washer":
            c = _coverage(d - r) * (1 - _coverage(d - 0.45 * r))
            shade = 0.75 + 0.1 * np.cos(np.arctan2(dv, du) - p["rot"])
        elif p["kind"] == "nut":
            ang = np.arctan2(dv, du) - p["rot"]
            hexd = d * np.cos((ang % (np.pi / 3)) - np.pi / 6) - r * 0.9
            c = _coverage(hexd) * (1 - _coverage(d - 0.4 * r))
            shade = 0.55 + 0.08 * np.sign(np.cos(3 * ang))
        else:
            c = _coverage(d - 0.85 * r)
            shade = 0.9 - 0.5 * np.clip(np.hypot(du + 0.3 * r, dv + 0.3 * r) / r, 0, 1)
        for cu, cv, cr in p.get("chips", []):
            c = c * (1 - _coverage(np.hypot(u - cu, v - cv) - cr))
        rgb = np.asarray(p["colour"], np.float32)
        col = col * (1 - c[..., None]) + (shade[..., None] * rgb) * c[..., None]
        cov = np.maximum(cov, c)
    return cov, col


def _render_cmp(scene: _Scene, spec: dict[str, Any], th: float, fields: dict[str, np.ndarray]) -> np.ndarray:
    size = scene.size
    u, v = _local(scene.xx, scene.yy, scene.cx, scene.cy, th)
    A, B = _TRAY_A * size, _TRAY_B * size
    tray = _coverage(_sdf_round_box(u, v, A, B, 0.03 * size))
    floor = np.zeros_like(tray)
    for u0, v0, u1, v1 in _cells(size):
        cu, cv = (u0 + u1) / 2, (v0 + v1) / 2
        floor = np.maximum(floor, _coverage(_sdf_round_box(u - cu, v - cv, (u1 - u0) / 2, (v1 - v0) / 2, 3.0)))
    tray_col = np.float32(0.78) + fields["plastic"]
    tray_img = tray_col * (1 - 0.18 * floor)  # recessed floors are darker than the walls
    img = np.repeat((0.1 + scene.cloth)[..., None], 3, axis=2)
    tray_rgb = np.stack([tray_img * 0.95, tray_img, tray_img * 0.92], axis=-1)
    img = img * (1 - tray[..., None]) + tray_rgb * tray[..., None]
    for cu, cv, cr, colour in spec["stains"]:
        blob = _coverage(np.hypot(u - cu, v - cv) + 0.3 * cr * np.sin(5 * np.arctan2(v - cv, u - cu)) - cr)
        img = img * (1 - 0.7 * blob[..., None]) + 0.7 * blob[..., None] * np.asarray(colour, np.float32)
    cov, col = _render_parts(u, v, spec["parts"])
    shadow = ndi.gaussian_filter(cov, 1.5)
    img = img * (1 - 0.3 * shadow[..., None])
    img = img * (1 - cov[..., None]) + col
    return scene.finish(img)


_PART_KINDS = ("washer", "nut", "ball")
_PART_COLOURS = {"washer": (0.85, 0.85, 0.9), "nut": (0.8, 0.7, 0.35), "ball": (0.9, 0.3, 0.25)}


def _place_part(rng: np.random.Generator, cell: tuple[float, float, float, float], r: float, avoid: list[dict]):
    u0, v0, u1, v1 = cell
    for _ in range(200):
        pu, pv = rng.uniform(u0 + r + 1, u1 - r - 1), rng.uniform(v0 + r + 1, v1 - r - 1)
        if all(np.hypot(pu - o["u"], pv - o["v"]) > o["r"] + r + 2 for o in avoid):
            return float(pu), float(pv)
    raise DatasetError("cannot place a part in a compartment (image_size too small?)")


def _cmp_nominal(size: int, rng: np.random.Generator) -> dict[str, Any]:
    r = _part_radius(size)
    parts = []
    for ci, cell in enumerate(_cells(size)):
        kind = _PART_KINDS[int(rng.integers(0, 3))]
        pu, pv = _place_part(rng, cell, r, [])
        parts.append({"cell": ci, "kind": kind, "u": pu, "v": pv, "r": r * rng.uniform(0.92, 1.05),
                      "rot": float(rng.uniform(0, 2 * np.pi)), "colour": _PART_COLOURS[kind]})  # fmt: skip
    return {"parts": parts, "stains": []}


def _cmp_defect(kind: str, spec: dict[str, Any], rng: np.random.Generator, size: int, used: set[int]) -> dict:
    spec = {
        "parts": [dict(p) for p in spec["parts"]],
        "stains": list(spec["stains"]),
        **{k: v for k, v in spec.items() if k not in ("parts", "stains")},
    }
    cells = _cells(size)
    free = [i for i in range(len(cells)) if i not in used]
    ci = int(rng.choice(free))
    used.add(ci)
    spec["cell"] = ci
    if kind == "missing_item":
        spec["parts"] = [p for p in spec["parts"] if p["cell"] != ci]
    elif kind == "extra_item":
        r = _part_radius(size)
        k2 = _PART_KINDS[int(rng.integers(0, 3))]
        others = [p for p in spec["parts"] if p["cell"] == ci]
        try:
            pu, pv = _place_part(rng, cells[ci], r * 0.95, others)
        except DatasetError:  # no room next to the first part: move it as well
            for p in others:
                p["u"], p["v"] = _place_part(rng, cells[ci], p["r"], [])
            pu, pv = _place_part(rng, cells[ci], r * 0.95, others)
        rot = float(rng.uniform(0, 2 * np.pi))
        spec["parts"].append(
            {"cell": ci, "kind": k2, "u": pu, "v": pv, "r": r * 0.95, "rot": rot, "colour": _PART_COLOURS[k2]}
        )
    elif kind == "broken_item":
        p = next(p for p in spec["parts"] if p["cell"] == ci)
        ang = rng.uniform(0, 2 * np.pi)
        p["chips"] = [(p["u"] + 0.9 * p["r"] * np.cos(ang), p["v"] + 0.9 * p["r"] * np.sin(ang),
                       p["r"] * rng.uniform(0.35, 0.55))]  # fmt: skip
    elif kind == "contamination":
        u0, v0, u1, v1 = cells[ci]
        p = next(p for p in spec["parts"] if p["cell"] == ci)
        cr = rng.uniform(0.025, 0.045) * size
        for _ in range(100):
            cu, cv = rng.uniform(u0 + cr, u1 - cr), rng.uniform(v0 + cr, v1 - cr)
            if np.hypot(cu - p["u"], cv - p["v"]) > p["r"] + 1.4 * cr + 3:
                break
        colour = (0.35, 0.22, 0.1) if rng.random() < 0.5 else (0.15, 0.15, 0.15)
        spec["stains"].append((float(cu), float(cv), float(cr), colour))
    else:  # pragma: no cover
        raise ConfigError(f"unknown compartments defect {kind!r}")
    return spec


def loco_sample(
    category: str,
    seed: int,
    split: str,
    index: int,
    image_size: int = 256,
    kind: str = "good",
    reference: bool = False,
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]], dict[str, Any]]:
    """One ``synth_loco`` image: ``(image, [(defect name, region mask)], info)``.

    ``kind``: ``"good"``, ``"logical_anomalies"`` or ``"structural_anomalies"``. Each region is the
    set of pixels its defect changed (rendered alone against the same scene), except that
    ``wrong_hole_size`` covers the whole hole (old and new disk) and the compartment rules
    (``missing_item``/``extra_item``) cover the whole compartment, the area where the part may lie.
    ``reference=True`` adds the defect-free render of the same scene as ``info["reference"]``.
    """
    if category not in LOCO_CATEGORIES:
        raise ConfigError(f"unknown synth_loco category {category!r}; valid: {', '.join(LOCO_CATEGORIES)}")
    size = image_size
    rng = image_rng(seed, "synth_loco", category, split, index, kind)
    scene = _Scene(size, rng)
    th = float(np.deg2rad(rng.uniform(-3, 3) if category == "flat_connector" else rng.uniform(-1.5, 1.5)))
    if category == "flat_connector":
        fields = _fc_fields(scene, rng, th)
        spec = {**_fc_nominal(size), "theta": th, "cx": scene.cx, "cy": scene.cy}
        render, make = _render_fc, _fc_defect
    else:
        plastic = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 2.0).astype(np.float32) * 0.02
        fields = {"plastic": plastic}
        spec = {**_cmp_nominal(size, rng), "theta": th}
        render, make = _render_cmp, _cmp_defect
    good = render(scene, spec, th, fields)
    if kind == "good":
        return good, [], {"defects": []}
    names = [d for d, cfg in LOCO_DEFECTS[category].items() if cfg[0] == kind]
    if not names:
        raise ConfigError(f"kind={kind!r}; valid: good, logical_anomalies, structural_anomalies")
    n_def = 1 if rng.random() < 0.7 else 2
    chosen = [names[int(rng.integers(0, len(names)))] for _ in range(n_def)]
    used: set[int] = set()
    full = spec
    regions: list[tuple[str, np.ndarray]] = []
    for name in chosen:
        for _attempt in range(5):  # a defect too small to change any 8-bit pixel is redrawn
            one = make(name, spec, rng, size, used)
            alone = render(scene, one, th, fields)
            region = (alone != good).any(axis=-1)
            if region.any():
                break
        else:  # pragma: no cover - only at degenerate sizes
            raise DatasetError(f"synth_loco: a {name} defect changes no pixel at {size}px")
        full = _merge_spec(full, one, spec)
        if name == "wrong_hole_size":
            region = ndi.binary_fill_holes(region)
        if name in ("missing_item", "extra_item"):
            u, v = _local(scene.xx, scene.yy, scene.cx, scene.cy, th)
            u0, v0, u1, v1 = _cells(size)[one["cell"]]
            region = region | ((u >= u0) & (u <= u1) & (v >= v0) & (v <= v1))
        regions.append((name, region))
    image = render(scene, full, th, fields)
    info: dict[str, Any] = {"defects": chosen}
    if reference:
        info["reference"] = good
    return image, regions, info


def _merge_spec(full: dict[str, Any], one: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Combine two independent modifications of ``base`` (lists: removals and additions)."""
    out = dict(full)
    for key, val in one.items():
        if isinstance(val, list) and key in base:
            b, f = base[key], full[key]
            removed = [x for x in b if x not in val]
            added = [x for x in val if x not in b]
            out[key] = [x for x in f if x not in removed] + added
    return out


def loco_defects_config(category: str, image_size: int) -> list[dict[str, Any]]:
    """``defects_config.json`` content in the MVTec LOCO format (absolute thresholds in pixels)."""
    part_area = float(np.pi * _part_radius(image_size) ** 2)
    out = []
    for name, (_, value, thr, relative) in LOCO_DEFECTS[category].items():
        out.append({
            "defect_name": name,
            "pixel_value": value,
            "saturation_threshold": (thr if thr > 0 else round(part_area)),
            "relative_saturation": relative,
        })  # fmt: skip
    return out


def generate_loco(
    category: str,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 60,
    n_validation: int = 10,
    n_test_good: int = 20,
    n_test_logical: int = 20,
    n_test_structural: int = 20,
) -> Path:
    """Write one ``synth_loco`` category in the MVTec LOCO AD layout; returns the dataset root."""
    if category not in LOCO_CATEGORIES:
        raise ConfigError(f"unknown synth_loco category {category!r}; valid: {', '.join(LOCO_CATEGORIES)}")
    image_size = _check_count("image_size", image_size, 64)
    params = {
        "seed": int(seed), "px": image_size, "train": _check_count("n_train", n_train, 1),
        "val": _check_count("n_validation", n_validation, 1),
        "good": _check_count("n_test_good", n_test_good, 1),
        "logical": _check_count("n_test_logical", n_test_logical, 0),
        "structural": _check_count("n_test_structural", n_test_structural, 0),
    }  # fmt: skip
    base = Path(root) if root is not None else _default_root("synth_loco", params)
    config = loco_defects_config(category, image_size)
    values = {c["defect_name"]: c["pixel_value"] for c in config}

    def write(out: Path) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        normal_sets = (
            ("train", "train/good", n_train),
            ("validation", "validation/good", n_validation),
            ("test", "test/good", n_test_good),
        )
        for split, folder, n in normal_sets:
            for i in range(n):
                img, _, _ = loco_sample(category, seed, split, i, image_size)
                _save_png(img, out / folder / f"{i:03d}.png")
        for kind, n in (("logical_anomalies", n_test_logical), ("structural_anomalies", n_test_structural)):
            for i in range(n):
                img, regions, info = loco_sample(category, seed, "test", i, image_size, kind)
                _save_png(img, out / "test" / kind / f"{i:03d}.png")
                for k, (name, region) in enumerate(regions):
                    m = region.astype(np.uint8) * np.uint8(values[name])
                    _save_png(m, out / "ground_truth" / kind / f"{i:03d}" / f"{k:03d}.png")
                meta[f"test/{kind}/{i:03d}.png"] = info
        (out / "defects_config.json").write_text(json.dumps(config, indent=2))
        return meta

    _ensure_tree(base, "synth_loco", category, params, write)
    return base


@register_dataset("synth_loco")
def synth_loco(
    category: str = "flat_connector",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    image_size: int = 256,
    n_train: int = 60,
    n_validation: int = 10,
    n_test_good: int = 20,
    n_test_logical: int = 20,
    n_test_structural: int = 20,
    color: str | None = None,
    cache: bool | None = None,
) -> ADDataset:
    """The LOCO-style benchmark for one category (generated on first use, read as MVTec LOCO AD)."""
    from .loco import load_loco_layout

    base = generate_loco(
        category,
        root,
        seed,
        image_size,
        n_train,
        n_validation,
        n_test_good,
        n_test_logical,
        n_test_structural,
    )
    ds = load_loco_layout("synth_loco", base, category, LOCO_CATEGORIES, color=color, cache=cache, seed=seed)
    ds.info.update(source="synthetic (rendered)", generator_version=GENERATOR_VERSION)
    return _attach_meta(ds, base / category)
