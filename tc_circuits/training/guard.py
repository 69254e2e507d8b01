"""Guards around a training run's out folder and process: lock, other runs, space, signals.

* :class:`OutDirLock` — an exclusive ``fcntl.flock`` on ``out_dir/.tc_circuits.lock`` for the
  life of the run; a second process training into the same folder gets a clear error at once.
  The kernel drops the lock when the process dies (even ``kill -9``), so a stale lock file
  never blocks a later run.
* :func:`prepare_out_dir` — refuses a folder that holds another run's outputs unless the
  caller resumes it or overwrites it (then the old outputs are deleted first, so two runs'
  transcoders are never mixed), and checks the folder is writable with room for the
  checkpoints *before* training starts.
* :class:`DeferredSignals` — SIGINT / SIGTERM set a flag that the loop checks between
  optimiser steps (a step is never cut in half); the trainer then writes a final checkpoint
  and raises :class:`TrainingInterrupted`. A second signal interrupts at once (the checkpoint
  write is atomic, so that is safe too).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path

from tc_circuits.validate import check_writable

LOCK_NAME = ".tc_circuits.lock"
#: What a finished or interrupted run leaves in its out folder.
RUN_OUTPUTS = ("checkpoint", "checkpoint.old", "checkpoint.tmp", "transcoders", "clt", "metrics.json",
               "evaluation.json", "evaluation.md")


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT / SIGTERM after writing a final checkpoint (if it has an out folder)."""


class TrainingDivergedError(FloatingPointError):
    """The loss (or a weight) became NaN or infinite; nothing non-finite was saved."""


class OutDirInUse(RuntimeError, ValueError):
    """Another process holds the out folder's lock."""


class OutDirLock:
    """Exclusive lock on an out folder (``fcntl.flock``; released on close or process death)."""

    def __init__(self, out_dir: str | os.PathLike):
        import fcntl

        self.path = Path(out_dir) / LOCK_NAME
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self._fd)
            self._fd = None
            try:
                holder = self.path.read_text().strip() or "another process"
            except OSError:
                holder = "another process"
            raise OutDirInUse(
                f"out folder {out_dir} is in use by {holder} (lock {self.path}); two runs cannot "
                "write one folder: wait for it, or choose another --out-dir"
            ) from err
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()}".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file itself is harmless
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - GC path
        self.release()


def prepare_out_dir(out_dir: str | os.PathLike, *, resume: bool, overwrite: bool, need_bytes: int) -> None:
    """Refuse another run's folder (unless resume / overwrite); check writability and space."""
    out = Path(out_dir)
    check_writable(out, what="training out folder")
    found = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if found and not resume:
        if not overwrite:
            raise ValueError(
                f"out folder {out} already holds a training run ({', '.join(found)}); pass "
                "resume=True (--resume) to continue it or overwrite=True (--overwrite) to replace it"
            )
        for name in found:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    check_writable(out, need_bytes=need_bytes, what="training out folder")


class DeferredSignals:
    """Context manager: SIGINT / SIGTERM only set :attr:`received` (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum
        self.restore()  # a second signal acts at once

    def __enter__(self) -> DeferredSignals:
        if self.enabled:
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def restore(self) -> None:
        for sig, old in list(self._old.items()):
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def __exit__(self, *exc) -> None:
        self.restore()


def checkpoint_bytes(n_params: int, bytes_per_param: int = 4) -> int:
    """Disk a run needs: weights + two Adam moments per checkpoint, two checkpoints during the
    swap, plus the final transcoders (and 10% slack)."""
    per_ckpt = 3 * n_params * bytes_per_param
    return int(1.1 * (2 * per_ckpt + n_params * bytes_per_param))
