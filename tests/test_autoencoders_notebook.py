"""Chapter 2 notebook and chapter module: the smoke profile end to end (papermill), record reuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from iadlib.chapters import mixer_ae as ch
from iadlib.errors import ConfigError, DatasetError
from iadlib.results import ResultStore

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "02_mixer_ae.ipynb"


def test_notebook_is_committed_clean_and_parameterised():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)


def test_chapter_rejects_unknown_choices():
    with pytest.raises(ConfigError, match="valid: smoke, quick, full"):
        ch.load_benchmark("tiny")
    with pytest.raises(ConfigError, match="valid: baseline"):
        ch.model_config("CO+MIX", "smoke")
    with pytest.raises(DatasetError, match="data_root"):
        ch.load_benchmark("full", data_root=str(REPO / "no_such_folder"))


@pytest.mark.slow
def test_notebook_smoke_profile(tmp_path):
    out = tmp_path / "out.ipynb"
    res = tmp_path / "results"
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", str(NOTEBOOK), str(out),
           "-p", "profile", "smoke", "-p", "results_dir", str(res)]  # fmt: skip
    # one thread: on a small shared CI machine two OpenMP threads per process oversubscribe the cores
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads(out.read_text())
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
    )  # fmt: skip
    assert "CO+DE+MIX - AE (MSSIM)" in text and "ENSEMBLE" in text and "overall performance" in text
    assert "paper: Ours MIXER L2 (MVTec AD)" in text and "flags every test image: 0.667" in text
    n_png = sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))
    assert n_png >= 5  # Table 3 bars, confusion matrices, Figure 3 (Mixer and baseline), reconstructions
    # one record per variant plus the ensemble, each with the class averages and per-category values
    frame = ResultStore(res).frame(ch.CHAPTER)
    assert set(frame["method"]) == set(ch.VARIANTS) | {ch.ENSEMBLE}
    f1 = frame[frame["metric"] == "f1"]
    per_cat = frame[frame["metric"].str.startswith("f1/")]
    for _, row in f1.iterrows():
        vals = per_cat[per_cat["key"] == row["key"]]["value"]
        assert len(vals) == 2 and row["value"] == pytest.approx(vals.mean())
    # the confusion matrix (from the stored predictions) agrees with the recorded per-category accuracy
    recs = ch.stored("smoke", results_dir=str(res))
    for v in ch.MIXER_VARIANTS:
        counts = ch.classifier_confusion(recs[v], normalize=False)
        m = recs[v]["metrics"]
        assert counts.values.sum() == recs[v]["extra"]["n_test"]
        for cat in counts.index:
            assert counts.loc[cat, cat] / counts.loc[cat].sum() == pytest.approx(m[f"class_acc/{cat}"])
        p = np.load(recs[v]["extra"]["predictions"])
        assert ch.classifier_f1(recs[v]) == pytest.approx(f1_score(p["true_cat"], p["pred_cat"], average="macro"))
    head = ch.headline(str(res), profile="smoke")
    cls = head[head["metric"] == "mixer classifier F1 (macro)"]
    assert len(cls) == len(ch.MIXER_VARIANTS) and (cls["paper"] == 0.99).all()
    with pytest.raises(ConfigError, match="not a Mixer"):
        ch.classifier_confusion(recs["baseline"])
    # rerunning reuses the finished records (same keys, no retraining)
    again = ch.run("smoke", results_dir=str(res))
    assert {r["key"] for r in again.values()} == set(frame["key"])
