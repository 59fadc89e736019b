"""Small shared helpers: device choice, seeding, atomic writes, peak-memory tracking."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

#: Suffix of the temporary files of :func:`atomic_path` (never read as results or checkpoints).
TEMP_SUFFIX = ".tmp"
#: This machine's name as written into temp-file names (letters, digits and ``-`` only, no dots).
_HOST = "".join(c if c.isalnum() else "-" for c in socket.gethostname().split(".")[0]) or "host"
#: Age after which another host's temp file counts as left behind by a killed writer.
STALE_SECONDS = 24 * 3600


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` → CUDA when present, else CPU. Explicit ``"cuda"`` without a GPU is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:<index>'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds code that uses the legacy global RNG
    torch.manual_seed(seed)


def device_name(device: torch.device | str | None = None) -> str:
    """A human-readable name of the compute device for provenance records."""
    dev = resolve_device(device or "auto")
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success it replaces ``path`` atomically.

    Nothing half-written is ever visible under ``path``: a crash leaves the old file (or none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temp_files(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Temp files :func:`atomic_path` left in ``folder`` for target ``name`` by processes that died.

    Their names carry the writer's host and pid (``.<name>.<host>-<pid>.<random>.tmp``): those of
    live processes on this host are still being written and are not listed; those of other hosts
    (a results folder shared by grid workers) only once they are older than :data:`STALE_SECONDS`.
    """
    out = []
    now = time.time()
    for f in Path(folder).glob(f".{name}.*{TEMP_SUFFIX}"):
        parts = f.name[: -len(TEMP_SUFFIX)].split(".")
        host, _, pid = (parts[-2] if len(parts) >= 3 else "").rpartition("-")
        if host == _HOST and pid.isdigit():
            stale = not _pid_alive(int(pid))
        else:
            try:
                stale = now - f.stat().st_mtime > STALE_SECONDS
            except OSError:  # removed meanwhile
                continue
        if stale:
            out.append(f)
    return out


def remove_stale_temp_files(folder: str | os.PathLike, name: str = "*") -> int:
    """Delete :func:`stale_temp_files` (what a killed run left behind); return how many."""
    n = 0
    for f in stale_temp_files(folder, name):
        with contextlib.suppress(OSError):
            f.unlink()
            n += 1
    return n


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - non-Linux
        import psutil

        return psutil.Process().memory_info().rss


class PeakMemory:
    """Context manager measuring the peak resident memory (and CUDA memory) of a block.

    A background thread samples RSS every ``interval`` seconds; ``.peak_rss`` is in bytes.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda = 0
        self.seconds = 0.0
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak_rss = _rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        if torch.cuda.is_available():
            self.peak_cuda = torch.cuda.max_memory_allocated()
