"""One-class protocols on 10-class image sets: MNIST, Fashion-MNIST, CIFAR-10 and scikit-learn digits.

Protocol ``"all"`` (Uninformed Students, Bergmann et al. CVPR 2020, supplement §2): one class
(``category``, an index 0–9 or its name) is normal. ``train`` = every training image of that class;
``test`` = the whole test set, label 0 for the normal class and 1 for the nine others (so about
10 % normal). Protocol ``"algan"`` (Murase 2022, §5.2.4) additionally splits that test set into
two halves, stratified by label and drawn with ``seed``: ``.validation`` (model selection) and
``.test``. Repeating over ``seed = 0 … 9`` gives the thesis' ten splits.

``n_train`` / ``n_test`` subsample deterministically (``seed``) for quick profiles; the test
subsample keeps the normal/anomalous proportion (at least one of each).

Files are never downloaded unless ``download=True`` (torchvision). Looked for, in order:
``root`` in the raw layouts (``train-images-idx3-ubyte[.gz]`` … or ``cifar-10-batches-py/``) and
torchvision's layout under ``root`` (``MNIST/raw``, ``FashionMNIST/raw``); Fashion-MNIST also in
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); then the
default data root ``$IADLIB_DATA/<name>`` or ``<repo>/.cache/data/<name>``. ``digits`` (8×8,
scaled to 0–255) ships with scikit-learn; it has no official split, so 60 % of each class is drawn
(seeded) for training and the rest is the test set.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset, Sample, Split
from .folder import default_data_root, stratified_halves
from .transforms import convert_color, resize_image, size_hw

CLASSES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion_mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "digits": tuple(str(i) for i in range(10)),
}  # fmt: skip

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TV_DIRS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or torchvision.datasets.MNIST(root, download=True))",
    "fashion_mnist": "apt install dataset-fashion-mnist, or torchvision.datasets.FashionMNIST(root, "
    "download=True)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (or torchvision.datasets.CIFAR10)",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes: images ``[N,H,W]`` or labels ``[N]``."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(
            f"{path}: cannot read ({type(exc).__name__}: {exc}); the file may be truncated"
        ) from exc
    if len(data) < 8:
        raise DatasetError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or ndim not in (1, 3):
        raise DatasetError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    n = int(np.prod(dims))
    body = data[4 + 4 * ndim :]
    if len(body) != n:
        raise DatasetError(
            f"{path}: expected {n} data bytes for shape {dims}, found {len(body)} (truncated?)"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()  # writable


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _idx_candidates(name: str, root: str | os.PathLike | None) -> list[Path]:
    bases = [Path(root)] if root is not None else []
    if name == "fashion_mnist":
        bases.append(DEBIAN_FASHION_MNIST)
    bases.append(default_data_root(name))
    out: list[Path] = []
    for b in bases:
        out += [b, b / "raw", b / _TV_DIRS[name] / "raw"]
    return out


@functools.lru_cache(maxsize=4)
def _load_idx_set(name: str, root: str | None, download: bool) -> tuple[np.ndarray, ...]:
    if download:
        import torchvision

        tv = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
        target = Path(root) if root is not None else default_data_root(name)
        for train in (True, False):
            tv(str(target), train=train, download=True)
    tried = _idx_candidates(name, root)
    for folder in tried:
        files = [_find(folder, s) for part in ("train", "test") for s in _IDX_FILES[part]]
        if all(f is not None for f in files):
            xtr, ytr, xte, yte = (read_idx(f) for f in files if f is not None)
            for x, y, f in ((xtr, ytr, files[0]), (xte, yte, files[2])):
                if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
                    raise DatasetError(f"{f}: {x.shape} images do not match {y.shape} labels")
            return xtr, ytr, xte, yte
    raise DatasetError(
        f"{name}: files train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-… not found in "
        f"{', '.join(map(str, tried))}. Get them with {_SOURCES[name]} and pass root=..."
    )


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="bytes")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc


@functools.lru_cache(maxsize=2)
def _load_cifar10(root: str | None, download: bool) -> tuple[np.ndarray, ...]:
    base = Path(root) if root is not None else default_data_root("cifar10")
    if download:
        import torchvision

        for train in (True, False):
            torchvision.datasets.CIFAR10(str(base), train=train, download=True)
    tried = [base / "cifar-10-batches-py", base]
    for folder in tried:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        if all((folder / n).is_file() for n in names):
            parts = []
            for n in names:
                d = _unpickle(folder / n)
                try:
                    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                    y = np.asarray(d[b"labels"], dtype=np.int64)
                except (KeyError, ValueError) as exc:
                    raise DatasetError(f"{folder / n}: not a CIFAR-10 batch ({exc})") from exc
                if len(x) != len(y):
                    raise DatasetError(f"{folder / n}: {len(x)} images but {len(y)} labels")
                parts.append((x, y))
            xtr = np.concatenate([p[0] for p in parts[:5]])
            ytr = np.concatenate([p[1] for p in parts[:5]])
            return xtr, ytr, parts[5][0], parts[5][1]
    raise DatasetError(
        f"cifar10: data_batch_1…5 and test_batch not found in {', '.join(map(str, tried))}. "
        f"Get them from {_SOURCES['cifar10']} and pass root=..."
    )


@functools.lru_cache(maxsize=4)
def _load_digits(seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    y = d.target.astype(np.int64)
    train_idx, test_idx = [], []
    rng = np.random.default_rng(seed)
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(0.6 * len(idx)))
        train_idx.append(idx[:k])
        test_idx.append(idx[k:])
    tr, te = np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))
    return x[tr], y[tr], x[te], y[te]


def resolve_class(name: str, category: int | str | None) -> int:
    """A class index from an index or a class name; :class:`ConfigError` listing the valid ones."""
    classes = CLASSES[name]
    valid = ", ".join(f"{i} ({c})" for i, c in enumerate(classes))
    if category is None:
        raise ConfigError(f"{name}: category (the normal class) is required; valid: {valid}")
    if isinstance(category, (int, np.integer)) and not isinstance(category, bool):
        if 0 <= int(category) < len(classes):
            return int(category)
    elif isinstance(category, str):
        if category in classes:
            return classes.index(category)
        if category.isdigit() and 0 <= int(category) < len(classes):
            return int(category)
    raise ConfigError(f"unknown {name} class {category!r}; valid: {valid}")


def _subsample(idx: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    if n is None or n >= len(idx):
        return idx
    return np.sort(rng.choice(idx, size=n, replace=False))


def one_class_split(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    normal: int,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    protocol: str = "all",
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
) -> ADDataset:
    """The one-class protocol on arrays (see the module docstring)."""
    if protocol not in ("all", "algan"):
        raise ConfigError(f"protocol={protocol!r}; valid: 'all' (Uninformed Students), 'algan'")
    for k, v in (("n_train", n_train), ("n_test", n_test)):
        if v is not None and (not isinstance(v, (int, np.integer)) or v < (1 if k == "n_train" else 2)):
            raise ConfigError(f"{k}={v!r}: must be a positive integer (n_test ≥ 2) or None")
    rng = np.random.default_rng(seed)
    tr = _subsample(np.flatnonzero(y_train == normal), n_train, rng)
    if len(tr) == 0:
        raise DatasetError(f"{name}: no training images of class {normal}")
    lab = (y_test != normal).astype(int)
    te = np.arange(len(y_test))
    if n_test is not None and n_test < len(te):
        n_norm = int(np.clip(round(n_test * (1 - lab.mean())), 1, n_test - 1))
        te = np.sort(
            np.concatenate(
                [
                    _subsample(np.flatnonzero(lab == 0), n_norm, rng),
                    _subsample(np.flatnonzero(lab == 1), n_test - n_norm, rng),
                ]
            )
        )
    classes = CLASSES[name]
    cat = str(normal)

    def samples(x: np.ndarray, y: np.ndarray, ids: np.ndarray, part: str) -> list[Sample]:
        out = []
        for i in ids:
            img = resize_image(convert_color(x[i], color), image_size)
            label = int(y[i] != normal)
            out.append(
                Sample(
                    image=img,
                    label=label,
                    mask=None,
                    path=f"{name}:{part}:{int(i)}",
                    category=cat,
                    defect="good" if label == 0 else f"class_{int(y[i])}",
                    meta={"class": int(y[i]), "class_name": classes[int(y[i])], "index": int(i)},
                )
            )
        return out

    train = Split.from_samples(samples(x_train, y_train, tr, "train"), name=f"{name}/{cat}/train")
    test_samples = samples(x_test, y_test, te, "test")
    validation = None
    if protocol == "algan":
        vi, ti = stratified_halves(np.array([s.label for s in test_samples]), seed + 1000003, 0.5)
        validation = Split.from_samples([test_samples[i] for i in vi], name=f"{name}/{cat}/validation")
        test_samples = [test_samples[i] for i in ti]
    test = Split.from_samples(test_samples, name=f"{name}/{cat}/test")
    info = {
        "normal_class": normal,
        "normal_class_name": classes[normal],
        "protocol": protocol,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "image_size": size_hw(image_size),
        "has_masks": False,
    }
    return ADDataset(name, cat, train, test, validation=validation, info=info)


def _root_key(root: str | os.PathLike | None) -> str | None:
    return None if root is None else str(Path(root))


@register_dataset("mnist")
def mnist(
    category: int | str | None = None,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    protocol: str = "all",
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    download: bool = False,
) -> ADDataset:
    """MNIST (28×28 grey), one digit normal; see the module docstring."""
    normal = resolve_class("mnist", category)
    arrays = _load_idx_set("mnist", _root_key(root), download)
    return one_class_split("mnist", *arrays, normal, seed=seed, n_train=n_train, n_test=n_test,
                           protocol=protocol, image_size=image_size, color=color)  # fmt: skip


@register_dataset("fashion_mnist")
def fashion_mnist(
    category: int | str | None = None,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    protocol: str = "all",
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    download: bool = False,
) -> ADDataset:
    """Fashion-MNIST (28×28 grey; Debian package or torchvision files), one class normal."""
    normal = resolve_class("fashion_mnist", category)
    arrays = _load_idx_set("fashion_mnist", _root_key(root), download)
    return one_class_split("fashion_mnist", *arrays, normal, seed=seed, n_train=n_train, n_test=n_test,
                           protocol=protocol, image_size=image_size, color=color)  # fmt: skip


@register_dataset("cifar10")
def cifar10(
    category: int | str | None = None,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    protocol: str = "all",
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
    download: bool = False,
) -> ADDataset:
    """CIFAR-10 (32×32 RGB, python pickles), one class normal."""
    normal = resolve_class("cifar10", category)
    arrays = _load_cifar10(_root_key(root), download)
    return one_class_split("cifar10", *arrays, normal, seed=seed, n_train=n_train, n_test=n_test,
                           protocol=protocol, image_size=image_size, color=color)  # fmt: skip


@register_dataset("digits")
def digits(
    category: int | str | None = None,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    protocol: str = "all",
    image_size: int | Sequence[int] | None = None,
    color: str | None = None,
) -> ADDataset:
    """scikit-learn's 1,797 8×8 digits (offline), one digit normal; seeded 60/40 train/test split."""
    if root is not None:
        raise ConfigError("digits ships with scikit-learn; root is not used")
    normal = resolve_class("digits", category)
    arrays = _load_digits(seed)
    return one_class_split("digits", *arrays, normal, seed=seed, n_train=n_train, n_test=n_test,
                           protocol=protocol, image_size=image_size, color=color)  # fmt: skip
