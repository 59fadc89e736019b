"""The detector protocol every method follows, and the few helpers they share.

A detector is built by ``get_model(name, **cfg)`` and has

* ``fit(train)``: learn from normal images only (a :class:`~iadlib.data.Split`, samples, or a
  uint8 array ``[N,H,W]`` / ``[N,H,W,3]``); returns ``self``;
* ``predict(images)``: ``(scores [N] float, maps [N,H,W] float)``, maps at the input resolution;
* ``save(path)`` / ``Detector.load(path)``: a versioned checkpoint written atomically.

Subclasses implement ``_fit(images)``, ``_predict(images) -> (scores, low-res maps)`` and
``_get_state()`` / ``_set_state(state)``; everything else lives here once.
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..data.base import as_image_list
from ..errors import CheckpointError, ConfigError, DatasetError, TrainingError
from ..utils import resolve_device, seed_everything, torch_save_atomic

FORMAT_VERSION = 1


def images_to_tensor(images: Sequence[np.ndarray], size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 images (grey or RGB) → float ``[N,3,S,S]`` in [0, 1], resized with antialiased bilinear."""
    grey = all(np.ndim(im) == 2 for im in images)  # resize one channel, then repeat it (3× less work)
    out = []
    for im in images:
        im = np.ascontiguousarray(im)
        t = torch.from_numpy(im if im.flags.writeable else im.copy())
        t = t[None] if grey else t[None].expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
        out.append(t)
    shapes = {tuple(t.shape) for t in out}
    if size is None and len(shapes) > 1:
        raise DatasetError(f"images of different sizes {sorted(shapes)[:3]}…; give a target size")
    if len(shapes) == 1:
        x = torch.stack(out).float().div_(255.0)
        if size is not None:
            x = _resize(x, size)
    else:
        x = torch.cat([_resize(t[None].float().div_(255.0), size) for t in out])
    return x.repeat(1, 3, 1, 1) if grey else x


def _resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def iter_batches(
    images: Sequence[np.ndarray],
    batch_size: int,
    size: int | tuple[int, int] | None,
    device: torch.device,
) -> Iterator[torch.Tensor]:
    """Yield float batches ``[B,3,S,S]`` in [0, 1] on ``device``."""
    for i in range(0, len(images), batch_size):
        yield images_to_tensor(images[i : i + batch_size], size).to(device, non_blocking=True)


def feature_batches(
    images: Sequence[np.ndarray],
    extract: Callable[[torch.Tensor], list[torch.Tensor]],
    cache: list[torch.Tensor] | None,
    batch_size: int,
    size: int | tuple[int, int] | None,
    device: torch.device,
    gen: torch.Generator,
) -> Iterator[list[torch.Tensor]]:
    """One epoch of shuffled batches of frozen-backbone features.

    Taken from ``cache`` (per-stage feature tensors of all training images) when the features were
    cached, else computed on the fly with ``extract`` from image batches in the same shuffled order.
    """
    perm = torch.randperm(len(images), generator=gen)
    if cache is not None:
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size].to(cache[0].device)
            yield [f[idx] for f in cache]
    else:
        order = [images[int(j)] for j in perm]
        for x in iter_batches(order, batch_size, size, device):
            yield extract(x)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = max(1, int(truncate * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[N,H,W]`` maps (reflect padding, as scipy's default)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = k.numel() // 2
    x = maps[:, None]
    x = F.pad(x, (r, r, 0, 0), mode="reflect" if x.shape[-1] > r else "replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="reflect" if x.shape[-2] > r else "replicate")
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return x[:, 0]


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of ``[N,h,w]`` maps to ``size``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


@functools.lru_cache(maxsize=32)
def _upsample_blur_operator(n: int, size: int, sigma: float, device: str) -> torch.Tensor:
    """``[n, size]`` matrix of bilinear upsampling ``n → size`` followed by Gaussian smoothing (1-D)."""
    eye = torch.eye(n, device=device)[:, None, :]  # n one-pixel rows
    up = F.interpolate(eye[:, None], size=(1, size), mode="bilinear", align_corners=False)[:, 0]
    return gaussian_blur(up, sigma)[:, 0, :].contiguous()


def upsample_blur(maps: torch.Tensor, size: tuple[int, int], sigma: float) -> torch.Tensor:
    """``gaussian_blur(upsample_maps(maps, size), sigma)`` as two small matrix products.

    Both steps are linear and separable, so the result is ``A_hᵀ · M · A_w`` with the ``[h, H]`` and
    ``[w, W]`` operators built once (by applying the two functions to unit impulses): the same maps
    to float rounding, several times faster than a 1-channel convolution at full resolution.
    """
    h, w = maps.shape[-2:]
    a_h = _upsample_blur_operator(h, int(size[0]), float(sigma), str(maps.device)).to(maps.dtype)
    a_w = _upsample_blur_operator(w, int(size[1]), float(sigma), str(maps.device)).to(maps.dtype)
    return torch.matmul(torch.matmul(a_h.T, maps), a_w)


#: What :func:`check_loss` names when no checkpoint was written during the training that diverged.
NO_CHECKPOINT = "none written"

#: The detector whose ``_fit`` is running (set by :meth:`Detector.fit`), so that :func:`check_loss`
#: can name its last good checkpoint without every model passing it along.
_TRAINING: contextvars.ContextVar[Detector | None] = contextvars.ContextVar("iadlib_training", default=None)


def check_loss(
    loss: torch.Tensor | float,
    step: int | str,
    model: str = "",
    last_good: str | os.PathLike | None = None,
) -> float:
    """Return ``float(loss)``; raise :class:`TrainingError` if it is NaN or inf.

    The error names the step and the last good checkpoint: ``last_good`` when given, else the one
    the detector being fitted wrote last (:meth:`Detector.checkpoint`), else ``"none written"``.
    The exception carries them as ``.step`` and ``.last_good``.
    """
    val = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    if not math.isfinite(val):
        if last_good is None:
            det = _TRAINING.get()
            last_good = getattr(det, "_last_good", NO_CHECKPOINT)
        last_good = str(last_good)
        err = TrainingError(
            f"{model or 'training'} diverged: loss is {val} at step {step}; last good checkpoint: {last_good}; "
            "lower the learning rate or check the input data"
        )
        err.step, err.last_good = step, last_good  # type: ignore[attr-defined]
        raise err
    return val


def _comparable(value: Any) -> str:
    """Config values as JSON text, so that tuples and lists (or 1 and 1.0) compare equal."""
    return json.dumps(value, sort_keys=True, default=str)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint written by :meth:`Detector.save` (format version, model, config)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path}: not an iadlib checkpoint")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']}, this iadlib reads {FORMAT_VERSION}; "
            "refit the model and save it again"
        )
    missing = [k for k in ("model", "config", "state") if k not in payload]
    if missing or not isinstance(payload["config"], dict):
        raise CheckpointError(f"{path}: incomplete iadlib checkpoint (missing {', '.join(missing) or 'config'})")
    return payload


def check_config(path: str | Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` listing the options where ``saved`` differs (``device``, ``verbose`` aside)."""
    keys = sorted((set(saved) | set(expected)) - {"device", "verbose"})
    diff = [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs model {expected.get(k, '<absent>')!r}"
        for k in keys
        if k not in saved or k not in expected or _comparable(saved[k]) != _comparable(expected[k])
    ]
    if diff:
        raise CheckpointError(f"{path}: checkpoint written with another configuration ({'; '.join(diff)})")


class Detector:
    """Base class of every anomaly detector (see the module docstring for the protocol)."""

    name: ClassVar[str] = "detector"
    #: Resolution at which the model works (images are resized to it).
    default_image_size: ClassVar[int] = 224

    def __init__(self, image_size: int | None = None, device: str = "auto", seed: int = 0, batch_size: int = 32):
        self.config: dict[str, Any] = {
            "image_size": image_size or self.default_image_size,
            "device": device,
            "seed": seed,
            "batch_size": batch_size,
        }
        self.image_size = self.config["image_size"]
        self.device = resolve_device(device)
        self.seed = seed
        seed_everything(seed)  # networks built in a subclass' __init__ start from the same weights
        self.batch_size = batch_size
        self.fitted = False
        self.history: dict[str, list[float]] = {}
        #: Path of the last checkpoint written during the current fit (see :meth:`checkpoint`).
        self._last_good: str = NO_CHECKPOINT

    # --- to implement -------------------------------------------------------------------------
    def _fit(self, images: list[np.ndarray]) -> None:
        raise NotImplementedError

    def _predict(self, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return image scores ``[N]`` and anomaly maps ``[N,h,w]`` at any resolution."""
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------
    def fit(self, train: Any) -> Detector:
        """Fit on normal images only. Returns ``self``."""
        images = as_image_list(train)
        seed_everything(self.seed)
        self._last_good = NO_CHECKPOINT
        token = _TRAINING.set(self)
        try:
            self._fit(images)
        finally:
            _TRAINING.reset(token)
        self.fitted = True
        return self

    @torch.no_grad()
    def predict(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Score images: ``(scores [N], maps [N,H,W])``, maps at the input images' resolution."""
        if not self.fitted:
            raise RuntimeError(f"{self.name}: call fit() (or load()) before predict()")
        imgs = as_image_list(images)
        sizes = {im.shape[:2] for im in imgs}
        if len(sizes) > 1:
            raise DatasetError(
                f"predict() got images of several sizes {sorted(sizes)[:3]}; predict them per size "
                "or resize them first"
            )
        scores, maps = self._predict(imgs)
        maps = upsample_maps(maps.float(), imgs[0].shape[:2])
        scores_np = scores.float().cpu().numpy().astype(np.float64)
        if not np.isfinite(scores_np).all():
            raise TrainingError(f"{self.name}: non-finite anomaly scores; the model diverged or is untrained")
        return scores_np, maps.cpu().numpy().astype(np.float32)

    def _payload(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model": self.name,
            "config": self.config,
            "state": self._get_state(),
            "history": self.history,
        }

    def save(self, path: str | Path) -> Path:
        """Write a versioned checkpoint (format version, model name, config, state) atomically.

        A crash during the write leaves the previous file at ``path`` (or none), never a torn one.
        """
        if not self.fitted:
            raise RuntimeError(f"{self.name}: nothing to save before fit()")
        torch_save_atomic(self._payload(), path)
        return Path(path)

    def checkpoint(self, path: str | Path) -> Path:
        """Write a checkpoint *during* ``_fit`` (same format as :meth:`save`) and remember it.

        A later divergence (:func:`check_loss`) names this file as the last good checkpoint.
        """
        torch_save_atomic(self._payload(), path)
        self.note_checkpoint(path)
        return Path(path)

    def note_checkpoint(self, path: str | Path) -> None:
        """Record ``path`` as the last good checkpoint of the running fit (for files written elsewhere)."""
        self._last_good = str(path)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", config: dict[str, Any] | None = None) -> Detector:
        """Load a checkpoint written by :meth:`save`.

        Refuses, with :class:`CheckpointError`, another format version, another model than ``cls``
        (when called on a subclass), a configuration other than ``config`` (when given) and a state
        that does not fit the model its configuration builds.
        """
        path = Path(path)
        payload = read_checkpoint(path)
        from . import get_model

        if cls is not Detector and payload["model"] != cls.name:
            raise CheckpointError(f"{path}: checkpoint of model {payload['model']!r}, not {cls.name!r}")
        if config is not None:
            check_config(path, payload["config"], config)
        cfg = dict(payload["config"], device=device)
        try:
            model = get_model(payload["model"], **cfg)
        except ConfigError as exc:
            raise CheckpointError(
                f"{path}: cannot rebuild model {payload['model']!r} from the checkpoint: {exc}"
            ) from exc
        return model._restore_payload(path, payload)

    def restore(self, path: str | Path) -> Detector:
        """Load a checkpoint into this detector; refuses another model, configuration or format version."""
        path = Path(path)
        payload = read_checkpoint(path)
        if payload["model"] != self.name:
            raise CheckpointError(f"{path}: checkpoint of model {payload['model']!r}, not {self.name!r}")
        check_config(path, payload["config"], self.config)
        return self._restore_payload(path, payload)

    def _restore_payload(self, path: Path, payload: dict[str, Any]) -> Detector:
        try:
            self._set_state(payload["state"])
        except Exception as exc:  # size mismatch in load_state_dict, missing keys, ...
            raise CheckpointError(
                f"{path}: the checkpoint's state does not fit model {self.name!r} "
                f"({type(exc).__name__}: {str(exc)[:300]})"
            ) from exc
        self.history = payload.get("history", {})
        self.fitted = True
        return self

    def __repr__(self) -> str:
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"{type(self).__name__}({cfg})"
