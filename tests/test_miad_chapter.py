"""Chapter 3 end to end: the notebook executes with tiny parameters and its grid is recorded."""

import nbformat
import pytest

from iadlib.book import NOTEBOOKS, execute_notebook
from iadlib.chapters import miad
from iadlib.errors import ConfigError
from iadlib.results import ResultStore


def test_plan_validates_profile_and_methods():
    with pytest.raises(ConfigError, match="smoke, quick, full"):
        miad.plan("fast")
    with pytest.raises(ConfigError, match="valid:"):
        miad.plan("smoke", ["patchcoer"])
    datasets, chosen, _ = miad.plan("quick")
    assert set(chosen) == set(miad.METHODS)  # all six methods are implemented and registered
    assert ("elpv", {"category": "mono"}) in datasets


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
    assert set(df.method) == set(miad.METHODS)
    assert df[df.metric == "image_auroc"].value.between(0, 1).all()
