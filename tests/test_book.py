"""The book pipeline: papermill execution, failure handling, notebook structure, front-page summary."""

import json

import nbformat
import pandas as pd
import pytest

from iadlib.book import NOTEBOOKS, _ChapterFailed, execute_notebook, list_notebooks, run
from iadlib.errors import ConfigError
from iadlib.results import ResultStore


def _nb(path, code):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "quick"\nresults_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(code)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_execute_ok_and_failure(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _nb(src / "01_ok.ipynb", "print('profile is', profile)")
    _nb(src / "02_bad.ipynb", "raise ValueError('boom in a cell')")
    out = tmp_path / "out"
    rec = execute_notebook(src / "01_ok.ipynb", out, {"profile": "smoke"}, cwd=tmp_path)
    assert rec["status"] == "ok"
    done = nbformat.read(out / "01_ok.ipynb", as_version=4)
    text = json.dumps([c.get("outputs", []) for c in done.cells])
    assert "profile is smoke" in text
    with pytest.raises(_ChapterFailed, match="boom in a cell"):
        execute_notebook(src / "02_bad.ipynb", out, {}, cwd=tmp_path)
    assert not (out / "02_bad.ipynb").exists()  # never a half-run page
    failed = nbformat.read(out / "02_bad.failed.ipynb", as_version=4)
    assert failed.metadata["papermill"]["exception"] is True
    assert sorted(p.name for p in out.iterdir()) == ["01_ok.ipynb", "02_bad.failed.ipynb"]


def test_bad_arguments_fail_before_running():
    with pytest.raises(ConfigError, match="smoke, quick, full"):
        run(profile="fast")
    with pytest.raises(ConfigError, match="no chapter"):
        list_notebooks(["42"])


def test_every_chapter_notebook_is_parametrised_and_clean():
    nbs = list_notebooks()
    assert len(nbs) >= 3
    for path in nbs:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path
        for name in ("profile", "results_dir"):
            assert name in code[0].source, (path, name)
        assert all(not c.get("outputs") for c in code), f"{path} is committed with outputs"
    assert NOTEBOOKS.is_dir()


# --- the front page's summary table (iadlib.book.summary) -------------------------------------

def _put(store, chapter, params, metrics, stamp):
    doc = store.put(chapter, params, metrics)
    path = store.root / chapter / f"{doc['key']}.json"
    doc["provenance"]["timestamp"] = stamp
    path.write_text(json.dumps(doc))


def test_every_headline_cites_exactly_one_reported_number():
    from iadlib.book.summary import HEADLINES, reported_row
    from iadlib.results import load_reported

    rep = load_reported()
    for h in HEADLINES:
        if h.reported is None:
            continue
        row = reported_row(h.reported, rep)
        assert 0 < row["value"] <= 1 and row["source"], h
    with pytest.raises(ConfigError, match="matches 0 rows"):
        reported_row({"file": "miad.csv", "method": "no such method"}, rep)
    with pytest.raises(ConfigError, match=r"matches \d+ rows"):
        reported_row({"file": "miad.csv", "method": "PatchCore"}, rep)  # three metrics
    with pytest.raises(ConfigError, match="no column 'colour'"):
        reported_row({"colour": "red"}, rep)


def test_headline_is_the_mean_of_the_latest_records_beside_the_paper(tmp_path):
    from iadlib.book.summary import Headline, headline_rows, to_markdown

    rep = pd.DataFrame([{"paper": "P", "table": "T1", "method": "M", "dataset": "mvtec_ad", "category": "mean",
                         "metric": "image_auroc", "value": 0.9, "source": "P, T1", "note": ""}])
    spec = Headline("03_x", "3 · X", "03_x", "no_such_module", "M", {"method": "m"}, "image_auroc",
                    {"method": "M", "metric": "image_auroc"}, "ELPV for MVTec AD")
    store = ResultStore(tmp_path)
    base = {"method": "m", "dataset": "elpv", "profile": "quick", "seed": 0}
    _put(store, "03_x", {**base, "category": "mono", "model_cfg": {"image_size": 64}}, {"image_auroc": 0.5},
         "2026-01-01T00:00:00+00:00")  # stale: the same cell rerun later with another config
    _put(store, "03_x", {**base, "category": "mono", "model_cfg": {"image_size": 128}}, {"image_auroc": 0.7},
         "2026-01-02T00:00:00+00:00")
    _put(store, "03_x", {**base, "category": "poly", "model_cfg": {"image_size": 128}}, {"image_auroc": 0.8},
         "2026-01-02T00:00:00+00:00")
    _put(store, "03_x", {**base, "category": "poly", "profile": "smoke"}, {"image_auroc": 0.1},
         "2026-01-03T00:00:00+00:00")  # another profile
    _put(store, "03_x", {**base, "method": "other", "category": "poly"}, {"image_auroc": 0.2},
         "2026-01-03T00:00:00+00:00")  # another method
    df = headline_rows([spec], tmp_path, "quick", reported=rep)
    row = df.iloc[0]
    assert row["runs"] == 2 and row["ours"] == pytest.approx(0.75)
    assert row["paper"] == 0.9 and row["Δ"] == pytest.approx(-0.15)
    assert row["data (ours)"] == "elpv/mono, elpv/poly"
    assert row["substitution"] == "ELPV for MVTec AD; ours at 128 px"
    md = to_markdown(df)
    assert "| 3 · X | M | image_auroc | 0.750 | 0.900 | -0.150 | 2 |" in md
    assert "| 3 · X | M | elpv/mono, elpv/poly | ELPV for MVTec AD; ours at 128 px | mvtec_ad (mean) · P, T1 |" in md
    empty = headline_rows([spec], tmp_path / "none", "quick", reported=rep).iloc[0]
    assert empty["runs"] == 0 and empty["data (ours)"] == "not run yet" and "| — | 0.900 | — | 0 |" in to_markdown(
        headline_rows([spec], tmp_path / "none", "quick", reported=rep))


def test_a_chapter_headline_function_replaces_the_default_rows(tmp_path, monkeypatch):
    import iadlib.chapters.loco as loco
    from iadlib.book.summary import HEADLINES, chapter_headlines, write_summary

    def headline(results_dir, profile="quick"):
        return pd.DataFrame([{"chapter": "5 · LOCO", "method": "own", "metric": "au_spro", "ours": 0.5,
                              "paper": 0.6, "runs": 1}])

    monkeypatch.setattr(loco, "headline", headline, raising=False)
    df = chapter_headlines(tmp_path, "quick")
    assert list(df[df.chapter == "5 · LOCO"].method) == ["own"]
    assert len(df) == len([h for h in HEADLINES if h.module != "loco"]) + 1
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (chapters / "05_loco_ensemble.ipynb").write_text("{}")
    write_summary(chapters / "summary.md", tmp_path, "quick", chapters_dir=chapters)
    text = (chapters / "summary.md").read_text()
    assert "{doc}`5 · LOCO <chapters/05_loco_ensemble>`" in text  # linked: the executed page exists
    assert "{doc}`1 · Uninformed" not in text  # not linked: no executed notebook
