"""A graph's feature nodes as a table (a pandas ``DataFrame``), strongest first.

:func:`feature_table` (also :meth:`AttributionGraph.features`) gives one row per active
feature with its layer, position, prompt token, latent, activation, influence on the
weighted targets (the same as :func:`tc_circuits.graph.prune.node_influence`), its direct effect on each
target (the edge weight feature -> target, i.e. what removing the feature changes the target
by in the frozen model, with the sign flipped), the tokens it promotes most through the
unembedding (when the model and transcoders are given) and its label (when given, or when
the graph's metadata carries ``labels``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from tc_circuits.graph.influence import normalized_weights, propagate_influence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Columns before the per-target direct-effect columns.
BASE_COLUMNS = ("node", "id", "layer", "position", "token", "latent", "activation", "influence")


def effect_column(label: str) -> str:
    """Name of the direct-effect column of target ``label``."""
    return f"effect[{label}]"


def _labels(graph: Any, labels: Mapping[Any, str] | None) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    stored = graph.metadata.get("labels")
    for source in (stored if isinstance(stored, Mapping) else {}, labels or {}):
        for key, text in source.items():
            if isinstance(key, str):
                layer, _, latent = key.partition(":")
                key = (int(layer), int(latent))
            out[(int(key[0]), int(key[1]))] = str(text)
    return out


def _promoted(model: Any, transcoders: Mapping[int, Any], layers: list[int], latents: list[int], k: int) -> list[str]:
    """Top-``k`` tokens of ``W_dec[latent] . diag(ln_final.w) . W_U`` for each feature."""
    out = []
    W_U = model.W_U.detach()
    w = getattr(model.ln_final, "w", None) if hasattr(model, "ln_final") else None
    cache: dict[tuple[int, int], str] = {}
    for layer, latent in zip(layers, latents):
        if (layer, latent) not in cache:
            dec = transcoders[layer].W_dec.detach()[latent].to(W_U.dtype)
            if w is not None:
                dec = dec * w.detach()
            ids = (dec @ W_U).topk(min(k, W_U.shape[1])).indices.tolist()
            tok = model.tokenizer
            cache[(layer, latent)] = " ".join(repr(tok.decode([i])) if tok is not None else str(i) for i in ids)
        out.append(cache[(layer, latent)])
    return out


def feature_table(
    graph: Any,
    *,
    model: Any = None,
    transcoders: Mapping[int, Any] | None = None,
    labels: Mapping[Any, str] | None = None,
    top: int | None = None,
    top_k_tokens: int = 3,
) -> pd.DataFrame:
    """The feature nodes of ``graph`` as a DataFrame sorted by influence (descending).

    Args:
        graph: an :class:`~tc_circuits.graph.graph.AttributionGraph`.
        model, transcoders: when both are given, a ``promoted`` column lists each feature's
            top ``top_k_tokens`` promoted tokens.
        labels: ``{(layer, latent) or "layer:latent": text}`` for the ``label`` column
            (merged over ``graph.metadata["labels"]``).
        top: keep only the ``top`` most influential features.
    """
    import pandas as pd

    if top is not None and top < 0:
        raise ValueError(f"top must be >= 0 or None, got {top}")
    feats = graph.indices_of("feature")
    nw = normalized_weights(graph.edge_target, graph.edge_weight, graph.n_nodes)
    infl = propagate_influence(graph.edge_target, graph.edge_source, nw, graph.seed_weights().double())
    n = graph.nodes
    layers, pos, lat = n.layer[feats].tolist(), n.pos[feats].tolist(), n.latent[feats].tolist()
    data: dict[str, Any] = {
        "node": feats.tolist(),
        "id": [graph.node_id(int(i)) for i in feats],
        "layer": layers,
        "position": pos,
        "token": [graph.prompt_strings[p] for p in pos],
        "latent": lat,
        "activation": n.activation[feats].double().tolist(),
        "influence": infl[feats].double().tolist(),
    }
    # direct effect of each feature on each target: the edge (target <- feature)
    col_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    col_of[feats] = torch.arange(len(feats))
    et, es, ew = graph.edge_target.long(), graph.edge_source.long(), graph.edge_weight.double()
    for t, tidx in enumerate(graph.target_indices.tolist()):
        m = (et == tidx) & (col_of[es] >= 0)
        eff = torch.zeros(len(feats), dtype=torch.float64)
        eff.index_add_(0, col_of[es[m]], ew[m])
        data[effect_column(graph.target_labels[t])] = eff.tolist()
    if model is not None and transcoders is not None:
        data["promoted"] = _promoted(model, transcoders, layers, lat, top_k_tokens)
    names = _labels(graph, labels)
    data["label"] = [names.get((a, b), "") for a, b in zip(layers, lat)]
    df = pd.DataFrame(data)
    df = df.sort_values("influence", ascending=False, kind="stable").reset_index(drop=True)
    return df.head(top) if top is not None else df


__all__ = ["BASE_COLUMNS", "effect_column", "feature_table"]
