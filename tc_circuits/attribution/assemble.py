"""Graph assembly for the engine: the node layout, the node table, prompt strings and metadata.

The engine (:func:`tc_circuits.attribution.engine.attribute`) numbers its nodes by
:class:`_Layout` — ``[features | errors (L x P) | embeddings | positions | constant | targets]``
— while it computes the rows, and in its last phase turns the computed edges into an
:class:`~tc_circuits.graph.graph.AttributionGraph` with the node table (:func:`_node_table`,
in the same order), the decoded prompt (:func:`_decode`, :func:`_decode_all`) and the
provenance metadata (:func:`_metadata`, see :mod:`tc_circuits.graph.provenance`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tc_circuits.attribution.linearise import LinearisedModel
from tc_circuits.attribution.targets import Target, encode_direction
from tc_circuits.coders.hashing import transcoder_hash
from tc_circuits.graph.graph import NodeTable
from tc_circuits.models.provenance import model_provenance


class _Layout:
    """Node indices: [features | errors (L x P) | embeddings | positions | constant | targets]."""

    def __init__(self, n_features: int, n_layers: int, n_pos: int, has_pos: bool, n_targets: int):
        self.F, self.L, self.P = n_features, n_layers, n_pos
        self.err0 = n_features
        self.emb0 = self.err0 + n_layers * n_pos
        self.pos0 = self.emb0 + n_pos
        self.const = self.pos0 + (n_pos if has_pos else 0)
        self.tgt0 = self.const + 1
        self.n = self.tgt0 + n_targets


def _node_table(
    lin: LinearisedModel,
    lay: _Layout,
    tgts: Sequence[Target],
    tpos: list[int],
    real_vals: Float[Tensor, " n_targets"],
    visited: Bool[Tensor, " n_features"],
) -> NodeTable:
    """The nodes in :class:`_Layout` order; expanded: the ``visited`` features and the targets."""
    f, P, L = lin.features, lin.n_pos, lin.n_layers
    feats = NodeTable.make(
        "feature", lin.n_features, layer=f.layer, pos=f.pos, latent=f.latent,
        activation=f.activation, value=f.pre_activation,
    )
    feats.expanded = visited.clone()
    parts = [feats]
    for layer in range(L):
        kind = "error" if layer in lin.transcoders else "mlp_const"
        parts.append(NodeTable.make(kind, P, layer=layer, pos=torch.arange(P)))
    parts.append(NodeTable.make("embedding", P, pos=torch.arange(P), token_id=lin.tokens))
    if lin.has_pos_embed:
        parts.append(NodeTable.make("position", P, pos=torch.arange(P)))
    parts.append(NodeTable.make("constant", 1))
    tn = NodeTable.make(
        "target", len(tgts), pos=torch.tensor(tpos, dtype=torch.long),
        token_id=torch.tensor([t.token_id for t in tgts], dtype=torch.long), value=real_vals,
    )
    tn.expanded[:] = True
    parts.append(tn)
    return NodeTable.concat(parts)


def _decode(model, tok: int) -> str:
    """The string of one token, or its id as a string without a tokenizer."""
    return model.tokenizer.decode([tok]) if model.tokenizer is not None else str(tok)


def _decode_all(model, tokens: Int[Tensor, " pos"]) -> str:
    """The prompt's text, or its ids joined by spaces without a tokenizer."""
    if model.tokenizer is None:
        return " ".join(str(int(t)) for t in tokens)
    return model.tokenizer.decode(tokens.tolist())


def _metadata(
    model,
    lin: LinearisedModel,
    tgts: Sequence[Target],
    tpos: list[int],
    batch_size: int,
    max_feature_nodes: int | None,
) -> dict:
    """``graph.metadata``: model provenance, transcoders, targets and the engine's parameters."""
    return {
        "model": model_provenance(model),
        "n_layers": lin.n_layers,
        "d_vocab": lin.d_vocab,
        "d_model": lin.d_model,
        "has_position_nodes": lin.has_pos_embed,
        "block_plan": lin.plan.describe(),
        "uncovered_layers": [L for L in range(lin.n_layers) if L not in lin.transcoders],
        "cross_layer": lin.is_cross_layer,
        "transcoders": {
            str(L): {
                "n_latents": tc.cfg.n_latents, "activation": tc.cfg.activation, "k": tc.cfg.k,
                "skip": tc.cfg.skip, "input_site": tc.cfg.input_site, "output_site": tc.cfg.output_site,
                "content_hash": transcoder_hash(tc),
            }
            for L, tc in sorted(lin.transcoders.items())
        },
        "n_active_features": lin.n_features,
        "targets": [
            {"label": t.label, "position": p, "token_id": t.token_id, "weight": t.weight,
             "direction": encode_direction(t.direction)}
            for t, p in zip(tgts, tpos)
        ],
        "batch_size": batch_size,
        "max_feature_nodes": max_feature_nodes,
    }
