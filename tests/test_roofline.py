"""Roofline benchmark (issue 11): flop/byte accounting, the record, and the figure. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from iadlib import plotting  # noqa: E402
from iadlib.errors import ConfigError  # noqa: E402
from iadlib.kernels import greedy_coreset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def br():
    spec = importlib.util.spec_from_file_location("bench_roofline", ROOT / "benchmarks" / "bench_roofline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PEAKS = {"fp32_gflops": 10.0, "bf16_gflops": 20.0, "copy_gbs": 1.0, "matmul_n": 64, "copy_mib": 1}


def test_knn_accounting_by_hand(br):
    # 10 queries in blocks of 4 -> 3 blocks; the bank (4 x 3) streams once per block
    flops, nbytes = br.knn_accounting(10, 4, 3, rows=4)
    assert flops == 2 * 10 * 4 * 3 == 240
    assert nbytes == 4 * 10 * 3 + 4 * 4 * 3 * 3 + 12 * 10 == 384
    flops16, nbytes16 = br.knn_accounting(10, 4, 3, rows=4, precision="bf16")
    assert flops16 == flops and nbytes16 == 384 - 2 * 4 * 3 * 3  # bank elements of 2 bytes
    assert br.knn_accounting(10, 4, 3, rows=100)[1] == 120 + 48 + 120  # one block
    with pytest.raises(ConfigError, match="precision"):
        br.knn_accounting(10, 4, 3, rows=4, precision="fp16")
    with pytest.raises(ConfigError, match="rows=0"):
        br.knn_accounting(10, 4, 3, rows=0)


def test_knn_rows_per_block_follows_cache_blocks(br):
    # CPU: blocks of at most CACHE_BLOCK_BYTES of distances, at least 256 rows when the budget allows
    assert br.knn_rows_per_block(3387, 256 * 2**20) == br.CACHE_BLOCK_BYTES // (4 * 3387)
    assert br.knn_rows_per_block(33867, 256 * 2**20) == 256
    assert br.knn_rows_per_block(10**9, 2**20) == 1


def test_coreset_accounting_on_a_real_run(br):
    x = br.clustered_features(1500, 32, clusters=8, seed=0)
    assert x.shape == (1500, 32) and x.dtype == torch.float32 and (x >= 0).all()
    assert torch.equal(x, br.clustered_features(1500, 32, clusters=8, seed=0))  # seeded
    stats: list[int] = []
    sel = greedy_coreset(x, 30, stats=stats, backend="numba")
    work = sum(stats)
    assert len(sel) == 30 and 0 < work <= 1500 * 29  # never more than the plain greedy loop
    flops, nbytes = br.coreset_accounting(work, 1500, 32, m=16)
    assert nbytes == 4 * (work * 32 + 1500 * 16)
    assert flops == 3 * (work * 32 + 1500 * 16)
    assert flops / nbytes == pytest.approx(0.75)
    with pytest.raises(ConfigError, match="work=-1"):
        br.coreset_accounting(-1, 10, 4)


def test_kernel_row_rates_and_fractions(br):
    r = br.kernel_row("k", seconds=2.0, flops=4 * 10**9, nbytes=10**9, peaks=PEAKS)
    assert r["gflops"] == pytest.approx(2.0) and r["gbs"] == pytest.approx(0.5)
    assert r["intensity"] == pytest.approx(4.0)
    assert r["fraction_of_peak"] == pytest.approx(0.2)
    assert r["fraction_of_roof"] == pytest.approx(0.5)  # roof: min(10, 4 flop/B x 1 GB/s) = 4 GFLOP/s
    r16 = br.kernel_row("k", 1.0, 10**11, 10**9, PEAKS, "bf16_gflops")
    assert r16["fraction_of_roof"] == pytest.approx(100 / 20) and r16["peak"] == "bf16_gflops"
    no_flops = br.kernel_row("au_pro", 0.5, None, 10**8, PEAKS, maps_per_s=400.0)
    assert no_flops["gflops"] is None and no_flops["gbs"] == pytest.approx(0.2) and no_flops["maps_per_s"] == 400
    with pytest.raises(ConfigError, match="seconds=0"):
        br.kernel_row("k", 0.0, 1, 1, PEAKS)


def tiny_record(br) -> dict:
    rows = [
        br.kernel_row("knn fp32", 1.0, 4 * 10**9, 10**8, PEAKS),
        br.kernel_row("coreset", 1.0, 3 * 10**8, 4 * 10**8, PEAKS),
        br.kernel_row("au_pro", 1.0, None, 10**8, PEAKS),
    ]
    return {"benchmark": "roofline", "peaks": PEAKS, "rows": rows, "provenance": {"device": "test cpu"}}


def test_roofline_figure_roofs_and_points(br):
    fig = plotting.roofline(tiny_record(br))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    roofs = [line for line in ax.get_lines() if line.get_label().startswith("roof")]
    assert len(roofs) == 2
    for line, peak in zip(roofs, (10.0, 20.0), strict=True):
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        np.testing.assert_allclose(y, np.minimum(peak, x * 1.0))  # memory roof, then the compute roof
        assert y.max() == pytest.approx(peak)
    pts = np.concatenate([c.get_offsets() for c in ax.collections])
    np.testing.assert_allclose(sorted(map(tuple, pts)), [(0.75, 0.3), (40.0, 4.0)])  # AU-PRO has no point
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "1: knn fp32" in labels and "2: coreset" in labels and not any("au_pro" in t for t in labels)
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2"]
    matplotlib.pyplot.close(fig)


def test_roofline_figure_rejects_bad_records(br):
    rec = tiny_record(br)
    with pytest.raises(ConfigError, match="lacks \\['peaks'\\]"):
        plotting.roofline({"rows": rec["rows"]})
    with pytest.raises(ConfigError, match="copy_gbs"):
        plotting.roofline({**rec, "peaks": {**PEAKS, "copy_gbs": 0}})
    with pytest.raises(ConfigError, match="no row"):
        plotting.roofline({**rec, "rows": rec["rows"][2:]})


def test_script_end_to_end_on_tiny_sizes(br, tmp_path, monkeypatch):
    tiny = {"matmul_n": 64, "copy_mib": 1, "queries": 300, "dim": 24, "banks": [40], "coreset_n": 1200,
            "coreset_dim": 16, "coreset_ratios": [0.02], "maps": 4, "map_size": 64}
    monkeypatch.setattr(br, "QUICK", tiny)
    out = tmp_path / "roofline.json"
    doc = br.main(["--quick", "--device", "cpu", "--repeat", "1", "--out", str(out)])
    rec = json.loads(out.read_text())
    assert rec["rows"] == json.loads(json.dumps(doc["rows"])) and rec["provenance"]["commit"]
    assert {"fp32_gflops", "bf16_gflops", "copy_gbs"} <= set(rec["peaks"])
    kinds = [r["kernel"] for r in rec["rows"]]
    assert kinds == ["knn fp32 K=40", "knn bf16 K=40", "coreset numba 0.02", "au_pro"]
    for r in rec["rows"][:2]:  # bytes and flops follow the accounting of the block size used
        prec = r["kernel"].split()[1]
        assert (r["flops"], r["bytes"]) == br.knn_accounting(300, 40, 24, r["rows_per_block"], prec)
        assert r["gflops"] == pytest.approx(r["flops"] / r["seconds"] / 1e9)
    assert rec["rows"][1]["same_neighbour_fraction"] == 1.0  # exact bf16 pre-selection
    assert rec["rows"][1]["max_abs_dist_diff_vs_fp32"] < 1e-3
    core = rec["rows"][2]
    assert core["bytes"] == br.coreset_accounting(core["full_distances"], 1200, 16)[1]
    assert core["selected"] == 24 and core["full_distances"] <= core["plain_greedy_distances"]
    assert rec["rows"][3]["maps"] == 4 and rec["rows"][3]["maps_per_s"] > 0
    matplotlib.pyplot.close(plotting.roofline(rec))
