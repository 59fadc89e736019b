"""The LOCO feature ensemble: channel budget, PCA block, fusion, training on LOCO-style data,
calibration on held-out images, checkpoints, and the chapter's background-removal helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_simplenet import toy_set

from iadlib import get_model
from iadlib.calibration import expected_calibration_error
from iadlib.chapters.loco import _halves, calibrate_scores, object_mask, remove_background
from iadlib.data import ADDataset, Split
from iadlib.errors import ConfigError
from iadlib.metrics import image_auroc
from iadlib.models.ensemble import BlockProjection, MemberPCA, channel_budget, fuse


def test_channel_budget_splits_the_first_members_channels():
    assert channel_budget([152, 152]) == [76, 76]
    assert channel_budget([152, 152, 152]) == [50, 51, 51]  # excess to the remaining members
    assert channel_budget([7, 40]) == [3, 4]
    assert channel_budget([152, 300], budget=64) == [32, 32]
    assert sum(channel_budget([113, 200, 200, 200])) == 113
    with pytest.raises(ConfigError, match="asks for"):
        channel_budget([10, 3])
    with pytest.raises(ConfigError):
        channel_budget([])


def test_member_pca_matches_an_independent_svd():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(12, 12, generator=g)
    x = (torch.randn(5, 12, 6, 6, generator=g).permute(0, 2, 3, 1) @ mix).permute(0, 3, 1, 2)
    pca = MemberPCA(12, 4).fit(x)
    z = pca(x)
    assert z.shape == (5, 4, 6, 6)
    v = pca.components
    assert torch.allclose(v.T @ v, torch.eye(4), atol=1e-5)
    flat = x.permute(0, 2, 3, 1).reshape(-1, 12).double()
    flat = flat - flat.mean(0)
    _, s, vt = torch.linalg.svd(flat, full_matrices=False)
    ref = vt[:4].T.float()
    assert torch.allclose(v.abs(), ref.abs(), atol=1e-4)
    var = s[:4] ** 2 / (flat.shape[0] - 1)
    assert pca.scale.item() == pytest.approx(float(var.mean().sqrt()), rel=1e-5)
    # the block has unit mean variance over its kept components and zero mean
    zf = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert zf.mean(0).abs().max() < 1e-4
    assert zf.var(0).mean().item() == pytest.approx(1.0, rel=1e-4)


def test_fuse_resizes_to_the_largest_grid_and_projection_starts_as_identity():
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    f = fuse([a, b])
    assert f.shape == (2, 8, 8, 8)
    assert torch.equal(f[:, :3], a)
    proj = BlockProjection([3, 5], [False, True])
    x = torch.randn(10, 8)
    assert torch.allclose(proj(x), x)
    assert isinstance(proj.layers[0], torch.nn.Identity) and isinstance(proj.layers[1], torch.nn.Linear)


@pytest.fixture(scope="module")
def loco():
    """A small LOCO-style set: plates with a 2×3 dot pattern; half of the anomalies miss a dot
    (logical), the other half carry a scratch (structural)."""
    train, test, labels, masks = toy_set(n_train=16, n_test=20, logical=True)
    return ADDataset("toy_loco", "plate", Split.from_arrays(train, name="train"),
                     Split.from_arrays(test, labels, masks, name="test"))


@pytest.fixture(scope="module")
def fitted(loco):
    model = get_model("feature_ensemble", image_size=64, epochs=8, hidden=128, device="cpu",
                      simplenet_cfg=dict(epochs=8, hidden=128), patchcore_cfg=dict(coreset_ratio=0.25))
    model.fit(loco.train)
    return model


def test_ensemble_trains_and_beats_chance(fitted, loco):
    h = fitted.history
    assert len(h["loss"]) == 8 and h["loss"][-1] < h["loss"][0]
    assert len(h["simplenet_loss"]) == 8
    assert fitted.pca[0].components.shape == (152, 76) and fitted.pca[1].components.shape == (152, 76)
    assert fitted.discriminator.body[0].in_features == 152
    scores, maps = fitted.predict(loco.test)
    assert maps.shape == (40, 64, 64)
    assert image_auroc(loco.test.labels, scores) >= 0.75


def test_crossfit_differences_match_test_distribution(fitted, loco):
    """Training differences against the other fold's bank look like a normal test image's."""
    imgs = loco.train.images()
    folds = np.zeros(len(imgs), int)
    folds[np.random.default_rng(0).permutation(len(imgs))[len(imgs) // 2 :]] = 1
    tr = fitted.member_raw(imgs, folds)[1].abs().mean().item()
    good = [s.image for s in loco.test if s.label == 0]
    te = fitted.member_raw(good)[1].abs().mean().item()
    naive = fitted._patchcore_diffs(fitted.patchcores[0], [imgs[i] for i in np.flatnonzero(folds == 0)]).abs()
    assert abs(tr - te) / te < 0.25
    assert naive.mean().item() < 0.8 * te  # a bank's own images sit closer to it (coreset cover)


def test_calibrated_probabilities_improve_ece_on_held_out_images(fitted, loco, tmp_path):
    labels = loco.test.labels
    cal, ev = _halves(labels, seed=0)
    test = loco.test
    fitted.calibrate(test[cal], labels[cal], method="platt")
    p = fitted.predict_proba(test[ev])
    assert p.shape == (len(ev),) and np.all((p >= 0) & (p <= 1))
    scores, _ = fitted.predict(test)
    lo, hi = scores[cal].min(), scores[cal].max()
    raw = np.clip((scores[ev] - lo) / (hi - lo), 0, 1)
    assert expected_calibration_error(p, labels[ev]) < expected_calibration_error(raw, labels[ev])
    # the same through the chapter helper, and the bounded sigmoid stays strictly inside (0, 1)
    res = calibrate_scores(scores, labels, seed=0)
    assert res["ece"]["Platt"] < res["ece"]["uncalibrated (min–max)"]
    assert np.all((res["probs"]["bounded sigmoid"] > 0) & (res["probs"]["bounded sigmoid"] < 1))
    # checkpoint keeps the calibration
    again = type(fitted).load(fitted.save(tmp_path / "ens.pt"), device="cpu")
    np.testing.assert_allclose(again.predict_proba(test[ev]), p, rtol=1e-5, atol=1e-6)


def test_ensemble_bad_config():
    with pytest.raises(ConfigError, match="members"):
        get_model("feature_ensemble", members=["simplenet", "draem"], device="cpu")
    with pytest.raises(ConfigError, match="calibration"):
        get_model("feature_ensemble", calibration="isotonic", device="cpu")
    m = get_model("feature_ensemble", image_size=64, epochs=1, device="cpu")
    with pytest.raises(RuntimeError, match="calibrate"):
        m.fitted = True
        m.predict_proba(np.zeros((2, 64, 64), np.uint8))


def test_background_removal_keeps_the_object_and_blackens_the_rest():
    img = np.full((40, 40, 3), 30, np.uint8)
    img[10:30, 12:28] = 200
    img[2, 2] = 255  # a bright speck far from the object is background
    out = remove_background(img, radius=3)
    assert (out[10:30, 12:28] == 200).all()
    assert out[2, 2].sum() == 0 and out[0, 39].sum() == 0
    assert out[8, 20].sum() > 0  # within the radius
    keep = object_mask(img, 0)
    assert keep.sum() == 20 * 16
    with pytest.raises(ConfigError):
        remove_background(img, -1)


@pytest.mark.slow
def test_notebook_smoke(tmp_path):
    """The chapter notebook runs end to end on the smoke profile (papermill, one OpenMP thread)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "05.out.ipynb"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", str(root / "notebooks/05_loco_ensemble.ipynb"),
           str(out), "-p", "profile", "smoke", "-p", "results_dir", str(tmp_path / "results")]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert any((tmp_path / "results" / "05_loco").glob("*.json"))
