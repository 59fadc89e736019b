"""Shallow baselines on feature vectors (Uninformed Students supplement): values and behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iadlib.errors import ConfigError, DatasetError
from iadlib.metrics import image_auroc
from iadlib.models.shallow import (
    BASELINES,
    FCVAE,
    FCAutoencoder,
    baseline_scores,
    kmeans_scores,
    nn1_scores,
    vae_loss,
)


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normal vectors on a 3-d subspace of ℝ¹⁶; anomalies off it."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((3, 16))
    train = rng.standard_normal((200, 3)) @ basis + 0.05 * rng.standard_normal((200, 16))
    good = rng.standard_normal((60, 3)) @ basis + 0.05 * rng.standard_normal((60, 16))
    bad = rng.standard_normal((60, 3)) @ basis + 1.5 * rng.standard_normal((60, 16))
    return train, np.concatenate([good, bad]), np.r_[np.zeros(60), np.ones(60)]


def test_nn1_equals_brute_force_on_standardised_features() -> None:
    train, test, _ = _data()
    mean, std = train.mean(0), train.std(0) + 1e-6
    a, b = (train - mean) / std, (test - mean) / std
    expect = np.sqrt(((b[:, None, :] - a[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nn1_scores(train, test), expect, rtol=1e-4, atol=1e-4)
    # a dictionary of k random vectors can only be farther away
    assert (nn1_scores(train, test, dictionary_size=50) >= nn1_scores(train, test) - 1e-5).all()


def test_kmeans_distance_to_closest_centre() -> None:
    rng = np.random.default_rng(1)
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    train = np.concatenate([c + 0.3 * rng.standard_normal((50, 2)) for c in centres])
    test = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 0.0], [5.0, 3.0]])
    s = kmeans_scores(train, test, n_clusters=2)
    # independent computation: two well-separated clusters → the centres are the cluster means
    mean, std = train.mean(0), train.std(0) + 1e-6
    z, cz = (test - mean) / std, (np.stack([train[:50].mean(0), train[50:].mean(0)]) - mean) / std
    expect = np.sqrt(((z[:, None] - cz[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(s, expect, rtol=1e-4, atol=1e-4)
    assert s[3] > s[2] > s[0]
    with pytest.raises(ConfigError, match="needs ≥ 10"):
        kmeans_scores(train[:5], test)


@pytest.mark.parametrize("name", list(BASELINES))
def test_every_baseline_separates_off_subspace_anomalies(name: str) -> None:
    train, test, labels = _data()
    kw = {"epochs": 30, "device": "cpu"} if name in ("l2-AE", "VAE") else {}
    s = baseline_scores(name, train, test, **kw)
    assert s.shape == (120,) and np.isfinite(s).all()
    assert image_auroc(labels, s) > 0.9, name


def test_autoencoder_architecture_is_the_supplements() -> None:
    ae = FCAutoencoder(16)
    sizes = [m.out_features for m in ae.modules() if isinstance(m, torch.nn.Linear)]
    assert sizes == [128, 64, 32, 10, 32, 64, 128, 16]
    slopes = {m.negative_slope for m in ae.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {5e-3}
    vae = FCVAE(16)
    x = torch.randn(8, 16)
    rec, mu, logvar = vae(x)
    assert rec.shape == (8, 16) and mu.shape == logvar.shape == (8, 10)
    # the negative ELBO is ½‖x − g(z)‖² + KL ≥ 0
    assert float(vae_loss(vae, x).detach()) > 0


def test_bad_input_is_named() -> None:
    train, test, _ = _data()
    with pytest.raises(DatasetError, match="dimensions"):
        nn1_scores(train, test[:, :5])
    bad = train.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        nn1_scores(bad, test)
    with pytest.raises(ConfigError, match="valid"):
        baseline_scores("PCA", train, test)
