"""U-Net auto-encoder baseline and the shared SSIM of ``iadlib.losses``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from iadlib.data import Split
from iadlib.errors import ConfigError, DatasetError
from iadlib.losses import ssim, ssim_loss, ssim_map
from iadlib.metrics import image_auroc
from iadlib.models import get_model, load_model
from iadlib.models.base import gaussian_blur
from iadlib.models.unet_ae import UNetAutoEncoder


def stripe_textures(n_train: int, n_good: int, n_bad: int, size: int = 64, seed: int = 0):
    """A tiny texture benchmark: noisy oriented stripes; defects are blobs of foreign noise/ink."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def normal() -> np.ndarray:
        phase = rng.uniform(0, 2 * math.pi)
        img = 0.5 + 0.3 * np.sin(2 * math.pi * (xx + 0.3 * yy) / 8.0 + phase)
        return img + rng.normal(0, 0.03, img.shape)

    def to_u8(a: np.ndarray) -> np.ndarray:
        return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)

    train = np.stack([to_u8(normal()) for _ in range(n_train)])
    test, masks = [], []
    for i in range(n_good + n_bad):
        img = normal()
        mask = np.zeros((size, size), bool)
        if i >= n_good:
            r = rng.uniform(0.09, 0.15) * size
            cy, cx = rng.uniform(r + 2, size - r - 2, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            fill = rng.uniform(0, 1, img.shape) if i % 2 else np.full(img.shape, rng.choice([0.05, 0.95]))
            img = np.where(mask, fill, img)
        test.append(to_u8(img))
        masks.append(mask)
    labels = np.r_[np.zeros(n_good, int), np.ones(n_bad, int)]
    test_split = Split.from_arrays(np.stack(test), labels, masks, name="test")
    return Split.from_arrays(train, name="train"), test_split


# --- SSIM ----------------------------------------------------------------------------------------
def test_ssim_matches_scikit_image():
    rng = np.random.default_rng(0)
    a = rng.random((40, 48))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ref, ref_map = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    ours = ssim_map(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float())[0, 0]
    # identical away from the border (skimage crops 5 px before averaging; padding differs there)
    np.testing.assert_allclose(ours.numpy()[5:-5, 5:-5], ref_map[5:-5, 5:-5], atol=1e-4)
    assert math.isclose(float(ours[5:-5, 5:-5].mean()), ref, abs_tol=1e-4)


def test_ssim_properties():
    x = torch.rand(2, 3, 32, 32)
    assert math.isclose(float(ssim(x, x)), 1.0, abs_tol=1e-6)
    assert float(ssim_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    losses = [float(ssim_loss(x, (x + s * torch.randn_like(x)).clamp(0, 1))) for s in (0.02, 0.1, 0.3)]
    assert losses[0] < losses[1] < losses[2]
    assert ssim(x, x.flip(0), reduction="image").shape == (2,)
    assert ssim(x, x, reduction="none").shape == (2, 32, 32)
    # invariant to the data range when both inputs and L are scaled together
    torch.testing.assert_close(ssim(2 * x, 2 * x.flip(0), data_range=2.0), ssim(x, x.flip(0)))
    with pytest.raises(ConfigError, match="odd"):
        ssim(x, x, window=4)
    with pytest.raises(ConfigError, match="shapes"):
        ssim(x, x[:, :, :16])
    with pytest.raises(ConfigError, match="reduction"):
        ssim(x, x, reduction="sum")


# --- network -------------------------------------------------------------------------------------
def test_network_has_no_fine_skips():
    net = UNetAutoEncoder(3, width=4, depth=4, latent=8, skips=2, skip_channels=4)
    assert net.skip_levels == [2, 3]  # strides 4 and 8; never the full-resolution level 0
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert UNetAutoEncoder(3, 4, 3, 8, skips=0).skip_levels == []
    with pytest.raises(ConfigError, match="full-resolution"):
        UNetAutoEncoder(3, 4, depth=3, skips=3)
    # the output is in tanh range
    out = UNetAutoEncoder(3, 4, 3, 8)(torch.randn(1, 3, 16, 16) * 10)
    assert out.abs().max() <= 1.0


def test_config_errors():
    with pytest.raises(ConfigError, match="loss"):
        get_model("unet_ae", image_size=32, loss="l1")
    with pytest.raises(ConfigError, match="multiple of 2\\^depth"):
        get_model("unet_ae", image_size=48, depth=5)
    with pytest.raises(ConfigError, match="skips"):
        get_model("unet_ae", image_size=32, depth=3, skips=3)


@pytest.mark.parametrize("loss", ["l2", "ssim"])
def test_training_lowers_the_loss_and_maps_are_the_residuals(loss, tmp_path):
    train, test = stripe_textures(16, 2, 2, size=32)
    m = get_model(
        "unet_ae", image_size=32, width=4, depth=3, latent=8, epochs=8, lr=3e-3, batch_size=8, loss=loss,
        device="cpu",
    )  # fmt: skip
    m.fit(train)
    assert len(m.history["loss"]) == 8
    assert m.history["loss"][-1] < 0.9 * m.history["loss"][0]
    scores, maps = m.predict(test)
    assert scores.shape == (4,) and maps.shape == (4, 32, 32)
    # inputs normalised with mean = std = 0.5, maps = residuals, score = max of the smoothed map
    x = torch.from_numpy(np.stack(test.images())).float()[:, None].expand(-1, 3, -1, -1) / 255
    x = (x - 0.5) / 0.5
    with torch.no_grad():
        rec = m.net(x)
    ref = (rec - x).pow(2).sum(1) if loss == "l2" else 1 - ssim(rec, x, data_range=2.0, reduction="none")
    np.testing.assert_allclose(maps, ref.numpy(), atol=1e-5)
    ref_scores = gaussian_blur(ref, m.config["score_sigma"]).amax((1, 2))
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)
    path = m.save(tmp_path / "ae.pt")
    m2 = load_model(path, device="cpu")
    s2, maps2 = m2.predict(test)
    np.testing.assert_array_equal(scores, s2)
    np.testing.assert_array_equal(maps, maps2)
    assert m.reconstruct(test).shape == (4, 32, 32, 3)


def test_unfitted_model_refuses_to_predict():
    m = get_model("unet_ae", image_size=32, width=2, depth=3, device="cpu")
    with pytest.raises(RuntimeError, match="fit"):
        m.predict(np.zeros((1, 32, 32), np.uint8))


def test_detects_texture_defects():
    train, test = stripe_textures(32, 12, 12, size=32, seed=1)
    m = get_model(
        "unet_ae", image_size=32, width=8, depth=3, latent=16, epochs=15, lr=2e-3, batch_size=8, device="cpu"
    )
    scores, _ = m.fit(train).predict(test)
    auroc = image_auroc(test.labels, scores)
    assert auroc > 0.8, auroc


def test_needs_two_training_images():
    m = get_model("unet_ae", image_size=32, width=2, depth=3, epochs=1, device="cpu")
    with pytest.raises(DatasetError, match="at least 2"):
        m.fit(np.zeros((1, 32, 32), np.uint8))
