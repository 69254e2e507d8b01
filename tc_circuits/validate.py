"""Checks at the boundaries: prompts, configs, files, folders and tensors.

Every check raises an exception whose message names the bad value, where it came from (the
file or option) and what was expected, *before* any long computation starts. The helpers
depend on nothing else in the package (only torch and safetensors), so every layer of the
data path can call them. ``docs/guarantees.md`` lists what is checked where, with the test
that shows each.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: Key of the content hash (XXH3-128) in a safetensors file's metadata header.
CHECKSUM_KEY = "tc_circuits.xxh3_128"
#: Key of the SHA-256 content hash that files written before 2026-12-04 carry (still verified).
SHA256_CHECKSUM_KEY = "tc_circuits.sha256"


class NonFiniteError(ValueError):
    """A weight, direction or loss holds NaN or infinity."""


class ChecksumError(ValueError):
    """A file's tensors do not match the content hash recorded when it was written."""


# --------------------------------------------------------------------------- scalars
def strict_bool(value: Any, name: str, source: str = "config") -> bool:
    """``value`` if it is a real bool (JSON ``true``/``false``), else ``ValueError``.

    Strings such as ``"no"`` or ``"false"`` are refused: ``bool("false")`` is True.
    """
    if isinstance(value, bool):
        return value
    raise ValueError(f"{source}: {name} must be true or false (a JSON bool), got {value!r} ({type(value).__name__})")


def strict_int(value: Any, name: str, source: str = "config", *, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool, not a float such as 3.0), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{source}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{source}: {name} must be >= {minimum}, got {value}")
    return value


def finite_float(value: Any, name: str, source: str = "config") -> float:
    """``float(value)`` if it is a finite real number, else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{source}: {name} must be a finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- tensors
def check_finite(tensors: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensor holding NaN or infinity."""
    for name, t in tensors.items():
        if t is None or not t.is_floating_point():
            continue
        # a finite sum proves every element finite (NaN and infinities propagate into it); only a
        # non-finite sum (a bad value, or a sum that overflowed) needs the elementwise scan. One
        # read of the weights, no boolean copy: 0.1 s instead of 1.5 s for 1.8 GB of dictionaries.
        if t.numel() and bool(torch.isfinite(t.sum())):
            continue
        if not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise NonFiniteError(
                f"{source}: tensor {name} {tuple(t.shape)} holds {n_nan} NaN and {n_inf} infinite "
                "values (expected finite numbers)"
            )


def check_token_ids(tokens: Any, d_vocab: int, source: str = "prompt") -> Tensor:
    """Token ids as a ``long`` tensor; floats (``3.7`` would silently become 3) and bools are refused."""
    t = torch.as_tensor(tokens)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{source}: token ids must be integers, got dtype {t.dtype}")
    t = t.detach().cpu().long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= d_vocab):
        raise ValueError(
            f"{source}: token ids must be in [0, {d_vocab}), got range [{int(t.min())}, {int(t.max())}]"
        )
    return t


def check_dtype_matches(name: str, tensor: Tensor, expected: torch.dtype, source: str) -> None:
    """Refuse a stored tensor whose dtype is not a float dtype (an int64 bias is not cast silently)."""
    if not tensor.is_floating_point():
        raise ValueError(
            f"{source}: tensor {name} has dtype {tensor.dtype}; expected a floating-point tensor "
            f"({expected}). Convert it explicitly (e.g. tensor.float()) if the integer values are meant"
        )


# --------------------------------------------------------------------------- checksums
def tensors_digest(tensors: Mapping[str, Tensor], algorithm: str = "xxh3_128") -> str:
    """Hash of the names, dtypes, shapes and bytes of ``tensors`` (sorted by name).

    ``algorithm``: ``"xxh3_128"`` (what files are written with: 1.8 GB of dictionaries in about
    0.1 s, where SHA-256 took 1.1 s on every load) or ``"sha256"`` (what older files carry).
    Either detects a flipped bit or an edit; neither is meant to resist a forger.
    """
    if algorithm == "xxh3_128":
        import xxhash

        h: Any = xxhash.xxh3_128()
    elif algorithm == "sha256":
        h = hashlib.sha256()
    else:
        raise ValueError(f"unknown content-hash algorithm {algorithm!r} (expected 'xxh3_128' or 'sha256')")
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.view(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def save_safetensors(tensors: Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` plus a content hash in the metadata header."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = dict(metadata or {})
    meta[CHECKSUM_KEY] = tensors_digest(tensors)
    save_file(tensors, str(path), metadata=meta)


def load_safetensors(path: str | os.PathLike, what: str = "safetensors file", *, device: str = "cpu") -> dict[str, Tensor]:
    """Load a safetensors file with clear errors; verify its content hash when it has one.

    A missing file is ``FileNotFoundError``; an empty, truncated or garbled file and a hash
    mismatch (a flipped bit) are ``ValueError`` naming the file. Files written before hashes
    existed (no hash in the header) load unchecked.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} missing: {path}")
    size = path.stat().st_size
    if size < 8:
        raise ValueError(
            f"{what} {path} is {'empty' if size == 0 else 'corrupted or truncated'} ({size} bytes); "
            "expected a safetensors file"
        )
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{what} {path} is corrupted or truncated (not a readable safetensors file): {err}") from err
    for key, algorithm in ((CHECKSUM_KEY, "xxh3_128"), (SHA256_CHECKSUM_KEY, "sha256")):
        expected = meta.get(key)
        if expected is None:
            continue
        actual = tensors_digest(tensors, algorithm)
        if actual != expected:
            raise ChecksumError(
                f"{what} {path} fails its content check ({algorithm} {actual[:12]}... != recorded "
                f"{expected[:12]}...): the file was modified or corrupted after it was written"
            )
    return tensors


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata header of a safetensors file (``{}`` when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def text_digest(text: str) -> str:
    """SHA-256 of a text file's UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def read_json_object(path: str | os.PathLike, what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON file that must hold an object with ``required`` keys (clear errors otherwise)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; expected a JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} missing: {path}")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{what} {path} is missing keys {missing}")
    return data


def read_checkpoint_config(
    folder: str | os.PathLike, config_name: str, weights_name: str, what: str
) -> tuple[dict[str, Any], Path]:
    """``(config JSON object, weights path)`` of a checkpoint folder, with clear errors.

    Both files must exist (``FileNotFoundError`` naming the missing one); the config must
    parse as a JSON object (``ValueError`` "corrupted ..." naming it). ``what`` names the
    format in messages (``"transcoder checkpoint"``, ``"SAELens"``).
    """
    folder = Path(folder)
    config_path, weights_path = folder / config_name, folder / weights_name
    for f in (config_path, weights_path):
        if not f.is_file():
            raise FileNotFoundError(f"{what} file missing: {f}")
    try:
        raw = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"corrupted {what} config {config_path}: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"corrupted {what} config {config_path}: expected a JSON object, got {type(raw).__name__}")
    return raw, weights_path


# --------------------------------------------------------------------------- paths
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_slug(slug: str, option: str = "--slug") -> str:
    """A file-name-safe name (letters, digits, ``._-``; no ``/``, no ``..``)."""
    if not isinstance(slug, str) or not _SLUG.match(slug) or ".." in slug:
        raise ValueError(
            f"{option} {slug!r} is not a safe file name: use letters, digits, '.', '_' and '-' "
            "(no '/', no '..', at most 128 characters)"
        )
    return slug


def safe_join(root: str | os.PathLike, relative: str, source: str) -> Path:
    """``root / relative``, refusing absolute paths and paths that leave ``root`` (``..``, symlinks)."""
    rel = str(relative)
    if not rel or os.path.isabs(rel) or rel.startswith("~"):
        raise ValueError(f"{source}: path {relative!r} must be relative to {root}")
    root_r = Path(root).resolve()
    target = (root_r / rel).resolve()
    if target != root_r and root_r not in target.parents:
        raise ValueError(f"{source}: path {relative!r} points outside {root} (resolves to {target})")
    return target


def check_writable(folder: str | os.PathLike, *, need_bytes: int = 0, what: str = "output folder") -> Path:
    """Create ``folder`` if needed, check a file can be written in it and ``need_bytes`` fit.

    Raises ``OSError`` naming the folder (read-only, not a folder, or too little free space).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".tc_circuits_write_test.{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"0")
        probe.unlink()
    except OSError as err:
        raise OSError(err.errno, f"{what} {folder} is not writable: {err.strerror or err}") from err
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise OSError(
                28, f"{what} {folder} has {free / 2**20:.1f} MiB free; a checkpoint needs about "
                f"{need_bytes / 2**20:.1f} MiB"
            )
    return folder


# --------------------------------------------------------------------------- memory
def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (or total RAM), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


#: Share of the available RAM an attribution may use by default.
DEFAULT_MEMORY_SHARE = 0.8


def memory_budget_bytes(max_memory_gb: float | None) -> int | None:
    """The budget in bytes: ``max_memory_gb`` GB, or a safe share of the available RAM."""
    if max_memory_gb is not None:
        return int(max_memory_gb * 1e9)
    avail = available_memory_bytes()
    return None if avail is None else int(avail * DEFAULT_MEMORY_SHARE)


__all__ = [
    "CHECKSUM_KEY",
    "SHA256_CHECKSUM_KEY",
    "ChecksumError",
    "NonFiniteError",
    "available_memory_bytes",
    "check_dtype_matches",
    "check_finite",
    "check_slug",
    "check_token_ids",
    "check_writable",
    "finite_float",
    "load_safetensors",
    "memory_budget_bytes",
    "read_checkpoint_config",
    "read_json_object",
    "safe_join",
    "save_safetensors",
    "strict_bool",
    "strict_int",
    "tensors_digest",
]


# --------------------------------------------------------------------------- transcoders
_CHECKED: "weakref.WeakKeyDictionary[Any, tuple]" = None  # type: ignore[assignment]


def _version_key(module: Any) -> tuple | None:
    try:
        return tuple((p.data_ptr(), p._version) for p in module.parameters())
    except (RuntimeError, AttributeError):  # inference-mode tensors have no version counter
        return None


def check_spliceable(transcoders: Any, model_name: str | None = None) -> None:
    """Refuse transcoders with NaN / infinite weights; warn about ones with no recorded model.

    Used by ``splice``, ``attribute`` and ``intervene`` before they run. The finiteness scan is
    cached per transcoder until a parameter changes (its version counter), so repeated calls
    cost nothing.
    """
    import warnings
    import weakref

    global _CHECKED
    if _CHECKED is None:
        _CHECKED = weakref.WeakKeyDictionary()
    items = transcoders.items() if isinstance(transcoders, Mapping) else [("all", transcoders)]  # e.g. a CLT
    for layer, tc in items:
        key = _version_key(tc)
        if key is not None and _CHECKED.get(tc) == key:
            continue
        check_finite(
            {name: p.detach() for name, p in tc.named_parameters()},
            f"transcoder for layer {layer}",
        )
        cfg = getattr(tc, "cfg", None)
        if cfg is not None and getattr(cfg, "model_name", "") is None:
            warnings.warn(
                f"transcoder for layer {layer} records no model (cfg.model_name is None), so it cannot "
                f"be checked against {model_name or 'this model'}: only its widths and sites were checked",
                UserWarning, stacklevel=3,
            )
        if key is not None:
            _CHECKED[tc] = key
