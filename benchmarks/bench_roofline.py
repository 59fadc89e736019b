"""Roofline of the hot kernels: achieved GFLOP/s and GB/s against this machine's measured peaks.

    python benchmarks/bench_roofline.py [--quick] [--device cpu|cuda] [--out PATH]

Issue 11. Everything is measured in one process:

* **peaks** — a large square matrix product in float32 and in bfloat16 (``2·n³`` flops → GFLOP/s,
  best of ``--repeat``) and a memory copy ``dst.copy_(src)`` of ≥ 256 MiB (``2 × size`` bytes: one
  read and one write → GB/s);
* **kNN scoring** (:func:`iadlib.kernels.knn`, ``k = 1``) on PatchCore-sized problems: the patches of
  32 test images at 28×28 (``784·32`` queries) × 152 dims (efficientnet_lite0 stages 2+3) against
  banks of 3,387 and 33,867 rows (1 % and 10 % coresets of ELPV mono's 432 training images),
  ``precision="fp32"`` and ``"bf16"``. Flops ``2·M·K·D`` (the distance matrix product; the bf16 path's
  float32 re-scoring of a few candidates is not counted). Bytes: the queries once, the bank once per
  query block (``knn`` walks the queries in blocks whose distance matrix stays in cache, so the
  bank streams once per block; the block itself is not counted), the results once;
* **greedy coreset** (:func:`iadlib.kernels.greedy_coreset`, numba backend on the CPU, torch on
  CUDA) selecting 1 % (and, without ``--quick``, 10 %) of a bank of ``784·432`` patches × 128 dims (PatchCore's
  random projection). Its work is data dependent: ``stats`` gives the number ``W`` of full
  ``D``-dimensional distances it computed. The estimate is ``bytes = 4·(W·D + N·m)`` — the rows it
  read for the full distances plus one pass over the ``m = 16``-dimensional bound features — and
  ``flops = 3·(W·D + N·m)`` (subtract, multiply, add per coordinate). It is a lower bound of the
  traffic (the bound rows of points the bound rejects, the group lists and the distances are not
  counted), so the achieved GB/s is a lower bound too (more so for the torch backend, whose dense
  steps pass over all bound features);
* **AU-PRO** (:func:`iadlib.metrics.au_pro`) on 200 maps of 256×256 (``bench_metrics.make_case``):
  maps/s, and GB/s of reading the float32 maps once (no flop count: a sort, not arithmetic); on
  ``--device cuda`` the maps are sorted on the GPU.

Data are synthetic and seeded, shaped like real features: a mixture of Gaussian clusters with a
decaying spectrum (a few directions carry most of the variance), non-negative like post-ReLU
features. ``--quick`` shrinks every problem (a smoke check; its numbers mean little). Prints a table
and writes ``benchmarks/records/roofline.json`` (``roofline_cuda.json`` with ``--device cuda``;
atomically, with provenance) for the appendix (``--quick``: ``results/benchmarks/roofline_quick.json``,
which the appendix does not read).
Run it on an otherwise idle machine: on a shared 2-core machine every number drops several-fold.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from iadlib.errors import ConfigError
from iadlib.kernels import CACHE_BLOCK_BYTES, chunk_budget, greedy_coreset, knn
from iadlib.results import provenance
from iadlib.utils import atomic_write_text, resolve_device

#: Measured records are committed here (with their provenance) for the book's appendix.
RECORDS = Path(__file__).resolve().parent / "records"

#: Problem sizes (PatchCore on ELPV mono: 432 training images, 28×28 patches, layers 2+3).
FULL = {
    "matmul_n": 2048, "copy_mib": 512, "queries": 784 * 32, "dim": 152, "banks": [3387, 33867],
    "coreset_n": 784 * 432, "coreset_dim": 128, "coreset_ratios": [0.01, 0.1], "maps": 200, "map_size": 256,
}
QUICK = {
    "matmul_n": 1024, "copy_mib": 256, "queries": 784 * 4, "dim": 152, "banks": [339, 3387],
    "coreset_n": 784 * 43, "coreset_dim": 128, "coreset_ratios": [0.01], "maps": 20, "map_size": 128,
}
#: Dimension of the bound features of the coreset (``greedy_coreset``'s ``bound_dim``).
BOUND_DIM = 16


def clustered_features(n: int, dim: int, clusters: int = 64, seed: int = 0) -> torch.Tensor:
    """``[n, dim]`` float32 rows from a seeded mixture of Gaussian clusters, non-negative.

    Cluster centres spread over a low-dimensional subspace plus within-cluster noise whose scale
    decays along the dimensions (spectrum ``1/sqrt(1 + j/8)``), as in pooled CNN features.
    """
    if n < 1 or dim < 1 or clusters < 1:
        raise ConfigError(f"clustered_features: n={n}, dim={dim}, clusters={clusters} must all be ≥ 1")
    g = torch.Generator().manual_seed(seed)
    spectrum = 1.0 / torch.sqrt(1.0 + torch.arange(dim, dtype=torch.float32) / 8.0)
    centres = torch.randn(clusters, dim, generator=g) * spectrum * 2.0
    label = torch.randint(0, clusters, (n,), generator=g)
    x = centres[label] + 0.5 * torch.randn(n, dim, generator=g) * spectrum
    return torch.relu(x + 1.0).contiguous()


def best_time(fn: Callable[[], Any], repeat: int, sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls of ``fn`` (after ``sync``) and the last result."""
    best, out = math.inf, None
    for _ in range(max(1, repeat)):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def knn_rows_per_block(bank_rows: int, chunk_bytes: int, device_type: str = "cpu") -> int:
    """Query rows per block of :func:`iadlib.kernels.knn` (its blocking rule, for the byte count)."""
    block = chunk_bytes if device_type == "cuda" else min(chunk_bytes, CACHE_BLOCK_BYTES)
    return max(min(256, chunk_bytes // (4 * bank_rows)), block // (4 * bank_rows), 1)


def knn_accounting(m: int, k: int, d: int, rows: int, precision: str = "fp32") -> tuple[int, int]:
    """``(flops, bytes)`` of a 1-NN search of ``m`` queries in a bank of ``k`` rows of ``d`` dims.

    Flops ``2·m·k·d`` (the matrix product). Bytes: float32 queries once, the bank (float32, or
    bfloat16 for ``precision="bf16"``) once per block of ``rows`` queries, and the results
    (a float32 distance and an int64 index per query).
    """
    if min(m, k, d, rows) < 1:
        raise ConfigError(f"knn_accounting: m={m}, k={k}, d={d}, rows={rows} must all be ≥ 1")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"knn_accounting: precision={precision!r}; valid: 'fp32', 'bf16'")
    bank_elem = 4 if precision == "fp32" else 2
    blocks = -(-m // rows)
    flops = 2 * m * k * d
    nbytes = 4 * m * d + bank_elem * k * d * blocks + 12 * m
    return flops, nbytes


def coreset_accounting(work: int, n: int, d: int, m: int = BOUND_DIM) -> tuple[int, int]:
    """``(flops, bytes)`` estimate of a greedy coreset run that computed ``work`` full distances.

    ``bytes = 4·(work·d + n·m)``: the float32 rows read for the full ``d``-dimensional distances
    plus one pass over the ``m``-dimensional bound features of the ``n`` points; ``flops =
    3·(work·d + n·m)`` (subtract, multiply, add per coordinate). A lower bound of the traffic.
    """
    if work < 0 or min(n, d, m) < 1:
        raise ConfigError(f"coreset_accounting: work={work} must be ≥ 0 and n={n}, d={d}, m={m} ≥ 1")
    touched = work * d + n * m
    return 3 * touched, 4 * touched


def kernel_row(kernel: str, seconds: float, flops: int | None, nbytes: int, peaks: dict[str, float],
               peak: str = "fp32_gflops", **extra: Any) -> dict[str, Any]:
    """One table row: achieved GFLOP/s and GB/s, arithmetic intensity, fractions of the roofs.

    ``peak`` names the compute roof of this kernel (``fp32_gflops`` or ``bf16_gflops``);
    ``fraction_of_roof`` divides by the attainable ``min(compute peak, intensity × copy GB/s)``.
    """
    if not seconds > 0:
        raise ConfigError(f"kernel_row: {kernel}: seconds={seconds} must be > 0")
    gbs = nbytes / seconds / 1e9
    row: dict[str, Any] = {"kernel": kernel, "seconds": seconds, "flops": flops, "bytes": nbytes,
                           "gbs": gbs, "fraction_of_copy_bw": gbs / peaks["copy_gbs"]}
    if flops:
        gflops = flops / seconds / 1e9
        intensity = flops / nbytes
        roof = min(peaks[peak], intensity * peaks["copy_gbs"])
        row.update(gflops=gflops, intensity=intensity, peak=peak, fraction_of_peak=gflops / peaks[peak],
                   fraction_of_roof=gflops / roof)
    else:
        row.update(gflops=None, intensity=None, peak=None, fraction_of_peak=None, fraction_of_roof=None)
    row.update(extra)
    return row


def measure_peaks(cfg: dict[str, Any], dev: torch.device, repeat: int, sync: Callable[[], None]) -> dict[str, float]:
    """Matrix-product GFLOP/s (float32, bfloat16) and copy GB/s of ``dev``."""
    n = cfg["matmul_n"]
    g = torch.Generator().manual_seed(1)
    peaks: dict[str, float] = {"matmul_n": n, "copy_mib": cfg["copy_mib"]}
    for name, dtype in (("fp32_gflops", torch.float32), ("bf16_gflops", torch.bfloat16)):
        a = torch.randn(n, n, generator=g).to(dev, dtype)
        b = torch.randn(n, n, generator=g).to(dev, dtype)
        out = torch.empty(n, n, device=dev, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up (thread pool, kernels)
        t, _ = best_time(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), repeat, sync)
        peaks[name] = 2 * n**3 / t / 1e9
    elems = cfg["copy_mib"] * 2**20 // 4
    src = torch.rand(elems, generator=g).to(dev)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page once
    t, _ = best_time(lambda: dst.copy_(src), repeat + 2, sync)
    peaks["copy_gbs"] = 2 * src.numel() * 4 / t / 1e9
    return peaks


def measure_knn(cfg: dict[str, Any], dev: torch.device, peaks: dict[str, float], repeat: int,
                sync: Callable[[], None]) -> list[dict[str, Any]]:
    m, d = cfg["queries"], cfg["dim"]
    queries = clustered_features(m, d, seed=2).to(dev)
    rows = []
    for k in cfg["banks"]:
        bank = clustered_features(k, d, seed=3).to(dev)
        block = knn_rows_per_block(k, chunk_budget(dev), dev.type)
        ref = None
        for precision in ("fp32", "bf16"):
            knn(queries[:256], bank, precision=precision)  # warm-up
            t, (dist, idx) = best_time(lambda p=precision, b=bank: knn(queries, b, precision=p), repeat, sync)
            flops, nbytes = knn_accounting(m, k, d, block, precision)
            extra: dict[str, Any] = {"queries": m, "bank_rows": k, "dim": d, "rows_per_block": block}
            if ref is None:
                ref = (dist, idx)
            else:
                extra["max_abs_dist_diff_vs_fp32"] = float((dist - ref[0]).abs().max())
                extra["same_neighbour_fraction"] = float((idx == ref[1]).float().mean())
            peak = "fp32_gflops" if precision == "fp32" else "bf16_gflops"
            rows.append(kernel_row(f"knn {precision} K={k}", t, flops, nbytes, peaks, peak, **extra))
    return rows


def measure_coreset(cfg: dict[str, Any], dev: torch.device, peaks: dict[str, float],
                    sync: Callable[[], None]) -> list[dict[str, Any]]:
    n, d = cfg["coreset_n"], cfg["coreset_dim"]
    x = clustered_features(n, d, seed=4).to(dev)
    backend = "numba" if dev.type == "cpu" else "torch"
    greedy_coreset(x[:2000], 20, backend=backend)  # warm-up (numba compilation / cache load)
    rows = []
    for ratio in cfg["coreset_ratios"]:
        sel = max(2, int(round(ratio * n)))
        stats: list[int] = []
        t, _ = best_time(lambda s=sel, st=stats: greedy_coreset(x, s, stats=st, backend=backend), 1, sync)
        work = int(sum(stats))
        flops, nbytes = coreset_accounting(work, n, d, BOUND_DIM)
        rows.append(kernel_row(f"coreset {backend} {ratio:g}", t, flops, nbytes, peaks, "fp32_gflops",
                               points=n, dim=d, selected=sel, full_distances=work,
                               full_distances_per_step=work / max(1, sel - 1), plain_greedy_distances=n * (sel - 1)))
    return rows


def measure_au_pro(cfg: dict[str, Any], dev: torch.device, peaks: dict[str, float], repeat: int,
                   sync: Callable[[], None]) -> dict[str, Any]:
    from iadlib.metrics import au_pro

    spec = importlib.util.spec_from_file_location("bench_metrics", Path(__file__).with_name("bench_metrics.py"))
    bench_metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_metrics)
    maps_np, masks = bench_metrics.make_case(cfg["maps"], cfg["map_size"])
    maps = torch.from_numpy(maps_np).to(dev) if dev.type == "cuda" else maps_np  # sorted where the maps are
    au_pro(maps[:4], masks[:4])  # warm-up (make_case puts defects in the first half of the maps)
    t, value = best_time(lambda: au_pro(maps, masks), repeat, sync)
    return kernel_row("au_pro", t, None, maps_np.nbytes, peaks, maps=len(maps_np), map_size=cfg["map_size"],
                      maps_per_s=len(maps_np) / t, value=float(value))


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'kernel':<22}{'seconds':>9}{'GFLOP/s':>10}{'GB/s':>8}{'flop/B':>9}{'of peak':>9}{'of roof':>9}"
    lines = [head]

    def f(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else format("–", fmt[0] + fmt[1:].split(".")[0])

    for r in rows:
        lines.append(f"{r['kernel']:<22}{r['seconds']:>9.3f}{f(r['gflops'], '>10.1f')}{r['gbs']:>8.2f}"
                     f"{f(r['intensity'], '>9.2f')}{f(r['fraction_of_peak'], '>9.1%')}"
                     f"{f(r['fraction_of_roof'], '>9.1%')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problems (a smoke check of the script)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="record path (default benchmarks/records/roofline.json, "
                    "roofline_cuda.json on a GPU; with --quick results/benchmarks/roofline[_cuda]_quick.json)")
    a = ap.parse_args(argv)
    dev = resolve_device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = QUICK if a.quick else FULL
    name = "roofline" + ("_cuda" if dev.type == "cuda" else "")
    quick_out = RECORDS.parent.parent / "results" / "benchmarks" / f"{name}_quick.json"
    out = Path(a.out) if a.out else (quick_out if a.quick else RECORDS / f"{name}.json")
    t_start = time.perf_counter()
    peaks = measure_peaks(cfg, dev, a.repeat, sync)
    print(f"device {dev} ({torch.get_num_threads()} torch threads): matmul fp32 {peaks['fp32_gflops']:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16_gflops']:.1f} GFLOP/s (n={cfg['matmul_n']}); copy {peaks['copy_gbs']:.1f} GB/s "
          f"({cfg['copy_mib']} MiB)")
    rows = measure_knn(cfg, dev, peaks, a.repeat, sync)
    rows += measure_coreset(cfg, dev, peaks, sync)
    rows.append(measure_au_pro(cfg, dev, peaks, a.repeat, sync))
    print(format_table(rows))
    for r in rows:
        if "same_neighbour_fraction" in r:
            print(f"{r['kernel']}: max |Δ dist| vs fp32 {r['max_abs_dist_diff_vs_fp32']:.1e}, "
                  f"same neighbour {r['same_neighbour_fraction']:.4%}")
        if "full_distances" in r:
            print(f"{r['kernel']}: {r['full_distances']:,} full distances "
                  f"({r['full_distances'] / r['plain_greedy_distances']:.2%} of the plain greedy loop's)")
        if "maps_per_s" in r:
            print(f"au_pro: {r['maps_per_s']:.0f} maps/s ({r['maps']} maps of {r['map_size']}²)")
    doc = {"benchmark": "roofline", "quick": a.quick, "sizes": cfg, "peaks": peaks, "rows": rows,
           "threads": torch.get_num_threads(), "numba_threads": _numba_threads(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "total_s": time.perf_counter() - t_start,
           "provenance": provenance(dev)}
    atomic_write_text(out, json.dumps(doc, indent=1))
    print(f"written {out} in {doc['total_s']:.0f} s")
    return doc


def _numba_threads() -> int | None:
    try:
        import numba
    except ImportError:  # pragma: no cover
        return None
    return int(numba.get_num_threads())


if __name__ == "__main__":
    main()
