"""The metrics-primer chapter: its numbers say what the chapter claims, and the notebook runs."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from iadlib.chapters import metrics_primer as P  # noqa: E402
from iadlib.errors import ConfigError  # noqa: E402
from iadlib.results import ResultStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _value(df, **sel) -> float:
    m = np.ones(len(df), bool)
    for k, v in sel.items():
        m &= (df[k] == v).to_numpy()
    assert m.sum() == 1, sel
    return float(df["value"][m].iloc[0])


def test_chapter_claims_hold_in_smoke_profile(tmp_path):
    out = P.run_all("smoke", seed=0, results_dir=str(tmp_path))
    img = out["image"]
    hi, lo = max(P.PROFILES["smoke"]["rates"]), min(P.PROFILES["smoke"]["rates"])
    # AUROC barely moves with the anomaly rate; AUPR falls towards the chance level
    assert abs(_value(img, metric="image_auroc", rate=hi) - _value(img, metric="image_auroc", rate=lo)) < 0.05
    assert _value(img, metric="image_aupr", rate=lo) < _value(img, metric="image_aupr", rate=hi) - 0.2
    assert _value(img, metric="chance_aupr", rate=lo) == pytest.approx(lo, abs=0.01)
    px = out["pixel"]
    # pixel AUROC favours the large defect; AU-PRO weighs both regions equally (≈ half found each)
    large = {m: _value(px, map="large only", metric=m) for m in ("pixel_auroc", "au_pro")}
    small = {m: _value(px, map="small only", metric=m) for m in ("pixel_auroc", "au_pro")}
    assert large["pixel_auroc"] > small["pixel_auroc"] + 0.3
    assert abs(large["au_pro"] - small["au_pro"]) < 0.1
    # covering a quarter of the large defect saturates its sPRO
    assert _value(px, map="quarter of large + small", metric="au_spro") > 0.95
    assert _value(px, map="quarter of large + small", metric="au_pro") < 0.8
    cal = out["calibration"]
    raw = _value(cal, method="raw score, min–max scaled", metric="ece")
    for name in P.CALIBRATORS:
        assert _value(cal, method=name, metric="ece") < 0.5 * raw
    # records were written with provenance and are reused
    store = ResultStore(tmp_path)
    recs = list(store.records(P.CHAPTER))
    assert recs and all("commit" in r["provenance"] for r in recs)
    n_files = len(list((tmp_path / P.CHAPTER).glob("*.json")))
    P.run_all("smoke", seed=0, results_dir=str(tmp_path))
    assert len(list((tmp_path / P.CHAPTER).glob("*.json"))) == n_files


def test_separated_case_and_unknown_profile():
    sep = P.separated_case(0)
    assert sep["separated"]
    step = sep["curves"][sep["curves"]["method"].str.startswith("Platt, 0/1")]["probability"]
    bounded = sep["curves"][sep["curves"]["method"] == "bounded sigmoid"]["probability"]
    assert step.max() > 1 - 1e-6 and step.min() < 1e-6
    lo, hi = sep["bounds"]
    assert bounded.min() >= lo - 1e-12 and bounded.max() <= hi + 1e-12
    with pytest.raises(ConfigError, match="valid: smoke, quick, full"):
        P.image_level("fast")


def test_notebook_smoke(tmp_path):
    papermill = pytest.importorskip("papermill")
    nb = ROOT / "notebooks" / "00_metrics.ipynb"
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(nb), str(out), parameters={"profile": "smoke", "results_dir": str(tmp_path / "res")},
        kernel_name="python3", progress_bar=False,
    )
    import nbformat

    done = nbformat.read(out, as_version=4)
    outputs = [o for c in done.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
    assert not any(o.get("output_type") == "error" for o in outputs)
    # committed without outputs, first code cell tagged "parameters"
    src = nbformat.read(nb, as_version=4)
    code = [c for c in src.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code)
