"""Shallow baselines on a teacher's feature vectors (Uninformed Students, supplement Sec. 2–3).

Each baseline is fitted on feature vectors ``[N,d]`` of normal data and returns anomaly scores for
test vectors ``[M,d]`` (higher = more anomalous), with the supplement's settings:

* :func:`nn1_scores` — 1-NN: distance to the closest vector of a dictionary (all training vectors
  on MNIST/CIFAR-10; 5 000 random ones on MVTec AD).
* :func:`kmeans_scores` — K-Means with 10 centres; distance to the closest centre.
* :func:`ocsvm_scores` — One-Class SVM with an RBF kernel; score = −decision function.
* :func:`autoencoder_scores` — fully connected ℓ2-autoencoder, encoder 128–64–32–10, symmetric
  decoder, leaky ReLU 5·10⁻³, Adam (lr 10⁻² on MNIST/CIFAR-10, 10⁻⁴ on MVTec AD), weight decay
  10⁻⁵, 100 epochs, batch 64 (512 on MVTec AD); score = ‖x − x̂‖².
* :func:`vae_scores` — variational autoencoder of the same shape (10-d Gaussian latent); score =
  the negative reconstruction log-probability (unit-variance Gaussian decoder, up to a constant)
  averaged over five independent forward passes (An & Cho, 2015).

Features are standardised with the training mean and standard deviation before every method.
:data:`BASELINES` maps the names used in the supplement's Tables 2 and 3 to these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import ConfigError, DatasetError
from ..utils import resolve_device
from .base import check_loss

LEAKY_SLOPE = 5e-3
HIDDEN = (128, 64, 32)
LATENT = 10


def _check_features(train: Any, test: Any) -> tuple[np.ndarray, np.ndarray]:
    tr = np.asarray(train, dtype=np.float32)
    te = np.asarray(test, dtype=np.float32)
    for name, a in (("train", tr), ("test", te)):
        if a.ndim != 2 or a.shape[0] == 0:
            raise DatasetError(f"{name} features must be a non-empty [N, d] array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise DatasetError(f"{name} features contain NaN or inf")
    if tr.shape[1] != te.shape[1]:
        raise DatasetError(f"train features have {tr.shape[1]} dimensions, test features {te.shape[1]}")
    mean, std = tr.mean(0), tr.std(0) + 1e-6
    return (tr - mean) / std, (te - mean) / std


def nn1_scores(train: Any, test: Any, dictionary_size: int | None = None, seed: int = 0) -> np.ndarray:
    """1-NN: Euclidean distance to the closest dictionary vector (``dictionary_size`` random
    training vectors; all of them when None)."""
    tr, te = _check_features(train, test)
    if dictionary_size is not None and dictionary_size < len(tr):
        tr = tr[np.random.default_rng(seed).choice(len(tr), dictionary_size, replace=False)]
    a, b = torch.from_numpy(tr), torch.from_numpy(te)
    out = [torch.cdist(b[i : i + 4096], a).amin(1) for i in range(0, len(b), 4096)]
    return torch.cat(out).numpy().astype(np.float64)


def kmeans_scores(train: Any, test: Any, n_clusters: int = 10, seed: int = 0) -> np.ndarray:
    """K-Means (``n_clusters`` = 10): distance to the single closest cluster centre."""
    from sklearn.cluster import KMeans

    tr, te = _check_features(train, test)
    if len(tr) < n_clusters:
        raise ConfigError(
            f"K-Means with {n_clusters} centres needs ≥ {n_clusters} training vectors, got {len(tr)}"
        )
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(tr)
    return km.transform(te).min(1).astype(np.float64)


def ocsvm_scores(
    train: Any, test: Any, nu: float = 0.1, gamma: str | float = "scale", seed: int = 0
) -> np.ndarray:
    """One-Class SVM with an RBF kernel; anomaly score = −decision function (deterministic:
    ``seed`` is accepted for a uniform signature only)."""
    from sklearn.svm import OneClassSVM

    tr, te = _check_features(train, test)
    svm = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma).fit(tr)
    return (-svm.decision_function(te)).astype(np.float64)


def _mlp(sizes: list[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
    return nn.Sequential(*layers)


class FCAutoencoder(nn.Module):
    """ℓ2-AE: encoder d–128–64–32–10, symmetric decoder 10–32–64–128–d (leaky ReLU 5·10⁻³)."""

    def __init__(self, dim: int):
        super().__init__()
        self.encoder = _mlp([dim, *HIDDEN, LATENT], last_act=False)
        self.decoder = _mlp([LATENT, *HIDDEN[::-1], dim], last_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class FCVAE(nn.Module):
    """VAE of the same shape: encoder d–128–64–32 → (μ, log σ²) ∈ ℝ¹⁰, decoder 10–32–64–128–d."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = _mlp([dim, *HIDDEN], last_act=True)
        self.mu = nn.Linear(HIDDEN[-1], LATENT)
        self.logvar = nn.Linear(HIDDEN[-1], LATENT)
        self.decoder = _mlp([LATENT, *HIDDEN[::-1], dim], last_act=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x)
        mu, logvar = self.mu(h), self.logvar(h).clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(z), mu, logvar


def _train(
    model: nn.Module, x: torch.Tensor, loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], *,
    epochs: int, lr: float, batch_size: int, weight_decay: float, seed: int, name: str, verbose: bool,
) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    hist = []
    model.train()
    for ep in tqdm(range(epochs), desc=name, disable=not verbose):
        order = torch.randperm(len(x), generator=g)
        tot = 0.0
        for i in range(0, len(x), batch_size):
            xb = x[order[i : i + batch_size]]
            loss = loss_fn(model, xb)
            check_loss(loss.detach(), f"epoch {ep}", name)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(xb)
        hist.append(tot / len(x))
    model.eval()
    return hist


def autoencoder_scores(
    train: Any, test: Any, *, epochs: int = 100, lr: float = 1e-2, batch_size: int = 64,
    weight_decay: float = 1e-5, seed: int = 0, device: str = "auto", verbose: bool = False,
    history: list[float] | None = None,
) -> np.ndarray:
    """ℓ2-AE: train on standardised features with the squared error, score ``‖x − x̂‖²``."""
    tr, te = _check_features(train, test)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = FCAutoencoder(tr.shape[1]).to(dev)
    x = torch.from_numpy(tr).to(dev)
    hist = _train(
        model, x, lambda m, xb: (m(xb) - xb).pow(2).sum(1).mean(), epochs=epochs, lr=lr,
        batch_size=batch_size, weight_decay=weight_decay, seed=seed, name="l2-AE", verbose=verbose,
    )
    if history is not None:
        history.extend(hist)
    with torch.no_grad():
        t = torch.from_numpy(te).to(dev)
        return (model(t) - t).pow(2).sum(1).cpu().numpy().astype(np.float64)


def vae_loss(model: FCVAE, xb: torch.Tensor) -> torch.Tensor:
    """Negative ELBO: ``½‖x − g(z)‖² + KL(q(z|x) ‖ N(0, I))`` (unit-variance Gaussian decoder)."""
    rec, mu, logvar = model(xb)
    nll = 0.5 * (rec - xb).pow(2).sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return (nll + kl).mean()


def vae_scores(
    train: Any, test: Any, *, epochs: int = 100, lr: float = 1e-2, batch_size: int = 64,
    weight_decay: float = 1e-5, n_passes: int = 5, seed: int = 0, device: str = "auto",
    verbose: bool = False, history: list[float] | None = None,
) -> np.ndarray:
    """VAE scored by the reconstruction probability over ``n_passes`` = 5 stochastic passes:
    score = mean over passes of ``½‖x − g(z_l)‖²``, ``z_l ~ q(z|x)``."""
    tr, te = _check_features(train, test)
    if n_passes < 1:
        raise ConfigError(f"n_passes must be ≥ 1, got {n_passes}")
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = FCVAE(tr.shape[1]).to(dev)
    x = torch.from_numpy(tr).to(dev)
    hist = _train(
        model, x, vae_loss, epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        seed=seed, name="VAE", verbose=verbose,
    )
    if history is not None:
        history.extend(hist)
    with torch.no_grad():
        t = torch.from_numpy(te).to(dev)
        s = torch.stack([0.5 * (model(t)[0] - t).pow(2).sum(1) for _ in range(n_passes)]).mean(0)
        return s.cpu().numpy().astype(np.float64)


#: Baselines by the names of the supplement's tables.
BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "1-NN": nn1_scores,
    "KMeans": kmeans_scores,
    "OC-SVM": ocsvm_scores,
    "l2-AE": autoencoder_scores,
    "VAE": vae_scores,
}


def baseline_scores(name: str, train: Any, test: Any, **kw: Any) -> np.ndarray:
    """Scores of baseline ``name`` (one of :data:`BASELINES`)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    return BASELINES[name](train, test, **kw)


__all__ = [
    "BASELINES",
    "FCAutoencoder",
    "FCVAE",
    "autoencoder_scores",
    "baseline_scores",
    "kmeans_scores",
    "nn1_scores",
    "ocsvm_scores",
    "vae_loss",
    "vae_scores",
]

