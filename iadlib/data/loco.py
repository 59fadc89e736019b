"""MVTec LOCO AD (Bergmann et al., IJCV 2022): logical and structural anomalies, one mask per region.

.. code-block:: text

    <root>/<category>/train/good/000.png
    <root>/<category>/validation/good/000.png
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/000.png
    <root>/<category>/ground_truth/{logical,structural}_anomalies/000/000.png, 001.png, …
    <root>/<category>/defects_config.json

Every file under ``ground_truth/<type>/<image stem>/`` is one defect region; its non-zero pixels
carry the defect's ``pixel_value`` from ``defects_config.json``::

    [{"defect_name": "missing_pushpin", "pixel_value": 255,
      "saturation_threshold": 6300, "relative_saturation": false}, …]

A sample keeps the regions separately (``sample.regions``, bool masks) with their saturation
areas (``sample.saturations``, pixels) and names (``sample.meta["region_defects"]``); ``sample.mask``
is their union. Saturation area of region *A_i* (official AU-sPRO convention):
``int(t · |A_i|)`` when the threshold *t* is relative, ``min(t, |A_i|)`` when absolute (at least
one pixel). With
``image_size`` the regions are resized (nearest) and absolute thresholds scaled by the area ratio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset, Record, Sample, read_image
from .folder import list_images, make_split, record, require_dir, subfolders
from .mvtec import resolve_category_dir
from .transforms import apply_transforms, check_color, rescale_saturation, size_hw

MVTEC_LOCO_CATEGORIES = (
    "breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors",
)  # fmt: skip
LOCO_TEST_TYPES = ("good", "logical_anomalies", "structural_anomalies")


def read_defects_config(path: Path) -> dict[int, dict[str, Any]]:
    """``defects_config.json`` → ``{pixel_value: {"name", "threshold", "relative"}}`` (validated)."""
    if not path.is_file():
        raise DatasetError(f"{path}: defects_config.json not found (it holds the saturation thresholds)")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a list of defect entries, got {type(entries).__name__}")
    out: dict[int, dict[str, Any]] = {}
    for i, e in enumerate(entries):
        try:
            value = int(e["pixel_value"])
            thr = float(e["saturation_threshold"])
            rel = bool(e["relative_saturation"])
            name = str(e["defect_name"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"{path}: entry {i} needs defect_name, pixel_value, saturation_threshold, "
                "relative_saturation "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if not 0 < value <= 255 or thr <= 0 or (rel and thr > 1.0):
            raise DatasetError(
                f"{path}: entry {i} ({name}) has pixel_value={value}, threshold={thr}, relative={rel}"
            )
        if value in out:
            raise DatasetError(f"{path}: pixel_value {value} used by {out[value]['name']} and {name}")
        out[value] = {"name": name, "threshold": thr, "relative": rel}
    return out


def saturation_area(region_area: int, threshold: float, relative: bool) -> float:
    """Saturation area of one region in pixels: ``int(t·area)`` (relative) or ``min(t, area)``.

    Never below one pixel for a non-empty region (a tiny resized region would otherwise get 0 and
    divide by zero in sPRO).
    """
    s = float(int(threshold * region_area)) if relative else float(min(threshold, region_area))
    return max(s, 1.0) if region_area > 0 else s


def load_loco_sample(
    path: Path,
    label: int,
    defect: str,
    mask_dir: Path | None,
    config: dict[int, dict[str, Any]],
    category: str | None,
    image_size: int | Sequence[int] | None,
    color: str | None,
) -> Sample:
    """Read a LOCO image with each of its region masks (checked against the image size)."""
    image = read_image(path)
    hw = image.shape[:2]
    regions: list[np.ndarray] = []
    names: list[str] = []
    thresholds: list[tuple[float, bool]] = []
    if mask_dir is not None:
        for mp in list_images(mask_dir):
            raw = read_image(mp, mode="L")
            if raw.shape != hw:
                raise DatasetError(
                    f"{mp}: mask of size {raw.shape} does not match its image {path} of size {hw}"
                )
            values = np.unique(raw[raw > 0])
            if len(values) == 0:
                raise DatasetError(f"{mp}: empty region mask (no non-zero pixel)")
            if len(values) > 1:
                raise DatasetError(
                    f"{mp}: one region file must hold one pixel value, found {values.tolist()}"
                )
            v = int(values[0])
            if v not in config:
                raise DatasetError(
                    f"{mp}: pixel value {v} is not in defects_config.json (known: {sorted(config)})"
                )
            regions.append(raw > 0)
            names.append(config[v]["name"])
            thresholds.append((config[v]["threshold"], config[v]["relative"]))
    mask = np.zeros(hw, bool)
    image, mask, regions = apply_transforms(image, mask, regions, image_size, color)
    assert regions is not None and mask is not None
    new_hw = size_hw(image_size)
    saturations: list[float] = []
    kept_regions: list[np.ndarray] = []
    kept_names: list[str] = []
    dropped = []
    for r, n, (thr, rel) in zip(regions, names, thresholds):
        area = int(r.sum())
        if area == 0:  # vanished in the resize
            dropped.append(n)
            continue
        t = thr if rel else rescale_saturation(thr, hw, new_hw)
        saturations.append(saturation_area(area, t, rel))
        kept_regions.append(r)
        kept_names.append(n)
        mask |= r
    meta: dict[str, Any] = {"region_defects": kept_names}
    if dropped:
        meta["regions_lost_in_resize"] = dropped
    if image_size is not None or color is not None:
        meta["transform"] = {"image_size": new_hw, "color": color}
    return Sample(
        image=image,
        label=label,
        mask=mask,
        path=str(path),
        category=category,
        defect=defect,
        regions=kept_regions,
        saturations=saturations,
        meta=meta,
    )


def _loco_loader(*args: Any) -> Callable[[], Sample]:
    return lambda: load_loco_sample(*args)


def load_loco_layout(
    name: str,
    root: str | os.PathLike | None,
    category: str | None,
    known: Sequence[str],
    *,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    cache: bool | None = None,
) -> ADDataset:
    """Any dataset in the MVTec LOCO AD layout (``mvtec_loco``, ``synth_loco``)."""
    check_color(color)
    cat_dir = resolve_category_dir(name, root, category, known)
    config = read_defects_config(cat_dir / "defects_config.json")
    fix = f"expected the MVTec LOCO layout {cat_dir}/{{train,validation}}/good and test/<type>"
    train_dir = require_dir(cat_dir / "train" / "good", "training (train/good)", fix)
    val_dir = cat_dir / "validation" / "good"
    test_dir = require_dir(cat_dir / "test", "test", fix)
    gt_dir = cat_dir / "ground_truth"
    unknown = [d for d in subfolders(test_dir) if d not in LOCO_TEST_TYPES]
    if unknown:
        raise DatasetError(f"{test_dir}: unexpected folders {unknown}; LOCO test types are {LOCO_TEST_TYPES}")

    def recs(folder: Path, defect: str, label: int) -> list[Record]:
        out = []
        for p in list_images(folder):
            mdir = None
            if label == 1:
                mdir = gt_dir / defect / p.stem
                if not mdir.is_dir() or not list_images(mdir):
                    raise DatasetError(
                        f"{p}: no ground-truth masks in {mdir} (image without its mask; expected 000.png …)"
                    )
            loader = _loco_loader(p, label, defect, mdir, config, category, image_size, color)
            out.append(record(p, label, category, defect, loader))
        return out

    train_recs = recs(train_dir, "good", 0)
    if not train_recs:
        raise DatasetError(f"{train_dir}: no training images")
    test_recs: list[Record] = []
    for t in LOCO_TEST_TYPES:
        if (test_dir / t).is_dir():
            test_recs += recs(test_dir / t, t, 0 if t == "good" else 1)
    if not test_recs:
        raise DatasetError(f"{test_dir}: no test images")
    tag = f"{name}/{category}"
    train = make_split(train_recs, f"{tag}/train", cache, image_size, color)
    test = make_split(test_recs, f"{tag}/test", cache, image_size, color)
    validation = None
    if val_dir.is_dir():
        validation = make_split(recs(val_dir, "good", 0), f"{tag}/validation", cache, image_size, color)
    info = {
        "root": str(cat_dir.parent),
        "has_masks": True,
        "seed": seed,
        "image_size": image_size,
        "defects_config": {v: c for v, c in sorted(config.items())},
    }
    return ADDataset(name, category, train, test, validation=validation, info=info)


@register_dataset("mvtec_loco")
def mvtec_loco(
    root: str | os.PathLike | None = None,
    category: str | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    cache: bool | None = None,
) -> ADDataset:
    """One MVTec LOCO AD category (``MVTEC_LOCO_CATEGORIES``); ``.validation`` = validation/good.

    ``seed`` is accepted for a uniform interface (the split is fixed by the release).
    """
    if category is not None and not isinstance(category, str):
        raise ConfigError(
            f"category={category!r}: expected a name, one of {', '.join(MVTEC_LOCO_CATEGORIES)}"
        )
    return load_loco_layout(
        "mvtec_loco",
        root,
        category,
        MVTEC_LOCO_CATEGORIES,
        seed=seed,
        image_size=image_size,
        color=color,
        cache=cache,
    )


__all__ = ["MVTEC_LOCO_CATEGORIES", "load_loco_layout", "read_defects_config", "saturation_area"]
