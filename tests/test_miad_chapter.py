"""Chapter 3 end to end: the grid's cells, the capped data, the unified UniAD, the notebook."""

import copy
import inspect
import pickle

import nbformat
import numpy as np
import pytest

from iadlib.book import NOTEBOOKS, execute_notebook
from iadlib.chapters import miad
from iadlib.errors import ConfigError
from iadlib.experiment import run_experiment
from iadlib.results import ResultStore

TINY = {"image_size": 64, "n_train": 10, "n_test_good": 4, "n_test_defect": 6}


def test_plan_validates_profile_and_methods():
    with pytest.raises(ConfigError, match="smoke, quick, full"):
        miad.plan("fast")
    with pytest.raises(ConfigError, match="valid:"):
        miad.plan("smoke", ["patchcoer"])
    datasets, chosen, _ = miad.plan("quick")
    assert set(chosen) == set(miad.METHODS)  # all six methods are implemented and registered
    assert ("elpv", {"category": "mono"}) in datasets


def test_cells_are_run_experiment_arguments():
    sig = inspect.signature(run_experiment)
    quick = miad.cells("quick")
    datasets, chosen, _ = miad.plan("quick")
    assert len(quick) == len(datasets) * len(chosen)
    for cell in quick:
        sig.bind(**cell, store=None, force=False)  # raises TypeError on a wrong keyword
        # quick: every method sees the same capped data, and the caps are part of the record's identity
        assert isinstance(cell["dataset"], miad.CappedDataset)
        assert cell["dataset_cfg"]["max_train"] == miad.PROFILES["quick"]["max_train"]
        assert "by_dataset" not in cell["model_cfg"]
    draem = {c["dataset"].name: c["model_cfg"] for c in quick if c["method"] == "draem"}
    assert draem["elpv"]["image_size"] != draem["synth_textures"]["image_size"]  # per-dataset override
    assert len(pickle.dumps(quick)) < 20_000  # datasets travel as their configuration, not images
    smoke = miad.cells("smoke", ["patchcore"])
    assert [c["dataset"] for c in smoke] == ["synth_textures"]  # no caps: the plain dataset name


def test_capped_dataset_is_seeded_and_stratified(tmp_path):
    cfg = {"category": "brick", "root": str(tmp_path / "tex"), **TINY}
    a = miad.CappedDataset("synth_textures", cfg, max_train=4, max_test_per_label=3, seed=0)
    b = pickle.loads(pickle.dumps(miad.CappedDataset("synth_textures", cfg, 4, 3, seed=0)))
    assert len(a.train) == 4 and a.train.labels.tolist() == [0] * 4
    assert sorted(a.test.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # both classes, 3 of each
    assert a.train.paths == b.train.paths and a.test.paths == b.test.paths  # deterministic
    full = miad.CappedDataset("synth_textures", cfg, 100, 100)
    assert set(a.train.paths) < set(full.train.paths) and a.train.paths != full.train.paths[:4]  # a random draw
    assert len(full.train) == TINY["n_train"] and len(full.test) == TINY["n_test_good"] + TINY["n_test_defect"]
    assert a.record_cfg() == {**cfg, "max_train": 4, "max_test_per_label": 3}
    with pytest.raises(ConfigError, match="max_train"):
        miad.CappedDataset("synth_textures", cfg, max_train=0)


@pytest.fixture
def two_category_profile(monkeypatch, tmp_path):
    prof = copy.deepcopy(miad.PROFILES["smoke"])
    root = str(tmp_path / "tex")
    prof["datasets"] = [("synth_textures", {"category": c, "root": root, **TINY}) for c in ("brick", "grass")]
    prof["max_train"], prof["max_test_per_label"] = 6, 4
    prof["methods"] = {"uniad": prof["methods"]["uniad"], "patchcore": prof["methods"]["patchcore"]}
    monkeypatch.setitem(miad.PROFILES, "smoke", prof)
    return prof


def test_unified_uniad_one_fit_for_all_categories(two_category_profile, tmp_path):
    res = tmp_path / "results"
    recs = miad.run_unified("smoke", str(res), device="cpu")
    assert [r["params"]["category"] for r in recs] == ["brick", "grass"]
    for r in recs:
        p, ex = r["params"], r["extra"]
        assert p["method"] == "uniad_unified" and p["protocol"] == "unified"
        assert p["train_set"] == ["synth_textures/brick", "synth_textures/grass"]
        assert ex["n_train"] == 12 and ex["n_train_category"] == 6 and ex["n_test"] == 8  # union of both sets
        assert ex["fit_shared_by"] == 2 and 0.0 <= r["metrics"]["image_auroc"] <= 1.0
        assert "pixel_auroc" in r["metrics"] and r["provenance"]["commit"]
    assert recs[0]["extra"]["fit_seconds"] == recs[1]["extra"]["fit_seconds"]  # one shared fit
    z = np.load(recs[1]["extra"]["predictions"])
    assert z["scores"].shape == (8,) and z["labels"].sum() == 4
    again = miad.run_unified("smoke", str(res), device="cpu")  # reused, not refitted
    assert [r["extra"]["timestamp_unix"] for r in again] == [r["extra"]["timestamp_unix"] for r in recs]
    # run(): the per-category cells plus the unified row; results() reads the same back from the store
    df, _ = miad.run("smoke", str(res), device="cpu")
    assert set(df.method) == {"PatchCore", "UniAD", miad.UNIFIED}
    back = miad.results("smoke", str(res), device="cpu")
    assert len(back) == len(df) and set(back.method) == set(df.method)
    t = miad.table(df)
    assert list(t.columns) == ["PatchCore", "UniAD", miad.UNIFIED]
    head = miad.headline(str(res), "smoke", device="cpu")
    assert list(head.method) == ["PatchCore", "UniAD", miad.UNIFIED]
    uni = head.set_index("method")
    assert uni.loc[miad.UNIFIED, "paper_dataset"] == "mvtec_ad" and np.isnan(uni.loc["UniAD", "paper"])
    assert uni.loc["PatchCore", "ours"] == pytest.approx(t.loc[("mean", ""), "PatchCore"])


def test_headline_empty_without_records(tmp_path):
    head = miad.headline(str(tmp_path / "none"))
    assert head.empty and {"method", "ours", "paper"} <= set(head.columns)


@pytest.mark.slow
def test_notebook_smoke(tmp_path):
    res = tmp_path / "results"
    rec = execute_notebook(NOTEBOOKS / "03_miad_baselines.ipynb", tmp_path / "out",
                           {"profile": "smoke", "results_dir": str(res)})
    assert rec["status"] == "ok"
    nb = nbformat.read(tmp_path / "out" / "03_miad_baselines.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.output_type == "error" for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # distributions, map grid, speed
    df = ResultStore(res).frame(miad.CHAPTER)
    assert set(df.method) == set(miad.METHODS) | {"uniad_unified"}
    assert df[df.metric == "image_auroc"].value.between(0, 1).all()
    store = ResultStore(res)
    for cell in miad.cells("smoke"):  # cell_params is the identity run_experiment stored
        assert store.get(miad.CHAPTER, miad.cell_params(cell)) is not None


def test_unified_train_sets_per_profile(two_category_profile, monkeypatch):
    _, jobs = miad.unified_jobs("smoke")
    assert {tuple(p["train_set"]) for _, p in jobs} == {("synth_textures/brick", "synth_textures/grass")}
    # full: one model per dataset (MIAD's scenarios, MVTec AD's classes), as in the UniAD paper
    assert miad.PROFILES["full"]["unified_by"] == "dataset"
    prof = dict(two_category_profile, unified_by="dataset")
    prof["datasets"] = [*prof["datasets"], ("elpv", {"category": "mono"})]
    monkeypatch.setitem(miad.PROFILES, "smoke", prof)
    sets = {(p["dataset"], p["category"]): p["train_set"] for _, p in miad.unified_jobs("smoke")[1]}
    assert sets[("elpv", "mono")] == ["elpv/mono"]
    assert sets[("synth_textures", "grass")] == ["synth_textures/brick", "synth_textures/grass"]
    monkeypatch.setitem(miad.PROFILES, "smoke", dict(prof, unified_by="category"))
    with pytest.raises(ConfigError, match="unified_by"):
        miad.unified_jobs("smoke")
