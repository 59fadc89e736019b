"""UniAD: neighbour mask, jittering, layer-wise queries, unified multi-class training, checkpoints, AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iadlib.data import Split
from iadlib.errors import CheckpointError, ConfigError, DatasetError
from iadlib.metrics import image_auroc, pixel_auroc
from iadlib.models import get_model, load_model
from iadlib.models.fastflow import FastFlow
from iadlib.models.uniad import LayerwiseQueryDecoderLayer, UniADNet, feature_jitter, neighbor_mask

SIZE = 64
CFG = dict(
    image_size=SIZE,
    layers=(0, 1, 2),  # strides 2/4/8: an 8×8 token grid at 64 px
    hidden_dim=64,
    heads=4,
    ff_dim=128,
    enc_layers=1,
    dec_layers=2,
    epochs=20,
    batch_size=4,
    lr=1e-3,
    standardize=True,
    device="cpu",
    seed=0,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def textures(rng: np.random.Generator, n: int, kind: str, anomalous: bool = False, size: int = SIZE):
    """Two grey periodic categories (``"grid"``: product of sines, ``"stripes"``: oblique stripes) with
    random phase and noise; anomalies: one bright disc each (mask returned)."""
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    for _ in range(n):
        ph = rng.uniform(0, 2 * np.pi, 2)
        if kind == "grid":
            img = 0.5 + 0.25 * np.sin(2 * np.pi * xx / 8 + ph[0]) * np.sin(2 * np.pi * yy / 8 + ph[1])
        else:
            img = 0.45 + 0.2 * np.sin(2 * np.pi * (xx + yy) / 10 + ph[0])
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
    """``({category: train split}, {category: test split})`` for two categories."""
    rng = np.random.default_rng(0)
    train, test = {}, {}
    for kind in ("grid", "stripes"):
        train[kind] = Split.from_arrays(textures(rng, 12, kind)[0], category=kind)
        good, gm = textures(rng, 8, kind)
        bad, bm = textures(rng, 8, kind, anomalous=True)
        test[kind] = Split.from_arrays(
            np.concatenate([good, bad]), [0] * 8 + [1] * 8, np.concatenate([gm, bm]), category=kind
        )
    return train, test


@pytest.fixture(scope="module")
def fitted(data):
    return get_model("uniad", **CFG).fit(data[0])  # one model for both categories


def test_neighbor_mask_against_brute_force():
    h, w, n = 5, 6, 3
    mask = neighbor_mask(h, w, n).numpy()
    assert mask.shape == (h * w, h * w)
    for i in range(h * w):
        for j in range(h * w):
            near = abs(i // w - j // w) <= n // 2 and abs(i % w - j % w) <= n // 2
            assert mask[i, j] == near
    assert mask.sum(1)[0] == 4 and mask.sum(1)[1 * w + 1] == 9  # corner / interior token


def test_feature_jitter_scale():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(4000, 1, 32, generator=g).abs() * torch.linspace(0.5, 3, 32)
    jittered = feature_jitter(tokens, 20.0, g)
    noise = (jittered - tokens) / (tokens.norm(dim=-1, keepdim=True) / 32 * 20.0)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(noise.std()) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(feature_jitter(tokens, 0.0, g), tokens)


def test_decoder_layer_cannot_see_its_neighbourhood():
    """Neighbour-masked attention: output token t does not depend on memory/previous tokens near t."""
    torch.manual_seed(0)
    h = w = 5
    layer = LayerwiseQueryDecoderLayer(h * w, 16, 2, 32, dropout=0.0).eval()
    mask = neighbor_mask(h, w, 3)
    memory = torch.randn(1, h * w, 16, requires_grad=True)
    prev = torch.randn(1, h * w, 16, requires_grad=True)
    pos = torch.randn(1, h * w, 16)
    t = 2 * w + 2  # centre token
    out = layer(prev, memory, pos, mask)
    (out[0, t] * torch.randn(16)).sum().backward()  # (a plain sum is constant after LayerNorm)
    g_mem = memory.grad[0].abs().sum(1)
    g_prev = prev.grad[0].abs().sum(1)
    near = mask[t]
    assert float(g_mem[near].max()) == 0.0 and float(g_prev[near].max()) == 0.0
    assert float(g_mem[~near].min()) > 0.0 and float(g_prev[~near].min()) > 0.0


def test_layerwise_queries_and_shapes():
    net = UniADNet(12, (6, 6), hidden_dim=16, heads=2, ff_dim=32, enc_layers=1, dec_layers=3, neighbor_size=3)
    queries = [layer.query.weight for layer in net.decoder]
    assert len({q.data_ptr() for q in queries}) == 3 and all(q.shape == (36, 16) for q in queries)
    assert not torch.equal(queries[0], queries[1])  # one learnt query per layer
    x = torch.randn(2, 12, 6, 6)
    assert net.eval()(x).shape == x.shape


def test_unified_training_and_shapes(fitted, data):
    train, test = data
    assert len(fitted.history["loss"]) == CFG["epochs"]
    loss = fitted.history["loss"]
    assert loss[-1] < 0.8 * loss[0]
    # standardisation statistics are those of all training features of both categories
    feats = torch.cat(
        [
            fitted.features(
                torch.from_numpy(np.stack(s.images())).float()[:, None].expand(-1, 3, -1, -1) / 255
            )
            for s in train.values()
        ]
    )
    np.testing.assert_allclose(
        fitted.net.feat_mean.flatten().numpy(), feats.mean((0, 2, 3)).numpy(), rtol=1e-3, atol=1e-4
    )
    scores, maps = fitted.predict(test["grid"])
    assert scores.shape == (16,) and maps.shape == (16, SIZE, SIZE) and maps.min() >= 0
    _, m2 = fitted.predict(np.repeat(test["grid"][0].image[:40, :48, None], 3, axis=2)[None])
    assert m2.shape == (1, 40, 48)


def test_separates_anomalies_in_every_category(fitted, data):
    _, test = data
    for kind, split in test.items():
        scores, maps = fitted.predict(split)
        assert image_auroc(split.labels, scores) > 0.85, kind
        assert pixel_auroc(np.stack(split.masks()), maps) > 0.8, kind


def test_save_load_round_trip(fitted, data, tmp_path):
    _, test = data
    path = fitted.save(tmp_path / "uniad.pt")
    loaded = load_model(path, device="cpu")
    assert loaded.config == fitted.config
    s1, m1 = fitted.predict(test["stripes"])
    s2, m2 = loaded.predict(test["stripes"])
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(m1, m2)
    with pytest.raises(CheckpointError, match="uniad"):
        FastFlow.load(path)


def test_bad_config_and_input():
    with pytest.raises(ConfigError, match="neighbor_size"):
        get_model("uniad", image_size=SIZE, layers=(0, 1, 2), neighbor_size=9, device="cpu")
    with pytest.raises(ConfigError, match="heads"):
        get_model("uniad", image_size=SIZE, layers=(0, 1, 2), hidden_dim=30, heads=4, device="cpu")
    model = get_model("uniad", image_size=SIZE, layers=(0, 1, 2), device="cpu")
    with pytest.raises(DatasetError, match="empty"):
        model.fit({})
