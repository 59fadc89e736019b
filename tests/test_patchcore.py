"""PatchCore on real data: it must separate defective solar cells from functional ones."""

import numpy as np
import pytest

import iadlib
from iadlib.data import Split
from iadlib.errors import CheckpointError, ConfigError, DatasetError
from iadlib.metrics import image_auroc


@pytest.fixture(scope="module")
def elpv_mono():
    return iadlib.get_dataset("elpv", category="mono", seed=0)


@pytest.fixture(scope="module")
def fitted(elpv_mono):
    model = iadlib.get_model("patchcore", coreset_ratio=0.01, image_size=224, device="cpu")
    return model.fit(elpv_mono.train)


@pytest.fixture(scope="module")
def predictions(fitted, elpv_mono):
    return fitted.predict(elpv_mono.test)


def test_separates_real_elpv_anomalies(predictions, elpv_mono):
    scores, maps = predictions
    assert scores.shape == (len(elpv_mono.test),)
    assert maps.shape == (len(elpv_mono.test), 300, 300)  # maps at the input resolution
    auroc = image_auroc(elpv_mono.test.labels, scores)
    assert auroc > 0.9, auroc


def test_coreset_size(fitted, elpv_mono):
    n_patches = len(elpv_mono.train) * 28 * 28
    assert fitted.memory_bank.shape == (round(0.01 * n_patches), 152)


def test_save_load_round_trip(fitted, elpv_mono, predictions, tmp_path):
    path = fitted.save(tmp_path / "pc.ckpt")
    loaded = iadlib.load_model(path, device="cpu")
    sub = elpv_mono.test[:12]
    s1, m1 = fitted.predict(sub)
    s2, m2 = loaded.predict(sub)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_allclose(s1, predictions[0][:12], rtol=1e-5)
    # a checkpoint of another model, a garbage file and a missing file are refused clearly
    with pytest.raises(CheckpointError, match="not found"):
        iadlib.load_model(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        iadlib.load_model(tmp_path / "junk.ckpt")


def test_faiss_search_agrees_with_torch(fitted, elpv_mono):
    sub = elpv_mono.test[:6]
    s_torch, _ = fitted.predict(sub)
    fitted.config["search"] = "faiss"
    try:
        s_faiss, _ = fitted.predict(sub)
    finally:
        fitted.config["search"] = "torch"
    np.testing.assert_allclose(s_torch, s_faiss, rtol=1e-3, atol=1e-3)


def test_reweighting_is_a_factor_in_0_1(fitted, elpv_mono):
    sub = elpv_mono.test[:8]
    s_rw, _ = fitted.predict(sub)
    fitted.config["reweight"] = False
    try:
        s_max, maps = fitted.predict(sub)
    finally:
        fitted.config["reweight"] = True
    assert np.all(s_rw <= s_max + 1e-6) and np.all(s_rw > 0)


def test_accepts_plain_arrays_grey_and_rgb():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (6, 64, 64), dtype=np.uint8)
    model = iadlib.get_model("patchcore", image_size=64, coreset_ratio=0.5, device="cpu").fit(grey)
    s, m = model.predict(np.repeat(grey[..., None], 3, axis=3))
    s2, _ = model.predict(grey)
    assert m.shape == (6, 64, 64)
    np.testing.assert_allclose(s, s2, rtol=1e-5)


def test_bad_input_is_refused_clearly(tmp_path):
    model = iadlib.get_model("patchcore", image_size=64, device="cpu")
    with pytest.raises(DatasetError, match="no images"):
        model.fit(np.zeros((0, 64, 64), np.uint8))
    with pytest.raises(DatasetError, match="shape"):
        model.fit(np.zeros((64, 64), np.uint8))
    with pytest.raises(RuntimeError, match="fit"):
        model.predict(np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(ConfigError, match="coreset_ratio"):
        iadlib.get_model("patchcore", coreset_ratio=0)
    with pytest.raises(ConfigError, match="valid:"):
        iadlib.get_model("patchcroe")
    # a corrupt image file on disk names the file
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DatasetError, match="broken.png"):
        iadlib.data.read_image(bad)
    split = Split.from_arrays(np.zeros((2, 32, 32), np.uint8))
    fitted = iadlib.get_model("patchcore", image_size=32, coreset_ratio=1.0, device="cpu").fit(split)
    with pytest.raises(DatasetError, match="several sizes"):
        fitted.predict([np.zeros((32, 32), np.uint8), np.zeros((40, 40), np.uint8)])


def test_upsample_blur_equals_upsample_then_blur():
    import torch

    from iadlib.models.base import gaussian_blur, upsample_blur, upsample_maps

    g = torch.Generator().manual_seed(0)
    for shape, size, sigma in [((3, 28, 28), (224, 224), 4.0), ((2, 7, 9), (40, 50), 2.0), ((1, 5, 5), (12, 12), 1.0)]:
        m = torch.rand(*shape, generator=g) * 30
        ref = gaussian_blur(upsample_maps(m, size), sigma)
        torch.testing.assert_close(upsample_blur(m, size, sigma), ref, rtol=1e-5, atol=1e-4)


def test_memory_bank_that_cannot_fit_is_refused_with_its_size(monkeypatch):
    import iadlib.kernels as kernels
    from iadlib.errors import ResourceError

    monkeypatch.setattr(kernels, "available_memory", lambda device="cpu": 10 * 2**20)  # pretend 10 MiB free
    imgs = np.random.default_rng(0).integers(0, 255, (40, 64, 64), dtype=np.uint8)
    model = iadlib.get_model("patchcore", image_size=128, coreset_ratio=0.1, device="cpu")
    with pytest.raises(ResourceError, match=r"memory bank \(10240 patches × 152\) needs 0\.01 GiB"):
        model.fit(imgs)
    # the kNN blocks shrink to what is available instead of failing
    assert kernels.chunk_budget("cpu") == 10 * 2**20 // 4


def test_traced_backbone_in_float32_gives_the_eager_features():
    import torch

    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    eager = iadlib.get_model("patchcore", image_size=64, amp=False, jit=False, device="cpu").embed(x)
    traced_model = iadlib.get_model("patchcore", image_size=64, amp=False, jit=True, device="cpu")
    traced = traced_model.embed(x)
    torch.testing.assert_close(traced, eager, rtol=1e-4, atol=1e-4)
    assert traced_model._traced and all(v is not traced_model.backbone for v in traced_model._traced.values())
    torch.testing.assert_close(traced_model.embed(x[:1]), eager[:1], rtol=1e-4, atol=1e-4)  # other batch size
