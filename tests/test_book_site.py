"""The rendered site, checked like a reader: build a tiny book, open its pages in headless Chromium.

Two tiny notebooks (a pandas table, a seaborn figure, display math, a cross-reference from one page
to the other, a citation) are executed with the book runner (papermill), put in a temporary copy of
the book skeleton (``_config.yml``, ``book/_mathjax``, ``book/references.bib``) with a two-page
toc, and built with Jupyter Book 1.x exactly as ``python -m iadlib.book build`` does (``-W -n
--keep-going``: any Sphinx warning — an unknown reference, a missing image — fails the build).
Debian's ``chromium`` then renders the pages offline; the test reads the DOM after JavaScript ran
and asserts what a reader would see: the table, the figure (every ``<img>`` resolves to a file),
typeset math (MathJax's ``mjx-container``), resolved cross-references and citations.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from iadlib.book import execute_notebook
from iadlib.book.summary import HEADLINES, reported_row, write_summary
from iadlib.results import REPO_ROOT, ResultStore

LOCO_PC = next(h for h in HEADLINES if h.chapter == "05_loco" and h.method == "PatchCore")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does it as root)"
)

PARAMS = 'profile = "quick"\nresults_dir = None'

NB_TABLE = [
    ("markdown", "(sec-tiny-results)=\n# Tiny results\n\nAn anomaly score table and its figure "
                 "(PatchCore {cite}`roth2022patchcore`). The AUROC is\n\n"
                 "$$\n\\mathrm{AUROC} = P\\left(s(x_a) > s(x_n)\\right)\n$$\n"),
    ("code", "import pandas as pd\n"
             "df = pd.DataFrame({'method': ['patchcore', 'draem'], 'image_auroc': [0.91, 0.84]})\n"
             "df.style.format(precision=2).set_caption('tiny-results-table')"),
    ("code", "import matplotlib.pyplot as plt\nimport seaborn as sns\n"
             "fig, ax = plt.subplots(figsize=(3, 2))\n"
             "sns.barplot(data=df, x='method', y='image_auroc', ax=ax)\nplt.show()"),
]
NB_XREF = [
    ("markdown", "# Tiny cross-references\n\nThe numbers are in {ref}`sec-tiny-results` "
                 "(see also {doc}`01_tiny_table`). Inline math: $\\sum_i w_i = 1$."),
    ("code", "import pandas as pd\npd.DataFrame({'dataset': ['elpv'], 'n_test': [42]})"),
]


def _write_nb(path: Path, cells: list[tuple[str, str]]) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    new = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [params] + [new[kind](src) for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _book(tmp: Path) -> Path:
    """A temporary book: the repo's config and static files, two executed notebooks, a toc."""
    root = tmp / "book_root"
    (root / "book").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "_config.yml", root / "_config.yml")
    shutil.copytree(REPO_ROOT / "book" / "_mathjax", root / "book" / "_mathjax")
    shutil.copy(REPO_ROOT / "book" / "references.bib", root / "book" / "references.bib")
    (root / "book" / "intro.md").write_text(
        "# Tiny book\n\nResults: {ref}`sec-tiny-results`.\n\n"
        "```{include} chapters/summary.md\n```\n\n"
        "```{bibliography}\n:all:\n```\n"
    )
    # the front page's summary, written from a store holding one PatchCore record (chapter 5, whose
    # module has no headline() of its own, so the row comes from summary.HEADLINES)
    store = ResultStore(tmp / "results")
    store.put("05_loco", {"table": LOCO_PC.where["table"], "method": "patchcore", "dataset": "synth_loco",
                          "category": "flat_connector", "profile": "quick", "seed": 0}, {"image_auroc": 0.8765})
    write_summary(root / "book" / "chapters" / "summary.md", tmp / "results", "quick", root / "book" / "chapters")
    src = tmp / "src"
    src.mkdir()
    _write_nb(src / "01_tiny_table.ipynb", NB_TABLE)
    _write_nb(src / "02_tiny_xref.ipynb", NB_XREF)
    for nb in sorted(src.glob("*.ipynb")):
        execute_notebook(nb, root / "book", {"profile": "smoke"}, timeout=120, cwd=tmp)
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: book/01_tiny_table\n  - file: book/02_tiny_xref\n"
    )
    return root


class _Dom(HTMLParser):
    """Collects tags, attributes and visible text of a dumped DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


def _chromium(args: list[str], profile_dir: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile_dir}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _dump(page: Path, profile_dir: Path) -> _Dom:
    proc = _chromium(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()], profile_dir)
    assert proc.returncode == 0 and "<html" in proc.stdout, proc.stderr[-2000:]
    dom = _Dom()
    dom.feed(proc.stdout)
    dom.html = proc.stdout  # type: ignore[attr-defined]
    return dom


def _check_images(dom: _Dom, page: Path) -> list[Path]:
    found = []
    for img in dom.find("img"):
        src = img.get("src", "")
        assert src, f"{page.name}: an <img> without src"
        url = urlparse(src)
        if url.scheme == "data":
            continue
        assert url.scheme in ("", "file"), f"{page.name}: image from the network {src}"
        path = Path(unquote(url.path)) if url.scheme == "file" else (page.parent / unquote(url.path)).resolve()
        assert path.is_file() and path.stat().st_size > 0, f"{page.name}: broken image {src}"
        found.append(path)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    root = _book(tmp)
    exe = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run(
        [str(exe if exe.exists() else "jupyter-book"), "build", str(root), "-W", "-n", "--keep-going"],
        cwd=root, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    )
    assert proc.returncode == 0, "jupyter-book build failed (a Sphinx warning is an error):\n" + (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )
    return root / "_build" / "html", tmp


def test_pages_show_tables_figures_math_and_resolved_references(site):
    html, tmp = site
    profile = tmp / "chromium-profile"
    table = _dump(html / "book" / "01_tiny_table.html", profile)
    # the pandas table: a real <table> holding the DataFrame's values
    assert table.find("table"), "no <table> on the results page"
    text = " ".join(table.text)
    assert "patchcore" in text and "0.91" in text and "tiny-results-table" in text
    # the seaborn figure: a PNG written next to the page and displayed
    imgs = _check_images(table, html / "book" / "01_tiny_table.html")
    pngs = [p for p in imgs if p.suffix == ".png" and "_images" in p.parts]
    assert pngs, f"no figure image on the results page: {imgs}"
    # MathJax ran from the local copy and typeset the display equation
    assert table.find("mjx-container"), "MathJax did not render (no mjx-container)"
    assert "tex-svg.js" in table.html  # type: ignore[attr-defined]
    # the citation resolved to the bibliography
    assert "Roth" in text, "citation not rendered"

    xref = _dump(html / "book" / "02_tiny_xref.html", profile)
    _check_images(xref, html / "book" / "02_tiny_xref.html")
    links = {a.get("href", "") for a in xref.find("a", "reference")}
    assert any(h.startswith("01_tiny_table.html#sec-tiny-results") for h in links), links
    assert xref.find("mjx-container"), "inline math not rendered"
    assert xref.find("table")

    intro = _dump(html / "book" / "intro.html", profile)
    _check_images(intro, html / "book" / "intro.html")
    # the front page's summary table: every headline, ours from the store beside the paper's
    visible = " ".join(intro.text)
    assert len(intro.find("table")) == 2  # headline numbers; data and sources
    assert f"{0.8765:.3f}" in visible  # the stored PatchCore record
    paper = reported_row(LOCO_PC.reported)["value"]
    assert f"{paper:.3f}" in visible and f"{0.8765 - paper:+.3f}" in visible
    assert visible.count("not run yet") == len(HEADLINES) - 1
    assert "synth_loco/flat_connector" in visible
    assert any(a.get("href", "").startswith("01_tiny_table.html#sec-tiny-results") for a in intro.find("a"))
    for dom in (table, xref, intro):
        visible = " ".join(dom.text)
        assert "??" not in visible, "an unresolved reference is shown as ??"
        assert not re.search(r"\{(ref|doc|cite|numref)\}", visible), "a MyST role was not resolved"


def test_screenshot(site):
    html, tmp = site
    shot = tmp / "page.png"
    proc = _chromium(["--virtual-time-budget=5000", "--window-size=1200,900", f"--screenshot={shot}",
                      (html / "book" / "01_tiny_table.html").as_uri()], tmp / "chromium-profile-2")
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    im = Image.open(shot).convert("L")
    assert im.size == (1200, 900)
    lo, hi = im.getextrema()
    assert hi - lo > 100, "the screenshot is blank"


def test_image_check_catches_a_broken_image(tmp_path):
    page = tmp_path / "page.html"
    (tmp_path / "ok.png").write_bytes(b"\x89PNG not empty")
    dom = _Dom()
    dom.feed('<html><body><img src="ok.png"><img src="data:image/png;base64,AAAA"></body></html>')
    assert _check_images(dom, page) == [(tmp_path / "ok.png").resolve()]
    dom.feed('<img src="../_images/missing.png">')
    with pytest.raises(AssertionError, match="broken image"):
        _check_images(dom, page)
