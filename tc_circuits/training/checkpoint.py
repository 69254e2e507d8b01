"""Crash-safe training checkpoints (no pickle: safetensors + JSON).

Layout of ``out_dir/checkpoint/``::

    layer_{L}/cfg.json, layer_{L}/weights.safetensors   (Transcoder.save)
    train_state.safetensors                             (Adam moments, dead-latent counters)
    state.json                                          (step, tokens, data position; written last)

Saving writes everything into ``out_dir/checkpoint.tmp/`` (``state.json`` last), then swaps
directories with two renames: ``checkpoint -> checkpoint.old``, ``checkpoint.tmp -> checkpoint``,
and deletes ``checkpoint.old``. A crash at any point leaves at least one complete checkpoint:
:func:`find_checkpoint` prefers ``checkpoint/`` and falls back to ``checkpoint.old/`` (a crash
between the two renames). A directory counts only if its ``state.json`` says ``complete``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder
from tc_circuits.validate import load_safetensors, save_safetensors

CHECKPOINT = "checkpoint"
STATE_JSON = "state.json"
TENSORS = "train_state.safetensors"
FORMAT_VERSION = 1


def _write_state_json(path: Path, state: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"format_version": FORMAT_VERSION, "complete": True, **state}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.exists():
        (path / STATE_JSON).unlink(missing_ok=True)  # invalidate first
        shutil.rmtree(path)


def save_checkpoint(
    out_dir: str | os.PathLike,
    transcoders: dict[int, Transcoder],
    tensors: dict[str, Tensor],
    state: dict[str, Any],
) -> Path:
    """Write a complete checkpoint and swap it in atomically; returns its folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, tmp, old = (out_dir / CHECKPOINT, out_dir / f"{CHECKPOINT}.tmp", out_dir / f"{CHECKPOINT}.old")
    _remove(tmp)
    try:
        tmp.mkdir()
        for layer, tc in sorted(transcoders.items()):
            tc.save(tmp / f"layer_{layer}")
        save_safetensors(tensors, tmp / TENSORS)
        _write_state_json(tmp / STATE_JSON, state)
    except BaseException as err:
        # a full or read-only disk (or an interrupt) leaves no half-written checkpoint.tmp
        # behind; the previous checkpoint is untouched
        try:
            _remove(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and not str(err).startswith("cannot write"):
            raise OSError(
                err.errno, f"cannot write a checkpoint into {out_dir}: {err.strerror or err} "
                f"(the previous checkpoint, if any, is kept)"
            ) from err
        raise
    if final.exists():
        _remove(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _remove(old)
    return final


def _complete(path: Path) -> bool:
    try:
        return bool(json.loads((path / STATE_JSON).read_text()).get("complete"))
    except (OSError, json.JSONDecodeError):
        return False


def find_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder under ``out_dir``, or None."""
    out_dir = Path(out_dir)
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):
        if _complete(out_dir / name):
            return out_dir / name
    return None


def _state_problem(path: Path) -> str:
    f = path / STATE_JSON
    if not f.is_file():
        return f"{f} is missing"
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{f} is truncated or not JSON ({err})"
    if not isinstance(data, dict) or data.get("complete") is not True:
        return f"{f} does not say complete=true"
    return ""


def resume_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from; None only when ``out_dir`` holds no checkpoint at all.

    A ``checkpoint/`` folder whose ``state.json`` is truncated, missing or ``complete=false``
    is an error (resuming must never silently restart from step 0). Saves never leave such a
    folder (they write ``checkpoint.tmp`` and rename), so it means the files were damaged.
    ``checkpoint.old`` alone (a crash between the two renames of a save) is used.
    """
    out_dir = Path(out_dir)
    main = out_dir / CHECKPOINT
    if main.exists():
        problem = _state_problem(main)
        if problem:
            raise ValueError(
                f"cannot resume from {main}: {problem}. The checkpoint is damaged; restore it, "
                "or start a new run without --resume (--overwrite replaces this folder's run)"
            )
        return main
    old = out_dir / f"{CHECKPOINT}.old"
    return old if _complete(old) else None


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(state, tensors)`` of a checkpoint folder (transcoders are loaded by the caller)."""
    path = Path(path)
    if not _complete(path):
        raise ValueError(f"{path} is not a complete training checkpoint")
    state = json.loads((path / STATE_JSON).read_text())
    for key in ("step", "tokens_seen", "store", "config", "metrics"):
        if key not in state:
            raise ValueError(f"{path / STATE_JSON} is missing key {key!r}")
    tensors = load_safetensors(path / TENSORS, "training state")
    return state, tensors
