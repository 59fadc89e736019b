"""Results store with provenance, and the paper's reported numbers beside ours.

Every experiment writes one JSON record per (experiment key, metric) under ``results/<chapter>/``.
A record carries what produced it: paper, table, method, dataset, category, metric, value, seed,
profile, device, backbone, image size, epochs, wall time, peak memory, git commit and library
versions. Files are written atomically (temp file + rename) so a killed run leaves no partial
record, and a rerun with the same parameters finds the finished record and reuses it.
Tables are pivots of :meth:`ResultStore.frame`; reported numbers live in ``book/reported/*.csv``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .utils import atomic_write_text, device_name, stale_temp_files

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = Path(os.environ.get("IADLIB_RESULTS", REPO_ROOT / "results"))
REPORTED_DIR = REPO_ROOT / "book" / "reported"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The repo's commit (with ``-dirty`` when the tree has uncommitted changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("iadlib", "torch", "timm", "faiss-cpu", "numpy", "scikit-learn", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def provenance(device: Any = None) -> dict[str, Any]:
    """Where and with what a number was computed."""
    return {
        "commit": git_commit(),
        "device": device_name(device),
        "machine": platform.machine(),
        "versions": library_versions(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def experiment_key(params: dict[str, Any]) -> str:
    """A stable short hash of an experiment's parameters (the identity used for reuse)."""
    blob = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class ResultStore:
    """A folder of JSON records; one file per experiment holding all of its metrics."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def _path(self, chapter: str, key: str) -> Path:
        return self.root / chapter / f"{key}.json"

    def has(self, chapter: str, params: dict[str, Any]) -> bool:
        return self._path(chapter, experiment_key(params)).is_file()

    def get(self, chapter: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """The finished record of ``params``, or None (also when the file is unreadable: rerun it)."""
        p = self._path(chapter, experiment_key(params))
        if not p.is_file():
            return None
        return _read_record(p)

    def put(
        self,
        chapter: str,
        params: dict[str, Any],
        metrics: dict[str, float],
        extra: dict[str, Any] | None = None,
        device: Any = None,
    ) -> dict[str, Any]:
        """Write one experiment (its parameters, metrics and provenance) atomically."""
        key = experiment_key(params)
        doc = {
            "key": key,
            "chapter": chapter,
            "params": params,
            "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
            "extra": extra or {},
            "provenance": provenance(device),
        }
        atomic_write_text(self._path(chapter, key), json.dumps(doc, indent=1, sort_keys=True, default=str))
        return doc

    def records(self, chapter: str | None = None) -> Iterable[dict[str, Any]]:
        folders = [self.root / chapter] if chapter else sorted(p for p in self.root.glob("*") if p.is_dir())
        for folder in folders:
            for f in sorted(folder.glob("*.json")):
                if f.name.startswith("."):  # temp files of atomic writes in progress or of killed runs
                    continue
                doc = _read_record(f, quiet=True)
                if doc is not None:
                    yield doc

    def stale_temp_files(self, chapter: str | None = None) -> list[Path]:
        """Temp files left by runs that were killed while writing (never read as records)."""
        folders = [self.root / chapter] if chapter else sorted(p for p in self.root.glob("*") if p.is_dir())
        return [f for folder in folders for f in stale_temp_files(folder)]

    def frame(self, chapter: str | None = None) -> pd.DataFrame:
        """Long table: one row per (experiment, metric) with parameters, extra and provenance flattened."""
        rows = []
        for doc in self.records(chapter):
            base = {**doc["params"], **{f"x_{k}": v for k, v in doc.get("extra", {}).items()}}
            prov = doc.get("provenance", {})
            base.update({"commit": prov.get("commit"), "device": prov.get("device"), "key": doc["key"]})
            for metric, value in doc["metrics"].items():
                rows.append({**base, "metric": metric, "value": value})
        return pd.DataFrame(rows)


def _read_record(path: Path, quiet: bool = False) -> dict[str, Any] | None:
    """A record file's content, or None for files that are not (complete) records.

    Benchmark JSON files in the same folders are skipped silently (``quiet``); a corrupt or
    truncated record (not written by this library, which writes atomically) is skipped with a
    warning naming the file, so that the experiment is rerun instead of read half.
    """
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warnings.warn(f"{path}: unreadable result record skipped ({type(exc).__name__}: {exc})", stacklevel=3)
        return None
    if isinstance(doc, dict) and "chapter" in doc and "metrics" in doc and "params" in doc and "key" in doc:
        return doc
    if not quiet:
        warnings.warn(f"{path}: not a result record (skipped)", stacklevel=3)
    return None


def load_reported(name: str | None = None) -> pd.DataFrame:
    """Reported numbers from ``book/reported/<name>.csv`` (all files when ``name`` is None).

    Columns: paper, table, method, dataset, category, metric, value, source (citation), note.
    """
    files = [REPORTED_DIR / f"{name}.csv"] if name else sorted(REPORTED_DIR.glob("*.csv"))
    frames = []
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"reported numbers file {f} not found")
        df = pd.read_csv(f, comment="#", dtype={"table": str, "category": str})
        df["file"] = f.name
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def compare_table(
    reproduced: pd.DataFrame,
    reported: pd.DataFrame,
    on: list[str],
    substitution: str | dict[str, str] = "",
    value: str = "value",
) -> pd.DataFrame:
    """"reported | reproduced | Δ | substitution" table joined on the columns ``on``.

    ``reproduced`` and ``reported`` are long tables with the ``on`` columns and ``value``.
    ``substitution`` names, per row (dict keyed by the first ``on`` column) or for all rows, the
    dataset/backbone that stood in for the paper's.
    """
    left = reported[on + [value]].rename(columns={value: "reported"})
    right = reproduced[on + [value]].rename(columns={value: "reproduced"})
    out = left.merge(right, on=on, how="outer")
    out["Δ"] = out["reproduced"] - out["reported"]
    if isinstance(substitution, dict):
        out["substitution"] = out[on[0]].map(substitution).fillna("")
    else:
        out["substitution"] = substitution
    return out
