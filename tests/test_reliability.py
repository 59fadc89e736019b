"""Reliability as a user meets it (issue #12): bad parameters, killed runs, divergence, reproducibility.

* Wrong notebook parameters (profile, device, seed, method, dataset, category, chapter options)
  fail before any training with a :class:`ConfigError` listing the valid values.
* A run SIGKILLed mid-fit or mid-write leaves no record that is read as one; the rerun completes.
  A checkpoint killed mid-write is the old or the new one, never a corrupt one.
* A diverging fit names the step and the last good checkpoint.
* Same seed on the CPU → bitwise identical scores; checkpoints refuse a mismatched model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from iadlib.chapters import algan, datasets, loco, metrics_primer, miad, mixer_ae, students
from iadlib.data import Split, get_dataset
from iadlib.data.base import ADDataset
from iadlib.errors import CheckpointError, ConfigError, TrainingError
from iadlib.experiment import run_experiment
from iadlib.models import get_model, load_model
from iadlib.models.base import FORMAT_VERSION, NO_CHECKPOINT, Detector, check_loss
from iadlib.models.draem import DRAEM
from iadlib.models.unet_ae import UNetAE
from iadlib.results import ResultStore
from iadlib.utils import resolve_device

REPO = Path(__file__).resolve().parent.parent
PROFILES = "smoke, quick, full"
TINY_AE = dict(image_size=32, width=2, depth=3, latent=4, epochs=2, batch_size=4, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_arrays(seed: int = 0, n_train: int = 8, size: int = 32):
    rng = np.random.default_rng(seed)
    train = rng.integers(90, 110, (n_train, size, size), dtype=np.uint8)
    test = rng.integers(90, 110, (6, size, size), dtype=np.uint8)
    masks = np.zeros((6, size, size), bool)
    test[3:, 10:20, 10:20] = 250
    masks[3:, 10:20, 10:20] = True
    return train, test, masks


def _tiny_dataset(seed: int = 0) -> ADDataset:
    train, test, masks = _tiny_arrays(seed)
    return ADDataset("toy", "c", Split.from_arrays(train), Split.from_arrays(test, [0, 0, 0, 1, 1, 1], masks))


# --- 1. wrong parameters fail before any training --------------------------------------------------


class TrainingStarted(Exception):
    pass


@pytest.fixture
def no_training(monkeypatch):
    """Any gradient step or detector fit fails the test: validation must come first."""

    def boom(*args, **kwargs):
        raise TrainingStarted("training started before the parameters were validated")

    monkeypatch.setattr(torch.Tensor, "backward", boom)
    monkeypatch.setattr(Detector, "fit", boom)


BAD_PARAMETERS = [
    # (entry point, keyword arguments, text the error must contain)
    *[(f, {"profile": "nope"}, f"unknown profile 'nope'; valid: {PROFILES}") for f in (
        datasets.run, metrics_primer.run_all, metrics_primer.image_level, metrics_primer.pixel_level,
        metrics_primer.thresholds_part, metrics_primer.calibration_part, metrics_primer.pro_curves,
        students.run_figure1, students.run_tables, mixer_ae.run, mixer_ae.load_benchmark, miad.plan, miad.run,
        algan.run_toy, algan.run_main, algan.run_sweeps, algan.run_oneclass, algan.run_robustness, algan.run_all,
        loco.methods, loco.run, loco.run_ablation, loco.run_curves, loco.example_images,
    )],  # fmt: skip
    *[(f, {"profile": "smoke", "device": "gpu0"}, "unknown device 'gpu0'; valid: 'auto', 'cpu', 'cuda'") for f in (
        metrics_primer.run_all, metrics_primer.pixel_level, students.run_figure1, students.run_tables,
        mixer_ae.run, miad.run, algan.run_toy, algan.run_main, algan.run_sweeps, algan.run_oneclass,
        algan.run_robustness, algan.run_all, loco.run, loco.run_ablation, loco.run_curves,
    )],  # fmt: skip
    *[(f, {"profile": "smoke", "seed": "0"}, "seed must be an integer, got '0'") for f in (
        datasets.run, metrics_primer.run_all, algan.run_toy, algan.run_main, algan.run_oneclass, algan.run_all,
        loco.run, loco.run_ablation, loco.run_curves,
    )],  # fmt: skip
    (miad.plan, {"profile": "smoke", "methods": ["patchcor"]}, "unknown method 'patchcor'; valid: "),
    (miad.run, {"profile": "smoke", "methods": ["patchcor"]}, "unknown method 'patchcor'; valid: "),
    (loco.run, {"profile": "smoke", "only": ["patchcor"]}, "unknown method 'patchcor'; valid: patchcore"),
    (loco.load_dataset, {"profile": "smoke", "category": "pushpins"}, "unknown category 'pushpins'; valid: "),
    (mixer_ae.run, {"profile": "smoke", "variants": ["mixer"]}, "unknown variant 'mixer'; valid: baseline"),
    (students.table_view, {"tables": None, "dataset": "mvtec"}, "unknown dataset 'mvtec'; valid: "),
    (get_model, {"name": "patchcor"}, "unknown model 'patchcor'; valid: algan_feature"),
    (get_dataset, {"name": "mvtec"}, "unknown dataset 'mvtec'; valid: cifar10"),
    (get_dataset, {"name": "synth_textures", "category": "bricks"}, "category 'bricks'; valid: brick, grass"),
    (get_dataset, {"name": "elpv", "category": "mono2"}, "category 'mono2'; valid: mono, poly"),
    (run_experiment, {"chapter": "t", "method": "patchcor", "dataset": "synth_textures"}, "unknown method 'patchcor'"),
    (run_experiment, {"chapter": "t", "method": "patchcore", "dataset": "mvtec"}, "unknown dataset 'mvtec'"),
    (run_experiment, {"chapter": "t", "method": "unet_ae", "dataset": "synth_textures", "model_cfg": {"epoch": 3}},
     "bad configuration for model 'unet_ae': got an unexpected keyword argument 'epoch'; valid options: "
     "image_size, batch_size, epochs"),
    (run_experiment, {"chapter": "t", "method": "unet_ae", "dataset": "synth_textures",
                      "dataset_cfg": {"categry": "brick"}}, "unexpected keyword argument 'categry'; valid options: "
                                                            "category, root"),
    (run_experiment, {"chapter": "t", "method": "unet_ae", "dataset": "synth_textures",
                      "dataset_cfg": {"category": "bricks"}}, "category 'bricks'; valid: brick, grass"),
    (resolve_device, {"device": "cuda0"}, "unknown device 'cuda0'"),
]


#: Every chapter entry point also validates ``seed`` (``check_run_args``) before any data or training.
BAD_PARAMETERS += [
    (f, {"profile": "smoke", "seed": "0"}, "seed must be an integer, got '0'")
    for f in (students.run_figure1, students.run_tables, miad.run, mixer_ae.run)
]


def _case(f, kw, message, marks=()):
    ident = f"{f.__module__.rsplit('.', 1)[-1]}.{f.__name__}-{'-'.join(map(str, kw.values()))}"
    ident = "".join(c if c.isalnum() or c in "._-" else "_" for c in ident)
    return pytest.param(f, kw, message, id=ident, marks=marks)


@pytest.mark.parametrize(
    "entry, kwargs, message",
    [_case(*c) for c in BAD_PARAMETERS],
)
def test_bad_parameters_fail_fast_listing_valid_values(entry, kwargs, message, no_training, tmp_path):
    import inspect

    params = inspect.signature(entry).parameters
    if "results_dir" in params:
        kwargs = {**kwargs, "results_dir": str(tmp_path)}
    if "store" in params and entry is run_experiment:
        kwargs = {**kwargs, "store": ResultStore(tmp_path)}
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        entry(**kwargs)
    assert message in str(err.value)
    assert time.perf_counter() - t0 < 20, "validation must not wait for data generation"
    assert not list(tmp_path.rglob("*.json")), "a record was written for an invalid run"


def test_papermill_run_with_unknown_profile_fails_in_the_first_cells(tmp_path):
    """The user's view: the notebook stops with the ConfigError listing the profiles, nothing recorded."""
    pm = pytest.importorskip("papermill")
    out = tmp_path / "out.ipynb"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(REPO / "notebooks" / "00_metrics.ipynb"),
            str(out),
            parameters={"profile": "fast", "results_dir": str(tmp_path / "results")},
            kernel_name="python3",
            progress_bar=False,
            cwd=str(tmp_path),
            env=env,
        )
    assert err.value.ename == "ConfigError"
    assert f"unknown profile 'fast'; valid: {PROFILES}" in err.value.evalue
    assert not list((tmp_path / "results").rglob("*.json")) if (tmp_path / "results").exists() else True


NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb") if not p.name.startswith("99"))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_stops_at_a_bad_profile_before_training(name, no_training, tmp_path, request, monkeypatch):
    """Each chapter notebook's code cells, run in order with ``profile="fast"``: a ConfigError listing
    the profiles comes before any training (cells run in-process, shell and magic lines dropped)."""
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    nb = json.loads((REPO / "notebooks" / name).read_text())
    ns: dict = {}
    with pytest.raises(ConfigError, match=f"unknown profile 'fast'; valid: {PROFILES}"):
        for cell in (c for c in nb["cells"] if c["cell_type"] == "code"):
            src = "".join(cell["source"])
            if "parameters" in cell.get("metadata", {}).get("tags", []):
                exec(src, ns)
                ns.update(profile="fast", results_dir=str(tmp_path / "results"))
                continue
            exec("\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!"))), ns)
    assert not list(tmp_path.rglob("*.json"))


# --- 2. killed runs: no partial record, clean rerun -------------------------------------------------

# The child runs run_experiment on the tiny dataset and stops (sleeps) at one point, announced on
# stdout, where the parent SIGKILLs it: inside fit, after writing the predictions' temp file, or
# after writing the record's temp file but before its atomic rename.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from iadlib.data import Split
    from iadlib.data.base import ADDataset
    from iadlib.experiment import run_experiment
    from iadlib.models.unet_ae import UNetAE
    from iadlib.results import ResultStore
    import iadlib.utils as U

    point = sys.argv[1]

    def stop(tag):
        print(tag, flush=True)
        time.sleep(600)

    if point == "fit":
        orig = UNetAE._fit
        def _fit(self, images):
            orig(self, images)
            stop("STOP")
        UNetAE._fit = _fit
    else:
        real_replace = os.replace
        def replace(src, dst):
            if str(dst).endswith(point):  # ".npz" or ".json": the temp file is complete, not renamed
                stop("STOP")
            real_replace(src, dst)
        U.os.replace = replace
    z = np.load(sys.argv[3])
    ds = ADDataset("toy", "c", Split.from_arrays(z["train"]), Split.from_arrays(z["test"], z["labels"], z["masks"]))
    cfg = json.loads(sys.argv[4])
    run_experiment("t", "unet_ae", ds, cfg, store=ResultStore(sys.argv[2]), device="cpu")
    print("DONE", flush=True)
    """
)


def _start_child(tmp_path: Path, point: str, root: Path) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    train, test, masks = _tiny_arrays()
    np.savez(tmp_path / "data.npz", train=train, test=test, masks=masks, labels=np.array([0, 0, 0, 1, 1, 1]))
    cfg = json.dumps({k: v for k, v in TINY_AE.items() if k != "device"})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, str(script), point, str(root), str(tmp_path / "data.npz"), cfg],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(tmp_path),
    )  # fmt: skip


def _kill_at_stop(proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    line = ""
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if line.strip() in ("STOP", "DONE") or (not line and proc.poll() is not None):
            break
    assert line.strip() == "STOP", f"child did not reach its stop point: {line!r} {proc.stderr.read()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("point", ["fit", ".npz", ".json"])
def test_run_killed_leaves_no_record_and_reruns_cleanly(tmp_path, point):
    root = tmp_path / "results"
    proc = _start_child(tmp_path, point, root)
    _kill_at_stop(proc)

    store = ResultStore(root)
    folder = root / "t"
    assert list(store.records("t")) == [] and store.frame("t").empty
    visible = sorted(p.name for p in folder.glob("*")) if folder.exists() else []
    shown = [n for n in visible if not n.startswith(".")]
    # the predictions (.npz, complete: written atomically) come before the record; without the record
    # they are never used, and the rerun overwrites them
    assert shown == ([] if point != ".json" else [n for n in shown if n.endswith(".npz")][:1]), visible
    assert not [n for n in shown if n.endswith(".json")], f"partial record visible: {visible}"
    leftovers = store.stale_temp_files("t")
    assert len(leftovers) == {"fit": 0, ".npz": 1, ".json": 1}[point]  # the killed writer's temp files
    if point == ".json":  # the record's temp file is complete JSON, yet never read as a record
        tmp_rec = next(p for p in leftovers if ".json." in p.name)
        assert json.loads(tmp_rec.read_text())["chapter"] == "t"

    cfg = {k: v for k, v in TINY_AE.items() if k != "device"}
    rec = run_experiment("t", "unet_ae", _tiny_dataset(), cfg, store=store, device="cpu")
    assert store.stale_temp_files("t") == []  # the rerun removed what the killed one left
    docs = list(store.records("t"))
    assert len(docs) == 1 and docs[0]["key"] == rec["key"]
    assert set(rec["metrics"]) >= {"image_auroc", "pixel_auroc"} and 0 <= rec["metrics"]["image_auroc"] <= 1
    assert sorted(p.name for p in folder.glob("*")) == sorted([f"{rec['key']}.json", f"{rec['key']}.npz"])
    with np.load(rec["extra"]["predictions"]) as z:
        assert z["scores"].shape == (6,)
    again = run_experiment("t", "unet_ae", _tiny_dataset(), cfg, store=store, device="cpu")
    assert again["provenance"]["timestamp"] == rec["provenance"]["timestamp"]  # reused, not recomputed


def test_corrupt_record_is_skipped_and_recomputed(tmp_path):
    """A record torn by something else (a copy, a full disk) is neither read nor trusted: it is redone."""
    store = ResultStore(tmp_path)
    cfg = {k: v for k, v in TINY_AE.items() if k != "device"}
    rec = run_experiment("t", "unet_ae", _tiny_dataset(), cfg, store=store, device="cpu")
    path = tmp_path / "t" / f"{rec['key']}.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.warns(UserWarning, match=f"{path.name}: unreadable result record"):
        assert list(store.records("t")) == []
    with pytest.warns(UserWarning, match="unreadable result record"):
        again = run_experiment("t", "unet_ae", _tiny_dataset(), cfg, store=store, device="cpu")
    assert again["provenance"]["timestamp"] >= rec["provenance"]["timestamp"]
    assert json.loads(path.read_text())["metrics"] == again["metrics"]


SYNTH_CHILD = textwrap.dedent(
    """
    import sys, time
    import iadlib.data.synth as S
    from iadlib.data import get_dataset
    calls = [0]
    real = S._save_png
    def save(arr, path):
        calls[0] += 1
        if calls[0] == 6:  # a torn PNG, then the kill
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(20))
            print("STOP", flush=True)
            time.sleep(600)
        real(arr, path)
    S._save_png = save
    get_dataset("synth_textures", category="brick", root=sys.argv[1], seed=1, image_size=64, n_train=3,
                n_test_good=2, n_test_defect=4)
    print("DONE", flush=True)
    """
)


def test_dataset_generation_killed_midway_is_regenerated(tmp_path):
    """A synthetic benchmark whose generation was SIGKILLed is not read half-written: it is generated again."""
    script = tmp_path / "gen.py"
    script.write_text(SYNTH_CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "data")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    _kill_at_stop(proc)
    cfg = dict(category="brick", seed=1, image_size=64, n_train=3, n_test_good=2, n_test_defect=4)
    ds = get_dataset("synth_textures", root=tmp_path / "data", cache=True, **cfg)
    fresh = get_dataset("synth_textures", root=tmp_path / "fresh", cache=True, **cfg)
    assert len(ds.train) == 3 and len(ds.test) == 6
    for a, b in zip(list(ds.train) + list(ds.test), list(fresh.train) + list(fresh.test)):
        np.testing.assert_array_equal(a.image, b.image)


SAVER = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from iadlib.models import load_model
    a, b = load_model(sys.argv[1], device="cpu"), load_model(sys.argv[2], device="cpu")
    target = sys.argv[3]
    print("READY", flush=True)
    i = 0
    while True:  # overwrite the checkpoint with A, B, A, ... until killed
        (a if i % 2 == 0 else b).save(target)
        i += 1
    """
)


def test_checkpoint_killed_mid_write_is_old_or_new(tmp_path):
    """SIGKILL a process that keeps overwriting a checkpoint: it always loads, as one of the two models."""
    train, test, _ = _tiny_arrays()
    big = dict(TINY_AE, width=16)  # a few MB of weights: the writes take a while
    model_a = get_model("unet_ae", seed=1, **big).fit(train)
    model_b = get_model("unet_ae", seed=2, **big).fit(train)
    pa, pb, target = model_a.save(tmp_path / "a.pt"), model_b.save(tmp_path / "b.pt"), tmp_path / "ckpt.pt"
    sa, sb = model_a.predict(test)[0], model_b.predict(test)[0]
    assert not np.array_equal(sa, sb)
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    seen = set()
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.05, 0.6, 3):
        proc = subprocess.Popen([sys.executable, str(script), str(pa), str(pb), str(target)],
                                stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
        assert proc.stdout.readline().strip() == "READY"
        if not target.exists():
            time.sleep(0.3)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        s = load_model(target, device="cpu").predict(test)[0]  # never a torn file
        assert np.array_equal(s, sa) or np.array_equal(s, sb)
        seen.add("a" if np.array_equal(s, sa) else "b")
    assert not [p for p in tmp_path.glob("ckpt.pt*") if p.name != "ckpt.pt"]  # temps are hidden dotfiles
    assert seen  # at least one state observed


# --- 3. divergence ----------------------------------------------------------------------------


class _Toy(Detector):
    """A one-parameter detector whose loss turns NaN at a chosen step, checkpointing every step."""

    name = "toy_diverging"

    def __init__(self, nan_at: int, ckpt_dir: Path | None, **kw):
        super().__init__(image_size=8, device="cpu", **kw)
        self.nan_at, self.ckpt_dir = nan_at, ckpt_dir
        self.w = torch.zeros(1)

    def _fit(self, images):
        for step in range(5):
            loss = torch.tensor(float("nan") if step == self.nan_at else 1.0 / (step + 1))
            check_loss(loss, step, self.name)
            if self.ckpt_dir is not None:
                self.checkpoint(self.ckpt_dir / f"step{step}.pt")

    def _predict(self, images):
        return torch.zeros(len(images)), torch.zeros(len(images), 8, 8)

    def _get_state(self):
        return {"w": self.w}

    def _set_state(self, state):
        self.w = state["w"]


def test_divergence_names_step_and_last_good_checkpoint(tmp_path):
    images = np.zeros((2, 8, 8), np.uint8)
    det = _Toy(nan_at=3, ckpt_dir=tmp_path)
    with pytest.raises(TrainingError, match=r"toy_diverging diverged: loss is nan at step 3; last good checkpoint: "
                                            + ".*step2.pt") as err:  # fmt: skip
        det.fit(images)
    assert err.value.step == 3 and err.value.last_good == str(tmp_path / "step2.pt")
    assert torch.load(tmp_path / "step2.pt", weights_only=False)["format_version"] == FORMAT_VERSION
    assert not det.fitted
    with pytest.raises(TrainingError, match=f"at step 0; last good checkpoint: {NO_CHECKPOINT}"):
        _Toy(nan_at=0, ckpt_dir=tmp_path).fit(images)  # a new fit does not inherit older checkpoints
    with pytest.raises(TrainingError, match=f"step 1; last good checkpoint: {NO_CHECKPOINT}"):
        _Toy(nan_at=1, ckpt_dir=None).fit(images)
    # outside any fit, and with the checkpoint given explicitly (the signature models already use works)
    with pytest.raises(TrainingError, match=f"step 7; last good checkpoint: {NO_CHECKPOINT}"):
        check_loss(float("inf"), 7, "m")
    with pytest.raises(TrainingError, match="step e2; last good checkpoint: /x/y.pt"):
        check_loss(torch.tensor(float("nan")), "e2", "m", last_good="/x/y.pt")
    assert check_loss(torch.tensor(0.5, requires_grad=True) * 2, 0) == 1.0


def test_real_model_divergence_stops_with_step(tmp_path):
    train, _, _ = _tiny_arrays()
    model = get_model("unet_ae", **dict(TINY_AE, lr=1e30, epochs=5))
    with pytest.raises(TrainingError, match=rf"unet_ae diverged: loss is (nan|inf) at step \d+:\d+; "
                                            rf"last good checkpoint: {NO_CHECKPOINT}"):  # fmt: skip
        model.fit(train)
    assert not model.fitted


# --- 4. reproducibility ------------------------------------------------------------------------

REPRO = [
    ("unet_ae", TINY_AE, 32),
    ("reverse_distillation", dict(image_size=64, epochs=1, batch_size=4, device="cpu"), 64),
    ("patchcore", dict(image_size=64, coreset_ratio=0.5, device="cpu"), 64),
]
#: Models that build their network in ``__init__`` from the global RNG, before ``fit`` seeds it
#: (cae, mixer_ae, draem and unet_ae): their initial weights depend on the process's random initial
#: torch seed and on what drew random numbers before, not on ``seed`` alone, so reruns differ.
#: Fix: ``seed_everything(seed)`` at the top of ``Detector.__init__`` (pending: it changes their
#: initial weights, and two other tests pass only with lucky ones).
INIT_BEFORE_SEEDING: set[str] = set()


@pytest.mark.parametrize("name, cfg, size", REPRO, ids=[r[0] for r in REPRO])
def test_same_seed_same_scores_bitwise(name, cfg, size, request):
    """Two models built and fitted with the same seed in one process score bitwise identically."""
    if name in INIT_BEFORE_SEEDING:
        request.applymarker(pytest.mark.xfail(strict=True, reason="network initialised before seeding"))
    train, test, _ = _tiny_arrays(size=size)
    a_scores, a_maps = get_model(name, seed=3, **cfg).fit(train).predict(test)
    torch.rand(7)  # unrelated draws from the global generators in between must not matter
    np.random.rand(3)  # noqa: NPY002 - disturbing the legacy global RNG on purpose
    b_scores, b_maps = get_model(name, seed=3, **cfg).fit(train).predict(test)
    assert a_scores.tobytes() == b_scores.tobytes()
    assert a_maps.tobytes() == b_maps.tobytes()
    if name == "reverse_distillation":  # a trained model: another seed, other weights, other scores
        c_scores, _ = get_model(name, seed=4, **cfg).fit(train).predict(test)
        assert not np.array_equal(a_scores, c_scores)


RERUN = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from iadlib.models import get_model
    z = np.load(sys.argv[1])
    out = {}
    for name, cfg in json.loads(sys.argv[2]).items():
        train = z["train64"] if cfg["image_size"] == 64 else z["train32"]
        test = z["test64"] if cfg["image_size"] == 64 else z["test32"]
        scores, maps = get_model(name, seed=int(sys.argv[3]), **cfg).fit(train).predict(test)
        out[name] = [hashlib.sha256(scores.tobytes()).hexdigest(), hashlib.sha256(maps.tobytes()).hexdigest()]
    print(json.dumps(out))
    """
)


def test_rerun_in_a_fresh_process_gives_bitwise_identical_scores(tmp_path):
    """The user's view: running the same script again (same seed, same CPU) reproduces every bit."""
    tr32, te32, _ = _tiny_arrays(size=32)
    tr64, te64, _ = _tiny_arrays(size=64)
    np.savez(tmp_path / "d.npz", train32=tr32, test32=te32, train64=tr64, test64=te64)
    (tmp_path / "rerun.py").write_text(RERUN)
    # torch seeds its global generator at random in every process: only what ``seed`` fixes is the same
    # (PatchCore's scores do not depend on random initial weights: the in-process test covers it)
    cfgs = json.dumps({name: cfg for name, cfg, _ in REPRO if name not in INIT_BEFORE_SEEDING | {"patchcore"}})
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))

    def run(seed: int) -> dict[str, list[str]]:
        out = subprocess.run([sys.executable, str(tmp_path / "rerun.py"), str(tmp_path / "d.npz"), cfgs, str(seed)],
                             capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(3), run(3)
    assert set(first) == {"reverse_distillation", "unet_ae"} and first == second


# --- 5. checkpoints refuse mismatched models -----------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    train, test, _ = _tiny_arrays()
    model = get_model("unet_ae", seed=0, **TINY_AE).fit(train)
    path = model.save(tmp_path_factory.mktemp("ckpt") / "unet.pt")
    return model, path, test


def test_checkpoint_round_trip(saved):
    model, path, test = saved
    for loaded in (load_model(path, device="cpu"), UNetAE.load(path, device="cpu"),
                   get_model("unet_ae", seed=0, **TINY_AE).restore(path)):  # fmt: skip
        assert loaded.predict(test)[0].tobytes() == model.predict(test)[0].tobytes()
        assert loaded.history == model.history


def test_checkpoint_refuses_other_model(saved):
    _, path, _ = saved
    with pytest.raises(CheckpointError, match=rf"{path.name}: checkpoint of model 'unet_ae', not 'draem'"):
        DRAEM.load(path)
    draem = get_model("draem", image_size=32, device="cpu")
    with pytest.raises(CheckpointError, match="checkpoint of model 'unet_ae', not 'draem'"):
        draem.restore(path)


def test_checkpoint_refuses_other_config(saved, tmp_path):
    _, path, _ = saved
    other = get_model("unet_ae", seed=0, **dict(TINY_AE, width=4))
    with pytest.raises(CheckpointError, match=r"another configuration \(width: checkpoint 2 vs model 4\)"):
        other.restore(path)
    assert not other.fitted
    with pytest.raises(CheckpointError, match="epochs: checkpoint 2 vs model 3"):
        UNetAE.load(path, config=dict(get_model("unet_ae", **dict(TINY_AE, epochs=3)).config))
    # a checkpoint whose config was edited so that its weights no longer fit
    payload = torch.load(path, weights_only=False)
    payload["config"]["width"] = 4
    torch.save(payload, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="edited.pt: the checkpoint's state does not fit model 'unet_ae'"):
        load_model(tmp_path / "edited.pt")
    payload["config"] = dict(payload["config"], width=2, no_such_option=1)
    torch.save(payload, tmp_path / "unknown_option.pt")
    with pytest.raises(CheckpointError, match="unknown_option.pt: cannot rebuild model 'unet_ae'"):
        load_model(tmp_path / "unknown_option.pt")


def test_checkpoint_refuses_other_format_and_garbage(saved, tmp_path):
    _, path, _ = saved
    payload = torch.load(path, weights_only=False)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=f"future.pt: checkpoint format {FORMAT_VERSION + 1}, this iadlib reads"):
        load_model(tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="checkpoint format"):
        get_model("unet_ae", **TINY_AE).restore(tmp_path / "future.pt")
    data = path.read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="torn.pt: not a readable checkpoint"):
        load_model(tmp_path / "torn.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not an iadlib checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        load_model(tmp_path / "missing.pt")
