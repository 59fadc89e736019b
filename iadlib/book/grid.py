"""Scale-out: the experiment grid (chapter × dataset × category × seed × method) as Dask tasks.

``python -m iadlib.book grid --profile quick [--chapters 03 05] [--seeds 0 1 2] [--workers N]
[--scheduler tcp://host:8786] [--device cuda]`` lists the chapters' experiment cells and runs each
as one task on Dask distributed: a :class:`~distributed.LocalCluster` by default, an existing
cluster with ``--scheduler``. Every task is one :func:`~iadlib.experiment.run_experiment` call,
which writes its own record atomically into the results store and reuses a finished one, so the
grid is idempotent: a rerun computes nothing new, and a killed run resumes with the cells it had
not finished (a killed task leaves no partial record). The chapters' notebooks then find these
records — same parameters, same keys — and do not recompute them.

With ``--device cuda`` every task asks for the Dask resource ``{"GPU": 1}``, so a worker runs one
GPU task at a time: the local cluster gives each of its ``--workers`` workers one GPU slot (they
share the visible GPU; use ``--workers 1`` per GPU); on an existing cluster start one worker per
GPU with ``CUDA_VISIBLE_DEVICES=i dask worker ADDR --resources GPU=1 --nthreads 1``.

Cells come from a chapter module's ``cells(profile, seed=0, device="auto")`` (a list of
:func:`run_experiment` keyword dicts) when it defines one, else from the adapters below, which
rebuild exactly the calls the chapter's own ``run`` makes: chapter 3 (``miad.plan``) and chapter 5's
benchmark grid (``loco.PROFILES``). The other chapters do not run through ``run_experiment`` cell by
cell (training-set sweeps, one-class protocols, multi-category benchmarks); their notebooks compute
them, and :data:`UNSUPPORTED` says why.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..chapters import PROFILE_NAMES
from ..errors import ConfigError

Cell = dict[str, Any]

#: chapter prefix → (module, why the grid cannot list its cells)
UNSUPPORTED = {
    "00_datasets": "dataset statistics, no experiments",
    "00_metrics": "metric worked examples on synthetic scores, seconds to compute",
    "01": "Uninformed Students: teacher distillation shared by all cells, per-class feature protocols",
    "02": "Mixer-AE: one model for all categories, variants trained on the joint benchmark",
    "04": "ALGAN: validation-selected epochs, sweeps and one-class protocols outside run_experiment",
    "99": "appendix: reads the store",
}


def _miad_cells(profile: str, seed: int, device: str) -> list[Cell]:
    """The calls :func:`iadlib.chapters.miad.run` makes (same parameters, hence the same record keys)."""
    from ..chapters import miad

    datasets, chosen, _ = miad.plan(profile)
    cells = []
    for ds_name, ds_cfg in datasets:
        for method, cfg in chosen.items():
            cfg = {k: v for k, v in cfg.items() if k != "by_dataset"} | cfg.get("by_dataset", {}).get(ds_name, {})
            cells.append(dict(
                chapter=miad.CHAPTER, method=method, dataset=ds_name, model_cfg=cfg, dataset_cfg=ds_cfg,
                profile=profile, seed=seed, device=device, paper="MIAD (Bao et al. 2022)",
                table="per-category AUROC",
                backbone=cfg.get("backbone", "efficientnet_lite0") if method not in ("draem", "unet_ae") else "none",
            ))
    return cells


def _loco_cells(profile: str, seed: int, device: str) -> list[Cell]:
    """The benchmark grid of :func:`iadlib.chapters.loco.run` (``data_root`` from ``$IADLIB_MVTEC_LOCO_ROOT``)."""
    from ..chapters import loco

    prof = loco.PROFILES[profile]
    data_root = os.environ.get("IADLIB_MVTEC_LOCO_ROOT") if prof["dataset"] == "mvtec_loco" else None
    if prof["dataset"] == "mvtec_loco" and not data_root:
        raise ConfigError("chapter 5's full profile reads MVTec LOCO AD: set IADLIB_MVTEC_LOCO_ROOT=/path/to/it")
    todo, _ = loco.methods(profile)
    return [
        dict(chapter=loco.CHAPTER, method=m, dataset=prof["dataset"], model_cfg=prof["models"][m],
             dataset_cfg=loco._dataset_cfg(profile, cat, data_root), profile=profile, seed=seed, device=device,
             paper=loco.PAPER, table="§6.1 LOCO benchmark / §6.2 ensemble")
        for cat in prof["categories"] for m in todo
    ]


#: chapter prefix → (module name, adapter used when the module has no ``cells()``)
ADAPTERS: dict[str, tuple[str, Callable[[str, int, str], list[Cell]]]] = {
    "03": ("miad", _miad_cells),
    "05": ("loco", _loco_cells),
}


def chapter_cells(chapter: str, profile: str = "quick", seed: int = 0, device: str = "auto") -> list[Cell]:
    """The experiment cells of one chapter (``"03"``, ``"05"``) for ``profile`` and ``seed``."""
    import importlib

    if profile not in PROFILE_NAMES:
        raise ConfigError(f"unknown profile {profile!r}; valid: {', '.join(PROFILE_NAMES)}")
    key = chapter[:2]
    if key not in ADAPTERS:
        why = next((v for k, v in UNSUPPORTED.items() if chapter.startswith(k) or k.startswith(chapter)), None)
        raise ConfigError(
            f"chapter {chapter!r} cannot be run as a grid" + (f" ({why})" if why else "")
            + f"; grid chapters: {', '.join(ADAPTERS)} (run the others with 'python -m iadlib.book run')"
        )
    module, adapter = ADAPTERS[key]
    mod = importlib.import_module(f"iadlib.chapters.{module}")
    own = getattr(mod, "cells", None)
    return list(own(profile, seed=seed, device=device)) if own is not None else adapter(profile, seed, device)


def grid_cells(
    chapters: Sequence[str] | None = None,
    profile: str = "quick",
    seeds: Sequence[int] = (0,),
    device: str = "auto",
) -> list[Cell]:
    """Every cell of the chapters (default: all that can list their cells) × seeds."""
    return [c for ch in (chapters or list(ADAPTERS)) for s in seeds for c in chapter_cells(ch, profile, s, device)]


def cell_label(cell: Cell) -> str:
    """``chapter/method/dataset/category seed N`` (the dataset may be a name or a dataset object)."""
    ds = cell["dataset"] if isinstance(cell["dataset"], str) else getattr(cell["dataset"], "name", "?")
    cat = (cell.get("dataset_cfg") or {}).get("category")
    return f"{cell['chapter']}/{cell['method']}/{ds}/{cat} seed {cell.get('seed', 0)}"


def run_cell(cell: Cell, results_dir: str | None = None, force: bool = False, threads: int | None = None
             ) -> dict[str, Any]:
    """One Dask task: :func:`run_experiment` on ``cell``; returns a short summary (``reused`` when found)."""
    from ..experiment import run_experiment
    from ..results import ResultStore

    if threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.time()
    kwargs = {k: v for k, v in cell.items() if k not in ("chapter", "method", "dataset")}
    rec = run_experiment(cell["chapter"], cell["method"], cell["dataset"], store=ResultStore(results_dir),
                         force=force, **kwargs)
    return {
        "cell": cell_label(cell), "chapter": cell["chapter"], "method": cell["method"],
        "dataset": rec["params"]["dataset"], "category": rec["params"]["category"], "seed": rec["params"]["seed"],
        "key": rec["key"], "metrics": rec["metrics"], "reused": rec["extra"].get("timestamp_unix", 0) < t0,
        "seconds": time.time() - t0, "worker": os.getpid(),
    }


def run_grid(
    cells: Sequence[Cell],
    results_dir: str | Path | None = None,
    scheduler: str | None = None,
    workers: int = 2,
    processes: bool = True,
    device: str = "auto",
    force: bool = False,
    verbose: bool = True,
) -> list[dict[str, Any]]:
    """Run ``cells`` as Dask tasks (a LocalCluster of ``workers`` unless ``scheduler`` is given).

    Failed cells do not stop the others; the function raises at the end naming them. Returns one
    summary per cell (see :func:`run_cell`), in completion order.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    gpu = str(device).startswith("cuda")
    rdir = str(Path(results_dir).resolve()) if results_dir is not None else None
    cluster = None
    if scheduler is None:
        kw: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1, "processes": processes,
                              "dashboard_address": None}
        if gpu:
            kw["resources"] = {"GPU": 1}
        cluster = LocalCluster(**kw)
    threads = max(1, (os.cpu_count() or 1) // workers) if scheduler is None and processes else None
    out: list[dict[str, Any]] = []
    failed: list[str] = []
    try:
        with Client(scheduler or cluster) as client:
            futs = {
                client.submit(run_cell, c, rdir, force, threads, pure=False,
                              resources={"GPU": 1} if gpu else None): c
                for c in cells
            }
            if verbose:
                print(f"Grid: {len(futs)} cell(s) on {client.scheduler.address if client.scheduler else scheduler}",
                      flush=True)
            for fut in as_completed(futs):
                c = futs[fut]
                try:
                    res = fut.result()
                except Exception as exc:  # keep going: the other cells' records are still worth having
                    name = cell_label(c)
                    failed.append(f"{name} ({type(exc).__name__}: {exc})")
                    if verbose:
                        print(f"  FAILED {name}: {exc}", flush=True)
                    continue
                out.append(res)
                if verbose:
                    m = res["metrics"].get("image_auroc")
                    print(f"  {'reused' if res['reused'] else 'ran   '} {res['cell']:<60}"
                          + (f" image AUROC {m:.3f}" if m is not None else "") + f" {res['seconds']:.0f} s",
                          flush=True)
    finally:
        if cluster is not None:
            cluster.close()
    if verbose:
        print(f"Grid done: {sum(not r['reused'] for r in out)} computed, {sum(r['reused'] for r in out)} reused, "
              f"{len(failed)} failed", flush=True)
    if failed:
        raise SystemExit("FAILED cells: " + "; ".join(failed))
    return out
