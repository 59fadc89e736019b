"""Results store: atomic records with provenance, reuse, reported-vs-reproduced tables."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from iadlib.data import Split
from iadlib.experiment import run_experiment
from iadlib.results import ResultStore, compare_table, experiment_key, load_reported
from iadlib.utils import atomic_path


def test_put_get_frame(tmp_path):
    store = ResultStore(tmp_path)
    params = {"method": "m", "dataset": "d", "category": "c", "seed": 0}
    assert store.get("ch", params) is None
    doc = store.put("ch", params, {"image_auroc": 0.75, "pixel_auroc": 0.5}, {"fit_seconds": 1.5})
    assert doc["provenance"]["commit"] and doc["provenance"]["versions"]["torch"]
    assert store.get("ch", params)["metrics"]["image_auroc"] == 0.75
    assert store.has("ch", params) and not store.has("ch", {**params, "seed": 1})
    df = store.frame("ch")
    assert set(df.metric) == {"image_auroc", "pixel_auroc"} and (df.x_fit_seconds == 1.5).all()
    assert experiment_key(params) == experiment_key(dict(reversed(list(params.items()))))


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "rec.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["rec.json"]


def test_run_experiment_records_and_reuses(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(90, 110, (16, 64, 64), dtype=np.uint8)
    test = base[:8].copy()
    masks = np.zeros((8, 64, 64), bool)
    test[4:, 20:44, 20:44] = 255
    masks[4:, 20:44, 20:44] = True
    labels = np.r_[np.zeros(4, int), np.ones(4, int)]
    from iadlib.data.base import ADDataset

    ds = ADDataset("toy", "c", Split.from_arrays(base[8:]), Split.from_arrays(test, labels, masks))
    store = ResultStore(tmp_path)
    cfg = {"image_size": 64, "coreset_ratio": 1.0}
    rec = run_experiment("t", "patchcore", ds, cfg, store=store, device="cpu")
    m = rec["metrics"]
    assert m["image_auroc"] == 1.0 and m["pixel_auroc"] > 0.8 and 0 < m["au_pro"] <= 1
    assert rec["extra"]["n_train"] == 8 and rec["extra"]["predict_ms_per_image"] > 0
    with np.load(rec["extra"]["predictions"]) as z:
        assert z["scores"].shape == (8,) and z["example_maps"].shape[1:] == (64, 64)
    again = run_experiment("t", "patchcore", ds, cfg, store=store, device="cpu")
    assert again["provenance"]["timestamp"] == rec["provenance"]["timestamp"]  # reused, not rerun
    assert json.loads((tmp_path / "t" / f"{rec['key']}.json").read_text())["key"] == rec["key"]


def test_reported_files_are_cited_and_compare_table():
    rep = load_reported()
    assert {"paper", "table", "method", "metric", "value", "source"} <= set(rep.columns)
    assert rep["source"].notna().all()
    ours = pd.DataFrame({"method": ["PatchCore"], "metric": ["image_auroc"], "value": [0.95]})
    theirs = rep[(rep.file == "miad.csv") & (rep.metric == "image_auroc")]
    t = compare_table(ours, theirs, on=["method", "metric"], substitution="ELPV for MVTec AD")
    row = t[t.method == "PatchCore"].iloc[0]
    assert row["reported"] == pytest.approx(0.992) and row["Δ"] == pytest.approx(0.95 - 0.992)
    assert (t.substitution == "ELPV for MVTec AD").all()
