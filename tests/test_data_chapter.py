"""The datasets chapter: records, tables beside the reported numbers, figures, notebook smoke run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from iadlib.chapters import datasets as C
from iadlib.errors import ConfigError
from iadlib.results import REPORTED_DIR

REPO = Path(__file__).resolve().parents[1]


def test_reported_csv_is_well_formed():
    df = pd.read_csv(REPORTED_DIR / "datasets.csv")
    assert list(df.columns) == [
        "paper",
        "table",
        "method",
        "dataset",
        "category",
        "metric",
        "value",
        "source",
        "note",
    ]
    assert df["source"].notna().all() and (df["value"] > 0).all()
    mv = df[df["dataset"] == "mvtec_ad"].pivot_table(index="category", columns="metric", values="value")
    assert len(mv) == 16  # 15 categories + the total row of Table 5.1
    # the transcribed per-category numbers add up to the table's own totals
    assert (mv.drop(index="all").sum() == mv.loc["all"]).all()


def test_chapter_smoke_records_and_tables(tmp_path):
    res, data = tmp_path / "res", tmp_path / "data"
    out = C.run("smoke", results_dir=str(res), data_root=str(data))
    skipped = out.pop("skipped")
    assert skipped == {}
    assert set(out) == {("synth_textures", "brick"), ("synth_loco", "flat_connector"), ("digits", "0")}
    files = sorted((res / "datasets").glob("*.json"))
    assert len(files) == 3
    counts = C.counts_table(str(res), profile="smoke").set_index(["dataset", "category"])
    tex = out[("synth_textures", "brick")]
    row = counts.loc[("synth_textures", "brick")]
    assert row["n_train"] == len(tex.train) == 4
    assert row["n_test_anomalous"] == int(tex.test.labels.sum()) == 7
    assert row["image"] == "64×64×3" and bool(row["masks"])
    loco = counts.loc[("synth_loco", "flat_connector")]
    assert (loco["n_validation"], loco["n_test_normal"], loco["n_test_anomalous"]) == (1, 2, 4)
    # a second run reuses the records (same files, untouched)
    stamps = {f: f.stat().st_mtime_ns for f in files}
    C.run("smoke", results_dir=str(res), data_root=str(data))
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    rec = json.loads(files[0].read_text())
    assert rec["params"]["method"] == "loader" and "build_seconds" in rec["extra"]
    table = C.mvtec_vs_synth(str(res), profile="smoke")
    assert table.loc[("MVTec AD (reported)", "carpet"), "n_train"] == 280
    assert table.loc[("synth_textures (this book)", "brick"), "n_test_anomalous"] == 7
    comp = C.reported_comparison(str(res))
    assert {"coil100", "mtd", "elpv"} <= set(comp["dataset"]) and comp["source"].notna().all()
    stats = C.defect_statistics(out)
    assert len(stats) == 7 and set(stats["defect"]) == set(C.TEXTURE_DEFECTS)
    regions = C.loco_region_table(out)
    assert (regions["median_saturation_px"] <= regions["median_area_px"]).all()
    one = C.one_class_table(out)
    assert one.loc[0, "test normal"] + one.loc[0, "test anomalous"] > one.loc[0, "train (normal)"]
    import matplotlib.pyplot as plt

    for fig in (C.texture_gallery(out), C.loco_gallery(out), C.defect_size_figure(stats)):
        assert fig.axes
        plt.close(fig)
    assert C.elpv_gallery(out) is None
    with pytest.raises(ConfigError, match="smoke, quick, full"):
        C.run("fast", results_dir=str(res))


@pytest.mark.slow
def test_notebook_smoke(tmp_path):
    pm = pytest.importorskip("papermill")
    nb = REPO / "notebooks" / "00_datasets.ipynb"
    src = json.loads(nb.read_text())
    assert all(not c.get("outputs") for c in src["cells"] if c["cell_type"] == "code")  # committed clean
    first = next(c for c in src["cells"] if c["cell_type"] == "code")
    assert "parameters" in first["metadata"].get("tags", [])
    out = tmp_path / "out.ipynb"
    params = {"profile": "smoke", "results_dir": str(tmp_path / "res"), "data_root": str(tmp_path / "d")}
    pm.execute_notebook(str(nb), str(out), kernel_name="python3", progress_bar=False, parameters=params)
    done = json.loads(out.read_text())
    images = sum("image/png" in o.get("data", {}) for c in done["cells"] for o in c.get("outputs", []))
    assert images >= 3
    shutil.rmtree(tmp_path / "d", ignore_errors=True)
