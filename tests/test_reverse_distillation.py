"""Reverse Distillation: Eq. (2)–(4) against independent computations, training, checkpoints, AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iadlib.data import Split
from iadlib.errors import CheckpointError, ConfigError
from iadlib.metrics import image_auroc, pixel_auroc
from iadlib.models import get_model, load_model
from iadlib.models.fastflow import FastFlow
from iadlib.models.reverse_distillation import (
    OCBE,
    ReverseDistillationNet,
    cosine_distance_maps,
    rd_loss,
)

SIZE = 64
CFG = dict(image_size=SIZE, epochs=8, batch_size=8, device="cpu", seed=0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def periodic_textures(rng: np.random.Generator, n: int, anomalous: bool = False, size: int = SIZE):
    """Grey periodic pattern (period 8 px, random phase, noise); anomalies: one bright disc each."""
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        ph = rng.uniform(0, 2 * np.pi, 2)
        img = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 8 + ph[0]) * np.sin(2 * np.pi * yy / 8 + ph[1])
        img = img + rng.normal(0, 0.03, (size, size))
        m = np.zeros((size, size), bool)
        if anomalous:
            cy, cx = rng.integers(12, size - 12, 2)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(4, 7) ** 2
            img[m] = 1.0
        images.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        masks.append(m)
    return np.stack(images), np.stack(masks)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    train, _ = periodic_textures(rng, 24)
    good, gm = periodic_textures(rng, 10)
    bad, bm = periodic_textures(rng, 10, anomalous=True)
    test = Split.from_arrays(np.concatenate([good, bad]), [0] * 10 + [1] * 10, np.concatenate([gm, bm]))
    return Split.from_arrays(train), test


@pytest.fixture(scope="module")
def fitted(data):
    return get_model("reverse_distillation", **CFG).fit(data[0])


def test_cosine_distance_maps_eq2():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    s = [torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 7, 2, 2, generator=g)]
    maps = cosine_distance_maps(t, s)
    for tk, sk, mk in zip(t, s, maps):
        a, b = tk.numpy(), sk.numpy()
        ref = 1 - (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        np.testing.assert_allclose(mk.numpy(), ref, rtol=1e-5, atol=1e-6)
    # Eq. (3): sum over stages of the mean map; zero for a perfect student, 2 per stage for -f_E
    assert float(rd_loss(t, s, mode="pixel")) == pytest.approx(sum(float(m.mean()) for m in maps), rel=1e-6)
    assert float(rd_loss(t, t, mode="pixel")) == pytest.approx(0.0, abs=1e-6)
    assert float(rd_loss(t, [-x for x in t], mode="pixel")) == pytest.approx(4.0, rel=1e-6)
    # the official code's loss: cosine distance of the flattened maps, against numpy
    ref = sum(
        np.mean(
            [
                1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                for a, b in zip(tk.flatten(1).numpy(), sk.flatten(1).numpy())
            ]
        )
        for tk, sk in zip(t, s)
    )
    assert float(rd_loss(t, s)) == pytest.approx(ref, rel=1e-5)
    # scale invariance of the cosine distance (per location)
    assert float(rd_loss(t, [3 * x for x in t], mode="flattened")) == pytest.approx(0.0, abs=1e-6)


def test_ocbe_and_student_shapes():
    channels, sizes = [24, 40, 112], [16, 8, 4]
    feats = [torch.randn(3, c, s, s) for c, s in zip(channels, sizes)]
    phi = OCBE(channels, sizes, embed_dim=64)(feats)
    assert phi.shape == (3, 64, 2, 2)  # one-class embedding: stride twice the last stage's
    net = ReverseDistillationNet(channels, sizes, embed_dim=64)
    out = net(feats)
    assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in feats]


def test_predict_shapes_and_training(fitted, data):
    _, test = data
    scores, maps = fitted.predict(test)
    assert scores.shape == (20,) and maps.shape == (20, SIZE, SIZE)
    assert np.isfinite(scores).all() and np.isfinite(maps).all()
    # image score = max of the (smoothed) map; cosine distances summed over 3 stages lie in [0, 6]
    np.testing.assert_allclose(scores, maps.reshape(20, -1).max(1), rtol=1e-3, atol=1e-3)
    assert maps.min() >= -1e-5 and maps.max() <= 6.0
    # other input size and RGB: maps come back at the input resolution
    rgb = np.repeat(test[0].image[:40, :48, None], 3, axis=2)
    s2, m2 = fitted.predict(rgb[None])
    assert m2.shape == (1, 40, 48)
    loss = fitted.history["loss"]
    assert len(loss) == CFG["epochs"] and loss[-1] < 0.7 * loss[0]


def test_separates_anomalies(fitted, data):
    _, test = data
    scores, maps = fitted.predict(test)
    assert image_auroc(test.labels, scores) > 0.9
    assert pixel_auroc(np.stack(test.masks()), maps) > 0.85


def test_save_load_round_trip(fitted, data, tmp_path):
    _, test = data
    path = fitted.save(tmp_path / "rd.pt")
    loaded = load_model(path, device="cpu")
    assert loaded.config == fitted.config
    s1, m1 = fitted.predict(test)
    s2, m2 = loaded.predict(test)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(m1, m2)
    assert loaded.history["loss"] == fitted.history["loss"]
    with pytest.raises(CheckpointError, match="fastflow"):
        FastFlow.load(path)


def test_bad_config():
    with pytest.raises(ConfigError, match="loss"):
        get_model("reverse_distillation", loss="l2", image_size=SIZE, device="cpu")
    with pytest.raises(ConfigError, match="layers"):
        get_model("reverse_distillation", layers=(3, 1), image_size=SIZE, device="cpu")
    with pytest.raises(ConfigError, match="layers=.1, 2, 7."):
        get_model("reverse_distillation", layers=(1, 2, 7), image_size=SIZE, device="cpu")
    with pytest.raises(RuntimeError, match="fit"):
        get_model("reverse_distillation", image_size=SIZE, device="cpu").predict(np.zeros((1, SIZE, SIZE), np.uint8))
