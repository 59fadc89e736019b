"""The front page's summary: every chapter's headline result beside the paper's, from the results store.

Nothing here is typed in: ``ours`` is the mean of the matching records in the results store
(``results/<chapter>/*.json``, one per experiment cell), ``paper`` is one cited row of
``book/reported/<file>.csv``. ``python -m iadlib.book build`` writes the table to
``book/chapters/summary.md`` (a build output, beside the executed notebooks) before Jupyter Book
runs; ``book/intro.md`` includes it. ``python -m iadlib.book summary`` prints it.

A chapter module may define ``headline(results_dir[, profile])`` returning a DataFrame with the
columns of :data:`COLUMNS`; it then replaces the rows of :data:`HEADLINES` for that chapter.
When a record cell was rerun with other settings (the chapter's grid changed), only its newest
record counts (one per method × dataset × category × seed × table, by provenance timestamp).
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..results import REPORTED_DIR, ResultStore, load_reported

COLUMNS = ["chapter", "method", "data (ours)", "metric", "ours", "paper", "Δ", "paper's data", "source",
           "substitution", "runs"]  # what headline_rows() and a chapter's headline() return


@dataclass(frozen=True)
class Headline:
    """One headline row: which records to average, which reported row to put beside them."""

    chapter: str  # results store folder (the chapter module's CHAPTER)
    title: str  # shown in the table
    doc: str  # executed notebook stem (book/chapters/<doc>.ipynb), linked when present
    module: str  # iadlib.chapters.<module>, asked for a headline() first
    method: str  # shown in the table
    where: dict[str, Any]  # exact matches on the records' params
    metric: str  # key of the records' metrics
    reported: dict[str, str] | None  # exact matches on load_reported() columns, one row; None = not reported
    substitution: str  # what stood in for the paper's data/backbone (prose, not a number)
    data: str | None = None  # our data's name when the records do not carry a dataset
    identity: tuple[str, ...] = field(default=("method", "dataset", "category", "seed", "table", "tag"))


_LOCO_TABLE = "§6.1 LOCO benchmark / §6.2 ensemble"
_MIXER = "CO+DE+MIX - AE (L2)"

HEADLINES: list[Headline] = [
    Headline("01_uninformed_students", "1 · Uninformed Students", "01_uninformed_students", "students",
             "student ensemble (k+c), Fashion-MNIST",
             {"table": "Table 2", "method": "students k+c", "dataset": "fashion_mnist"},
             "image_auroc",
             {"file": "students.csv", "table": "Table 2", "method": "students k+c", "dataset": "mnist",
              "category": "mean", "metric": "image_auroc"},
             "Fashion-MNIST one-class for MNIST; EfficientNet-Lite0 teacher"),
    Headline("01_uninformed_students", "1 · Uninformed Students", "01_uninformed_students", "students",
             "student ensemble (k+c), digits", {"table": "Table 2", "method": "students k+c", "dataset": "digits"},
             "image_auroc",
             {"file": "students.csv", "table": "Table 2", "method": "students k+c", "dataset": "mnist",
              "category": "mean", "metric": "image_auroc"},
             "scikit-learn digits (8×8) one-class for MNIST"),
    Headline("02_mixer_ae", "2 · Mixer-AE", "02_mixer_ae", "mixer_ae", _MIXER,
             {"table": "Table 3", "method": _MIXER}, "f1",
             {"file": "mixer_ae.csv", "table": "Table 3", "method": _MIXER, "metric": "F"},
             "ELPV mono/poly + synthetic textures for the 15 MVTec AD classes; one model for all",
             data="multi-category benchmark", identity=("method", "seed", "table")),
    Headline("03_miad", "3 · MIAD baselines", "03_miad_baselines", "miad", "PatchCore",
             {"method": "patchcore"}, "image_auroc",
             {"file": "miad.csv", "method": "PatchCore", "dataset": "mvtec_ad", "metric": "image_auroc"},
             "ELPV + synthetic textures for MVTec AD; EfficientNet-Lite0 for WideResNet-50"),
    Headline("03_miad", "3 · MIAD baselines", "03_miad_baselines", "miad", "Reverse Distillation",
             {"method": "reverse_distillation"}, "image_auroc",
             {"file": "miad.csv", "method": "RD", "dataset": "mvtec_ad", "metric": "image_auroc"},
             "ELPV + synthetic textures for MVTec AD; EfficientNet-Lite0 for WideResNet-50"),
    Headline("04_algan", "4 · ALGAN", "04_algan", "algan", "ALGAN-image", {"table": "5.2", "method": "algan_image"},
             "image_auroc",
             {"file": "algan.csv", "table": "Table 5.2", "method": "ALGAN-image", "category": "mean",
              "metric": "image_auroc"},
             "ELPV + synthetic textures for MVTec AD (256 px in the thesis)"),
    Headline("04_algan", "4 · ALGAN", "04_algan", "algan", "ALGAN-feature",
             {"table": "5.3", "method": "algan_feature"}, "image_auroc",
             {"file": "algan.csv", "table": "Table 5.3", "method": "ALGAN-feature", "category": "mean",
              "metric": "image_auroc"},
             "ELPV + synthetic textures for MVTec AD; EfficientNet-Lite0 features"),
    Headline("05_loco", "5 · LOCO ensemble", "05_loco_ensemble", "loco", "PatchCore",
             {"table": _LOCO_TABLE, "method": "patchcore"}, "image_auroc",
             {"file": "loco.csv", "table": "README LOCO table", "method": "patchcore",
              "metric": "image_auroc_mean"},
             "synthetic LOCO (flat connector, compartments) for MVTec LOCO AD"),
    Headline("05_loco", "5 · LOCO ensemble", "05_loco_ensemble", "loco", "feature-level ensemble",
             {"table": _LOCO_TABLE, "method": "feature_ensemble"}, "image_auroc", None,
             "synthetic LOCO for MVTec LOCO AD (the thesis draft gives no number for its ensemble)"),
]


def reported_row(spec: dict[str, str], reported: pd.DataFrame | None = None) -> pd.Series:
    """The single row of ``book/reported/*.csv`` that ``spec`` selects (ConfigError unless exactly one)."""
    rep = load_reported() if reported is None else reported
    sel = pd.Series(True, index=rep.index)
    for col, val in spec.items():
        if col not in rep.columns:
            raise ConfigError(f"reported numbers have no column {col!r} (in {REPORTED_DIR}); columns: "
                              f"{', '.join(rep.columns)}")
        sel &= rep[col].astype(str) == str(val)
    hits = rep[sel]
    if len(hits) != 1:
        raise ConfigError(f"reported row {spec} matches {len(hits)} rows in {REPORTED_DIR}, expected exactly one")
    return hits.iloc[0]


def _latest(records: Iterable[dict[str, Any]], identity: tuple[str, ...]) -> list[dict[str, Any]]:
    """One record per cell identity: the newest (the chapter's current grid)."""
    best: dict[tuple, dict[str, Any]] = {}
    for r in records:
        key = tuple(str(r["params"].get(k)) for k in identity)
        stamp = r.get("provenance", {}).get("timestamp", "")
        if key not in best or stamp >= best[key].get("provenance", {}).get("timestamp", ""):
            best[key] = r
    return list(best.values())


def _data_label(recs: list[dict[str, Any]], fallback: str | None) -> str:
    if fallback:
        return fallback
    cells = sorted({(str(r["params"].get("dataset")), str(r["params"].get("category"))) for r in recs})
    names = sorted({d for d, _ in cells})
    if len(cells) <= 3:
        return ", ".join(f"{d}/{c}" if c != "None" else d for d, c in cells)
    return ", ".join(names) + f" ({len(cells)} categories)"


def _sizes(recs: list[dict[str, Any]]) -> str:
    """``"; ours at 64/128 px"`` from the records' image sizes (model config or extra)."""
    sizes = set()
    for r in recs:
        size = (r["params"].get("model_cfg") or {}).get("image_size") or r.get("extra", {}).get("image_size")
        if size:
            sizes.add(int(size))
    return f"; ours at {'/'.join(map(str, sorted(sizes)))} px" if sizes else ""


def headline_rows(
    specs: list[Headline] | None = None,
    results_dir: str | Path | None = None,
    profile: str = "quick",
    reported: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The summary table: one row per headline, ``ours`` averaged over the store's matching records."""
    store = ResultStore(results_dir)
    rep = load_reported() if reported is None else reported
    rows = []
    for h in specs if specs is not None else HEADLINES:
        recs = [
            r for r in store.records(h.chapter) if str(r["params"].get("profile")) == profile
            and all(r["params"].get(k) == v for k, v in h.where.items())
            and r["metrics"].get(h.metric) is not None
        ]
        recs = _latest(recs, h.identity)
        values = [float(r["metrics"][h.metric]) for r in recs]
        ours = sum(values) / len(values) if values else math.nan
        if h.reported is not None:
            row = reported_row(h.reported, rep)
            paper, source = float(row["value"]), f"{row['paper']}, {row['table']}"
            paper_data = str(row["dataset"]) + (
                f" ({row['category']})" if isinstance(row.get("category"), str) and row["category"] else "")
        else:
            paper, source, paper_data = math.nan, "not reported", ""
        rows.append({
            "chapter": h.title, "doc": h.doc, "method": h.method,
            "data (ours)": _data_label(recs, h.data) if recs else "not run yet",
            "metric": h.metric, "ours": ours, "paper": paper, "Δ": ours - paper,
            "paper's data": paper_data, "source": source, "substitution": h.substitution + _sizes(recs),
            "runs": len(recs),
            "commits": ", ".join(sorted({r.get("provenance", {}).get("commit", "?") for r in recs})),
        })
    return pd.DataFrame(rows)


def chapter_headlines(results_dir: str | Path | None = None, profile: str = "quick") -> pd.DataFrame:
    """:data:`HEADLINES`, with the rows of chapters whose module defines ``headline()`` replaced by its own."""
    parts = []
    by_module: dict[str, list[Headline]] = {}
    for h in HEADLINES:
        by_module.setdefault(h.module, []).append(h)
    for module, specs in by_module.items():
        fn = _module_headline(module)
        if fn is None:
            parts.append(headline_rows(specs, results_dir, profile))
            continue
        kwargs = {"profile": profile} if "profile" in inspect.signature(fn).parameters else {}
        df = fn(results_dir, **kwargs)
        missing = [c for c in ("chapter", "method", "metric", "ours", "paper") if c not in df.columns]
        if missing:
            raise ConfigError(f"iadlib.chapters.{module}.headline() lacks columns {missing}")
        parts.append(df.assign(doc=specs[0].doc))
    return pd.concat(parts, ignore_index=True)


def _module_headline(module: str) -> Callable[..., pd.DataFrame] | None:
    try:
        mod = importlib.import_module(f"iadlib.chapters.{module}")
    except ImportError:
        return None
    return getattr(mod, "headline", None)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.3f}"
    return str(v).replace("|", "\\|")


#: the headline table (narrow, numbers) and the provenance table (which data stood in, which source)
MAIN_COLUMNS = ["chapter", "method", "metric", "ours", "paper", "Δ", "runs"]
DATA_COLUMNS = ["chapter", "method", "data (ours)", "substitution", "paper's data · source"]


def _md_table(df: pd.DataFrame, cols: list[str], chapters_dir: Path | None) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = []
        for c in cols:
            v = r.get(c, "")
            if c == "Δ" and isinstance(v, float) and not math.isnan(v):
                cells.append(f"{v:+.3f}")
            elif c == "runs" and isinstance(v, float) and not math.isnan(v):
                cells.append(str(int(v)))  # a count (pandas makes it float when a row lacks it)
            elif c == "chapter" and chapters_dir is not None and (chapters_dir / f"{r.get('doc')}.ipynb").is_file():
                cells.append(f"{{doc}}`{_fmt(v)} <chapters/{r['doc']}>`")
            else:
                cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _paper_cell(r: pd.Series) -> str:
    data, source = r.get("paper's data", ""), r.get("source", "")
    return f"{data} · {source}" if isinstance(data, str) and data else str(source)


def to_markdown(df: pd.DataFrame, chapters_dir: Path | None = None, profile: str = "quick") -> str:
    """Two MyST tables (headline numbers; data and sources); chapter names link to their page when the
    executed notebook is in ``chapters_dir``."""
    commits = sorted({c.strip() for cs in df.get("commits", pd.Series(dtype=str)).dropna() for c in cs.split(",")
                      if c.strip()})
    runs = int(df["runs"].sum()) if "runs" in df else 0
    foot = (f"*Profile `{profile}`; {runs} stored experiment records"
            + (f" from commit(s) {', '.join(f'`{c}`' for c in commits)}" if commits else "")
            + ". `ours` is the mean over the records' datasets, categories and seeds; `paper` is the cited "
            "row of `book/reported/`; Δ = ours − paper. Generated by `python -m iadlib.book build` from "
            "`results/` — rerun a chapter and rebuild to update it.*")
    data = ("What stood in for the papers' data, and where each paper number comes from "
            "(the citation is in `book/reported/`):")
    return "\n".join([*_md_table(df, MAIN_COLUMNS, chapters_dir), "", foot, "", data, "",
                      *_md_table(df.assign(**{"paper's data · source": df.apply(_paper_cell, axis=1)}),
                                 DATA_COLUMNS, None)]) + "\n"


def write_summary(
    path: str | Path,
    results_dir: str | Path | None = None,
    profile: str = "quick",
    chapters_dir: Path | None = None,
) -> pd.DataFrame:
    """Write the front page's summary table (Markdown, atomically); returns its rows."""
    from ..utils import atomic_write_text

    df = chapter_headlines(results_dir, profile)
    atomic_write_text(Path(path), to_markdown(df, chapters_dir, profile))
    return df
