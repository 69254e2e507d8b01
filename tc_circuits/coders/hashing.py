"""Deterministic content hashes of transcoders: which dictionary exactly was used.

``transcoder_hash(tc)`` is the XXH3-128 hash (``xxhash``) of the transcoder's config
(canonical JSON, without the free-form ``extra`` provenance, which conversions and training
runs fill differently) followed by every parameter's name, dtype, shape and raw bytes, in
sorted name order, written ``"xxh3:" + 16 hex digits``. The same weights and config give the
same hash on any device and in any process; any change of a weight, a shape, the activation,
``k`` or a site changes it. Graphs record these hashes (:mod:`tc_circuits.graph.provenance`)
so that views and interventions can refuse the wrong dictionaries.

The hash is not a security device (a hostile file can be made to match): it tells which
dictionary a graph was computed with. XXH3 reads a 24,576-latent GPT-2-small set (1.8 GB) in
about 0.06 s, where SHA-256 took 0.9 s, inside every attribution call. Graphs written before
(16 hex digits, no prefix) carry SHA-256 hashes: :func:`hash_matches` checks those with
:func:`transcoder_hash_sha256`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch
import xxhash

#: Characters of the hex digest kept (64 bits of collision resistance are ample here).
HASH_CHARS = 16


def _config_dict(cfg: Any) -> dict[str, Any]:
    d = dict(cfg.to_dict())
    d.pop("extra", None)
    return d


#: Prefix of the current hash algorithm's digests.
PREFIX = "xxh3:"


def _feed(h: Any, tc: Any) -> str:
    h.update(json.dumps(_config_dict(tc.cfg), sort_keys=True, default=str).encode())
    for name, param in sorted(tc.named_parameters(), key=lambda kv: kv[0]):
        t = param.detach().to("cpu").contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bytes of the tensor as stored (bfloat16 has no numpy dtype: view it as int16); the
        # numpy view is read in place (no copy)
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        h.update(raw.numpy().reshape(-1).view("uint8"))
    return h.hexdigest()[:HASH_CHARS]


def transcoder_hash(tc: Any) -> str:
    """Content hash of one transcoder's config and weights: ``"xxh3:"`` + :data:`HASH_CHARS` hex digits."""
    return PREFIX + _feed(xxhash.xxh3_128(), tc)


def transcoder_hash_sha256(tc: Any) -> str:
    """The SHA-256 content hash graphs recorded before ``"xxh3:"`` hashes (same fields, same order)."""
    return _feed(hashlib.sha256(), tc)


def hash_matches(tc: Any, recorded: str) -> bool:
    """Whether ``tc`` is the dictionary a recorded hash (either algorithm) was computed from."""
    if recorded.startswith(PREFIX):
        return transcoder_hash(tc) == recorded
    return transcoder_hash_sha256(tc) == recorded


def transcoder_set_hashes(transcoders: Mapping[int, Any]) -> dict[str, str]:
    """``{str(layer): hash}`` for every transcoder of a set."""
    return {str(int(layer)): transcoder_hash(tc) for layer, tc in sorted(transcoders.items())}


__all__ = ["HASH_CHARS", "PREFIX", "hash_matches", "transcoder_hash", "transcoder_hash_sha256", "transcoder_set_hashes"]
