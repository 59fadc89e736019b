"""Folder-backed datasets: shared helpers for every on-disk loader and the generic ``folder`` dataset.

The helpers (image listing, mask lookup by file stem, lazy or materialised splits, default data
roots, the ALGAN validation/test halving) are used by the MVTec AD, MIAD, MVTec LOCO, MTD and
COIL-100 loaders. The ``folder`` dataset reads a user's own data laid out as

.. code-block:: text

    root/[category/]
        good/*.png                 normal images (or train/good + test/good, see below)
        <defect_type>/*.png        one folder per defect type (anything but good and the mask dir)
        ground_truth/<defect_type>/<stem>[_mask].png   optional pixel masks (non-zero = defect)

When ``root`` holds ``train/`` and ``test/`` sub-folders the MVTec AD convention is used as is;
otherwise a seeded random ``test_normal_ratio`` of the good images is held out for the test set.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset, Record, Sample, Split, read_image, read_mask
from .transforms import apply_transforms, check_color, size_hw

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Splits whose decoded images would take at most this many bytes are loaded at construction.
MATERIALIZE_BYTES = 256 * 2**20
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_root(name: str) -> Path:
    """Where dataset ``name`` is looked for when no ``root`` is given.

    ``$IADLIB_<NAME>_ROOT`` (e.g. ``IADLIB_MVTEC_AD_ROOT``) when set, else ``$IADLIB_DATA/<name>``,
    else ``<repo>/.cache/data/<name>``.
    """
    own = os.environ.get(f"IADLIB_{name.upper()}_ROOT")
    if own:
        return Path(own)
    base = os.environ.get("IADLIB_DATA")
    return (Path(base) if base else REPO_ROOT / ".cache" / "data") / name


def require_dir(path: Path, what: str, fix: str = "") -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found" + (f"; {fix}" if fix else ""))
    return path


def list_images(folder: Path, exclude_suffix: str | None = None) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name; hidden files are skipped."""
    out = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")
    ]
    if exclude_suffix:
        out = [p for p in out if not p.stem.endswith(exclude_suffix)]
    return sorted(out)


def subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_mask(mask_dir: Path, stem: str, suffixes: Sequence[str] = ("_mask", "")) -> Path | None:
    """The mask of image ``stem`` in ``mask_dir``: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    for suf in suffixes:
        for ext in (".png", ".bmp", ".tif", ".tiff", ".jpg"):
            p = mask_dir / f"{stem}{suf}{ext}"
            if p.is_file():
                return p
    return None


def load_image_sample(
    path: Path,
    label: int,
    mask_path: Path | None,
    *,
    category: str | None,
    defect: str,
    has_masks: bool,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Read an image and its mask (checked to match the image size), then apply the transforms.

    ``has_masks``: the dataset has pixel ground truth, so a normal image gets an all-false mask and
    an anomalous one without a mask file is an error; otherwise ``mask`` is ``None``.
    """
    image = read_image(path)
    mask = None
    if mask_path is not None:
        mask = read_mask(mask_path, shape=image.shape[:2])
    elif has_masks:
        if label != 0:
            raise DatasetError(f"{path}: anomalous image without a ground-truth mask")
        mask = np.zeros(image.shape[:2], dtype=bool)
    image, mask, _ = apply_transforms(image, mask, None, image_size, color)
    info = dict(meta or {})
    if image_size is not None or color is not None:
        info["transform"] = {"image_size": size_hw(image_size), "color": color}
    return Sample(
        image=image, label=label, mask=mask, path=str(path), category=category, defect=defect, meta=info
    )


def estimate_bytes(paths: Sequence[Path], image_size: int | Sequence[int] | None, color: str | None) -> int:
    """Memory the decoded images would take, from the first file's header (no decoding)."""
    if not paths:
        return 0
    hw = size_hw(image_size)
    try:
        with Image.open(paths[0]) as im:
            w, h = im.size
            ch = 1 if im.mode in ("L", "1", "I;16", "I") else 3
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return 0  # the loader reports the broken (or oversized) file with its path
    if hw is not None:
        h, w = hw
    ch = {"rgb": 3, "grey": 1}.get(color or "", ch)
    return len(paths) * h * w * ch


def make_split(
    records: list[Record],
    name: str,
    cache: bool | None,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
) -> Split:
    """A split over ``records``; loaded now when ``cache`` (None: when it is small enough)."""
    split = Split(records, name=name)
    if cache is None:
        paths = [Path(r.path) for r in records if r.path]
        cache = estimate_bytes(paths, image_size, color) <= MATERIALIZE_BYTES
    if cache:
        for rec in tqdm(records, desc=f"loading {name}", leave=False, disable=len(records) < 500):
            if rec.sample is None and rec.loader is not None:
                rec.sample = rec.loader()
    return split


def record(path: Path, label: int, category: str | None, defect: str, loader: Callable[[], Sample]) -> Record:
    return Record(label=label, path=str(path), category=category, defect=defect, loader=loader)


def stratified_halves(labels: np.ndarray, seed: int, fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (first, second) with ``fraction`` of each label in ``first`` (seeded)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        k = int(round(fraction * len(idx)))
        first.append(idx[:k])
        second.append(idx[k:])
    a = np.sort(np.concatenate(first)) if first else np.zeros(0, int)
    b = np.sort(np.concatenate(second)) if second else np.zeros(0, int)
    return a.astype(int), b.astype(int)


def algan_halves(test: Split, seed: int) -> tuple[Split, Split]:
    """ALGAN thesis §5.2.4: 50 % of the test set (stratified by label, seeded) becomes validation.

    Returns ``(validation, test)``.
    """
    val_idx, test_idx = stratified_halves(test.labels, seed, 0.5)
    val = Split([test.records[i] for i in val_idx], name=test.name.replace("/test", "/validation"))
    rest = Split([test.records[i] for i in test_idx], name=test.name)
    return val, rest


def check_protocol(protocol: str, valid: Sequence[str] = ("all", "algan")) -> str:
    if protocol not in valid:
        raise ConfigError(f"protocol={protocol!r}; valid: {', '.join(map(repr, valid))}")
    return protocol


def _defect_records(
    folder: Path,
    mask_root: Path | None,
    category: str | None,
    image_size: int | Sequence[int] | None,
    color: str | None,
    require_masks: bool,
    mask_suffixes: Sequence[str] = ("_mask", ""),
    defects: Sequence[str] | None = None,
) -> list[Record]:
    """Records of every image under ``folder/<defect>/`` (``good`` = normal), masks by stem."""
    out: list[Record] = []
    for defect in subfolders(folder) if defects is None else defects:
        label = 0 if defect == "good" else 1
        images = list_images(folder / defect)
        mdir = None if mask_root is None else mask_root / defect
        if label == 1 and mask_root is not None and require_masks and not (mdir and mdir.is_dir()):
            raise DatasetError(
                f"{mdir}: mask folder for defect type {defect!r} not found (expected "
                f"{mdir}/<image stem>_mask.png for every image of {folder / defect})"
            )
        for p in images:
            mpath = None
            if label == 1 and mdir is not None and mdir.is_dir():
                mpath = find_mask(mdir, p.stem, mask_suffixes)
                if mpath is None and require_masks:
                    raise DatasetError(
                        f"{p}: no ground-truth mask {mdir}/{p.stem}_mask.png (image without its mask)"
                    )
            # require_masks=False: an anomalous image without its mask gets mask None
            has_masks = mask_root is not None and (label == 0 or mpath is not None)
            out.append(
                record(
                    p,
                    label,
                    category,
                    defect,
                    _loader(p, label, mpath, category, defect, has_masks, image_size, color),
                )
            )
    return out


def _loader(
    p: Path,
    label: int,
    mpath: Path | None,
    category: str | None,
    defect: str,
    has_masks: bool,
    image_size: int | Sequence[int] | None,
    color: str | None,
) -> Callable[[], Sample]:
    def load() -> Sample:
        return load_image_sample(
            p,
            label,
            mpath,
            category=category,
            defect=defect,
            has_masks=has_masks,
            image_size=image_size,
            color=color,
        )

    return load


def load_train_test_tree(
    name: str,
    cat_dir: Path,
    category: str | None,
    *,
    image_size: int | Sequence[int] | None,
    color: str | None,
    cache: bool | None,
    mask_dir: str = "ground_truth",
    mask_suffixes: Sequence[str] = ("_mask", ""),
    require_masks: bool = True,
) -> tuple[Split, Split, bool]:
    """Read an MVTec-AD-convention tree: ``train/good``, ``test/<defect>``, ``ground_truth/<defect>``.

    Returns ``(train, test, has_masks)``.
    """
    train_good = require_dir(
        cat_dir / "train" / "good",
        "training (train/good)",
        f"expected the {name} layout <root>/<category>/train/good",
    )
    test_dir = require_dir(
        cat_dir / "test", "test", f"expected the {name} layout <root>/<category>/test/<defect>"
    )
    mask_root = cat_dir / mask_dir
    has_masks = mask_root.is_dir()
    train_imgs = list_images(train_good)
    if not train_imgs:
        raise DatasetError(f"{train_good}: no images ({', '.join(IMAGE_EXTS)})")
    train_recs = [
        record(p, 0, category, "good", _loader(p, 0, None, category, "good", has_masks, image_size, color))
        for p in train_imgs
    ]
    test_recs = _defect_records(
        test_dir, mask_root if has_masks else None, category, image_size, color, require_masks, mask_suffixes
    )
    if not test_recs:
        raise DatasetError(f"{test_dir}: no test images")
    tag = f"{name}/{category}" if category else name
    train = make_split(train_recs, f"{tag}/train", cache, image_size, color)
    test = make_split(test_recs, f"{tag}/test", cache, image_size, color)
    return train, test, has_masks


@register_dataset("folder")
def folder(
    root: str | os.PathLike | None = None,
    category: str | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    test_normal_ratio: float = 0.2,
    normal_dir: str = "good",
    mask_dir: str = "ground_truth",
    require_masks: bool = True,
    protocol: str = "all",
    cache: bool | None = None,
) -> ADDataset:
    """A user's own images: ``good/`` plus one folder per defect type, optional masks by stem.

    See the module docstring for the layout. ``require_masks``: when ``mask_dir`` exists, every
    anomalous image must have its mask (else :class:`DatasetError` naming the image).
    ``protocol="algan"`` moves a stratified half of the test set into ``.validation``.
    """
    if root is None:
        raise ConfigError("the folder dataset needs root=<folder with good/ and defect folders>")
    check_color(color)
    check_protocol(protocol)
    base = Path(root)
    require_dir(base, "dataset root")
    cat_dir = base / category if category else base
    if category and not cat_dir.is_dir():
        raise ConfigError(
            f"{cat_dir}: category {category!r} not found; available: {', '.join(subfolders(base))}"
        )
    name = "folder"
    if (cat_dir / "train").is_dir() and (cat_dir / "test").is_dir():
        train, test, has_masks = load_train_test_tree(
            name,
            cat_dir,
            category,
            image_size=image_size,
            color=color,
            cache=cache,
            mask_dir=mask_dir,
            require_masks=require_masks,
        )
    else:
        good = require_dir(
            cat_dir / normal_dir,
            "normal-image",
            f"put the defect-free images in {cat_dir / normal_dir} and each defect type in its own folder",
        )
        if not 0.0 < test_normal_ratio < 1.0:
            raise ConfigError(f"test_normal_ratio={test_normal_ratio}: must lie strictly between 0 and 1")
        mask_root = cat_dir / mask_dir
        has_masks = mask_root.is_dir()
        defects = [d for d in subfolders(cat_dir) if d not in (mask_dir, normal_dir)]
        recs = _defect_records(
            cat_dir,
            mask_root if has_masks else None,
            category,
            image_size,
            color,
            require_masks,
            defects=defects,
        )
        goods = list_images(good)
        if len(goods) < 2:
            raise DatasetError(f"{good}: need at least 2 normal images (train and test), found {len(goods)}")
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(goods))
        n_test = max(1, int(round(test_normal_ratio * len(goods))))
        test_ids, train_ids = set(perm[:n_test].tolist()), perm[n_test:]
        mk = lambda p: record(  # noqa: E731
            p, 0, category, "good", _loader(p, 0, None, category, "good", has_masks, image_size, color)
        )
        train_recs = [mk(goods[i]) for i in sorted(train_ids)]
        test_recs = [mk(goods[i]) for i in sorted(test_ids)] + recs
        tag = f"{name}/{category}" if category else name
        train = make_split(train_recs, f"{tag}/train", cache, image_size, color)
        test = make_split(test_recs, f"{tag}/test", cache, image_size, color)
    validation = None
    if protocol == "algan":
        validation, test = algan_halves(test, seed)
    info = {"root": str(base), "has_masks": has_masks, "protocol": protocol, "seed": seed}
    return ADDataset(name, category, train, test, validation=validation, info=info)
