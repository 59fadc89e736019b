"""MVTec AD / MIAD / generic folder loaders against fixture trees in the upstream layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iadlib.data import get_dataset
from iadlib.errors import ConfigError, DatasetError


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _img(value: int, shape=(24, 32), rgb=True) -> np.ndarray:
    a = np.full(shape, value, np.uint8)
    return np.repeat(a[:, :, None], 3, axis=2) if rgb else a


def _mask(shape, box) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    return m


def make_mvtec(root: Path, category: str = "bottle", shape=(24, 32), mask_suffix: str = "_mask") -> dict:
    """train/good ×4, test/good ×2, test/crack ×2, test/scratch ×1 with masks keyed by stem."""
    cat = root / category
    for i in range(4):
        _png(cat / "train" / "good" / f"{i:03d}.png", _img(10 + i, shape))
    for i in range(2):
        _png(cat / "test" / "good" / f"{i:03d}.png", _img(50 + i, shape))
    boxes = {("crack", 0): (0, 5, 0, 5), ("crack", 1): (10, 20, 3, 9), ("scratch", 0): (2, 4, 20, 31)}
    for (defect, i), box in boxes.items():
        # the image value encodes the mask area so that alignment can be checked
        area = (box[1] - box[0]) * (box[3] - box[2])
        _png(cat / "test" / defect / f"{i:03d}.png", _img(area % 256, shape, rgb=False))
        _png(cat / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png", _mask(shape, box))
    return boxes


def test_mvtec_counts_labels_and_mask_alignment(tmp_path):
    boxes = make_mvtec(tmp_path)
    ds = get_dataset("mvtec_ad", root=tmp_path, category="bottle")
    assert (len(ds.train), len(ds.test)) == (4, 5)
    assert ds.train.labels.tolist() == [0, 0, 0, 0]
    assert sorted(ds.test.labels.tolist()) == [0, 0, 1, 1, 1]
    assert ds.validation is None
    assert sorted(set(ds.test.defects)) == ["crack", "good", "scratch"]
    for s in ds.test:
        assert s.mask is not None and s.mask.dtype == bool and s.mask.shape == (24, 32)
        if s.label == 0:
            assert not s.mask.any()
            assert s.image.shape == (24, 32, 3)
        else:
            # grey image whose value is its own mask area: alignment by stem
            assert s.image.ndim == 2
            assert int(s.mask.sum()) % 256 == int(s.image[0, 0])
            stem = Path(s.path).stem
            y0, y1, x0, x1 = boxes[(s.defect, int(stem))]
            assert s.mask[y0:y1, x0:x1].all()
    assert ds.info["defect_types"] == ["crack", "scratch"]
    # root given as the category folder itself is accepted; another category there is explained
    assert len(get_dataset("mvtec_ad", root=tmp_path / "bottle", category="bottle").test) == 5
    with pytest.raises(DatasetError, match="pass its parent as root"):
        get_dataset("mvtec_ad", root=tmp_path / "bottle", category="cable")


def test_mvtec_root_from_environment(tmp_path, monkeypatch):
    make_mvtec(tmp_path)
    monkeypatch.setenv("IADLIB_MVTEC_AD_ROOT", str(tmp_path))
    assert len(get_dataset("mvtec_ad", category="bottle").train) == 4
    monkeypatch.setenv("IADLIB_MVTEC_AD_ROOT", str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match="IADLIB_MVTEC_AD_ROOT"):
        get_dataset("mvtec_ad", category="bottle")


def test_mvtec_resize_masks_nearest_and_color(tmp_path):
    make_mvtec(tmp_path)
    ds = get_dataset("mvtec_ad", root=tmp_path, category="bottle", image_size=(12, 16), color="rgb")
    s = next(s for s in ds.test if s.defect == "crack" and Path(s.path).stem == "001")
    assert s.image.shape == (12, 16, 3)
    assert s.mask.shape == (12, 16) and s.mask.dtype == bool
    # 10×6 box at (10:20, 3:9) halves to 5×3
    assert int(s.mask.sum()) == 15
    assert s.meta["transform"] == {"image_size": (12, 16), "color": "rgb"}
    grey = get_dataset("mvtec_ad", root=tmp_path, category="bottle", color="grey")
    assert all(s.image.ndim == 2 for s in grey.train)


def test_mvtec_lazy_split_loads_on_access(tmp_path):
    make_mvtec(tmp_path)
    ds = get_dataset("mvtec_ad", root=tmp_path, category="bottle", cache=False)
    assert all(r.sample is None for r in ds.test.records)
    assert ds.test[0].image.shape[:2] == (24, 32)
    assert ds.test.materialize().records[0].sample is not None


def test_mvtec_algan_protocol_halves_test_set(tmp_path):
    make_mvtec(tmp_path)
    a = get_dataset("mvtec_ad", root=tmp_path, category="bottle", protocol="algan", seed=3)
    b = get_dataset("mvtec_ad", root=tmp_path, category="bottle", protocol="algan", seed=3)
    assert len(a.validation) + len(a.test) == 5
    assert set(a.validation.paths).isdisjoint(a.test.paths)
    assert a.validation.paths == b.validation.paths
    # stratified: normals 2 → 1/1, anomalous 3 → 2/1 (round half to even)
    assert sorted([int((a.validation.labels == 0).sum()), int((a.test.labels == 0).sum())]) == [1, 1]


def test_miad_accepts_plain_stem_masks(tmp_path):
    make_mvtec(tmp_path, category="wind_turbine", mask_suffix="")
    ds = get_dataset("miad", root=tmp_path, category="wind_turbine")
    assert int(ds.test.labels.sum()) == 3
    assert all(s.mask.any() for s in ds.test if s.label == 1)


@pytest.mark.parametrize(
    "breakage, error, needle",
    [
        ("no_root", DatasetError, "root folder not found"),
        ("unknown_category", ConfigError, "valid: bottle"),
        ("missing_train", DatasetError, "train/good"),
        ("mask_removed", DatasetError, "image without its mask"),
        ("truncated", DatasetError, "cannot decode image"),
        ("wrong_mask_size", DatasetError, "does not match"),
    ],
)
def test_mvtec_bad_input_names_the_path(tmp_path, breakage, error, needle):
    make_mvtec(tmp_path)
    cat = tmp_path / "bottle"
    kw = {"root": tmp_path, "category": "bottle"}
    if breakage == "no_root":
        kw["root"] = tmp_path / "nowhere"
        path = tmp_path / "nowhere"
    elif breakage == "unknown_category":
        kw["category"] = "bottel"
        path = tmp_path / "bottel"
    elif breakage == "missing_train":
        for p in (cat / "train" / "good").iterdir():
            p.unlink()
        (cat / "train" / "good").rmdir()
        path = cat / "train" / "good"
    elif breakage == "mask_removed":
        path = cat / "test" / "crack" / "001.png"
        (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    elif breakage == "truncated":
        path = cat / "test" / "good" / "001.png"
        path.write_bytes(path.read_bytes()[:40])
    else:
        path = cat / "ground_truth" / "scratch" / "000_mask.png"
        _png(path, np.zeros((10, 10), np.uint8))
    with pytest.raises(error) as exc:
        get_dataset("mvtec_ad", **kw)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_folder_dataset_auto_split_and_masks(tmp_path):
    root = tmp_path / "mydata"
    for i in range(10):
        _png(root / "good" / f"g{i}.png", _img(i, (16, 16)))
    for i in range(3):
        _png(root / "dent" / f"d{i}.png", _img(200, (16, 16)))
        _png(root / "ground_truth" / "dent" / f"d{i}_mask.png", _mask((16, 16), (0, 4, 0, 4 + i)))
    ds = get_dataset("folder", root=root, test_normal_ratio=0.2, seed=1)
    assert (len(ds.train), len(ds.test)) == (8, 5)
    assert int(ds.test.labels.sum()) == 3 and not ds.train.labels.any()
    assert set(ds.train.paths).isdisjoint(ds.test.paths)
    areas = sorted(int(s.mask.sum()) for s in ds.test if s.label == 1)
    assert areas == [16, 20, 24]
    again = get_dataset("folder", root=root, test_normal_ratio=0.2, seed=1)
    assert again.train.paths == ds.train.paths
    (root / "ground_truth" / "dent" / "d2_mask.png").unlink()
    with pytest.raises(DatasetError, match="d2.png"):
        get_dataset("folder", root=root)
    assert len(get_dataset("folder", root=root, require_masks=False).test) == 5


def test_folder_dataset_without_masks_and_train_test_layout(tmp_path):
    root = tmp_path / "plain"
    for i in range(4):
        _png(root / "good" / f"{i}.png", _img(i, (8, 8), rgb=False))
    _png(root / "bad" / "x.png", _img(255, (8, 8), rgb=False))
    ds = get_dataset("folder", root=root, test_normal_ratio=0.5)
    assert all(s.mask is None for s in ds.test)
    make_mvtec(tmp_path / "mv")
    ds2 = get_dataset("folder", root=tmp_path / "mv", category="bottle")
    assert (len(ds2.train), len(ds2.test)) == (4, 5)
    with pytest.raises(DatasetError, match="normal-image"):
        get_dataset("folder", root=tmp_path / "mv")
