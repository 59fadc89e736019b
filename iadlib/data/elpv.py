"""ELPV: 2,624 electroluminescence images of solar cells (Deitsch et al., 2019; Buerhop-Lutz et al., 2018).

Photovoltaic modules are one of MIAD's own scenarios. Each 300×300 grey cell carries an expert
defect probability in {0, 1/3, 2/3, 1} and a type (mono/poly). One-class protocol used here:
probability 0 → normal, probability 1 → anomalous. The uncertain cells (1/3, 2/3) are left out by
default; ``uncertain="anomalous"`` counts them as anomalous and ``uncertain="probability"`` keeps
them with label 1 and their probability in ``sample.meta["probability"]``.

Split (deterministic for a seed): the anomalous cells all go to the test set, together with a
held-out random set of normal cells of size ``round(test_normal_ratio × n_anomalous)`` (ratio 1 by
default: as many normal as anomalous test cells); the remaining normal cells form the training set.
ELPV has no pixel masks, so ``sample.mask`` is ``None``.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import ConfigError, DatasetError
from . import register_dataset
from .base import ADDataset, Sample, Split

CATEGORIES = ("mono", "poly")


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        from elpv_dataset.utils import load_dataset
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DatasetError("ELPV needs the 'elpv-dataset' package: pip install elpv-dataset") from exc
    images, probs, types = load_dataset()
    return np.asarray(images), np.asarray(probs, dtype=float), np.asarray(types).astype(str)


@register_dataset("elpv")
def elpv(
    category: str = "mono",
    seed: int = 0,
    uncertain: str = "exclude",
    test_normal_ratio: float = 1.0,
    max_train: int | None = None,
    root: str | None = None,
) -> ADDataset:
    """ELPV solar cells for one cell type (``"mono"`` or ``"poly"``); see the module docstring."""
    if category not in CATEGORIES:
        raise ConfigError(f"unknown ELPV category {category!r}; valid: {', '.join(CATEGORIES)}")
    if uncertain not in ("exclude", "anomalous", "probability"):
        raise ConfigError(f"uncertain={uncertain!r}; valid: 'exclude', 'anomalous', 'probability'")
    if root is not None:
        raise ConfigError("ELPV is read from the installed 'elpv-dataset' package; root is not used")
    images, probs, types = _load_all()
    sel = types == category
    normal = np.flatnonzero(sel & np.isclose(probs, 0.0))
    anomalous = np.flatnonzero(sel & np.isclose(probs, 1.0))
    unsure = np.flatnonzero(sel & (probs > 0.0) & (probs < 1.0))
    if uncertain != "exclude":
        anomalous = np.sort(np.concatenate([anomalous, unsure]))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(normal)
    n_test_normal = int(round(test_normal_ratio * len(anomalous)))
    if not 0 < n_test_normal < len(normal):
        raise ConfigError(
            f"test_normal_ratio={test_normal_ratio} asks for {n_test_normal} held-out normal cells "
            f"out of {len(normal)}"
        )
    test_normal, train_idx = np.sort(perm[:n_test_normal]), np.sort(perm[n_test_normal:])
    if max_train is not None:
        train_idx = np.sort(rng.choice(train_idx, size=min(max_train, len(train_idx)), replace=False))

    def sample(i: int, label: int) -> Sample:
        p = float(probs[i])
        return Sample(
            image=images[i],
            label=label,
            mask=None,
            path=f"elpv:{i}",
            category=category,
            defect="good" if label == 0 else f"defect_p{p:.2f}",
            meta={"probability": p, "index": int(i)},
        )

    train = Split.from_samples([sample(i, 0) for i in train_idx], name=f"elpv/{category}/train")
    test_ids = np.concatenate([test_normal, anomalous])
    test_labels = np.concatenate([np.zeros(len(test_normal), int), np.ones(len(anomalous), int)])
    test = Split.from_samples(
        [sample(i, lab) for i, lab in zip(test_ids, test_labels)], name=f"elpv/{category}/test"
    )
    info = {
        "source": "elpv-dataset (Buerhop-Lutz et al. 2018; Deitsch et al. 2019)",
        "seed": seed,
        "uncertain": uncertain,
        "test_normal_ratio": test_normal_ratio,
        "has_masks": False,
    }
    return ADDataset("elpv", category, train, test, info=info)
