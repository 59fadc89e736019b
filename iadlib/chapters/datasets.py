"""Chapter 0 — the datasets: what each benchmark is, its protocol, counts and example images.

The notebook ``notebooks/00_datasets.ipynb`` calls :func:`run` (build or load every benchmark of
the profile and write one record per dataset/category to the results store: split sizes and the
time it took), then the table and figure helpers below. Reported dataset statistics (MVTec AD
counts from the ALGAN thesis' Table 5.1, MTD, COIL-100, ELPV) live in ``book/reported/datasets.csv``.

Command line (the generator command of the README)::

    python -m iadlib.chapters.datasets generate --profile quick [--root DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..data import get_dataset
from ..data.base import ADDataset, Split
from ..data.synth import LOCO_CATEGORIES, TEXTURE_CATEGORIES, TEXTURE_DEFECTS
from ..errors import DatasetError
from ..results import ResultStore
from . import check_choice, check_run_args, get_profile

CHAPTER = "datasets"

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "textures": ["brick"],
        "texture_cfg": {"image_size": 64, "n_train": 4, "n_test_good": 2, "n_test_defect": 7},
        "loco": ["flat_connector"],
        "loco_cfg": {"image_size": 96, "n_train": 3, "n_validation": 1, "n_test_good": 2,
                     "n_test_logical": 2, "n_test_structural": 2},
        "elpv": False,
        "one_class": [("digits", 0)],
    },
    "quick": {
        "textures": list(TEXTURE_CATEGORIES),
        "texture_cfg": {"image_size": 256, "n_train": 80, "n_test_good": 25, "n_test_defect": 50},
        "loco": list(LOCO_CATEGORIES),
        "loco_cfg": {"image_size": 256, "n_train": 60, "n_validation": 10, "n_test_good": 20,
                     "n_test_logical": 20, "n_test_structural": 20},
        "elpv": True,
        "one_class": [("digits", 0), ("fashion_mnist", 0), ("mnist", 0), ("cifar10", 0)],
    },
    "full": {
        "textures": list(TEXTURE_CATEGORIES),
        "texture_cfg": {"image_size": 256, "n_train": 240, "n_test_good": 40, "n_test_defect": 105},
        "loco": list(LOCO_CATEGORIES),
        "loco_cfg": {"image_size": 256, "n_train": 200, "n_validation": 30, "n_test_good": 60,
                     "n_test_logical": 60, "n_test_structural": 60},
        "elpv": True,
        "one_class": [("digits", 0), ("fashion_mnist", 0), ("mnist", 0), ("cifar10", 0)],
    },
}  # fmt: skip

PROTOCOLS = pd.DataFrame(
    [
        ("MVTec AD", "Bergmann et al. 2019", "train/good of 15 categories", "test/* (good + defect types)",
         "ALGAN: 50 % of the test set (seeded)", "pixel masks"),
        ("MVTec LOCO AD", "Bergmann et al. 2022", "train/good", "test/good, logical, structural",
         "validation/good", "one mask per region + saturation"),
        ("MIAD", "Bao et al. 2022", "train/good of 7 scenarios", "test/*", "—", "pixel masks"),
        ("MTD", "Huang et al. 2020", "50 % of MT_Free", "25 % MT_Free + 50 % defects",
         "25 % MT_Free + 50 % defects", "pixel masks"),
        ("COIL-100", "Nene et al. 1996", "60 % of 10 normal objects", "20 % normal + 50 % of 90 others",
         "20 % normal + 50 % of 90 others", "image labels"),
        ("MNIST / Fashion-MNIST / CIFAR-10", "Bergmann et al. 2020 (suppl.)", "all train images of 1 class",
         "whole test set (1 class normal, 9 anomalous)", "ALGAN variant: half the test set", "image labels"),
        ("ELPV", "Deitsch et al. 2019", "p = 0 cells not held out", "p = 1 cells + as many p = 0",
         "—", "image labels"),
        ("synth_textures", "this book", "normal crops", "normal crops + 7 defect types", "ALGAN option",
         "exact pixel masks"),
        ("synth_loco", "this book (after Saghir 2024)", "train/good", "good, logical, structural",
         "validation/good", "regions + saturation"),
    ],
    columns=["dataset", "source", "train", "test", "validation", "ground truth"],
)  # fmt: skip


def _split_counts(split: Split | None) -> tuple[int, int]:
    if split is None:
        return 0, 0
    lab = split.labels
    return int((lab == 0).sum()), int((lab == 1).sum())


def _record(store: ResultStore, params: dict[str, Any], ds: ADDataset, seconds: float) -> dict[str, Any]:
    """One record: split sizes as metrics, build time / image shape / defect types as extras."""
    tr_n, _ = _split_counts(ds.train)
    te_n, te_a = _split_counts(ds.test)
    va_n, va_a = _split_counts(ds.validation)
    shapes = {tuple(ds.train[i].image.shape) for i in range(min(3, len(ds.train)))}
    metrics = {"n_train": tr_n, "n_test_normal": te_n, "n_test_anomalous": te_a, "n_validation": va_n + va_a,
               "n_total": tr_n + te_n + te_a + va_n + va_a}  # fmt: skip
    extra = {
        "build_seconds": seconds,
        "image_shape": sorted(shapes)[0] if shapes else None,
        "defect_types": sorted(set(ds.test.defects) - {"good"}),
        "has_masks": bool(ds.info.get("has_masks", False)),
    }
    return store.put(CHAPTER, params, metrics, extra)


def run(profile: str = "quick", seed: int = 0, results_dir: str | None = None, force: bool = False,
        data_root: str | None = None) -> dict[tuple[str, str], ADDataset]:  # fmt: skip
    """Build (generate on first use) every benchmark of the profile and record its split sizes.

    Returns ``{(dataset, category): ADDataset}`` plus ``"skipped"``: ``{name: error}`` for the
    datasets that are not installed (MNIST, CIFAR-10, Fashion-MNIST without the Debian package).
    """
    check_run_args(PROFILES, profile, seed=seed)  # fail before any work
    prof = get_profile(PROFILES, profile)
    store = ResultStore(results_dir)
    out: dict[Any, Any] = {}
    skipped: dict[str, str] = {}
    jobs: list[tuple[str, Any, dict[str, Any]]] = []
    for cat in prof["textures"]:
        cfg = dict(prof["texture_cfg"])
        if data_root:
            cfg["root"] = f"{data_root}/synth_textures"
        jobs.append(("synth_textures", cat, cfg))
    for cat in prof["loco"]:
        cfg = dict(prof["loco_cfg"])
        if data_root:
            cfg["root"] = f"{data_root}/synth_loco"
        jobs.append(("synth_loco", cat, cfg))
    if prof["elpv"]:
        jobs += [("elpv", "mono", {}), ("elpv", "poly", {})]
    jobs += [(name, cls, {}) for name, cls in prof["one_class"]]
    for name, cat, cfg in jobs:
        t0 = time.perf_counter()
        try:
            ds = get_dataset(name, category=cat, seed=seed, **cfg)
        except DatasetError as exc:
            skipped[f"{name}/{cat}"] = str(exc)
            continue
        seconds = time.perf_counter() - t0
        params = _params(name, cat, {k: v for k, v in cfg.items() if k != "root"}, profile, seed)
        if force or not store.has(CHAPTER, params):
            _record(store, params, ds, seconds)
        out[(name, str(cat))] = ds
    out["skipped"] = skipped
    return out


def _params(name: str, cat: Any, cfg: dict, profile: str, seed: int) -> dict[str, Any]:
    return {"paper": "", "table": "", "method": "loader", "dataset": name, "category": str(cat),
            "dataset_cfg": cfg, "profile": profile, "seed": seed}  # fmt: skip


def counts_table(results_dir: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """Split sizes of every recorded dataset/category (one row each), from the results store."""
    df = ResultStore(results_dir).frame(CHAPTER)
    if df.empty:
        return df
    if profile is not None:
        df = df[df["profile"] == profile]
    wide = df.pivot_table(index=["dataset", "category"], columns="metric", values="value", aggfunc="first")
    cols = ["n_train", "n_validation", "n_test_normal", "n_test_anomalous", "n_total"]
    wide = wide[[c for c in cols if c in wide.columns]].astype(int)
    extra = df.drop_duplicates(["dataset", "category"]).set_index(["dataset", "category"])
    wide["image"] = extra["x_image_shape"].map(lambda s: "×".join(map(str, s)) if isinstance(s, list) else "")
    wide["masks"] = extra["x_has_masks"]
    wide["build s"] = extra["x_build_seconds"].round(1)
    return wide.reset_index()


def reported_comparison(results_dir: str | None = None) -> pd.DataFrame:
    """Reported dataset statistics (``book/reported/datasets.csv``) beside the loaders' counts."""
    from ..results import compare_table, load_reported

    rep = load_reported(CHAPTER)
    df = ResultStore(results_dir).frame(CHAPTER)
    if df.empty:
        mine = pd.DataFrame(columns=["dataset", "category", "metric", "value"])
    else:
        mine = df.groupby(["dataset", "category", "metric"], as_index=False)["value"].first()
        # the loaders hold out test/validation parts: totals over both ELPV types are comparable
        el = mine[(mine["dataset"] == "elpv") & (mine["metric"] == "n_total")]
        if len(el) == 2:
            both = {"dataset": "elpv", "category": "all", "metric": "n_total", "value": el["value"].sum()}
            mine = pd.concat([mine, pd.DataFrame([both])], ignore_index=True)
    rep = rep.assign(category=rep["category"].fillna("all").astype(str))
    subst = {"mvtec_ad": "synth_textures stands in (MVTec AD is not available offline)",
             "mtd": "not available offline", "coil100": "not available offline", "elpv": ""}  # fmt: skip
    table = compare_table(mine, rep, on=["dataset", "category", "metric"], substitution=subst)
    table = table.merge(rep[["dataset", "category", "metric", "source", "note"]], how="left",
                        on=["dataset", "category", "metric"])  # fmt: skip
    table = table.dropna(subset=["reported"])
    return table[table["dataset"] != "mvtec_ad"].reset_index(drop=True)


def mvtec_vs_synth(results_dir: str | None = None, profile: str | None = None) -> pd.DataFrame:
    """MVTec AD's split sizes as reported (ALGAN thesis Table 5.1) above those of ``synth_textures``."""
    from ..results import load_reported

    rep = load_reported(CHAPTER)
    rep = rep[rep["dataset"] == "mvtec_ad"]
    rep = rep.pivot_table(index="category", columns="metric", values="value", aggfunc="first")
    rep.index = pd.MultiIndex.from_product([["MVTec AD (reported)"], rep.index])
    cnt = counts_table(results_dir, profile)
    ours = pd.DataFrame()
    if not cnt.empty:
        ours = cnt[cnt["dataset"] == "synth_textures"].set_index("category")
        ours.index = pd.MultiIndex.from_product([["synth_textures (this book)"], ours.index])
    cols = ["n_train", "n_test_normal", "n_test_anomalous"]
    out = pd.concat([rep[cols], ours[cols]] if len(ours) else [rep[cols]])
    return out.astype(int)


def defect_table(ds: ADDataset) -> pd.DataFrame:
    """Per defect type of a synthetic benchmark: count, severities, median area and contrast."""
    rows = []
    for s in ds.test:
        if s.label == 0:
            continue
        rows.append({"defect": s.defect, "severity": s.meta.get("severity", ""),
                     "area_px": int(s.mask.sum()) if s.mask is not None else np.nan,
                     "mean_abs_change": s.meta.get("mean_abs_change", np.nan),
                     "regions": len(s.regions) if s.regions is not None else 1})  # fmt: skip
    return pd.DataFrame(rows)


def defect_statistics(datasets: dict, kind: str = "synth_textures") -> pd.DataFrame:
    """:func:`defect_table` of every category of ``kind``, stacked with a ``category`` column."""
    frames = []
    for key, ds in datasets.items():
        if isinstance(key, tuple) and key[0] == kind:
            frames.append(defect_table(ds).assign(category=key[1]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def loco_region_table(datasets: dict) -> pd.DataFrame:
    """Every annotated region of the LOCO-style test sets: defect, kind, area and saturation area."""
    rows = []
    for key, ds in datasets.items():
        if not (isinstance(key, tuple) and key[0] == "synth_loco"):
            continue
        for s in ds.test:
            for name, reg, sat in zip(s.meta.get("region_defects", []), s.regions or [], s.saturations or []):
                rows.append({"category": key[1], "kind": s.defect.split("_")[0], "defect": name,
                             "area_px": int(reg.sum()), "saturation_px": float(sat)})  # fmt: skip
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return (
        df.groupby(["category", "kind", "defect"])
        .agg(
            regions=("area_px", "size"),
            median_area_px=("area_px", "median"),
            median_saturation_px=("saturation_px", "median"),
        )  # fmt: skip
        .reset_index()
    )


def _outline(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask)


def _overlay(image: np.ndarray, masks: Sequence[np.ndarray], colour=(255, 40, 40)) -> np.ndarray:
    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    rgb = rgb.copy()
    for m in masks:
        rgb[_outline(m)] = colour
    return rgb


def texture_gallery(datasets: dict, categories: Sequence[str] | None = None, show_masks: bool = True):
    """One row per texture category: a normal image and one example of each defect type, outlined."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="white")
    keys = [k for k in datasets if isinstance(k, tuple) and k[0] == "synth_textures"]
    if categories is not None:
        keys = [k for k in keys if k[1] in categories]
    cols = ["good", *TEXTURE_DEFECTS]
    fig, axes = plt.subplots(len(keys), len(cols), figsize=(1.6 * len(cols), 1.7 * len(keys)), squeeze=False)
    for r, key in enumerate(keys):
        ds = datasets[key]
        defects = ds.test.defects
        for c, d in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if d not in defects:
                ax.axis("off")
                continue
            s = ds.test[defects.index(d)]
            img = _overlay(s.image, [s.mask] if show_masks and s.mask is not None and s.mask.any() else [])
            ax.imshow(img, cmap="gray")
            if r == 0:
                ax.set_title(d, fontsize=9)
            if c == 0:
                ax.set_ylabel(key[1], fontsize=9)
            if d != "good":
                ax.set_xlabel(s.meta.get("severity", ""), fontsize=7)
    fig.tight_layout()
    return fig


def loco_gallery(datasets: dict, per_kind: int = 3):
    """Per LOCO category: good, logical and structural examples with each region outlined."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="white")
    keys = [k for k in datasets if isinstance(k, tuple) and k[0] == "synth_loco"]
    kinds = ["good", "logical_anomalies", "structural_anomalies"]
    ncol = per_kind * len(kinds)
    fig, axes = plt.subplots(len(keys), ncol, figsize=(1.7 * ncol, 1.9 * len(keys)), squeeze=False)
    palette = [(255, 40, 40), (40, 200, 255)]
    for r, key in enumerate(keys):
        ds = datasets[key]
        defects = np.array(ds.test.defects)
        for k, kind in enumerate(kinds):
            idx = np.flatnonzero(defects == kind)[:per_kind]
            for j in range(per_kind):
                ax = axes[r, k * per_kind + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(idx):
                    ax.axis("off")
                    continue
                s = ds.test[int(idx[j])]
                img = s.image.copy()
                for q, reg in enumerate(s.regions or []):
                    img = _overlay(img, [reg], palette[q % 2])
                ax.imshow(img)
                names = s.meta.get("region_defects", [])
                ax.set_xlabel("\n".join(names) if names else "good", fontsize=7)
                if j == 0 and r == 0:
                    ax.set_title(kind.replace("_", " "), fontsize=9, loc="left")
            axes[r, 0].set_ylabel(key[1], fontsize=9)
    fig.tight_layout()
    return fig


def elpv_gallery(datasets: dict, per_class: int = 4):
    """ELPV cells: functional (p = 0) and defective (p = 1) examples of both cell types."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="white")
    keys = [k for k in datasets if isinstance(k, tuple) and k[0] == "elpv"]
    if not keys:
        return None
    fig, axes = plt.subplots(len(keys), 2 * per_class, figsize=(1.5 * 2 * per_class, 1.8 * len(keys)),
                             squeeze=False)  # fmt: skip
    for r, key in enumerate(keys):
        test = datasets[key].test
        for lab in (0, 1):
            idx = np.flatnonzero(test.labels == lab)[:: max(1, int((test.labels == lab).sum()) // per_class)]
            for j in range(per_class):
                ax = axes[r, lab * per_class + j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j >= len(idx):
                    ax.axis("off")
                    continue
                s = test[int(idx[j])]
                ax.imshow(s.image, cmap="gray", vmin=0, vmax=255)
                ax.set_xlabel(f"p = {s.meta.get('probability', lab):.0f}", fontsize=7)
            axes[r, 0].set_ylabel(key[1], fontsize=9)
    fig.tight_layout()
    return fig


def defect_size_figure(stats: pd.DataFrame):
    """Defect area against contrast per defect type and severity (seaborn scatter, log area)."""
    import seaborn as sns
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    from ..data.synth import SEVERITIES

    sns.set_theme(style="whitegrid")
    hue = [d for d in TEXTURE_DEFECTS if d in set(stats["defect"])]
    style = [s for s in SEVERITIES if s in set(stats["severity"])]
    g = sns.relplot(data=stats, x="area_px", y="mean_abs_change", hue="defect", style="severity",
                    hue_order=hue, style_order=style, height=3.6, aspect=1.6)  # fmt: skip
    g.set(xscale="log", xlabel="defect area (pixels, log scale)", ylabel="mean |Δ| in the mask (grey levels)")
    g.ax.xaxis.set_major_formatter(ScalarFormatter())
    g.ax.xaxis.set_minor_formatter(NullFormatter())
    g.figure.tight_layout()
    return g.figure


def one_class_table(datasets: dict) -> pd.DataFrame:
    """Split sizes of the one-class protocol for each 10-class set that is installed."""
    rows = []
    for key, ds in datasets.items():
        if isinstance(key, tuple) and key[0] in ("digits", "mnist", "fashion_mnist", "cifar10"):
            te_n, te_a = _split_counts(ds.test)
            rows.append({"dataset": key[0], "normal class": f"{key[1]} ({ds.info['normal_class_name']})",
                         "train (normal)": len(ds.train), "test normal": te_n, "test anomalous": te_a,
                         "image": "×".join(map(str, ds.train[0].image.shape))})  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m iadlib.chapters.datasets generate --profile quick [--root DIR] [--seed N]``."""
    ap = argparse.ArgumentParser(
        prog="python -m iadlib.chapters.datasets", description=__doc__.splitlines()[0]
    )
    ap.add_argument("command", choices=["generate"])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--root", default=None, help="folder for synth_textures/ and synth_loco/ (default: cache)"
    )
    args = ap.parse_args(argv)
    check_choice("profile", args.profile, list(PROFILES))
    prof = PROFILES[args.profile]
    for name, cats, cfg in (("synth_textures", prof["textures"], prof["texture_cfg"]),
                            ("synth_loco", prof["loco"], prof["loco_cfg"])):  # fmt: skip
        for cat in cats:
            t0 = time.perf_counter()
            kw = dict(cfg)
            if args.root:
                kw["root"] = f"{args.root}/{name}"
            ds = get_dataset(name, category=cat, seed=args.seed, **kw)
            print(f"{name}/{cat}: {ds} in {time.perf_counter() - t0:.1f} s → {ds.info['root']}")


if __name__ == "__main__":  # pragma: no cover
    main()
