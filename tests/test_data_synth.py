"""Synthetic benchmarks: deterministic bytes, upstream layouts, masks = exactly the changed pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iadlib.data import get_dataset
from iadlib.data import synth as S
from iadlib.errors import ConfigError

TEX = {"image_size": 64, "n_train": 3, "n_test_good": 2, "n_test_defect": 7}
LOCO = {"image_size": 96, "n_train": 2, "n_validation": 1, "n_test_good": 1, "n_test_logical": 4,
        "n_test_structural": 4}  # fmt: skip


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_texture_categories_cover_the_interface():
    assert {"brick", "grass", "gravel"} <= set(S.TEXTURE_CATEGORIES)
    assert {"scratch", "crack", "hole", "stain", "foreign_body", "missing"} <= set(S.TEXTURE_DEFECTS)


@pytest.mark.parametrize("defect", S.TEXTURE_DEFECTS)
def test_texture_mask_is_exactly_the_changed_pixels(defect):
    for category, index in (("brick", 0), ("tissue", 1), ("gravel", 2)):
        img, good, mask, info = S.texture_sample(category, 5, "test", index, 64, defect=defect)
        assert img.shape == good.shape == (64, 64, 3) and img.dtype == np.uint8
        assert mask.dtype == bool and mask.any()
        assert np.array_equal(mask, (img != good).any(axis=-1))
        assert info["defect"] == defect and info["severity"] in S.SEVERITIES
        assert info["area_px"] == int(mask.sum())


def test_texture_generator_deterministic_and_layout(tmp_path):
    a = S.generate_textures("grass", tmp_path / "a", seed=3, **TEX)
    b = S.generate_textures("grass", tmp_path / "b", seed=3, **TEX)
    fa, fb = _files(a / "grass"), _files(b / "grass")
    assert fa == fb  # same seed, same bytes
    assert "train/good/002.png" in fa and "test/good/001.png" in fa
    for d in S.TEXTURE_DEFECTS:  # 7 defective images round-robin over 7 types
        assert f"test/{d}/000.png" in fa and f"ground_truth/{d}/000_mask.png" in fa
    c = S.generate_textures("grass", tmp_path / "c", seed=4, **TEX)
    assert _files(c / "grass")["train/good/000.png"] != fa["train/good/000.png"]


def test_synth_textures_reads_back_with_exact_masks(tmp_path):
    ds = get_dataset("synth_textures", category="brick", root=tmp_path, seed=1, **TEX)
    assert ds.name == "synth_textures" and ds.category == "brick"
    assert (len(ds.train), len(ds.test)) == (3, 9)
    assert int(ds.test.labels.sum()) == 7
    for s in ds.test:
        if s.label == 0:
            assert not s.mask.any()
            continue
        # regenerate the normal crop the defect was drawn on: image i = j·7 + type index
        j = int(Path(s.path).stem)
        i = j * len(S.TEXTURE_DEFECTS) + S.TEXTURE_DEFECTS.index(s.defect)
        img, good, mask, _ = S.texture_sample("brick", 1, "test", i, 64, defect=s.defect)
        assert np.array_equal(s.image, img)
        assert np.array_equal(s.mask, (s.image != good).any(axis=-1))
        assert s.meta["area_px"] == int(s.mask.sum()) and s.meta["severity"] in S.SEVERITIES
    lazy = get_dataset("synth_textures", category="brick", root=tmp_path, seed=1, cache=False, **TEX)
    assert lazy.test.records[-1].sample is None
    assert lazy.test[len(lazy.test) - 1].meta["defect"] == lazy.test.defects[-1]


def test_synth_textures_restricted_defects_and_stamp_checks(tmp_path):
    ds = get_dataset("synth_textures", category="gravel", root=tmp_path, defects=["hole"], **TEX)
    assert set(ds.test.defects) == {"good", "hole"}
    with pytest.raises(ConfigError, match="pass another root"):  # same root, other configuration
        get_dataset("synth_textures", category="gravel", root=tmp_path, seed=9, defects=["hole"], **TEX)
    (tmp_path / "brick").mkdir()
    with pytest.raises(ConfigError, match="not written by"):
        get_dataset("synth_textures", category="brick", root=tmp_path, **TEX)
    with pytest.raises(ConfigError, match="valid: brick"):
        get_dataset("synth_textures", category="marble", root=tmp_path, **TEX)
    with pytest.raises(ConfigError, match="unknown texture defect"):
        get_dataset("synth_textures", category="grass", root=tmp_path, defects=["dent"], **TEX)


@pytest.mark.parametrize("category", S.LOCO_CATEGORIES)
def test_loco_regions_match_changed_pixels(category):
    names = S.LOCO_DEFECTS[category]
    seen = set()
    for kind in ("logical_anomalies", "structural_anomalies"):
        for index in range(6):
            img, regions, info = S.loco_sample(category, 0, "test", index, 96, kind, reference=True)
            ref = info["reference"]
            changed = (img != ref).any(axis=-1)
            union = np.logical_or.reduce([r for _, r in regions])
            assert 1 <= len(regions) <= 2 and changed.any()
            assert changed[~union].sum() <= 2  # nothing changes outside the annotation (AA slack)
            for name, region in regions:
                seen.add(name)
                assert names[name][0] == kind and region.any()
            if len(regions) == 1:
                name, region = regions[0]
                if name in ("wrong_hole_size", "missing_item", "extra_item"):
                    # whole hole / whole compartment: a superset of the changed pixels
                    assert changed[region].sum() == changed.sum() and region.sum() > changed.sum()
                else:
                    assert np.array_equal(region, changed)
    assert len(seen) >= 3


def test_synth_loco_layout_determinism_and_saturations(tmp_path):
    a = S.generate_loco("compartments", tmp_path / "a", seed=2, **LOCO)
    b = S.generate_loco("compartments", tmp_path / "b", seed=2, **LOCO)
    assert _files(a / "compartments") == _files(b / "compartments")
    cat = a / "compartments"
    cfg = json.loads((cat / "defects_config.json").read_text())
    by_name = {c["defect_name"]: c for c in cfg}
    assert by_name["missing_item"]["relative_saturation"] is False
    part_area = by_name["missing_item"]["saturation_threshold"]
    assert part_area == round(np.pi * S._part_radius(96) ** 2)
    m = np.asarray(Image.open(next((cat / "ground_truth" / "logical_anomalies").glob("*/000.png"))))
    assert set(np.unique(m).tolist()) <= {0, 255, 254}
    ds = get_dataset("synth_loco", category="compartments", root=tmp_path / "a", seed=2, **LOCO)
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (2, 1, 9)
    assert set(ds.test.defects) == {"good", "logical_anomalies", "structural_anomalies"}
    for s in ds.test:
        assert np.array_equal(s.mask, np.logical_or.reduce([np.zeros_like(s.mask), *s.regions]))
        for name, r, sat in zip(s.meta["region_defects"], s.regions, s.saturations):
            if name in ("missing_item", "extra_item"):
                assert sat == min(part_area, int(r.sum())) and sat < r.sum()
            else:
                assert sat == int(r.sum())  # relative 1.0
    fc = get_dataset("synth_loco", category="flat_connector", root=tmp_path / "a", seed=2, **LOCO)
    assert all(s.regions for s in fc.test if s.label == 1)
