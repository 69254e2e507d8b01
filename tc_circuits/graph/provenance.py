"""Which model and which dictionaries a graph was computed with, and refusing the wrong ones.

The engine records in ``graph.metadata``:

* ``model``: name, shape, weight processing and ``config_hash``
  (:func:`tc_circuits.models.provenance.model_provenance`);
* ``transcoders[layer]``: config summary and ``content_hash``
  (:func:`tc_circuits.coders.hashing.transcoder_hash`);
* optionally ``sources``: how the command line found the model and dictionaries
  (``{"model": ..., "transcoders": ...}``), so later commands can find them again.

:func:`check_graph_transcoders` raises :class:`ProvenanceError` (a ``ValueError``) naming
each mismatching layer when the dictionaries given are not the ones recorded; graphs written
before hashes were recorded are checked on their recorded config (width, activation, k, skip,
sites) instead. :func:`check_graph_model` does the same for the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tc_circuits.coders.hashing import hash_matches, transcoder_hash
from tc_circuits.models.provenance import model_provenance

#: Recorded transcoder config fields compared when a graph carries no content hashes.
_CONFIG_KEYS = ("n_latents", "activation", "k", "skip", "input_site", "output_site")


class ProvenanceError(ValueError):
    """The model or dictionaries given are not those a graph was computed with."""


def recorded_transcoders(graph: Any) -> dict[int, dict[str, Any]]:
    """``{layer: recorded info}`` from ``graph.metadata["transcoders"]`` (empty if absent)."""
    rec = graph.metadata.get("transcoders") or {}
    if not isinstance(rec, Mapping):
        return {}
    return {int(k): dict(v) for k, v in rec.items() if isinstance(v, Mapping)}


def recorded_hashes(graph: Any) -> dict[int, str]:
    """``{layer: content hash}`` recorded in the graph (empty for graphs without hashes)."""
    return {L: str(v["content_hash"]) for L, v in recorded_transcoders(graph).items() if v.get("content_hash")}


def _kind(info: Mapping[str, Any]) -> str:
    if info.get("input_site") == info.get("output_site"):
        return "sae"
    return "skip transcoder" if info.get("skip") else "transcoder"


def transcoder_mismatches(graph: Any, transcoders: Mapping[int, Any]) -> list[str]:
    """Human-readable differences between the graph's recorded dictionaries and ``transcoders``."""
    rec = recorded_transcoders(graph)
    if not rec:
        return []
    given = {int(k): v for k, v in transcoders.items()}
    problems = []
    if set(rec) != set(given):
        problems.append(f"the graph covers layers {sorted(rec)}, the dictionaries given cover {sorted(given)}")
    for L in sorted(set(rec) & set(given)):
        info, tc = rec[L], given[L]
        c = tc.cfg
        actual = {"n_latents": c.n_latents, "activation": c.activation, "k": c.k, "skip": c.skip,
                  "input_site": c.input_site, "output_site": c.output_site}
        diff = [k for k in _CONFIG_KEYS if k in info and info[k] != actual[k]]
        if diff:
            problems.append(
                f"layer {L}: the graph used a {_kind(info)} (" + ", ".join(f"{k}={info[k]!r}" for k in diff)
                + f"), given a {_kind(actual)} (" + ", ".join(f"{k}={actual[k]!r}" for k in diff) + ")"
            )
            continue
        want = info.get("content_hash")
        if want and not hash_matches(tc, str(want)):
            problems.append(f"layer {L}: content hash {transcoder_hash(tc)} differs from the recorded {want}")
    return problems


def check_graph_transcoders(graph: Any, transcoders: Mapping[int, Any], *, what: str = "these dictionaries") -> None:
    """Raise :class:`ProvenanceError` unless ``transcoders`` are the ones the graph was built with."""
    problems = transcoder_mismatches(graph, transcoders)
    if problems:
        raise ProvenanceError(
            f"{what} are not the ones the graph was computed with: " + "; ".join(problems)
            + ". Pass the graph's own dictionaries (--transcoders), or rebuild the graph."
        )


def check_graph_model(graph: Any, model: Any) -> None:
    """Raise :class:`ProvenanceError` when ``model`` differs from the graph's recorded model."""
    rec = graph.metadata.get("model")
    if not isinstance(rec, Mapping):
        return
    have = model_provenance(model)
    problems = []
    if rec.get("model_name") is not None and rec["model_name"] != have["model_name"]:
        problems.append(f"name {rec['model_name']!r} (given {have['model_name']!r})")
    if rec.get("config_hash") and rec["config_hash"] != have["config_hash"]:
        problems.append(f"config hash {rec['config_hash']} (given {have['config_hash']})")
    for key in ("n_layers", "d_model", "d_vocab"):
        if key in rec and rec[key] != have[key]:
            problems.append(f"{key}={rec[key]} (given {have[key]})")
    wp = rec.get("weight_processing") or {}
    bad = [k for k, v in wp.items() if k in have["weight_processing"] and bool(v) != bool(have["weight_processing"][k])]
    if bad:
        problems.append("weight processing " + ", ".join(f"{k}={wp[k]}" for k in bad))
    if problems:
        raise ProvenanceError("the graph was computed on a different model: recorded " + "; ".join(problems))


__all__ = [
    "ProvenanceError",
    "check_graph_model",
    "check_graph_transcoders",
    "recorded_hashes",
    "recorded_transcoders",
    "transcoder_mismatches",
]
