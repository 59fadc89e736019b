"""GANomaly, Skip-GANomaly and ALOCC (Table 5.2 baselines): architectures, scores, training, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from iadlib.errors import ConfigError, TrainingError
from iadlib.models import get_model, load_model
from iadlib.models.gan_baselines import UNetGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stripes(n: int, seed: int, anomalous: bool = False, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, _ = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        im = 0.5 + 0.35 * np.sin(2 * np.pi * yy / 8 + rng.uniform(0, 2 * np.pi))
        m = np.zeros((size, size), bool)
        if anomalous:
            r0, c0 = rng.integers(4, size - 12, 2)
            im[r0 : r0 + 8, c0 : c0 + 8] = rng.uniform(0, 1, (8, 8))
            m[r0 : r0 + 8, c0 : c0 + 8] = True
        imgs.append(np.round(np.clip(im, 0, 1) * 255).astype(np.uint8))
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


CFG = dict(image_size=32, base=8, batch_size=16, device="cpu", seed=0)


def test_unet_generator_shapes_and_skips():
    g = UNetGenerator(size=32, latent_dim=512, base=8)
    x = torch.randn(2, 3, 32, 32)
    assert g(x).shape == (2, 3, 32, 32)
    assert g.bottleneck[0].out_channels == 512
    ups = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(ups) == 4  # 1→4, then three ×2 stages to 32 px
    # every up-sampling step after the first reads the concatenation [decoder, encoder skip]
    assert [u[0].in_channels for u in g.up] == [2 * d[0].out_channels for d in reversed(g.down)]


@pytest.fixture(scope="module")
def trained():
    train, _ = _stripes(48, 0)
    out = {}
    for name in ("ganomaly", "skip_ganomaly", "alocc"):
        out[name] = get_model(name, epochs=6, val_every=6, **CFG).fit(train)
    return out


def test_scores_follow_the_papers_definitions(trained):
    x_np, _ = _stripes(4, 9, anomalous=True)
    x = torch.from_numpy(x_np).float().div(255)[:, None].expand(-1, 3, -1, -1).mul(2).sub(1)
    for m in trained.values():  # scoring uses the BatchNorm running statistics
        for n in m.module_names:
            getattr(m, n).eval()
    with torch.no_grad():
        m = trained["ganomaly"]
        z = m.GE(x)
        z_hat = m.E(m.GD(z))
        exp = (z - z_hat).pow(2).mean(1)  # GANomaly Eq. 8: ‖G_E(x) − E(G(x))‖²
        np.testing.assert_allclose(m.predict(x_np)[0], exp.numpy(), rtol=1e-4, atol=1e-6)

        m = trained["skip_ganomaly"]
        x_hat = m.G(x)
        _, fr = m.D.forward_features(x)
        _, ff = m.D.forward_features(x_hat)
        exp = 0.9 * (x - x_hat).abs().flatten(1).mean(1) + 0.1 * (fr - ff).pow(2).flatten(1).mean(1)
        np.testing.assert_allclose(m.predict(x_np)[0], exp.numpy(), rtol=1e-4, atol=1e-6)

        m = trained["alocc"]
        exp = -m.D(m.RD(m.RE(x)))  # 1 − D(R(x)) up to a monotone map
        np.testing.assert_allclose(m.predict(x_np)[0], exp.numpy(), rtol=1e-4, atol=1e-5)


def test_training_reduces_the_generator_loss(trained):
    for name, m in trained.items():
        lg = m.history["loss_g"]
        assert len(lg) == 6 and all(np.isfinite(lg))
        assert lg[-1] < lg[0], name


def test_maps_are_the_reconstruction_error(trained):
    x_np, _ = _stripes(3, 5, anomalous=True)
    x = torch.from_numpy(x_np).float().div(255)[:, None].expand(-1, 3, -1, -1).mul(2).sub(1)
    for name, rec in (
        ("ganomaly", lambda m, x: m.GD(m.GE(x))),
        ("skip_ganomaly", lambda m, x: m.G(x)),
        ("alocc", lambda m, x: m.RD(m.RE(x))),
    ):
        m = trained[name]
        _, maps = m.predict(x_np)
        with torch.no_grad():
            exp = (x - rec(m, x)).abs().mean(1)
        assert maps.shape == (3, 32, 32)
        np.testing.assert_allclose(maps, exp.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_checkpoint_roundtrip(trained, tmp_path):
    x, _ = _stripes(4, 7)
    for name, m in trained.items():
        m2 = load_model(m.save(tmp_path / f"{name}.pt"), device="cpu")
        assert type(m2) is type(m)
        np.testing.assert_allclose(m2.predict(x)[0], m.predict(x)[0], rtol=1e-5, atol=1e-6)


def test_validation_selects_best_epoch():
    train, _ = _stripes(32, 0)
    v0, _ = _stripes(6, 1)
    v1, _ = _stripes(6, 2, anomalous=True)
    m = get_model("ganomaly", epochs=4, val_every=2, **CFG)
    m.fit(train, validation=np.concatenate([v0, v1]), validation_labels=np.r_[np.zeros(6), np.ones(6)])
    assert m.history["val_epoch"] == [2.0, 4.0]
    assert m.history["best_val_auroc"][0] == max(m.history["val_auroc"])


def test_nan_stops_training(monkeypatch):
    m = get_model("alocc", epochs=2, **CFG)
    monkeypatch.setattr(type(m), "_step", lambda self, x, it: (float("nan"), 0.0))
    with pytest.raises(TrainingError, match=r"alocc diverged: loss is nan at step epoch 1, batch 0 \(D\)"):
        m.fit(_stripes(16, 0)[0])


def test_bad_configuration():
    with pytest.raises(ConfigError):
        get_model("ganomaly", image_size=30)
    with pytest.raises(ConfigError):
        get_model("skip_ganomaly", lam=2.0)
    with pytest.raises(ConfigError):
        get_model("alocc", noise_std=-1.0)
    with pytest.raises(ConfigError):
        get_model("ganomaly", epochs=0)


def test_ganomaly_discriminator_reinitialised_when_it_wins(monkeypatch):
    m = get_model("ganomaly", epochs=1, **CFG)
    calls = []
    real_bce = F.binary_cross_entropy_with_logits

    def tiny(*a, **k):  # force a "won" discriminator: its loss collapses to ~0
        return real_bce(*a, **k) * 0.0

    monkeypatch.setattr(F, "binary_cross_entropy_with_logits", tiny)
    orig = nn.Module.apply

    def spy(self, fn):
        calls.append(type(self).__name__)
        return orig(self, fn)

    monkeypatch.setattr(nn.Module, "apply", spy)
    m.fit(_stripes(16, 0)[0])
    # GE, E and D at build (3), then D again after the one batch whose D loss collapsed
    assert calls.count("DCGANDiscriminator") == 4


# --- DifferNet-style flow -------------------------------------------------------------------
def test_flow_log_determinant_matches_autograd_jacobian():
    from iadlib.models.gan_baselines import FeatureFlow, flow_nll

    torch.manual_seed(0)
    flow = FeatureFlow(dim=5, n_blocks=3, hidden=16, seed=0).double()
    for p in flow.parameters():  # non-trivial scales
        p.data.normal_(0, 0.5)
    x = torch.randn(3, 5, dtype=torch.float64)
    z, logdet = flow(x)
    for i in range(3):
        J = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], x[i])
        assert float(torch.linalg.slogdet(J)[1]) == pytest.approx(float(logdet[i]), rel=1e-6, abs=1e-8)
    assert float(flow_nll(z, logdet)) == pytest.approx(float((0.5 * z.pow(2).sum(1) - logdet).mean() / 5))


def test_differnet_fits_scores_and_roundtrips(tmp_path):
    train, _ = _stripes(12, 0, size=64)
    test = np.concatenate([_stripes(4, 3, size=64)[0], _stripes(4, 4, True, size=64)[0]])
    m = get_model("differnet", image_size=64, epochs=3, hidden=64, n_blocks=2, n_rot_train=2, n_rot_test=2,
                  batch_size=8, device="cpu", val_every=1)  # fmt: skip
    m.fit(train, validation=test, validation_labels=np.r_[np.zeros(4), np.ones(4)])
    assert m.dim == 3 * 320  # three scales of efficientnet_lite0 stage 4
    assert len(m.history["loss"]) == 3 and m.history["loss"][-1] < m.history["loss"][0]
    scores, _ = m.predict(test)
    assert scores.shape == (8,) and (scores > 0).all()
    m2 = load_model(m.save(tmp_path / "d.pt"), device="cpu")
    np.testing.assert_allclose(m2.predict(test)[0], scores, rtol=1e-5, atol=1e-6)
