"""One-class protocols (MNIST/Fashion-MNIST/CIFAR-10/digits), MTD and COIL-100 on fixture files."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iadlib.data import get_dataset
from iadlib.data import oneclass as OC
from iadlib.errors import ConfigError, DatasetError


def _idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_idx_set(folder: Path, gz: bool = True) -> tuple[np.ndarray, ...]:
    """20 training and 30 test images of 6×6; image value = 10·label + index (for identification)."""
    rng = np.random.default_rng(0)
    ytr = np.repeat(np.arange(10), 2)
    yte = np.repeat(np.arange(10), 3)
    rng.shuffle(yte)
    xtr = np.stack([np.full((6, 6), 10 * y + i % 2) for i, y in enumerate(ytr)])
    xte = np.stack([np.full((6, 6), 100 + 10 * y) for y in yte])
    _idx(folder / "train-images-idx3-ubyte", xtr, gz)
    _idx(folder / "train-labels-idx1-ubyte", ytr, gz)
    _idx(folder / "t10k-images-idx3-ubyte", xte, gz)
    _idx(folder / "t10k-labels-idx1-ubyte", yte, gz)
    return xtr, ytr, xte, yte


@pytest.fixture(autouse=True)
def _clear_caches():
    OC._load_idx_set.cache_clear()
    OC._load_cifar10.cache_clear()
    yield
    OC._load_idx_set.cache_clear()


def test_mnist_uninformed_students_protocol(tmp_path):
    _, _, _, yte = make_idx_set(tmp_path / "MNIST" / "raw")  # torchvision layout
    ds = get_dataset("mnist", category=3, root=tmp_path)
    assert len(ds.train) == 2 and all(s.label == 0 for s in ds.train)
    assert all(s.image[0, 0] // 10 == 3 for s in ds.train)
    assert len(ds.test) == 30
    assert ds.test.labels.tolist() == (yte != 3).astype(int).tolist()
    assert ds.validation is None and ds.test[0].mask is None
    assert ds.test[0].image.shape == (6, 6) and ds.test[0].image.dtype == np.uint8


def test_subsampling_and_algan_halves(tmp_path):
    make_idx_set(tmp_path, gz=False)  # raw files directly under root
    a = get_dataset("mnist", category="7", root=tmp_path, n_train=1, n_test=10, seed=4)
    b = get_dataset("mnist", category=7, root=tmp_path, n_train=1, n_test=10, seed=4)
    assert len(a.train) == 1 and len(a.test) == 10
    assert a.test.paths == b.test.paths and a.train.paths == b.train.paths
    assert int((a.test.labels == 0).sum()) == 1  # 10 % normal, as in the full test set
    al = get_dataset("mnist", category=7, root=tmp_path, protocol="algan", seed=1)
    assert len(al.validation) + len(al.test) == 30
    assert set(al.validation.paths).isdisjoint(al.test.paths)
    assert sorted([int((al.validation.labels == 0).sum()), int((al.test.labels == 0).sum())]) == [1, 2]
    other = get_dataset("mnist", category=7, root=tmp_path, protocol="algan", seed=2)
    assert other.validation.paths != al.validation.paths


def test_fashion_mnist_from_the_debian_folder(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "debian")
    monkeypatch.setattr(OC, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setenv("IADLIB_DATA", str(tmp_path / "empty"))
    ds = get_dataset("fashion_mnist", category="Trouser")
    assert ds.category == "1" and len(ds.train) == 2
    assert ds.info["normal_class_name"] == "Trouser"


def test_missing_and_truncated_files(tmp_path, monkeypatch):
    monkeypatch.setattr(OC, "DEBIAN_FASHION_MNIST", tmp_path / "nothing")
    monkeypatch.setenv("IADLIB_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="apt install dataset-fashion-mnist"):
        get_dataset("fashion_mnist", category=0)
    make_idx_set(tmp_path / "m")
    bad = tmp_path / "m" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:30])
    with pytest.raises(DatasetError, match=str(bad)):
        get_dataset("mnist", category=0, root=tmp_path / "m")
    with pytest.raises(ConfigError, match="valid: 0"):
        get_dataset("mnist", category=10, root=tmp_path / "m")
    with pytest.raises(ConfigError, match="protocol"):
        get_dataset("digits", category=0, protocol="half")


def test_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 10)]:
        labels = list(np.arange(n) % 10)
        data = np.stack([np.full(3072, 20 * (lab % 10), np.uint8) for lab in labels])
        data[:, 1024:2048] = 7  # green plane constant: checks the CHW → HWC reshape
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"labels": labels}, fh)
    ds = get_dataset("cifar10", category="bird", root=tmp_path)
    assert len(ds.train) == 5 * 1  # one bird (label 2) per training batch of labels 0..3
    im = ds.train[0].image
    assert im.shape == (32, 32, 3) and im[0, 0].tolist() == [40, 7, 40]
    assert ds.test.labels.tolist() == [1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    (folder / "test_batch").write_bytes(b"garbage")
    OC._load_cifar10.cache_clear()
    with pytest.raises(DatasetError, match="test_batch"):
        get_dataset("cifar10", category=0, root=tmp_path)


def test_digits_offline():
    ds = get_dataset("digits", category=0, seed=0)
    n0 = 178  # zeros in scikit-learn's digits
    assert len(ds.train) == round(0.6 * n0)
    assert int((ds.test.labels == 0).sum()) == n0 - len(ds.train)
    assert ds.train[0].image.shape == (8, 8) and ds.train[0].image.max() > 200
    assert set(ds.train.paths).isdisjoint(ds.test.paths)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_mtd_algan_split(tmp_path):
    root = tmp_path / "Magnetic-tile-defect-datasets."
    for i in range(8):
        p = root / "MT_Free" / "Imgs" / f"exp1_num_{i}.jpg"
        _png(p, np.full((10, 12 + i), 100, np.uint8))
        _png(p.with_suffix(".png"), np.zeros((10, 12 + i), np.uint8))
    for d in ("Blowhole", "Break", "Crack", "Fray", "Uneven"):
        for i in range(2):
            p = root / f"MT_{d}" / "Imgs" / f"exp2_num_{i}.jpg"
            _png(p, np.full((9, 9), 50, np.uint8))
            m = np.zeros((9, 9), np.uint8)
            m[:3, :3] = 255
            _png(p.with_suffix(".png"), m)
    ds = get_dataset("mtd", root=tmp_path, seed=0)  # finds the nested release folder
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (4, 2 + 5, 2 + 5)
    assert not ds.train.labels.any()
    assert sorted(set(ds.test.defects) - {"good"}) == ["blowhole", "break", "crack", "fray", "uneven"]
    assert all(int(s.mask.sum()) == 9 for s in ds.test if s.label == 1)
    sized = get_dataset("mtd", root=root, image_size=16)
    assert {s.image.shape for s in sized.train} == {(16, 16)}
    (root / "MT_Crack" / "Imgs" / "exp2_num_1.png").unlink()
    with pytest.raises(DatasetError, match="exp2_num_1.jpg"):
        get_dataset("mtd", root=root)


def test_coil100_protocol(tmp_path):
    folder = tmp_path / "coil-100"
    for obj in range(1, 13):
        for ang in range(0, 50, 5):
            _png(folder / f"obj{obj}__{ang}.png", np.full((8, 8, 3), obj, np.uint8))
    ds = get_dataset("coil100", root=tmp_path, n_normal=2, seed=1)
    normal = ds.info["normal_objects"]
    assert len(normal) == 2 and ds.category == "+".join(map(str, normal))
    assert (len(ds.train), len(ds.validation) + len(ds.test)) == (12, 8 + 100)
    assert int((ds.validation.labels == 1).sum()) == 50 and int((ds.test.labels == 1).sum()) == 50
    assert {int(s.image[0, 0, 0]) for s in ds.train} == set(normal)
    fixed = get_dataset("coil100", root=tmp_path, category="3+4", max_anomalous=10)
    assert fixed.info["normal_objects"] == [3, 4] and int(fixed.test.labels.sum()) == 5
    with pytest.raises(ConfigError, match="found objects 1..12"):
        get_dataset("coil100", root=tmp_path, category=[99])
