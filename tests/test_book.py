"""The book pipeline: papermill execution, failure handling, notebook structure."""

import json

import nbformat
import pytest

from iadlib.book import NOTEBOOKS, _ChapterFailed, execute_notebook, list_notebooks, run
from iadlib.errors import ConfigError


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
