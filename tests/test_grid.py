"""Grid scale-out on Dask: cells as tasks on a 2-worker LocalCluster, idempotent, resumable,
sharing record keys with the chapters' own runs (so the notebooks do not recompute)."""

from __future__ import annotations

import json

import pytest

from iadlib.book.grid import cell_label, chapter_cells, grid_cells, run_cell, run_grid
from iadlib.errors import ConfigError
from iadlib.experiment import run_experiment
from iadlib.results import ResultStore

pytest.importorskip("distributed")


def _cell(tmp_path, category: str, method: str = "patchcore") -> dict:
    ds_cfg = {"category": category, "root": str(tmp_path / "data"), "image_size": 32, "n_train": 6,
              "n_test_good": 3, "n_test_defect": 3}
    return dict(chapter="99_grid_test", method=method, dataset="synth_textures",
                model_cfg={"image_size": 32, "coreset_ratio": 0.5, "layers": (1, 2)}, dataset_cfg=ds_cfg,
                profile="smoke", seed=0, device="cpu", paper="test", table="tiny grid")


def _records(results):
    return sorted(p.name for p in (results / "99_grid_test").glob("*.json"))


def test_grid_on_two_workers_is_idempotent_and_resumes(tmp_path):
    results = tmp_path / "results"
    good = [_cell(tmp_path, "brick"), _cell(tmp_path, "grass")]
    bad = _cell(tmp_path, "gravel", method="no_such_method")
    # a failing cell does not stop the others; the run fails at the end naming it
    with pytest.raises(SystemExit, match="no_such_method/synth_textures/gravel"):
        run_grid([*good, bad], results, workers=2, processes=False, verbose=False)
    recs = _records(results)
    assert len(recs) == 2 and len(list((results / "99_grid_test").glob("*.npz"))) == 2
    docs = [json.loads((results / "99_grid_test" / r).read_text()) for r in recs]
    assert sorted(d["params"]["category"] for d in docs) == ["brick", "grass"]
    assert all(0.0 <= d["metrics"]["image_auroc"] <= 1.0 for d in docs)
    stamps = {r: (results / "99_grid_test" / r).stat().st_mtime_ns for r in recs}

    # a rerun computes nothing new: both cells are reused, no file is rewritten
    again = run_grid(good, results, workers=2, processes=False, verbose=False)
    assert sorted(r["category"] for r in again) == ["brick", "grass"]
    assert all(r["reused"] for r in again)
    assert {r: (results / "99_grid_test" / r).stat().st_mtime_ns for r in _records(results)} == stamps

    # what a chapter notebook does: the same run_experiment call finds the grid's record
    cell = good[0]
    rec = run_experiment(**cell, store=ResultStore(results))
    assert rec["key"] in {d["key"] for d in docs}
    assert (results / "99_grid_test" / f"{rec['key']}.json").stat().st_mtime_ns == stamps[f"{rec['key']}.json"]

    # a killed run (one record never written) resumes: only the missing cell is computed
    (results / "99_grid_test" / recs[0]).unlink()
    resumed = run_grid(good, results, workers=2, processes=False, verbose=False)
    assert sorted(r["reused"] for r in resumed) == [False, True]
    assert _records(results) == recs


def test_grid_cells_are_the_chapters_own_experiments(tmp_path):
    """Chapter 5's grid cells carry the parameters of loco.run: a cell run after the chapter is reused."""
    from iadlib.chapters import loco

    cells = chapter_cells("05", "smoke")
    methods, _ = loco.methods("smoke")
    assert len(cells) == len(methods) * len(loco.PROFILES["smoke"]["categories"])
    assert {c["method"] for c in cells} == set(methods)
    [pc] = [c for c in cells if c["method"] == "patchcore"]
    loco.run("smoke", results_dir=tmp_path, device="cpu", only=["patchcore"])
    out = run_cell({**pc, "device": "cpu"}, str(tmp_path))
    assert out["reused"], "the grid would recompute what the chapter already stored"
    assert out["category"] == "flat_connector"


def test_grid_lists_cells_and_refuses_bad_input():
    cells = grid_cells(["03", "05"], "smoke", seeds=[0, 1])
    assert {c["seed"] for c in cells} == {0, 1}
    assert {c["chapter"] for c in cells} == {"03_miad", "05_loco"}
    assert all(cell_label(c).startswith(c["chapter"]) for c in cells)
    assert len(cells) == 2 * (len(chapter_cells("03", "smoke")) + len(chapter_cells("05", "smoke")))
    with pytest.raises(ConfigError, match="cannot be run as a grid.*grid chapters: 03, 05"):
        chapter_cells("01", "quick")
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        chapter_cells("03", "fast")
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        run_grid(cells[:1], workers=0)
