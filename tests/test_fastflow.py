"""FastFlow: coupling log-determinant against autograd, likelihood maps, training, checkpoints, AUROC."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iadlib.data import Split
from iadlib.errors import CheckpointError, ConfigError
from iadlib.metrics import image_auroc, pixel_auroc
from iadlib.models import get_model, load_model
from iadlib.models.fastflow import AffineCouplingStep, FastFlowNet, fastflow_loss, likelihood_maps
from iadlib.models.reverse_distillation import ReverseDistillation

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
    return get_model("fastflow", **CFG).fit(data[0])


def test_coupling_logdet_matches_autograd_jacobian():
    """log|det ∂y/∂x| of one step (3×3 and 1×1 subnets) equals the log-determinant of the full Jacobian."""
    torch.manual_seed(0)
    for k in (3, 1):
        step = AffineCouplingStep(5, k, 1.0, 2.0, torch.randperm(5)).double()
        with torch.no_grad():  # move away from the identity initialisation
            for p in step.parameters():
                p.add_(0.3 * torch.randn_like(p))
        x = torch.randn(1, 5, 3, 2, dtype=torch.float64)
        y, logdet = step(x)
        jac = torch.autograd.functional.jacobian(lambda t, s=step: s(t)[0], x).reshape(x.numel(), x.numel())
        sign, ref = torch.linalg.slogdet(jac)
        assert float(sign) != 0
        assert float(logdet[0].detach()) == pytest.approx(float(ref), rel=1e-9, abs=1e-9)
        assert y.shape == x.shape


def test_loss_and_likelihood_maps():
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(2, 4, 6, 6, generator=g), torch.randn(2, 8, 3, 3, generator=g)]
    lds = [torch.tensor([1.0, 2.0]), torch.tensor([-1.0, 0.5])]
    ref = sum(float((0.5 * (z**2).sum((1, 2, 3)) - ld).mean()) for z, ld in zip(zs, lds))
    assert float(fastflow_loss(zs, lds)) == pytest.approx(ref, rel=1e-6)
    # the map of z = 0 everywhere is -1 (likelihood 1): the least anomalous value possible
    m0 = likelihood_maps([torch.zeros(1, 4, 6, 6), torch.zeros(1, 8, 3, 3)], (12, 12))
    np.testing.assert_allclose(m0.numpy(), -1.0)
    m = likelihood_maps(zs, (6, 6))
    ref0 = -(np.exp(-0.5 * (zs[0].numpy() ** 2).mean(1)))  # stage 0 is already at 6×6
    assert m.shape == (2, 6, 6) and float(m.max()) <= 0 and float(m.min()) >= -1
    np.testing.assert_allclose(
        2 * m.numpy() - ref0,
        -torch.nn.functional.interpolate(
            torch.exp(-0.5 * zs[1].pow(2).mean(1, keepdim=True)),
            size=(6, 6),
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_flow_net_shapes_and_kernels():
    shapes = [(24, 16, 16), (40, 8, 8), (112, 4, 4)]
    net = FastFlowNet(shapes, steps=8)
    kernels = [s.subnet[0].kernel_size[0] for s in net.flows[0].steps]
    assert kernels == [3, 1, 3, 1, 3, 1, 3, 1]
    zs, lds = net([torch.randn(2, *s) for s in shapes])
    assert [tuple(z.shape[1:]) for z in zs] == shapes and all(ld.shape == (2,) for ld in lds)


def test_subnet_width_follows_official_code():
    """Hidden width = int(hidden_ratio · C_1) of the subnet's input half (official ``subnet_conv``)."""
    for channels, ratio, hidden in [(24, 1.0, 12), (40, 1.0, 20), (5, 1.0, 3), (112, 0.16, 8)]:
        step = AffineCouplingStep(channels, 3, ratio, 2.0, torch.randperm(channels))
        conv1, _, conv2 = step.subnet
        assert (conv1.in_channels, conv1.out_channels) == (channels - channels // 2, hidden)
        assert (conv2.in_channels, conv2.out_channels) == (hidden, 2 * (channels // 2))


def test_predict_shapes_and_training(fitted, data):
    _, test = data
    scores, maps = fitted.predict(test)
    assert scores.shape == (20,) and maps.shape == (20, SIZE, SIZE)
    assert np.isfinite(scores).all() and maps.max() <= 0 and maps.min() >= -1
    np.testing.assert_allclose(scores, maps.reshape(20, -1).max(1), rtol=1e-4, atol=1e-4)
    rgb = np.repeat(test[0].image[:40, :48, None], 3, axis=2)
    _, m2 = fitted.predict(rgb[None])
    assert m2.shape == (1, 40, 48)
    loss = fitted.history["loss"]
    assert len(loss) == CFG["epochs"] and loss[-1] < loss[0] - 0.5 * abs(loss[0])


def test_separates_anomalies(fitted, data):
    _, test = data
    scores, maps = fitted.predict(test)
    assert image_auroc(test.labels, scores) > 0.9
    assert pixel_auroc(np.stack(test.masks()), maps) > 0.85


def test_save_load_round_trip(fitted, data, tmp_path):
    _, test = data
    path = fitted.save(tmp_path / "ff.pt")
    loaded = load_model(path, device="cpu")
    assert loaded.config == fitted.config
    s1, m1 = fitted.predict(test)
    s2, m2 = loaded.predict(test)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(m1, m2)
    with pytest.raises(CheckpointError, match="reverse_distillation"):
        ReverseDistillation.load(path)


def test_bad_config():
    with pytest.raises(ConfigError, match="flow_steps"):
        get_model("fastflow", flow_steps=0, image_size=SIZE, device="cpu")
    with pytest.raises(ConfigError, match="layers"):
        get_model("fastflow", layers=(2, 2), image_size=SIZE, device="cpu")
    with pytest.raises(ConfigError, match="bad configuration"):
        get_model("fastflow", n_steps=8)
