"""Uninformed Students: teacher shapes, dense == patch-wise, the three losses, students that detect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iadlib.errors import ConfigError, DatasetError
from iadlib.metrics import image_auroc, pixel_auroc
from iadlib.models import get_model, load_model
from iadlib.models.students import (
    ARCHITECTURES,
    DistillConfig,
    PatchNet,
    Teacher,
    compactness_loss,
    distill_teacher,
    knowledge_distillation_loss,
    metric_learning_loss,
)


@pytest.mark.parametrize("p, rf", [(17, 17), (33, 32), (65, 60)])
def test_teacher_shapes_per_patch_size(p: int, rf: int) -> None:
    t = Teacher(p, target_dim=320, width=0.125)
    x = torch.rand(2, 3, p, p)
    d = t(x)
    assert d.shape == (2, 128)
    assert t.decode(d).shape == (2, 320)
    assert t.net.receptive_field == rf  # floor pooling drops a border row at p = 33 and 65
    assert t.net.dense(torch.rand(1, 3, 9, 11)).shape == (1, 128, 9, 11)
    # the paper's widths at width 1.0 (Tables 1a/1b, main paper Table 4)
    full = PatchNet(p)
    outs = [c.out_channels for c in full.convs]
    assert outs == [layer[1] for layer in ARCHITECTURES[p] if layer[0] == "conv"]
    with pytest.raises(DatasetError, match=f"{p}×{p}"):
        t(torch.rand(1, 3, p + 1, p + 1))


def test_unknown_patch_size_is_rejected() -> None:
    with pytest.raises(ConfigError, match="17, 33, 65"):
        PatchNet(31)
    with pytest.raises(ConfigError, match="distill"):
        get_model("students", distill={"stepz": 3})


@pytest.mark.parametrize("p, size", [(17, (13, 15)), (33, (9, 12)), (65, (7, 6))])
def test_dense_equals_patchwise(p: int, size: tuple[int, int]) -> None:
    torch.manual_seed(p)
    net = PatchNet(p, width=0.125).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        dense, ref = net.dense(x), net.patchwise(x)
    assert dense.shape == ref.shape == (2, 128, *size)
    assert torch.allclose(dense, ref, atol=1e-5, rtol=1e-4)
    assert dense.std() > 0  # not a degenerate (constant) output


def test_loss_values_against_independent_computation() -> None:
    rng = np.random.default_rng(0)
    d = rng.standard_normal((50, 6)).astype(np.float32)
    c = np.corrcoef(d, rowvar=False)
    expect = c.sum() - np.trace(c)
    assert float(compactness_loss(torch.from_numpy(d))) == pytest.approx(expect, abs=1e-4)
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    n = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    # δ⁺ = 1, δ⁻ = min(4, 1) = 1 → max(0, 1 + 1 − 1) = 1 ; second: δ⁺ = 0, δ⁻ = 9 → 0
    assert float(metric_learning_loss(a, p, n, margin=1.0)) == pytest.approx(0.5)
    assert float(knowledge_distillation_loss(torch.ones(4, 3), torch.zeros(4, 3))) == pytest.approx(3.0)


def _tiny_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:96]
    out = []
    for k in range(3):
        base = 127 + 60 * np.sin(xx / (3 + k)) * np.cos(yy / (4 + k))
        img = np.stack([base, np.roll(base, 7, 0), np.roll(base, 13, 1)], -1) + rng.normal(0, 10, (96, 96, 3))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize(
    "weights, term",
    [((1.0, 0.0, 0.0), "L_k"), ((0.0, 1.0, 0.0), "L_m"), ((1.0, 0.0, 1.0), "L_c")],
)
def test_each_loss_term_decreases(weights: tuple[float, float, float], term: str) -> None:
    lk, lm, lc = weights
    cfg = DistillConfig(
        p=17, lambda_k=lk, lambda_m=lm, lambda_c=lc, width=0.125, n_patches=128, steps=40,
        batch_size=32, lr=1e-3, target_size=32, seed=0,
    )
    _, hist = distill_teacher(cfg, device="cpu", images=_tiny_images(), cache=False)
    first, last = np.mean(hist[term][:3]), np.mean(hist[term][-3:])
    assert last < first, f"{term} did not decrease: {hist[term]}"


def test_lc_alone_is_rejected() -> None:
    with pytest.raises(ConfigError, match="L_c alone"):
        distill_teacher(DistillConfig(p=17, lambda_k=0, lambda_m=0, lambda_c=1), cache=False)


def _texture_set(n: int, size: int, seed: int, defect: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs, masks = [], []
    for _ in range(n):
        ph = rng.uniform(0, 2 * np.pi, 2)
        base = 128 + 50 * np.sin(xx / 2.5 + ph[0]) * np.sin(yy / 2.5 + ph[1]) + rng.normal(0, 6, (size, size))
        m = np.zeros((size, size), bool)
        if defect:
            r, c = rng.integers(6, size - 14, 2)
            m[r : r + 8, c : c + 8] = True
            base[m] = 235
        imgs.append(np.clip(base, 0, 255).astype(np.uint8))
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


def test_students_separate_anomalies_and_roundtrip(tmp_path) -> None:
    train, _ = _texture_set(10, 32, 0, False)
    good, gm = _texture_set(6, 32, 1, False)
    bad, bm = _texture_set(6, 32, 2, True)
    test = np.concatenate([good, bad])
    labels = np.r_[np.zeros(6), np.ones(6)]
    model = get_model(
        "students", image_size=32, device="cpu", patch_sizes=(17,), n_students=3, width=0.125,
        epochs=10, lr=1e-3, batch_size=4, val_fraction=0.2, cache=False,
        distill={"n_patches": 64, "steps": 5, "target_size": 32},
    )
    model.fit(train)
    scores, maps = model.predict(test)
    assert maps.shape == (12, 32, 32)
    assert image_auroc(labels, scores) >= 0.9
    assert pixel_auroc(np.concatenate([gm, bm]), maps) >= 0.85
    # every student's regression loss fell over training
    for k, v in model.history.items():
        if k.startswith("student"):
            assert v[-1] < v[0], k
    path = model.save(tmp_path / "st.pt")
    again = load_model(path, device="cpu")
    s2, m2 = again.predict(test)
    np.testing.assert_allclose(s2, scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m2, maps, rtol=1e-5, atol=1e-5)


def test_compactness_is_scaled_per_descriptor_dimension() -> None:
    """L_c enters distillation divided by d (range [−1, d − 1]); ``lc_per_dim=False`` is Eq. 3 literally."""
    kw = dict(p=17, lambda_k=1.0, lambda_c=1.0, width=0.125, n_patches=64, steps=1, batch_size=32,
              target_size=32, seed=0)  # fmt: skip
    _, per_dim = distill_teacher(DistillConfig(**kw), device="cpu", images=_tiny_images(), cache=False)
    _, literal = distill_teacher(DistillConfig(**kw, lc_per_dim=False), device="cpu", images=_tiny_images(),
                                 cache=False)  # fmt: skip
    assert literal["L_c"][0] == pytest.approx(128 * per_dim["L_c"][0], rel=1e-4)
    assert -1.0 <= per_dim["L_c"][0] <= 127.0
    assert per_dim["L_k"][0] == pytest.approx(literal["L_k"][0], rel=1e-5)
    assert literal["loss"][0] == pytest.approx(literal["L_k"][0] + literal["L_c"][0], rel=1e-5)
