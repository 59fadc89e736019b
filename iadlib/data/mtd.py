"""Magnetic Tile Defects (MTD; Huang, Qiu & Yuan, The Visual Computer 2020).

Layout of the release (``github.com/abin24/Magnetic-tile-defect-datasets.``)::

    <root>/MT_Free/Imgs/exp1_num_4727.jpg (+ exp1_num_4727.png, an empty mask)
    <root>/MT_Blowhole/Imgs/exp1_num_4727.jpg + exp1_num_4727.png
    <root>/MT_Break/… MT_Crack/… MT_Fray/… MT_Uneven/…

952 defect-free and 392 defective grey tiles of varying size; each image's mask is the ``.png``
with the same stem beside it. MTD has no train/test split. ``protocol="algan"`` (default) is the
ALGAN thesis' (Murase 2022, §5.2.4): 50 % / 25 % / 25 % of the defect-free images for training,
validation and test, and the defective images split 50 / 50 between validation and test, drawn with
``seed``. ``protocol="all"``: half of the defect-free images train, the other half and every defective
image test. Pass ``image_size`` (e.g. 256) to bring the tiles to one size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset, Record
from .folder import (
    check_protocol,
    default_data_root,
    find_mask,
    list_images,
    load_image_sample,
    make_split,
    record,
    stratified_halves,
    subfolders,
)
from .transforms import check_color

MTD_DEFECTS = ("Blowhole", "Break", "Crack", "Fray", "Uneven")
SOURCE = "https://github.com/abin24/Magnetic-tile-defect-datasets."


def _loader(p: Path, label: int, mpath: Path | None, defect: str, image_size, color):
    return lambda: load_image_sample(
        p, label, mpath, category=None, defect=defect, has_masks=True, image_size=image_size, color=color
    )


@register_dataset("mtd")
def mtd(
    root: str | os.PathLike | None = None,
    category: str | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    protocol: str = "algan",
    cache: bool | None = None,
) -> ADDataset:
    """MTD with the ALGAN split (see the module docstring); defects named ``blowhole`` … ``uneven``."""
    if category not in (None, "mtd"):
        raise ConfigError(f"MTD has no categories (got category={category!r}); leave it None")
    check_color(color)
    check_protocol(protocol)
    base = Path(root) if root is not None else default_data_root("mtd")
    if not base.is_dir():
        raise DatasetError(
            f"{base}: MTD root folder not found. Clone {SOURCE} and pass root=<the folder holding MT_Free, "
            "MT_Blowhole, …> (or set IADLIB_DATA)"
        )
    if not (base / "MT_Free").is_dir():
        nested = [base / d for d in subfolders(base) if (base / d / "MT_Free").is_dir()]
        if len(nested) == 1:
            base = nested[0]
        else:
            raise DatasetError(
                f"{base / 'MT_Free'}: folder of defect-free tiles not found (expected MT_Free/Imgs)"
            )
    normal_recs: list[Record] = []
    anomal_recs: list[Record] = []
    for folder in ["Free", *MTD_DEFECTS]:
        imgs_dir = base / f"MT_{folder}" / "Imgs"
        if not imgs_dir.is_dir():
            raise DatasetError(
                f"{imgs_dir}: folder not found (MTD layout MT_<Defect>/Imgs/*.jpg with *.png masks)"
            )
        images = [p for p in list_images(imgs_dir) if p.suffix.lower() in (".jpg", ".jpeg")]
        if not images:
            raise DatasetError(f"{imgs_dir}: no .jpg images")
        label = 0 if folder == "Free" else 1
        defect = "good" if label == 0 else folder.lower()
        for p in images:
            mpath = None
            if label == 1:
                mpath = find_mask(imgs_dir, p.stem, ("",))
                if mpath is None or mpath == p:
                    raise DatasetError(
                        f"{p}: no mask {imgs_dir / (p.stem + '.png')} (image without its mask)"
                    )
            rec = record(p, label, None, defect, _loader(p, label, mpath, defect, image_size, color))
            (normal_recs if label == 0 else anomal_recs).append(rec)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(normal_recs))
    n_tr = len(perm) // 2
    n_val = len(perm) // 4 if protocol == "algan" else 0
    tr_ids, val_ids, te_ids = perm[:n_tr], perm[n_tr : n_tr + n_val], perm[n_tr + n_val :]
    train_recs = [normal_recs[i] for i in sorted(tr_ids)]
    test_recs = [normal_recs[i] for i in sorted(te_ids)]
    val_recs = [normal_recs[i] for i in sorted(val_ids)]
    if protocol == "algan":
        kinds = np.array([MTD_DEFECTS.index(r.defect.capitalize()) for r in anomal_recs])
        va, te = stratified_halves(kinds, seed, 0.5)  # half of every defect type to validation
        val_recs += [anomal_recs[i] for i in va]
        test_recs += [anomal_recs[i] for i in te]
    else:
        test_recs += anomal_recs
    train = make_split(train_recs, "mtd/train", cache, image_size, color)
    test = make_split(test_recs, "mtd/test", cache, image_size, color)
    validation = make_split(val_recs, "mtd/validation", cache, image_size, color) if val_recs else None
    info = {
        "root": str(base),
        "protocol": protocol,
        "seed": seed,
        "has_masks": True,
        "image_size": image_size,
    }
    return ADDataset("mtd", None, train, test, validation=validation, info=info)
