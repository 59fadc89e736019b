"""MVTec LOCO AD loader: several masks per image, merged and kept apart, saturation areas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iadlib.data import get_dataset
from iadlib.data.loco import saturation_area
from iadlib.errors import ConfigError, DatasetError

SHAPE = (20, 30)
CONFIG = [
    {
        "defect_name": "missing_pin",
        "pixel_value": 255,
        "saturation_threshold": 10,
        "relative_saturation": False,
    },
    {
        "defect_name": "extra_pin",
        "pixel_value": 254,
        "saturation_threshold": 0.5,
        "relative_saturation": True,
    },
    {"defect_name": "scratch", "pixel_value": 200, "saturation_threshold": 1.0, "relative_saturation": True},
]


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _region(box, value) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = value
    return m


def make_loco(root: Path, category: str = "pushpins") -> Path:
    cat = root / category
    rgb = lambda v: np.full((*SHAPE, 3), v, np.uint8)  # noqa: E731
    for i in range(3):
        _png(cat / "train" / "good" / f"{i:03d}.png", rgb(100 + i))
    for i in range(2):
        _png(cat / "validation" / "good" / f"{i:03d}.png", rgb(120 + i))
        _png(cat / "test" / "good" / f"{i:03d}.png", rgb(140 + i))
    # logical 000: two regions (missing 4×5 = 20 px, extra 2×3 = 6 px); 001: one missing region of 6 px
    _png(cat / "test" / "logical_anomalies" / "000.png", rgb(1))
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "000.png", _region((0, 4, 0, 5), 255))
    _png(cat / "ground_truth" / "logical_anomalies" / "000" / "001.png", _region((10, 12, 10, 13), 254))
    _png(cat / "test" / "logical_anomalies" / "001.png", rgb(2))
    _png(cat / "ground_truth" / "logical_anomalies" / "001" / "000.png", _region((5, 7, 5, 8), 255))
    # structural 000: one scratch overlapping nothing (3×10 = 30 px)
    _png(cat / "test" / "structural_anomalies" / "000.png", rgb(3))
    _png(cat / "ground_truth" / "structural_anomalies" / "000" / "000.png", _region((15, 18, 0, 10), 200))
    (cat / "defects_config.json").write_text(json.dumps(CONFIG))
    return cat


def test_loco_counts_regions_and_saturations(tmp_path):
    make_loco(tmp_path)
    ds = get_dataset("mvtec_loco", root=tmp_path, category="pushpins")
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (3, 2, 5)
    assert ds.test.labels.tolist() == [0, 0, 1, 1, 1]
    assert ds.test.defects == [
        "good",
        "good",
        "logical_anomalies",
        "logical_anomalies",
        "structural_anomalies",
    ]
    good, two, one, scratch = ds.test[0], ds.test[2], ds.test[3], ds.test[4]
    assert good.regions == [] and good.saturations == [] and not good.mask.any()
    # kept separately …
    assert [int(r.sum()) for r in two.regions] == [20, 6]
    assert two.meta["region_defects"] == ["missing_pin", "extra_pin"]
    # … and merged into the mask
    assert int(two.mask.sum()) == 26 and np.array_equal(two.mask, two.regions[0] | two.regions[1])
    # absolute: min(10, 20) = 10; relative: int(0.5 · 6) = 3
    assert two.saturations == [10.0, 3.0]
    # absolute threshold above the region's area saturates at the area
    assert one.saturations == [6.0]
    assert scratch.saturations == [30.0]
    assert ds.info["defects_config"][255]["name"] == "missing_pin"


def test_loco_resize_scales_absolute_thresholds(tmp_path):
    make_loco(tmp_path)
    ds = get_dataset("mvtec_loco", root=tmp_path, category="pushpins", image_size=(10, 15))
    two = ds.test[2]
    assert two.image.shape == (10, 15, 3)
    # PIL nearest samples the odd rows/columns: 4×5 → 2×2, 2×3 → 1×1
    assert [int(r.sum()) for r in two.regions] == [4, 1]
    assert np.array_equal(two.mask, two.regions[0] | two.regions[1])
    # absolute 10 px at 20×30 is 2.5 px at 10×15: min(2.5, 4); relative int(0.5·1) = 0 → 1 pixel
    assert two.saturations == [2.5, 1.0]


def test_saturation_area_convention():
    assert saturation_area(100, 0.3, True) == 30.0
    assert saturation_area(7, 0.5, True) == 3.0  # int() truncates, as the official code
    assert saturation_area(100, 250, False) == 100.0
    assert saturation_area(100, 40, False) == 40.0
    assert saturation_area(1, 0.5, True) == 1.0  # clamped to one pixel


@pytest.mark.parametrize(
    "breakage", ["unknown_value", "two_values", "no_gt", "wrong_size", "no_config", "bad_config"]
)
def test_loco_bad_input(tmp_path, breakage):
    cat = make_loco(tmp_path)
    gt = cat / "ground_truth" / "logical_anomalies"
    if breakage == "unknown_value":
        path = gt / "001" / "000.png"
        _png(path, _region((5, 7, 5, 8), 17))
        needle = "pixel value 17"
    elif breakage == "two_values":
        path = gt / "001" / "000.png"
        m = _region((5, 7, 5, 8), 255)
        m[0, 0] = 254
        _png(path, m)
        needle = "one pixel value"
    elif breakage == "no_gt":
        for p in (gt / "001").iterdir():
            p.unlink()
        path = cat / "test" / "logical_anomalies" / "001.png"
        needle = "image without its mask"
    elif breakage == "wrong_size":
        path = gt / "001" / "000.png"
        _png(path, np.full((5, 5), 255, np.uint8))
        needle = "does not match"
    elif breakage == "no_config":
        path = cat / "defects_config.json"
        path.unlink()
        needle = "not found"
    else:
        path = cat / "defects_config.json"
        path.write_text(json.dumps([{"defect_name": "x", "pixel_value": 255}]))
        needle = "saturation_threshold"
    with pytest.raises(DatasetError) as exc:
        get_dataset("mvtec_loco", root=tmp_path, category="pushpins", cache=True)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_loco_unknown_category(tmp_path):
    make_loco(tmp_path)
    with pytest.raises(ConfigError, match="breakfast_box"):
        get_dataset("mvtec_loco", root=tmp_path, category="pushpin")
