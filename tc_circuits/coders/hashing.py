"""Deterministic content hashes of transcoders: which dictionary exactly was used.

``transcoder_hash(tc)`` is the SHA-256 of the transcoder's config (canonical JSON, without
the free-form ``extra`` provenance, which conversions and training runs fill differently)
followed by every parameter's name, dtype, shape and raw bytes, in sorted name order. The same
weights and config give the same hash on any device and in any process; any change of a
weight, a shape, the activation, ``k`` or a site changes it. Graphs record these hashes
(:mod:`tc_circuits.graph.provenance`) so that views and interventions can refuse the wrong
dictionaries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

#: Characters of the hex digest kept (64 bits of collision resistance are ample here).
HASH_CHARS = 16


def _config_dict(cfg: Any) -> dict[str, Any]:
    d = dict(cfg.to_dict())
    d.pop("extra", None)
    return d


def transcoder_hash(tc: Any) -> str:
    """Hex content hash of one transcoder's config and weights (first :data:`HASH_CHARS` chars)."""
    h = hashlib.sha256()
    h.update(json.dumps(_config_dict(tc.cfg), sort_keys=True, default=str).encode())
    for name, param in sorted(tc.named_parameters(), key=lambda kv: kv[0]):
        t = param.detach().to("cpu").contiguous()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # bytes of the tensor as stored (bfloat16 has no numpy dtype: view it as int16)
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        h.update(raw.numpy().tobytes())
    return h.hexdigest()[:HASH_CHARS]


def transcoder_set_hashes(transcoders: Mapping[int, Any]) -> dict[str, str]:
    """``{str(layer): hash}`` for every transcoder of a set."""
    return {str(int(layer)): transcoder_hash(tc) for layer, tc in sorted(transcoders.items())}


__all__ = ["HASH_CHARS", "transcoder_hash", "transcoder_set_hashes"]
