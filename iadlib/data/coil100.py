"""COIL-100 (Nene, Nayar & Murase 1996) with the ALGAN thesis' one-class protocol.

The release is one folder of 7,200 128×128 colour images ``obj<N>__<angle>.png`` (100 objects on a
turntable, one view every 5°). Protocol (Murase 2022, §5.2.4): 10 objects are normal and the other
90 anomalous; 60 % / 20 % / 20 % of the normal images go to training / validation / test, and the
anomalous images are split 50 / 50 between validation and test. ``category=None`` draws the 10
normal objects with ``seed`` (the thesis repeats over 10 seeds); a list of object numbers (or a
string ``"1+5+17"``) fixes them. ``max_anomalous`` caps the anomalous images (seeded) for quick runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset, Record
from .folder import default_data_root, list_images, load_image_sample, make_split, record, subfolders
from .transforms import check_color

_NAME = re.compile(r"^obj(\d+)__(\d+)$")
SOURCE = "https://www.cs.columbia.edu/CAVE/software/softlib/coil-100.php"


def _parse_objects(category: int | str | Sequence[int] | None) -> list[int] | None:
    if category is None:
        return None
    if isinstance(category, (int, np.integer)):
        return [int(category)]
    if isinstance(category, str):
        try:
            return [int(t) for t in re.split(r"[+,\s]+", category.strip()) if t]
        except ValueError as exc:
            raise ConfigError(f"category={category!r}: expected object numbers like '1+5+17'") from exc
    return [int(c) for c in category]


def _loader(p: Path, label: int, obj: int, image_size, color):
    return lambda: load_image_sample(
        p, label, None, category=None, defect="good" if label == 0 else f"obj{obj}", has_masks=False,
        image_size=image_size, color=color, meta={"object": obj},
    )  # fmt: skip


@register_dataset("coil100")
def coil100(
    root: str | os.PathLike | None = None,
    category: int | str | Sequence[int] | None = None,
    seed: int = 0,
    n_normal: int = 10,
    max_anomalous: int | None = None,
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    cache: bool | None = None,
) -> ADDataset:
    """COIL-100 one-class split (module docstring); ``.validation``: 20 % normal + 50 % anomalous."""
    check_color(color)
    base = Path(root) if root is not None else default_data_root("coil100")
    if not base.is_dir():
        raise DatasetError(f"{base}: COIL-100 folder not found. Download it from {SOURCE} and pass root=...")
    folder = base
    if not any(_NAME.match(p.stem) for p in list_images(base)):
        nested = [base / d for d in subfolders(base)]
        nested = [d for d in nested if any(_NAME.match(p.stem) for p in list_images(d))]
        if len(nested) != 1:
            raise DatasetError(
                f"{base}: no obj<N>__<angle>.png images (COIL-100 layout, e.g. coil-100/obj1__0.png)"
            )
        folder = nested[0]
    by_obj: dict[int, list[Path]] = {}
    for p in list_images(folder):
        m = _NAME.match(p.stem)
        if m:
            by_obj.setdefault(int(m.group(1)), []).append(p)
    for obj in by_obj:
        by_obj[obj].sort(key=lambda q: int(_NAME.match(q.stem).group(2)))  # type: ignore[union-attr]
    objects = sorted(by_obj)
    rng = np.random.default_rng(seed)
    normal = _parse_objects(category)
    if normal is None:
        if not 1 <= n_normal < len(objects):
            raise ConfigError(f"n_normal={n_normal}: must lie in 1..{len(objects) - 1}")
        normal = sorted(int(o) for o in rng.choice(objects, size=n_normal, replace=False))
    bad = [o for o in normal if o not in by_obj]
    if bad or len(set(normal)) == len(objects):
        raise ConfigError(
            f"COIL-100 objects {bad or normal} not usable as normal; "
            f"found objects {objects[0]}..{objects[-1]}"
        )
    normal = sorted(set(normal))

    def recs(obj: int, label: int) -> list[Record]:
        defect = "good" if label == 0 else f"obj{obj}"
        return [
            record(p, label, None, defect, _loader(p, label, obj, image_size, color)) for p in by_obj[obj]
        ]

    norm = [r for o in normal for r in recs(o, 0)]
    anom = [r for o in objects if o not in normal for r in recs(o, 1)]
    perm = rng.permutation(len(norm))
    k1, k2 = int(round(0.6 * len(norm))), int(round(0.8 * len(norm)))
    tr, va, te = sorted(perm[:k1]), sorted(perm[k1:k2]), sorted(perm[k2:])
    aperm = rng.permutation(len(anom))
    if max_anomalous is not None:
        aperm = aperm[: int(max_anomalous)]
    half = len(aperm) // 2
    a_va, a_te = sorted(aperm[:half]), sorted(aperm[half:])
    cat = "+".join(map(str, normal))
    train = make_split([norm[i] for i in tr], f"coil100/{cat}/train", cache, image_size, color)
    validation = make_split(
        [norm[i] for i in va] + [anom[i] for i in a_va], f"coil100/{cat}/validation", cache, image_size, color
    )
    test = make_split(
        [norm[i] for i in te] + [anom[i] for i in a_te], f"coil100/{cat}/test", cache, image_size, color
    )
    info = {
        "root": str(folder),
        "normal_objects": normal,
        "seed": seed,
        "has_masks": False,
        "image_size": image_size,
    }
    return ADDataset("coil100", cat, train, test, validation=validation, info=info)
