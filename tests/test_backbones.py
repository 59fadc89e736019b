"""The offline ImageNet weights must really be ImageNet weights: real photos get their classes."""

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from iadlib.backbones import IMAGENET_MEAN, IMAGENET_STD, create_classifier, load_backbone
from iadlib.errors import ConfigError, WeightsError


@pytest.fixture(scope="module")
def classifier():
    return create_classifier("efficientnet_lite0")


def _prep(img: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_cat_photo_is_a_cat(classifier):
    with torch.no_grad():
        top = classifier(_prep(skimage.data.chelsea())).topk(3).indices[0].tolist()
    assert top[0] in range(281, 286), top  # tabby / tiger / Egyptian cat …
    assert all(t in range(281, 294) for t in top), top


def test_coffee_photo_is_espresso_or_cup(classifier):
    with torch.no_grad():
        top = classifier(_prep(skimage.data.coffee())).topk(2).indices[0].tolist()
    assert top[0] in (967, 968), top


def test_features_only_extractor_matches_classifier_trunk(classifier):
    bb = load_backbone("efficientnet_lite0", layers=(2, 3), device="cpu")
    assert bb.channels == [40, 112] and bb.strides == [8, 16]
    x = torch.rand(2, 3, 64, 64)
    f2, f3 = bb(x)
    assert f2.shape == (2, 40, 8, 8) and f3.shape == (2, 112, 4, 4)
    # the same weights as the classifier: run its trunk by hand up to stage 3
    xn = (x - bb.mean) / bb.std
    with torch.no_grad():
        h = classifier.bn1(classifier.conv_stem(xn))
        outs = []
        for block in classifier.blocks:
            h = block(h)
            outs.append(h)
    # timm's features_only stage indices map onto the block groups with the matching stride
    # (equal to float rounding: the extractor has its frozen BatchNorms folded into the convolutions)
    assert torch.allclose(f3, outs[4], atol=2e-5 * float(outs[4].abs().max()))
    assert not any(p.requires_grad for p in bb.parameters())


def test_bad_layers_and_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="stages 0..4"):
        load_backbone("efficientnet_lite0", layers=(2, 7), device="cpu")
    with pytest.raises(WeightsError, match="not found"):
        load_backbone("resnet18", layers=(1,), device="cpu", weights=tmp_path / "nope.pth")
    # offline and no file: a clear message on how to provide weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("IADLIB_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsError, match="IADLIB_WEIGHTS"):
        load_backbone("resnet18", layers=(1,), device="cpu")


def test_local_weights_file(tmp_path, monkeypatch):
    import timm

    m = timm.create_model("resnet18", pretrained=False)
    torch.save(m.state_dict(), tmp_path / "resnet18.pth")
    monkeypatch.setenv("IADLIB_WEIGHTS_DIR", str(tmp_path))
    bb = load_backbone("resnet18", layers=(1, 2), device="cpu")
    ref = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2))
    ref.load_state_dict(m.state_dict(), strict=False)
    ref.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        got = bb(x)[1]
        want = ref((x - bb.mean) / bb.std)[1]
    assert got.shape == (1, 128, 8, 8)
    assert torch.allclose(got, want, atol=1e-5)


def test_fold_batchnorm_keeps_features_and_source_weights():
    """Folding the frozen BatchNorms into the convolutions changes the features only by float
    rounding, leaves no BatchNorm behind, and source_state_dict() still gives the loaded weights."""
    import torch.nn as nn

    from iadlib.backbones import load_backbone

    folded = load_backbone("efficientnet_lite0", (1, 2, 3), "cpu")
    plain = load_backbone("efficientnet_lite0", (1, 2, 3), "cpu", fold_bn=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) > 10
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(folded(x), plain(x)):
            assert a.shape == b.shape
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    src, ref = folded.source_state_dict(), plain.model.state_dict()
    assert src.keys() == ref.keys()
    assert all(torch.equal(src[k], ref[k]) for k in ref)
