"""Build the book: execute the chapter notebooks with papermill, then render HTML with Jupyter Book.

``python -m iadlib.book run [--profile quick|full|smoke] [--chapters 01 03] [--jobs N]``
executes ``notebooks/*.ipynb`` (fresh kernel each, ``-k python3``) into ``book/chapters/``. A failed
cell stops that chapter (papermill sets ``metadata.papermill.exception``), keeps the failed notebook
as ``book/chapters/<name>.failed.ipynb`` and makes the command exit non-zero. The executed notebook
is written atomically, so the book never shows a half-run chapter. Time per chapter is printed and
stored in ``results/book_runs.json``. ``python -m iadlib.book build`` renders ``_build/html``.
With ``--scheduler tcp://host:8786`` (or ``--dask`` for a local cluster) chapters run as tasks
on a Dask distributed cluster. ``python -m iadlib.book grid`` runs the experiment cells themselves
(chapter × dataset × category × seed × method) as Dask tasks (:mod:`iadlib.book.grid`); the
chapters' notebooks then reuse their records. ``build`` first writes the front page's summary table
from the results store (:mod:`iadlib.book.summary`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ..chapters import PROFILE_NAMES
from ..errors import ConfigError
from ..results import REPO_ROOT
from ..utils import atomic_path, atomic_write_text

NOTEBOOKS = REPO_ROOT / "notebooks"
OUT_DIR = REPO_ROOT / "book" / "chapters"


def list_notebooks(chapters: Sequence[str] | None = None, notebooks_dir: Path = NOTEBOOKS) -> list[Path]:
    """Notebook sources, optionally filtered by chapter prefix (``"03"``) or name."""
    nbs = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if not chapters:
        return nbs
    out = []
    for ch in chapters:
        hits = [nb for nb in nbs if nb.stem.startswith(ch) or nb.stem == ch]
        if not hits:
            raise ConfigError(f"no chapter {ch!r}; valid: {', '.join(nb.stem for nb in nbs)}")
        out.extend(h for h in hits if h not in out)
    return out


def execute_notebook(
    src: str | Path,
    out_dir: str | Path = OUT_DIR,
    parameters: dict[str, Any] | None = None,
    timeout: int = 3600,
    cwd: str | Path | None = None,
) -> dict[str, Any]:
    """Run one notebook with papermill into ``out_dir/<name>.ipynb`` (atomically)."""
    import papermill as pm

    src, out_dir = Path(src), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / src.name
    failed = out_dir / f"{src.stem}.failed.ipynb"
    t0 = time.perf_counter()
    status, error = "ok", None
    with atomic_path(target) as tmp:
        tmp_nb = tmp.with_suffix(".ipynb")
        saved_backend = os.environ.get("MPLBACKEND")
        # the kernel must draw figures inline: a non-interactive MPLBACKEND (e.g. Agg set by CI)
        # would make plt.show() display nothing and the book would lose its figures
        os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        try:
            pm.execute_notebook(
                str(src),
                str(tmp_nb),
                parameters=parameters or {},
                kernel_name="python3",
                execution_timeout=timeout,
                cwd=str(cwd or REPO_ROOT),
                progress_bar=False,
                log_output=False,
            )
            shutil.move(tmp_nb, tmp)
            if failed.exists():
                failed.unlink()
        except Exception as exc:  # papermill raises PapermillExecutionError on a failed cell
            status, error = "failed", f"{type(exc).__name__}: {exc}"
            if tmp_nb.exists():
                shutil.move(tmp_nb, failed)
            raise_later = exc
        finally:
            if saved_backend is None:
                os.environ.pop("MPLBACKEND", None)
            else:
                os.environ["MPLBACKEND"] = saved_backend
            if tmp_nb.exists():
                tmp_nb.unlink()
        if status == "failed":
            raise _ChapterFailed(str(src), error) from raise_later
    return {"chapter": src.stem, "status": status, "seconds": time.perf_counter() - t0, "error": error}


class _ChapterFailed(RuntimeError):
    def __init__(self, src: str, error: str | None):
        super().__init__(f"{src}: {error}")
        self.src, self.error = src, error


def _run_one(args: tuple[str, str, dict[str, Any], int]) -> dict[str, Any]:
    src, out_dir, params, timeout = args
    t0 = time.perf_counter()
    try:
        return execute_notebook(src, out_dir, params, timeout)
    except _ChapterFailed as exc:
        return {"chapter": Path(src).stem, "status": "failed", "seconds": time.perf_counter() - t0,
                "error": exc.error}


def run(
    profile: str = "quick",
    chapters: Sequence[str] | None = None,
    jobs: int = 1,
    force: bool = False,
    results_dir: str | None = None,
    out_dir: str | Path = OUT_DIR,
    timeout: int = 3600,
    scheduler: str | None = None,
    use_dask: bool = False,
    device: str = "auto",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Execute the chapters; returns one status record per chapter (raises if any failed)."""
    if profile not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {profile!r}; valid: {', '.join(PROFILE_NAMES)}")
    nbs = list_notebooks(chapters)
    params = {"profile": profile, "force": force, "device": device, "seed": seed}
    if results_dir:
        params["results_dir"] = str(Path(results_dir).resolve())
    tasks = [(str(nb), str(out_dir), params, timeout) for nb in nbs]
    print(f"Executing {len(tasks)} chapter(s), profile={profile}, jobs={jobs}", flush=True)
    records: list[dict[str, Any]] = []
    log = Path(results_dir or REPO_ROOT / "results") / "book_runs.json"
    history = json.loads(log.read_text()) if log.is_file() else []
    this_run = {"profile": profile, "time": time.time(), "chapters": records}
    history.append(this_run)

    def done(rec: dict[str, Any]) -> None:
        # the log is rewritten after every chapter, so later chapters (the appendix) see this run's times
        records.append(rec)
        _report(rec)
        atomic_write_text(log, json.dumps(history, indent=1))

    if scheduler or use_dask:
        from dask.distributed import Client, LocalCluster

        cluster = None if scheduler else LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True)
        with Client(scheduler or cluster) as client:
            for fut in client.map(_run_one, tasks, pure=False):
                done(fut.result())
        if cluster is not None:
            cluster.close()
    elif jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            for rec in pool.map(_run_one, tasks):
                done(rec)
    else:
        for t in tasks:
            done(_run_one(t))
    total = sum(r["seconds"] for r in records)
    print(f"Total {total:.0f} s", flush=True)
    bad = [r for r in records if r["status"] != "ok"]
    if bad:
        raise SystemExit("FAILED chapters: " + ", ".join(f"{r['chapter']} ({r['error']})" for r in bad))
    return records


def _report(rec: dict[str, Any]) -> None:
    mark = "ok " if rec["status"] == "ok" else "FAILED"
    print(f"  {mark} {rec['chapter']:<28} {rec['seconds']:7.1f} s", flush=True)
    if rec["status"] != "ok":
        print(f"       {rec['error']}", flush=True)


def build(strict: bool = True, root: Path = REPO_ROOT, profile: str = "quick", results_dir: str | None = None) -> None:
    """Write the front page's summary table from the results store, then render the HTML book with
    Jupyter Book 1.x (offline); exits non-zero on failure."""
    from .summary import write_summary

    chapters = Path(root) / "book" / "chapters"
    df = write_summary(chapters / "summary.md", results_dir, profile, chapters_dir=chapters)
    print(f"Front-page summary: {int((df['runs'] > 0).sum())}/{len(df)} headline results from the store "
          f"({profile} profile) -> {chapters / 'summary.md'}", flush=True)
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe if exe.exists() else "jupyter-book"), "build", str(root), "--keep-going"]
    if strict:
        cmd += ["-W", "-n"]
    print(" ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=root, env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    if proc.returncode:
        raise SystemExit(f"jupyter-book build failed (exit {proc.returncode})")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m iadlib.book", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute chapter notebooks with papermill")
    r.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    r.add_argument("--chapters", nargs="*", default=None, help="chapter prefixes, e.g. 01 03")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--force", action="store_true", help="recompute finished experiments")
    r.add_argument("--results", default=None, help="results folder (default results/)")
    r.add_argument("--timeout", type=int, default=3600, help="per-cell timeout in seconds")
    r.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://…)")
    r.add_argument("--dask", action="store_true", help="run chapters on a local Dask cluster")
    r.add_argument("--device", default="auto")
    r.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("build", help="write the front-page summary from the store, render the HTML book")
    b.add_argument("--no-strict", action="store_true")
    b.add_argument("--profile", default="quick", choices=PROFILE_NAMES, help="profile of the summary's records")
    b.add_argument("--results", default=None, help="results folder (default results/)")
    g = sub.add_parser("grid", help="run the chapters' experiment cells as Dask tasks (idempotent)")
    g.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    g.add_argument("--chapters", nargs="*", default=None, help="chapter prefixes with a grid (03 05); default all")
    g.add_argument("--seeds", nargs="*", type=int, default=[0])
    g.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://…); default a LocalCluster")
    g.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    g.add_argument("--device", default="auto", help="auto|cpu|cuda (cuda: tasks ask for the Dask resource GPU=1)")
    g.add_argument("--results", default=None, help="results folder (default results/)")
    g.add_argument("--force", action="store_true", help="recompute finished cells")
    g.add_argument("--list", action="store_true", help="print the cells and exit")
    s = sub.add_parser("summary", help="print every chapter's headline result against the paper")
    s.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    s.add_argument("--results", default=None, help="results folder (default results/)")
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.profile, a.chapters, a.jobs, a.force, a.results, timeout=a.timeout, scheduler=a.scheduler,
            use_dask=a.dask, device=a.device, seed=a.seed)
    elif a.cmd == "grid":
        from .grid import cell_label, grid_cells, run_grid

        cells = grid_cells(a.chapters, a.profile, a.seeds, a.device)
        if a.list:
            print("\n".join(cell_label(c) for c in cells))
            return
        run_grid(cells, a.results, a.scheduler, a.workers, device=a.device, force=a.force)
    elif a.cmd == "build":
        build(strict=not a.no_strict, profile=a.profile, results_dir=a.results)
    else:
        from .summary import chapter_headlines, to_markdown

        print(to_markdown(chapter_headlines(a.results, a.profile), profile=a.profile))
