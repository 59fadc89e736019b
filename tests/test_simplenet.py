"""SimpleNet: loss, local features, training on a toy set, checkpoints, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iadlib import get_model
from iadlib.errors import ConfigError, TrainingError
from iadlib.metrics import image_auroc
from iadlib.models.simplenet import Discriminator, PatchFeatures, score_maps, truncated_l1_loss


def toy_set(n_train: int = 16, n_test: int = 8, size: int = 64, seed: int = 0, logical: bool = False):
    """Grey plates with a regular 2×3 dot pattern; anomalies carry a dark scratch across the plate
    (structural) or, with ``logical=True``, every other anomaly misses one dot (logical)."""
    rng = np.random.default_rng(seed)
    count = [0]

    def plate(anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
        img = rng.normal(150, 6, (size, size))
        yy, xx = np.mgrid[:size, :size]
        mask = np.zeros((size, size), bool)
        missing = -1
        if anomalous and logical:
            count[0] += 1
            missing = int(rng.integers(6)) if count[0] % 2 else -1
        k = 0
        for cy in (size // 4, 3 * size // 4):
            for cx in (size // 4, size // 2, 3 * size // 4):
                dot = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 16) ** 2
                if k == missing:
                    mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 16 + 1) ** 2
                else:
                    img[dot] = 60
                k += 1
        if anomalous and missing < 0:
            r = int(rng.integers(size // 3, 2 * size // 3))
            c = int(rng.integers(2, size // 3))
            mask[r : r + 3, c : c + size // 2] = True
            img[mask] = 20
        return np.clip(img, 0, 255).astype(np.uint8), mask

    train = np.stack([plate(False)[0] for _ in range(n_train)])
    test = [plate(i >= n_test) for i in range(2 * n_test)]
    return train, np.stack([t[0] for t in test]), np.array([0] * n_test + [1] * n_test), np.stack([t[1] for t in test])


def test_truncated_l1_loss_matches_eq_5_6():
    t = torch.tensor([1.0, 0.2, -0.4])
    f = torch.tensor([-1.0, 0.0, 0.7])
    # max(0, 0.5 - t) = [0, 0.3, 0.9]; max(0, f + 0.5) = [0, 0.5, 1.2]
    assert truncated_l1_loss(t, f).item() == pytest.approx(1.2 / 3 + 1.7 / 3)
    assert truncated_l1_loss(torch.ones(4), -torch.ones(4)).item() == 0.0


def test_patch_features_are_local_averages_of_the_backbone():
    ext = PatchFeatures("efficientnet_lite0", (2, 3), patch_size=3, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    z = ext(x)
    assert z.shape == (2, 40 + 112, 8, 8)
    f2, f3 = ext.backbone(x)
    ref2 = F.avg_pool2d(f2, 3, 1, 1)
    assert torch.allclose(z[:, :40], ref2, atol=1e-5)
    ref3 = F.interpolate(F.avg_pool2d(f3, 3, 1, 1), size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(z[:, 40:], ref3, atol=1e-5)
    assert PatchFeatures("efficientnet_lite0", (2, 3), embed_dim=64, device="cpu")(x).shape == (2, 64, 8, 8)


def test_discriminator_is_two_layer_mlp_and_score_is_max_of_smoothed_map():
    d = Discriminator(10, hidden=16)
    linears = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 16), (16, 1)]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in d.modules())
    s = torch.zeros(1, 4, 4)
    s[0, 1, 2] = 1.0
    score, maps = score_maps(s, 32, 4.0)
    assert maps.shape == (1, 32, 32)
    assert score.item() == pytest.approx(maps.max().item())
    assert score.item() < 1.0  # smoothing lowers the peak


def test_simplenet_separates_toy_anomalies_and_round_trips(tmp_path):
    train, test, labels, masks = toy_set()
    model = get_model("simplenet", image_size=64, epochs=8, hidden=128, device="cpu", seed=0)
    model.set_monitor(test, labels)
    model.fit(train)
    scores, maps = model.predict(test)
    assert maps.shape == (16, 64, 64)
    assert image_auroc(labels, scores) >= 0.9
    h = model.history
    assert len(h["loss"]) == 8 and h["loss"][-1] < h["loss"][0]
    assert len(h["monitor_auroc"]) == 8
    path = model.save(tmp_path / "sn.pt")
    again = type(model).load(path, device="cpu")
    s2, m2 = again.predict(test)
    np.testing.assert_allclose(s2, scores, rtol=1e-5, atol=1e-6)


def test_simplenet_bad_input():
    with pytest.raises(ConfigError, match="noise_std"):
        get_model("simplenet", noise_std=0.0, device="cpu")
    with pytest.raises(ConfigError, match="epochs"):
        get_model("simplenet", epochs=0, device="cpu")
    model = get_model("simplenet", image_size=64, epochs=1, device="cpu")
    with pytest.raises(TrainingError, match="at least 2"):
        model.fit(np.zeros((1, 64, 64), np.uint8))
