"""Chapter 2 building blocks: Tables 1–2 shapes, Eq. 6/7/8/10, SSIM / MS-SSIM against references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity
from torch import nn

from iadlib.errors import ConfigError, DatasetError
from iadlib.models.autoencoders import (
    MS_SSIM_WEIGHTS,
    ClassThresholds,
    ConvAE,
    FullyConvAE,
    LatentClassifier,
    add_noise,
    build_autoencoder,
    encoder_stages,
    jacobian_frobenius_sq,
    jacobian_frobenius_sq_exact,
    ms_ssim,
    ms_ssim_scales,
    pooled_stats,
    reconstruction_error,
    ssim,
    ssim_map,
    stage_channels,
    weighted_vote,
)


def _convs(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if type(m) is kind]


# --- Table 1 and Table 2 ------------------------------------------------------------------------
def test_table1_layers_and_shapes():
    ae = ConvAE(image_size=256)
    enc = _convs(ae.encoder, nn.Conv2d)
    assert [(c.in_channels, c.out_channels) for c in enc] == [
        (3, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 1024)
    ]
    assert [(c.kernel_size, c.stride, c.padding) for c in enc[:6]] == [((4, 4), (2, 2), (1, 1))] * 6
    assert (enc[6].kernel_size, enc[6].stride, enc[6].padding) == ((4, 4), (1, 1), (0, 0))
    lin = _convs(ae.encoder, nn.Linear)
    assert [(m.in_features, m.out_features) for m in lin] == [(1024, 128)]
    dec = _convs(ae.decoder, nn.ConvTranspose2d)
    assert [(c.in_channels, c.out_channels) for c in dec] == [
        (1024, 512), (512, 256), (256, 128), (128, 64), (64, 32), (32, 16), (16, 3)
    ]
    assert len(_convs(ae, nn.BatchNorm2d)) == 13 and len(_convs(ae, nn.LeakyReLU)) == 14
    assert all(m.negative_slope == 0.2 for m in _convs(ae, nn.LeakyReLU))
    ae.eval()
    with torch.no_grad():
        h, out = ae(torch.rand(2, 3, 256, 256) * 2 - 1)
    assert h.shape == (2, 128) and out.shape == (2, 3, 256, 256)
    assert out.abs().max() < 1  # tanh output
    # N(0, 0.02) initialisation (§3.7)
    w = enc[3].weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002


def test_table1_other_sizes_and_width():
    ae = ConvAE(image_size=64, width=0.5, latent_dim=32)
    with torch.no_grad():
        h, out = ae.eval()(torch.zeros(1, 3, 64, 64))
    assert h.shape == (1, 32) and out.shape == (1, 3, 64, 64)
    assert [c.out_channels for c in _convs(ae.encoder, nn.Conv2d)] == [8, 16, 32, 64, 512]
    with pytest.raises(ConfigError, match="4·2\\^k"):
        ConvAE(image_size=100)


def test_table2_layers_and_shapes():
    ae = FullyConvAE(image_size=224)
    enc = _convs(ae.encoder, nn.Conv2d)
    assert [(c.in_channels, c.out_channels) for c in enc] == [
        (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256),
        (256, 512), (512, 512), (512, 1024), (1024, 1024),
    ]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in enc)
    assert len(_convs(ae.encoder, nn.MaxPool2d)) == 4  # none after the last triplet
    dec_t = _convs(ae.decoder, nn.ConvTranspose2d)
    assert [c.in_channels for c in dec_t] == [1024, 512, 256, 128]  # none in the last triplet
    dec_c = _convs(ae.decoder, nn.Conv2d)
    assert [(c.in_channels, c.out_channels) for c in dec_c][-2:] == [(64, 3), (3, 3)]
    assert ae.latent_shape == (1024, 14, 14)
    small = FullyConvAE(image_size=224, width=1 / 16).eval()
    with torch.no_grad():
        h, out = small(torch.rand(1, 3, 224, 224) * 2 - 1)
    assert h.shape == (1, 64, 14, 14) and out.shape == (1, 3, 224, 224)
    with pytest.raises(ConfigError, match="divisible by 16"):
        FullyConvAE(image_size=100)


def test_latent_classifier_sizes():
    big = LatentClassifier((1024, 14, 14), n_classes=15)
    assert sum(p.numel() for p in big.parameters()) < 1_000_000  # §3.4: "less than 1M parameters"
    assert isinstance(big.features[0], nn.Conv2d) and big.features[0].padding == (0, 0)
    assert big.eval()(torch.zeros(2, 1024, 14, 14)).shape == (2, 15)
    mlp = LatentClassifier((128,), n_classes=3)
    assert len(_convs(mlp, nn.Linear)) == 3 and len(_convs(mlp, nn.Dropout)) == 2
    with pytest.raises(ConfigError):
        LatentClassifier((128,), n_classes=0)
    with pytest.raises(ConfigError, match="init"):
        LatentClassifier((128,), n_classes=3, init="xavier")
    # the paper's "convolutional block" with BatchNorm, and the multiscale variant's extra input;
    # still < 1 M parameters at the paper's size (stages 64+128+256+512 channels, mean and std each)
    ms = LatentClassifier((1024, 14, 14), n_classes=15, norm=True, extra_dims=2 * 960)
    assert sum(p.numel() for p in ms.parameters()) < 1_000_000
    assert isinstance(ms.features[1], nn.BatchNorm2d) and isinstance(ms.extra_norm, nn.BatchNorm1d)
    assert ms.eval()(torch.zeros(2, 1024, 14, 14), torch.zeros(2, 1920)).shape == (2, 15)
    with pytest.raises(ConfigError, match="1920 extra features, got None"):
        ms(torch.zeros(2, 1024, 14, 14))


@pytest.mark.parametrize("arch", ["table1", "table2"])
def test_encoder_stages_and_pooled_stats(arch):
    ae = build_autoencoder(arch, 64, width=1 / 8).eval()
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        h, stages = encoder_stages(ae.encoder, x)
        assert torch.equal(h, ae.encoder(x))  # the same code as the plain forward pass
    # one map per resolution stage, halving from the input size, the code itself excluded
    assert [t.shape[-1] for t in stages] == ([32, 16, 8, 4] if arch == "table1" else [64, 32, 16, 8])
    assert stage_channels(ae, 64) == [t.shape[1] for t in stages] and ae.training is False
    f = pooled_stats(stages).numpy()
    assert f.shape == (3, 2 * sum(t.shape[1] for t in stages))
    t0 = stages[0].numpy().reshape(3, stages[0].shape[1], -1)
    c0 = stages[0].shape[1]
    np.testing.assert_allclose(f[:, :c0], t0.mean(2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f[:, c0 : 2 * c0], t0.std(2), rtol=1e-4, atol=1e-6)


# --- Eq. 7 ----------------------------------------------------------------------------------------
def test_denoising_noise_eq7():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(4, 3, 32, 32)
    y = add_noise(x, 0.3, g)
    assert y.min() >= -1 and y.max() <= 1
    assert abs(float(y.std()) - 0.3) < 0.01  # far from the clamp, the noise is N(0, 0.3²)
    xe = torch.full((2, 3, 16, 16), 0.95)
    assert float(add_noise(xe, 0.3, g).max()) == 1.0  # clamped to (−1, 1)
    assert add_noise(x, 0.0) is x


# --- Eq. 8 ----------------------------------------------------------------------------------------
def _tiny_encoder() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(3, 4, 3, 2, 1), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    ).double()


def test_jacobian_penalty_matches_autograd_jacobian():
    enc = _tiny_encoder()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    exact = jacobian_frobenius_sq_exact(enc, x)
    # independent reference: the full Jacobian, one autograd.grad per output unit
    ref = []
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        hi = enc(xi)[0]
        rows = [torch.autograd.grad(hi[k], xi, retain_graph=True)[0].flatten() for k in range(hi.numel())]
        ref.append(torch.stack(rows).pow(2).sum())
    torch.testing.assert_close(exact, torch.stack(ref))
    torch.manual_seed(1)
    for dist in ("rademacher", "normal"):
        h, est = jacobian_frobenius_sq(enc, x, n_projections=3000, create_graph=False, distribution=dist)
        torch.testing.assert_close(h, enc(x))
        rel = ((est - exact).abs() / exact).max()
        assert rel < 0.08, (dist, est, exact)


def test_jacobian_penalty_closed_form_and_gradient():
    # Rifai et al. (2011) sigmoid layer: ‖J‖_F² = Σ_j (h_j(1 − h_j))² Σ_i W_ji²
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    enc = nn.Sequential(lin, nn.Sigmoid())
    x = torch.randn(5, 6, dtype=torch.float64)
    h = enc(x)
    closed = ((h * (1 - h)) ** 2 * lin.weight.pow(2).sum(1)).sum(1)
    torch.testing.assert_close(jacobian_frobenius_sq_exact(enc, x), closed)
    _, est = jacobian_frobenius_sq(enc, x, n_projections=4000, distribution="rademacher")
    assert torch.allclose(est, closed, rtol=0.05)
    est.mean().backward()  # differentiable (create_graph=True): a usable penalty
    g = lin.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    with pytest.raises(ConfigError):
        jacobian_frobenius_sq(enc, x, n_projections=0)


# --- SSIM / MS-SSIM (Eq. 9) -----------------------------------------------------------------------
def _pair(rgb: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (40, 48, 3) if rgb else (40, 48)
    a = gaussian_filter(rng.uniform(-1, 1, shape), 1.0)
    b = np.clip(a + rng.normal(0, 0.2, shape), -1, 1)
    return a, b


@pytest.mark.parametrize("rgb", [False, True])
def test_ssim_matches_skimage(rgb):
    a, b = _pair(rgb)
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0)
    ref = structural_similarity(a, b, channel_axis=2 if rgb else None, **kw)
    ta = torch.from_numpy(a if rgb else a[..., None]).permute(2, 0, 1)[None]
    tb = torch.from_numpy(b if rgb else b[..., None]).permute(2, 0, 1)[None]
    ours = float(ssim(ta, tb, data_range=2.0))
    assert abs(ours - ref) < 1e-9
    assert 0.2 < ours < 0.99
    assert float(ssim(ta, ta)) == pytest.approx(1.0)
    # float32 path agrees too; the 'same' map keeps the size and its interior equals the valid map
    assert abs(float(ssim(ta.float(), tb.float())) - ref) < 1e-5
    full, _ = ssim_map(ta, tb, same=True)
    valid, _ = ssim_map(ta, tb)
    assert full.shape[-2:] == ta.shape[-2:]
    torch.testing.assert_close(full[..., 5:-5, 5:-5], valid)
    # and agrees with the library's shared SSIM map (iadlib.losses), border included
    from iadlib.losses import ssim_map as shared_ssim_map

    torch.testing.assert_close(full, shared_ssim_map(ta, tb, data_range=2.0))


def _ms_ssim_reference(a: np.ndarray, b: np.ndarray, scales: int) -> float:
    """Independent MS-SSIM (Wang 2003) with scipy filters on one grey image."""
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    w = np.array(MS_SSIM_WEIGHTS[:scales])
    w = w * sum(MS_SSIM_WEIGHTS) / w.sum()
    vals = []
    for j in range(scales):
        f = lambda z: gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]  # noqa: E731
        mx, my = f(a), f(b)
        sxx, syy, sxy = f(a * a) - mx**2, f(b * b) - my**2, f(a * b) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        vals.append((lum * cs).mean() if j == scales - 1 else cs.mean())
        h, wd = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean((1, 3))
        b = b[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean((1, 3))
    return float(np.prod(np.maximum(vals, 1e-6) ** w))


def test_ms_ssim_against_reference():
    rng = np.random.default_rng(3)
    a = gaussian_filter(rng.uniform(-1, 1, (96, 96)), 1.5)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), -1, 1)
    assert ms_ssim_scales(96) == 4 and ms_ssim_scales(256) == 5 and ms_ssim_scales(64) == 3
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    ours = float(ms_ssim(ta, tb))
    assert ours == pytest.approx(_ms_ssim_reference(a, b, 4), abs=1e-9)
    assert float(ms_ssim(ta, ta)) == pytest.approx(1.0)
    # one scale = plain SSIM
    assert float(ms_ssim(ta, tb, weights=(1.0,))) == pytest.approx(float(ssim(ta, tb)), abs=1e-12)
    # more noise → lower similarity
    c = np.clip(a + rng.normal(0, 0.4, a.shape), -1, 1)
    assert float(ms_ssim(ta, torch.from_numpy(c)[None, None])) < ours
    with pytest.raises(DatasetError, match="smaller"):
        ms_ssim(ta[..., :8, :8], tb[..., :8, :8])


def test_reconstruction_error_scores_and_maps():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = x.clone()
    y[1, :, 8:16, 8:16] = 0.9
    for loss in ("l2", "ssim", "mssim"):
        s, m = reconstruction_error(x, y, loss, with_map=True)
        assert s.shape == (2,) and m.shape == (2, 32, 32)
        assert float(s[0]) == pytest.approx(0.0, abs=1e-6) and float(s[1]) > 0.01
        assert float(m[1, 8:16, 8:16].mean()) > 5 * float(m[1, 24:, 24:].mean())
    s, _ = reconstruction_error(x, y, "l2")
    assert float(s[1]) == pytest.approx(float((x[1] - y[1]).pow(2).mean()))
    with pytest.raises(ConfigError, match="valid: l2, ssim, mssim"):
        reconstruction_error(x, y, "l1")


# --- Eq. 6 and Algorithm 1 ------------------------------------------------------------------------
def test_running_threshold_eq6():
    th = ClassThresholds(2, alpha=0.25, beta=-0.5)
    th.observe_batch(np.array([1.0, 3.0, 10.0, 14.0]), np.array([0, 0, 1, 1]))
    th.observe_batch(np.array([2.0, 2.0]), np.array([0, 0]))
    t1 = th.end_epoch()
    # epoch averages of the batch means / (unbiased) batch stds, per class; T₁ = μ + βσ
    mu0, sd0 = np.mean([2.0, 2.0]), np.mean([np.std([1.0, 3.0], ddof=1), 0.0])
    mu1, sd1 = 12.0, np.std([10.0, 14.0], ddof=1)
    np.testing.assert_allclose(t1, [mu0 - 0.5 * sd0, mu1 - 0.5 * sd1])
    th.observe_batch(np.array([4.0, 6.0, 20.0]), np.array([0, 0, 1]))
    t2 = th.end_epoch()
    # T₂ = (1 − α)·T₁ + α·(μ + βσ); a batch of one has σ = 0
    target0 = 5.0 - 0.5 * np.std([4.0, 6.0], ddof=1)
    np.testing.assert_allclose(t2, [0.75 * t1[0] + 0.25 * target0, 0.75 * t1[1] + 0.25 * 20.0])
    th.observe_batch(np.array([100.0]), np.array([1]))  # class 0 unseen this epoch: unchanged
    t3 = th.end_epoch()
    assert t3[0] == t2[0] and t3[1] == pytest.approx(0.75 * t2[1] + 0.25 * 100.0)
    # Algorithm 1: anomalous iff score > thresholds[c] (strict)
    dec = th.decide(np.array([t3[0] + 1e-9, t3[0], 40.0, t3[1]]), np.array([0, 0, 1, 1]))
    assert dec.tolist() == [True, False, True, False]
    # state round trip
    th2 = ClassThresholds(2)
    th2.load_state_dict(th.state_dict())
    np.testing.assert_array_equal(th2.values, t3)
    # one class: the pooled threshold of the plain CAE
    pooled = ClassThresholds(1, alpha=1.0, beta=0.0)
    pooled.observe_batch(np.array([1.0, 2.0, 3.0, 6.0]), np.zeros(4, int))
    np.testing.assert_allclose(pooled.end_epoch(), [3.0])
    with pytest.raises(ConfigError, match="beta"):
        ClassThresholds(2, alpha=0.5, beta=1.0)
    with pytest.raises(ConfigError, match="alpha"):
        ClassThresholds(2, alpha=0.0, beta=0.0)
    with pytest.raises(ConfigError, match="not set"):
        ClassThresholds(1).decide(np.ones(2))


# --- Eq. 10 ---------------------------------------------------------------------------------------
def test_weighted_vote_eq10():
    d = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    vote, dec = weighted_vote(d, [0.5, 0.3, 0.2])
    np.testing.assert_allclose(vote, [0.8, 0.3, 0.7, 0.2])
    assert dec.tolist() == [True, False, True, False]
    vote, dec = weighted_vote(d, [2, 1, 1])  # weights are normalised to sum to 1
    np.testing.assert_allclose(vote, [0.75, 0.25, 0.75, 0.25])
    _, dec = weighted_vote(np.array([[1, 0], [0, 1]], bool))  # 0.5 vs 0.5: tie → c₁ = anomaly
    assert dec.tolist() == [True, True]
    with pytest.raises(ConfigError, match="positive"):
        weighted_vote(d, [1, 0, 1])
    with pytest.raises(ConfigError, match="3 detectors but 2 weights"):
        weighted_vote(d, [1, 1])
