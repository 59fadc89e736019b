"""Chapter 1 (Uninformed Students): profiles, reported numbers, and the notebook in the smoke profile."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from iadlib.chapters import students as ch
from iadlib.errors import ConfigError
from iadlib.results import load_reported

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "01_uninformed_students.ipynb"


def test_profiles_and_bad_values() -> None:
    assert set(ch.PROFILES) == {"smoke", "quick", "full"}
    full = ch.PROFILES["full"]
    assert full["width"] == 1.0 and full["figure1"]["patch_sizes"] == (17, 33, 65)
    assert full["figure1"]["n_students"] == 3 and full["figure1"]["epochs"] == 100
    assert set(full["tables"]["variants"]) == set(ch.VARIANTS)
    with pytest.raises(ConfigError, match="smoke, quick, full"):
        ch.run_figure1("fast")
    with pytest.raises(ConfigError, match="valid"):
        ch.table_view(pd.DataFrame({"dataset": [], "metric": []}), "svhn")


def test_reported_tables_transcribed() -> None:
    rep = load_reported("students")
    assert list(rep.columns[:9]) == ["paper", "table", "method", "dataset", "category", "metric", "value",
                                     "source", "note"]  # fmt: skip
    assert rep["source"].str.contains("Bergmann").all()
    mn = ch.reported_table("mnist")
    cf = ch.reported_table("cifar10")
    # the per-class values average to the printed mean (checks the transcription)
    for tab in (mn, cf):
        full_rows = tab.dropna()
        per_class = full_rows.drop(columns="mean").mean(axis=1)
        assert (per_class - full_rows["mean"]).abs().max() < 6e-4
    assert mn.loc["1-NN", "mean"] == pytest.approx(0.9753)
    assert cf.loc["students k+c", "mean"] == pytest.approx(0.8196)


def test_notebook_is_thin_and_clean() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


@pytest.mark.slow
def test_notebook_runs_in_smoke_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pm = pytest.importorskip("papermill")
    monkeypatch.setenv("IADLIB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False,
        parameters={"profile": "smoke", "results_dir": str(tmp_path / "results")},
    )
    fig1 = ch.figure1_frame(tmp_path / "results", "smoke")
    assert set(fig1["scale"]) == {"17", "33", "multi"}
    assert {"au_pro", "pixel_auroc", "image_auroc"} <= set(fig1["metric"])
    tables = ch.tables_frame(tmp_path / "results", "smoke")
    assert set(tables["method"]) == {"students k+c", "1-NN", "KMeans", "OC-SVM", "l2-AE", "VAE"}
    assert tables["value"].between(0, 1).all()


def test_headline_averages_newest_records_beside_the_paper(tmp_path: Path) -> None:
    from iadlib.results import ResultStore

    store = ResultStore(tmp_path)
    base = {"protocol": "tables", "paper": ch.PAPER, "table": "Table 2", "dataset": "fashion_mnist",
            "profile": "smoke", "seed": 0}  # fmt: skip
    for cls in (0, 1):
        store.put(ch.CHAPTER, {**base, "method": "students k+c", "category": str(cls), "epochs": 1},
                  {"image_auroc": 0.1})  # fmt: skip  (an older grid's record of the same cell …)
    time.sleep(1.1)  # provenance timestamps have one-second resolution
    for cls, v in ((0, 0.8), (1, 0.9)):
        store.put(ch.CHAPTER, {**base, "method": "students k+c", "category": str(cls), "epochs": 2},
                  {"image_auroc": v})  # fmt: skip  (… is replaced by the newest one)
    store.put(ch.CHAPTER, {**base, "method": "students k+c", "category": "0", "profile": "quick"},
              {"image_auroc": 0.0})  # fmt: skip  another profile does not mix in
    h = ch.headline(tmp_path, profile="smoke")
    from iadlib.book.summary import COLUMNS

    assert set(COLUMNS) - {"chapter"} <= set(h.columns) and "chapter" in h.columns
    row = h[h["method"] == "student ensemble (k+c), Fashion-MNIST"].iloc[0]
    assert row["ours"] == pytest.approx(0.85) and row["runs"] == 2
    assert row["paper"] == pytest.approx(0.9935)  # supplement Table 2, MNIST mean, λ_k = λ_c = 1
    assert row["Δ"] == pytest.approx(0.85 - 0.9935)
    others = h[h["method"] != "student ensemble (k+c), Fashion-MNIST"]
    assert others["ours"].isna().all() and (others["runs"] == 0).all()
    assert h.loc[h["metric"] == "au_pro", "paper"].iloc[0] == pytest.approx(0.914)
    with pytest.raises(ConfigError, match="profile"):
        ch.headline(tmp_path, profile="fast")
