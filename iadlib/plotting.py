"""Shared seaborn figures: score distributions, anomaly-map grids, metric bars, compare tables."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


def setup(context: str = "notebook") -> None:
    """One look for every chapter."""
    sns.set_theme(context=context, style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titlesize": "medium"})


def score_distributions(
    df: pd.DataFrame,
    score: str = "score",
    label: str = "label",
    col: str | None = None,
    hue_names: tuple[str, str] = ("normal", "anomalous"),
    col_wrap: int = 4,
    height: float = 2.6,
) -> sns.FacetGrid:
    """Histograms of image scores per class (``label`` 0/1), one panel per value of ``col``."""
    d = df.copy()
    d["class"] = np.where(d[label].to_numpy() == 1, hue_names[1], hue_names[0])
    g = sns.displot(
        d,
        x=score,
        hue="class",
        hue_order=list(hue_names),
        col=col,
        col_wrap=col_wrap if col else None,
        kind="hist",
        stat="density",
        common_norm=False,
        element="step",
        height=height,
        aspect=1.3,
        facet_kws={"sharex": False, "sharey": False},
    )
    g.set_titles("{col_name}" if col else "")
    return g


def map_grid(
    images: Sequence[np.ndarray],
    maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray | None] | None = None,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    ncols: int | None = None,
    vmax: float | None = None,
    cell: float = 1.9,
) -> plt.Figure:
    """Images with their anomaly maps overlaid (and ground-truth contours when masks are given).

    ``maps`` may be a list of per-row map stacks (one row per method) for a method × image grid;
    then ``row_labels`` names the rows.
    """
    rows = maps if isinstance(maps, list) and len(maps) and np.ndim(maps[0]) == 3 else [maps]
    n = len(images)
    ncols = ncols or n
    nrows = 1 + len(rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    for j in range(ncols):
        ax = axes[0, j]
        if j < n:
            img = images[j]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            if masks is not None and masks[j] is not None and np.any(masks[j]):
                ax.contour(masks[j].astype(float), levels=[0.5], colors="red", linewidths=0.8)
            if titles is not None:
                ax.set_title(titles[j], fontsize=8)
        ax.axis("off")
    for r, stack in enumerate(rows):
        stack = np.asarray(stack, dtype=np.float32)
        hi = vmax if vmax is not None else float(np.quantile(stack, 0.999))
        lo = float(np.quantile(stack, 0.01))
        for j in range(ncols):
            ax = axes[r + 1, j]
            if j < n:
                img = images[j]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
                ax.imshow(stack[j], cmap="inferno", alpha=0.55, vmin=lo, vmax=hi)
                if masks is not None and masks[j] is not None and np.any(masks[j]):
                    ax.contour(masks[j].astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            ax.axis("off")
        if row_labels is not None:
            axes[r + 1, 0].text(-0.05, 0.5, row_labels[r], transform=axes[r + 1, 0].transAxes,
                                ha="right", va="center", fontsize=9, rotation=90)
    fig.tight_layout()
    return fig


def metric_bars(df: pd.DataFrame, x: str, y: str = "value", hue: str | None = None, ax=None, **kw) -> plt.Axes:
    """Grouped bars of a metric (e.g. AUROC per category and method)."""
    ax = ax or plt.gca()
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax, **kw)
    ax.set_ylim(min(0.5, float(df[y].min()) - 0.05), 1.0)
    ax.tick_params(axis="x", rotation=30)
    return ax


def style_compare(df: pd.DataFrame, digits: int = 3):
    """A pandas Styler for reported-vs-reproduced tables: numbers rounded, Δ coloured."""
    num = df.select_dtypes("number").columns
    sty = df.style.format({c: f"{{:.{digits}f}}" for c in num}, na_rep="–")
    if "Δ" in df.columns:
        sty = sty.background_gradient(subset=["Δ"], cmap="RdBu", vmin=-0.2, vmax=0.2)
    return sty.hide(axis="index")


def roofline(record: dict) -> plt.Figure:
    """Roofline figure of a ``benchmarks/bench_roofline.py`` record (Williams et al., CACM 2009).

    x: arithmetic intensity (flop/byte), y: achieved GFLOP/s, both logarithmic. The roofs come from
    the record's measured peaks: the memory roof ``intensity × copy GB/s`` and the compute roofs of
    the float32 (solid) and bfloat16 (dashed) matrix products. One point per kernel row with a flop count,
    numbered beside the point and named in the legend (rows without one, such as AU-PRO, are left out).
    """
    from .errors import ConfigError

    missing = [k for k in ("peaks", "rows") if k not in record]
    if missing:
        raise ConfigError(f"roofline: the record lacks {missing}; pass a bench_roofline.py record")
    peaks = record["peaks"]
    for key in ("fp32_gflops", "copy_gbs"):
        if not (isinstance(peaks.get(key), (int, float)) and peaks[key] > 0):
            raise ConfigError(f"roofline: peaks[{key!r}] = {peaks.get(key)!r}; a measured value > 0 is needed")
    pts = pd.DataFrame([r for r in record["rows"] if r.get("flops") and r.get("gflops")])
    if pts.empty:
        raise ConfigError("roofline: no row of the record has a flop count (rows need 'flops', 'gflops', 'intensity')")
    bw = float(peaks["copy_gbs"])
    compute = {"fp32": float(peaks["fp32_gflops"])}
    if isinstance(peaks.get("bf16_gflops"), (int, float)) and peaks["bf16_gflops"] > 0:
        compute["bf16"] = float(peaks["bf16_gflops"])
    ridges = [p / bw for p in compute.values()]
    lo = min(float(pts["intensity"].min()), *ridges) / 4
    hi = max(float(pts["intensity"].max()), *ridges) * 4
    xs = np.geomspace(lo, hi, 200)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (name, peak), style in zip(compute.items(), ("-", "--"), strict=False):
        ax.plot(xs, np.minimum(peak, xs * bw), style, color="0.3", lw=1.4,
                label=f"roof: {name} matmul {peak:.0f} GFLOP/s, copy {bw:.1f} GB/s")
    pts["label"] = [f"{i + 1}: {k}" for i, k in enumerate(pts["kernel"])]
    sns.scatterplot(data=pts, x="intensity", y="gflops", hue="label", style="label", s=70, ax=ax, zorder=3)
    for i, (x, y) in enumerate(zip(pts["intensity"], pts["gflops"], strict=True)):
        ax.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -11), fontsize=8)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), xlabel="arithmetic intensity (flop/byte)",
           ylabel="achieved GFLOP/s")
    ymin = min(float(pts["gflops"].min()), lo * bw) / 2
    ax.set_ylim(ymin, max(compute.values()) * 2)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"roofline — {record.get('provenance', {}).get('device', 'device unknown')}")
    fig.tight_layout()
    return fig


def speedup_bars(df: pd.DataFrame, ax=None) -> plt.Axes:
    """Ratios anomalib ÷ ours of :func:`iadlib.book.perf.anomalib_table`: ``×fit`` and ``×predict``.

    One pair of horizontal bars per method/dataset row, on a logarithmic axis, each bar drawn from
    the parity line at 1 (drawn): a bar to the right means ours is faster by that factor, to the left
    slower. Rows without any ratio ("not measured") are left out; an extrapolated time is marked in
    the row's label. Each bar is labelled with its value.
    """
    from .errors import ConfigError

    missing = [c for c in ("method", "dataset", "×fit", "×predict") if c not in df.columns]
    if missing:
        raise ConfigError(f"speedup_bars: the table lacks columns {missing}; pass perf.anomalib_table(...)")
    rows = df[df[["×fit", "×predict"]].notna().any(axis=1)]
    if rows.empty:
        raise ConfigError("speedup_bars: no row has a ×fit or ×predict ratio (no anomalib record measured yet)")
    labels = [
        f"{m} · {d}" + (" (extrapolated)" if isinstance(x, (bool, np.bool_)) and x else "")
        for m, d, x in zip(rows["method"], rows["dataset"], rows.get("extrapolated", [False] * len(rows)), strict=True)
    ]
    long = pd.DataFrame({"row": labels, "fit": rows["×fit"].to_numpy(), "predict": rows["×predict"].to_numpy()})
    long = long.melt(id_vars="row", var_name="ratio", value_name="anomalib ÷ ours").dropna()
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 1.2 + 0.5 * len(labels)))
    sns.barplot(data=long, y="row", x="anomalib ÷ ours", hue="ratio", hue_order=["fit", "predict"],
                order=labels, orient="h", errorbar=None, ax=ax)
    for container in ax.containers:  # redraw each bar from the parity line (1) to its value
        for bar in container:
            if not np.isfinite(bar.get_width()) or bar.get_width() <= 0:
                continue
            v = bar.get_width()
            bar.set_x(1.0)
            bar.set_width(v - 1.0)
            ax.annotate(f"×{v:.3g}", (v, bar.get_y() + bar.get_height() / 2), xytext=(3 if v >= 1 else -3, 0),
                        textcoords="offset points", va="center", ha="left" if v >= 1 else "right", fontsize=8)
    values = long["anomalib ÷ ours"].to_numpy(dtype=float)
    ax.axvline(1.0, color="0.2", lw=1.2, ls="--", label="parity (1)")
    ax.set_xscale("log")
    ax.set_xlim(min(values.min(), 1.0) / 2.5, max(values.max(), 1.0) * 2.5)
    ax.set(ylabel="", xlabel="anomalib ÷ ours (> 1: ours faster; log scale)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("anomalib side by side: fit and predict time ratios")
    ax.figure.tight_layout()
    return ax
