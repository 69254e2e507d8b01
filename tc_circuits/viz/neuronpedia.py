"""Feature detail files for the circuit-tracer / Neuronpedia graph frontend, from our dashboards.

circuit-tracer's frontend (``frontend/assets/feature_examples``) shows a feature card by
loading ``{scan}/{feature}.json`` when ``scan`` starts with ``./``, where ``feature`` is the
node's Cantor-paired ``(layer, latent)`` index. The file follows its
``frontend.feature_models.Model``: ``transcoder_id``, ``index``, ``examples_quantiles``
(``quantile_name`` + ``examples`` of ``tokens``, ``tokens_acts_list``, ``train_token_ind``,
``is_repeated_datapoint``), ``top_logits``, ``bottom_logits``, ``act_min``, ``act_max``,
``quantile_values``, ``histogram``, ``activation_frequency``.

:func:`save_graph_with_features` writes a folder that ``circuit_tracer.frontend.local_server.serve``
serves as is: ``{slug}.json`` + ``graph-metadata.json`` (with ``scan`` =
``./graph_data/features/{name}``) and ``features/{name}/{index}.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tc_circuits.fileio import atomic_write
from tc_circuits.graph.export import save_graph_files
from tc_circuits.graph.graph import AttributionGraph
from tc_circuits.viz.dashboard_html import ContextExample, FeatureDashboard


def feature_index(layer: int, latent: int) -> int:
    """circuit-tracer's node ``feature`` id of a transcoder latent (Cantor pairing)."""
    return (layer + latent) * (layer + latent + 1) // 2 + latent


def _example(ex: ContextExample) -> dict[str, Any]:
    return {"tokens": list(ex.tokens), "tokens_acts_list": [float(a) for a in ex.acts],
            "train_token_ind": int(ex.highlight), "is_repeated_datapoint": False}


def feature_detail(board: FeatureDashboard, transcoder_id: str) -> dict[str, Any]:
    """One dashboard as circuit-tracer's feature file (``frontend.feature_models.Model``).

    The top examples form the first band (``"Top activations"``), then our quantile bands;
    ``quantile_values`` holds the lowest shown activation of each band.
    """
    bands = [("Top activations", board.top_examples)] + list(board.quantile_examples)
    bands = [(name, exs) for name, exs in bands if exs]
    return {
        "transcoder_id": transcoder_id,
        "index": feature_index(board.layer, board.latent),
        "examples_quantiles": [{"quantile_name": name, "examples": [_example(e) for e in exs]}
                               for name, exs in bands],
        "top_logits": [t.string for t in board.promoted],
        "bottom_logits": [t.string for t in board.suppressed],
        "act_min": 0.0,
        "act_max": float(board.max_activation),
        "quantile_values": [float(min(e.activation for e in exs)) for _, exs in bands],
        "histogram": [float(c) for c in board.hist_counts],
        "activation_frequency": float(board.n_nonzero / board.n_tokens) if board.n_tokens else 0.0,
    }


def save_feature_files(
    dashboards: Mapping[tuple[int, int], FeatureDashboard], folder: str | os.PathLike, transcoder_id: str
) -> list[Path]:
    """``{index}.json`` per dashboard into ``folder``; returns the paths."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for board in dashboards.values():
        text = json.dumps(feature_detail(board, transcoder_id))
        out.append(atomic_write(root / f"{feature_index(board.layer, board.latent)}.json",
                                lambda p, t=text: Path(p).write_text(t)))
    return out


def save_graph_with_features(
    graph: AttributionGraph,
    out_dir: str | os.PathLike,
    slug: str,
    dashboards: Mapping[tuple[int, int], FeatureDashboard],
    *,
    name: str | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    **json_kwargs: Any,
) -> Path:
    """Graph JSON (labels in ``clerp``) + ``graph-metadata.json`` + feature files, served by
    circuit-tracer's local server from ``out_dir``. Returns the graph JSON's path."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or slug).strip("-") or "features"
    save_feature_files(dashboards, Path(out_dir) / "features" / name, transcoder_id=name)
    clerps = dict(json_kwargs.pop("clerps", None) or {})
    for key, label in (labels or {}).items():
        clerps.setdefault((int(key[0]), int(key[1])), label)
    return save_graph_files(graph, out_dir, slug, scan=f"./graph_data/features/{name}", clerps=clerps, **json_kwargs)


__all__ = ["feature_detail", "feature_index", "save_feature_files", "save_graph_with_features"]
