"""MVTec AD (Bergmann et al., CVPR 2019) and MIAD (Bao et al., 2022): the train/test/ground_truth layout.

.. code-block:: text

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect_type>/000.png
    <root>/<category>/ground_truth/<defect_type>/000_mask.png

Masks are aligned with their images by file stem (``000`` ↔ ``000_mask``; MIAD-style ``000.png``
masks are accepted too). Normal test images get an all-false mask. MVTec AD images are up to
1024 px: ``image_size=256`` resizes images (bilinear) and masks (nearest) on load, and large
categories are read lazily (each access decodes the file) unless ``cache=True``.

``protocol="algan"`` reproduces the ALGAN thesis (Murase 2022, §5.2.4): 50 % of the test set,
stratified by label and drawn with ``seed``, becomes ``.validation`` (used as the stopping rule).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset
from .folder import (
    algan_halves,
    check_protocol,
    default_data_root,
    load_train_test_tree,
    subfolders,
)
from .transforms import check_color

MVTEC_AD_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
MVTEC_AD_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")

#: The seven MIAD scenarios (Bao et al. 2022, appendix Table A.1) and their defect types.
MIAD_CATEGORIES = (
    "catenary_dropper", "electrical_insulator", "metal_welding", "nut_and_bolt",
    "photovoltaic_module", "wind_turbine", "witness_mark",
)  # fmt: skip
MIAD_DEFECTS = {
    "electrical_insulator": ("crack",),
    "metal_welding": ("weld_beading", "weld_pit"),
    "photovoltaic_module": ("broken", "miss", "foreign_body"),
    "wind_turbine": ("crack",),
    "catenary_dropper": ("looseness", "broken", "miss"),
    "nut_and_bolt": ("looseness", "bolt_miss", "nut_miss"),
    "witness_mark": ("looseness",),
}

_SOURCES = {
    "mvtec_ad": "https://www.mvtec.com/company/research/datasets/mvtec-ad",
    "miad": "https://miad-2022.github.io/",
    "mvtec_loco": "https://www.mvtec.com/company/research/datasets/mvtec-loco",
}


def resolve_category_dir(
    name: str,
    root: str | os.PathLike | None,
    category: str | None,
    known: Sequence[str],
) -> Path:
    """``<root>/<category>``, with errors that say where the data was looked for and how to get it."""
    if category is None:
        raise ConfigError(f"{name}: category is required; valid: {', '.join(known)}")
    base = Path(root) if root is not None else default_data_root(name)
    if not base.is_dir():
        raise DatasetError(
            f"{base}: {name} root folder not found. Download the dataset from "
            f"{_SOURCES.get(name, 'its site')}, "
            f"extract it so that {base}/<category>/train/good exists, and pass root=... "
            f"(or set IADLIB_{name.upper()}_ROOT)"
        )
    cat_dir = base / category
    if not cat_dir.is_dir() and (base / "train").is_dir() and base.name == category:
        cat_dir = base  # root given as the category folder itself
    if not cat_dir.is_dir():
        present = subfolders(base)
        if "train" in present:
            raise DatasetError(
                f"{cat_dir}: not found; {base} looks like a category folder itself — pass its parent as root"
            )
        if category not in known:
            raise ConfigError(
                f"unknown {name} category {category!r} (no folder {cat_dir}); valid: {', '.join(known)}"
                + (f"; present under {base}: {', '.join(present)}" if present else "")
            )
        raise DatasetError(
            f"{cat_dir}: category folder not found under {base} (present: {', '.join(present) or 'none'})"
        )
    return cat_dir


def load_mvtec_layout(
    name: str,
    root: str | os.PathLike | None,
    category: str | None,
    known: Sequence[str],
    *,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    protocol: str = "all",
    cache: bool | None = None,
) -> ADDataset:
    """Any dataset in the MVTec AD layout (used by ``mvtec_ad``, ``miad`` and ``synth_textures``)."""
    check_color(color)
    check_protocol(protocol)
    cat_dir = resolve_category_dir(name, root, category, known)
    train, test, has_masks = load_train_test_tree(
        name, cat_dir, category, image_size=image_size, color=color, cache=cache
    )
    validation = None
    if protocol == "algan":
        validation, test = algan_halves(test, seed)
    info = {
        "root": str(cat_dir.parent),
        "has_masks": has_masks,
        "protocol": protocol,
        "seed": seed,
        "image_size": image_size,
        "defect_types": sorted(set(test.defects) - {"good"}),
    }
    return ADDataset(name, category, train, test, validation=validation, info=info)


@register_dataset("mvtec_ad")
def mvtec_ad(
    root: str | os.PathLike | None = None,
    category: str | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    protocol: str = "all",
    cache: bool | None = None,
) -> ADDataset:
    """One MVTec AD category (``MVTEC_AD_CATEGORIES``); ``root`` holds the category folders.

    A folder in the same layout under a name outside the 15 official ones is read as well
    (e.g. the ``synth_textures`` benchmark).
    """
    return load_mvtec_layout(
        "mvtec_ad",
        root,
        category,
        MVTEC_AD_CATEGORIES,
        seed=seed,
        image_size=image_size,
        color=color,
        protocol=protocol,
        cache=cache,
    )


@register_dataset("miad")
def miad(
    root: str | os.PathLike | None = None,
    category: str | None = None,
    seed: int = 0,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    protocol: str = "all",
    cache: bool | None = None,
) -> ADDataset:
    """One MIAD scenario (``MIAD_CATEGORIES``) in its release layout (MVTec AD convention)."""
    return load_mvtec_layout(
        "miad",
        root,
        category,
        MIAD_CATEGORIES,
        seed=seed,
        image_size=image_size,
        color=color,
        protocol=protocol,
        cache=cache,
    )
