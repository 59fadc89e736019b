"""The interface every dataset shares: samples, splits and a bundle of splits.

A :class:`Sample` has ``.image`` (uint8 ``H×W`` or ``H×W×3``), ``.label`` (0 normal, 1 anomalous),
``.mask`` (bool ``H×W``; all false for normal images; ``None`` where the dataset has no masks),
``.path`` and, for LOCO-style data, ``.regions`` (one bool mask per defect) and ``.saturations``
(their saturation areas in pixels). A :class:`Split` is a sequence of samples with ``.labels``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError, DatasetError

#: Largest image (in pixels) we agree to decode: a guard against decompression bombs.
MAX_PIXELS = 64_000_000


@dataclass
class Sample:
    """One image with its label and (optional) ground truth."""

    image: np.ndarray
    label: int
    mask: np.ndarray | None = None
    path: str | None = None
    category: str | None = None
    defect: str = "good"
    regions: list[np.ndarray] | None = None
    saturations: list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    """What a split knows about a sample before loading it (cheap to hold for big datasets)."""

    label: int
    path: str | None = None
    category: str | None = None
    defect: str = "good"
    loader: Callable[[], Sample] | None = None
    sample: Sample | None = None


class Split(Sequence[Sample]):
    """A list of samples, loaded lazily from their records. Indexing returns a :class:`Sample`."""

    def __init__(self, records: Sequence[Record], name: str = "split"):
        self.records = list(records)
        self.name = name

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], name: str = "split") -> Split:
        return cls(
            [Record(s.label, s.path, s.category, s.defect, sample=s) for s in samples],
            name=name,
        )

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray | Sequence[np.ndarray],
        labels: Sequence[int] | np.ndarray | None = None,
        masks: np.ndarray | Sequence[np.ndarray | None] | None = None,
        name: str = "split",
        category: str | None = None,
    ) -> Split:
        n = len(images)
        labels = np.zeros(n, dtype=int) if labels is None else np.asarray(labels).astype(int)
        if len(labels) != n:
            raise DatasetError(f"{n} images but {len(labels)} labels")
        samples = []
        for i in range(n):
            m = None if masks is None else masks[i]
            samples.append(
                Sample(
                    image=check_image(images[i], f"{name}[{i}]"),
                    label=int(labels[i]),
                    mask=None if m is None else np.asarray(m, dtype=bool),
                    category=category,
                    defect="good" if labels[i] == 0 else "anomalous",
                )
            )
        return cls.from_samples(samples, name=name)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx):  # type: ignore[override]
        if isinstance(idx, slice):
            return Split(self.records[idx], name=self.name)
        if isinstance(idx, (list, np.ndarray)):
            return Split([self.records[int(i)] for i in idx], name=self.name)
        rec = self.records[idx]
        if rec.sample is not None:
            return rec.sample
        if rec.loader is None:
            raise DatasetError(f"record {idx} of {self.name} has neither a sample nor a loader")
        return rec.loader()

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=int)

    @property
    def paths(self) -> list[str | None]:
        return [r.path for r in self.records]

    @property
    def defects(self) -> list[str]:
        return [r.defect for r in self.records]

    def images(self) -> list[np.ndarray]:
        return [s.image for s in self]

    def masks(self) -> list[np.ndarray | None]:
        return [s.mask for s in self]

    def materialize(self) -> Split:
        """Load every sample now (keeps them in memory) and return ``self``."""
        for rec in self.records:
            if rec.sample is None and rec.loader is not None:
                rec.sample = rec.loader()
        return self

    def __repr__(self) -> str:
        lab = self.labels
        return f"Split({self.name!r}, n={len(self)}, normal={int((lab == 0).sum())}, anomalous={int(lab.sum())})"


@dataclass
class ADDataset:
    """A dataset for one category: ``.train`` (normal only), ``.test``, optional ``.validation``."""

    name: str
    category: str | None
    train: Split
    test: Split
    validation: Split | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [f"train={len(self.train)}", f"test={len(self.test)}"]
        if self.validation is not None:
            parts.append(f"validation={len(self.validation)}")
        return f"ADDataset({self.name!r}, category={self.category!r}, {', '.join(parts)})"


def check_image(img: Any, where: str = "image") -> np.ndarray:
    """Validate an in-memory image: uint8 ``H×W`` or ``H×W×3`` (``H×W×1``/``H×W×4`` are converted)."""
    arr = np.asarray(img)
    if arr.size == 0:
        raise DatasetError(f"{where}: empty image (shape {arr.shape})")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise DatasetError(f"{where}: expected H×W or H×W×3, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif np.issubdtype(arr.dtype, np.floating):
            if not np.isfinite(arr).all():
                raise DatasetError(f"{where}: image contains NaN or inf")
            if arr.min() < 0 or arr.max() > 1:
                raise DatasetError(f"{where}: float images must lie in [0, 1], got [{arr.min()}, {arr.max()}]")
            arr = np.round(arr * 255).astype(np.uint8)
        elif np.issubdtype(arr.dtype, np.integer):
            if arr.min() < 0 or arr.max() > 255:
                raise DatasetError(f"{where}: integer image values outside 0..255 (dtype {arr.dtype})")
            arr = arr.astype(np.uint8)
        else:
            raise DatasetError(f"{where}: unsupported dtype {arr.dtype}")
    return arr


def as_image_list(data: Any) -> list[np.ndarray]:
    """Accept a :class:`Split`, a sequence of samples, a uint8 array ``[N,H,W(,3)]`` or a list of images."""
    if isinstance(data, ADDataset):
        raise DatasetError("pass a split (dataset.train or dataset.test), not the whole dataset")
    if isinstance(data, Split):
        imgs = data.images()
    elif isinstance(data, np.ndarray):
        if data.ndim not in (3, 4):
            raise DatasetError(f"expected an image batch [N,H,W] or [N,H,W,3], got shape {data.shape}")
        imgs = list(data)
    elif isinstance(data, Sample):
        imgs = [data.image]
    else:
        try:
            items = list(data)
        except TypeError as exc:
            raise DatasetError(f"cannot read images from {type(data).__name__}") from exc
        imgs = [s.image if isinstance(s, Sample) else s for s in items]
    if len(imgs) == 0:
        raise DatasetError("no images given (empty split or array)")
    return [check_image(im, f"image {i}") for i, im in enumerate(imgs)]


#: Modes PIL converts to RGB (colour, palette, alpha, print and perceptual spaces); the rest go to L.
_TO_RGB = ("P", "PA", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
_TO_GREY = ("1", "LA", "La")


def _open_pixels(path: Path, max_pixels: int | None) -> Image.Image:
    """Open ``path`` with the size guards, decode its pixels and return the loaded PIL image.

    Every failure (not an image, truncated, zero-size, larger than ``max_pixels`` or than PIL's
    decompression-bomb limit, a decoder bug) becomes a :class:`DatasetError` naming the file.
    """
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with warnings.catch_warnings():
            # PIL only *warns* between MAX_IMAGE_PIXELS and twice that: make it an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            try:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise DatasetError(f"{path}: zero-size image ({w}×{h} pixels)")
                if w * h > limit:
                    raise DatasetError(
                        f"{path}: {w}×{h} = {w * h} pixels exceeds the limit of {limit} pixels "
                        "(a guard against decompression bombs: iadlib.data.base.MAX_PIXELS or "
                        "read_image(max_pixels=...)); resize the image or raise the limit"
                    )
                im.load()
            except BaseException:
                im.close()
                raise
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DatasetError(
            f"{path}: image too large to decode safely ({exc}); resize it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS and iadlib.data.base.MAX_PIXELS"
        ) from exc
    except MemoryError as exc:
        raise DatasetError(f"{path}: not enough memory to decode the image") from exc
    except Exception as exc:  # any decoder failure (OSError, SyntaxError, struct.error, EOFError, ...)
        raise DatasetError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    return im


def _wide_to_uint8(im: Image.Image, path: Path) -> np.ndarray:
    """16/32-bit integer and float grey images → uint8 (16-bit: ``v / 65535 · 255``).

    ``I`` images whose values fit 0..255 are kept, those up to 65535 are read as 16-bit, wider ones
    are scaled by their maximum; float images in [0, 1] are scaled by 255, others by their maximum.
    """
    arr = np.asarray(im, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise DatasetError(f"{path}: image holds NaN or inf values (mode {im.mode})")
    top = float(arr.max()) if arr.size else 0.0
    if im.mode.startswith("I;16"):
        hi = 65535.0
    elif im.mode == "F" and top <= 1.0:
        hi = 1.0
    elif im.mode == "I" and top <= 255.0:
        hi = 255.0
    elif im.mode == "I" and top <= 65535.0:
        hi = 65535.0
    else:
        hi = max(top, 1.0)
    return np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path, mode: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to uint8 ``H×W`` (grey) or ``H×W×3`` (colour).

    ``mode``: ``None`` keeps grey images grey and makes everything else RGB; ``"L"`` or ``"RGB"``
    force one. 16-bit images are scaled to 8 bits, palette, alpha and CMYK images converted to RGB
    (grey+alpha to grey). Any problem (missing, truncated, not an image, zero-size, more than
    ``max_pixels`` pixels, default :data:`MAX_PIXELS`) raises :class:`DatasetError` naming the file;
    no other exception escapes and nothing is skipped silently.
    """
    if mode not in (None, "L", "RGB"):
        raise ConfigError(f"read_image: mode must be None, 'L' or 'RGB', got {mode!r}")
    path = Path(path)
    im = _open_pixels(path, max_pixels)
    try:
        with im:
            if im.mode.startswith("I") or im.mode == "F":
                arr = _wide_to_uint8(im, path)
                if mode == "RGB":
                    arr = np.repeat(arr[:, :, None], 3, axis=2)
            else:
                target = mode or ("L" if im.mode in ("L", *_TO_GREY) else "RGB")
                if im.mode != target:
                    im = im.convert(target)
                arr = np.array(im)  # a writable copy (torch.from_numpy warns on read-only arrays)
    except DatasetError:
        raise
    except MemoryError as exc:
        raise DatasetError(f"{path}: not enough memory to convert the image") from exc
    except Exception as exc:
        raise DatasetError(f"{path}: cannot convert image ({type(exc).__name__}: {exc})") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return np.ascontiguousarray(check_image(arr, str(path)))


def read_mask(path: str | Path, shape: tuple[int, ...] | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool ``H×W``; check its size against ``shape`` (``H×W`` or an image shape).

    Label masks (every value below 128, e.g. 0/1 or class indices) mark every non-zero pixel;
    8/16-bit grey masks (0/255, antialiased edges, JPEG noise) mark pixels of at least half scale
    (≥ 128, or ≥ 32768 for 16-bit). Colour masks use their brightest channel.
    """
    path = Path(path)
    im = _open_pixels(path, max_pixels)
    try:
        with im:
            if im.mode.startswith("I") or im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                if not np.isfinite(arr).all():
                    raise DatasetError(f"{path}: mask holds NaN or inf values")
                half = 32768.0 if float(arr.max()) > 255 else 128.0
            else:
                arr = np.array(im.convert("RGB" if im.mode in _TO_RGB else "L"))
                if arr.ndim == 3:
                    arr = arr.max(axis=2)
                half = 128.0
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: cannot convert mask ({type(exc).__name__}: {exc})") from exc
    if shape is not None and arr.shape != tuple(shape)[:2]:
        raise DatasetError(
            f"{path}: mask of size {arr.shape} does not match its image of size {tuple(shape)[:2]}"
        )
    return arr > 0 if float(arr.max()) < half else arr >= half
