"""CS-Flow: the coupling's log-determinant against autograd, identity start, NLL, detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_simplenet import toy_set

from iadlib import get_model
from iadlib.errors import ConfigError
from iadlib.metrics import image_auroc
from iadlib.models.csflow import CrossScaleFlow, nll_loss


def _inputs(c: int = 4, h: int = 4, b: int = 1, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, c, h >> k, h >> k, generator=g, dtype=torch.float64) for k in range(3)]


def test_flow_starts_as_a_permutation():
    flow = CrossScaleFlow(6, hidden=8, n_blocks=2).double()
    xs = _inputs(6)
    zs, logdet = flow(xs)
    assert torch.allclose(logdet, torch.zeros(1, dtype=torch.float64))
    perm = flow.perm0[flow.perm1]
    for x, z in zip(xs, zs):
        assert torch.allclose(z, x[:, perm])


def test_log_determinant_matches_autograd_jacobian():
    torch.manual_seed(0)
    flow = CrossScaleFlow(4, hidden=6, n_blocks=2, clamp=3.0).double()
    with torch.no_grad():
        for blk in flow.blocks:
            blk.s1.gamma.uniform_(0.5, 1.5)
            blk.s2.gamma.uniform_(0.5, 1.5)
    xs = _inputs(4)
    shapes = [x.shape for x in xs]
    sizes = [x.numel() for x in xs]

    def f(flat: torch.Tensor) -> torch.Tensor:
        parts = torch.split(flat, sizes)
        zs, _ = flow([p.reshape(s) for p, s in zip(parts, shapes)])
        return torch.cat([z.reshape(-1) for z in zs])

    flat = torch.cat([x.reshape(-1) for x in xs])
    jac = torch.autograd.functional.jacobian(f, flat)
    _, logabsdet = torch.linalg.slogdet(jac)
    _, logdet = flow(xs)
    assert not torch.allclose(logdet, torch.zeros_like(logdet))
    assert logdet.item() == pytest.approx(logabsdet.item(), rel=1e-6, abs=1e-8)


def test_nll_loss_is_eq_5():
    zs = [torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 1, 1)]
    logdet = torch.tensor([1.0, 3.0])
    d = 3 * 4 + 3
    expected = np.mean([(0.5 * 12 - 1.0), (0.5 * 12 - 3.0)]) / d
    assert nll_loss(zs, logdet).item() == pytest.approx(expected)


def test_csflow_detects_toy_anomalies():
    train, test, labels, _ = toy_set(n_train=12)
    model = get_model("csflow", image_size=64, epochs=8, hidden=16, lr=2e-3, batch_size=6, device="cpu")
    model.fit(train)
    scores, maps = model.predict(test)
    assert maps.shape == (16, 64, 64)
    assert model.history["loss"][-1] < model.history["loss"][0]
    assert image_auroc(labels, scores) >= 0.8


def test_csflow_bad_config():
    with pytest.raises(ConfigError, match="multiple of 64"):
        get_model("csflow", image_size=100, device="cpu")
    with pytest.raises(ConfigError, match="epochs"):
        get_model("csflow", image_size=64, epochs=0, device="cpu")


def test_official_kernel_sizes_and_clipping_options():
    """Default layout as the official code: 3×3 cross-convolutions, 5×5 in the last block; bad
    kernel lists and clipping norms are refused by name."""
    flow = CrossScaleFlow(6, hidden=8, n_blocks=4)
    sizes = [b.s1.conv_in[0].kernel_size[0] for b in flow.blocks]
    assert sizes == [3, 3, 3, 5]
    assert [b.s2.down[1].kernel_size[0] for b in flow.blocks] == [3, 3, 3, 5]
    with pytest.raises(ConfigError, match="kernel_sizes"):
        CrossScaleFlow(6, hidden=8, n_blocks=2, kernel_sizes=[3, 4])
    with pytest.raises(ConfigError, match="max_grad_norm"):
        get_model("csflow", max_grad_norm=0.0, device="cpu")
