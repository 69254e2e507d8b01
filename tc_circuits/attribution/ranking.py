"""Which features to expand next: their estimated influence on the targets from the rows so far.

With ``max_feature_nodes`` the engine expands features in order of influence, re-ranked every
``update_interval`` batches from the edges computed so far (the targets' rows and the features
already expanded). :class:`InfluenceRanker` keeps those edges in the batches they were computed
in, row-normalises each batch once (a row's incoming edges all come from one transposed pass,
so a finished batch's normalisation never changes), and sums the influence in one pass per
re-ranking (:func:`tc_circuits.graph.influence.propagate_prepared`: edges go from lower to higher
levels — embeddings, errors and constants, then features by layer, then targets), where
:func:`~tc_circuits.graph.influence.propagate_influence` iterates over every edge once per path
length. Equal to it up to float rounding (``tests/test_influence_levels.py``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.attribution.feature_edges import EdgeSink
from tc_circuits.graph.influence import LevelChunk, normalized_weights, prepare_chunk, propagate_prepared


class InfluenceRanker:
    """Influence of every node on the seeded targets, from the edges an :class:`EdgeSink` holds.

    Call :meth:`influence` only between batches (every row in the sink complete).
    """

    def __init__(self, sink: EdgeSink, level: Int[Tensor, " n"], seed: Float[Tensor, " n"]):
        self.sink, self.level, self.seed = sink, level, seed
        self.n = int(level.shape[0])
        self._chunks: list[LevelChunk] = []
        self._used = 0  # sink pieces already prepared

    def influence(self) -> Float[Tensor, " n"]:
        """``seed A + seed A^2 + ...`` over the row-normalised edges computed so far."""
        pieces = len(self.sink.w)
        if pieces > self._used:
            t = torch.cat(self.sink.t[self._used : pieces])
            s = torch.cat(self.sink.s[self._used : pieces])
            w = torch.cat(self.sink.w[self._used : pieces])
            # rows of these pieces are disjoint from earlier pieces' rows: normalise them alone
            self._chunks.append(prepare_chunk((t, s, normalized_weights(t, w, self.n)), self.level))
            self._used = pieces
        return propagate_prepared(self._chunks, self.seed)


def node_levels(n_nodes: int, feature_layer: Int[Tensor, " f"], target_start: int, n_layers: int) -> Int[Tensor, " n"]:
    """Levels of the engine's node layout: features by layer, targets ``n_layers``, the rest -1."""
    level = torch.full((n_nodes,), -1, dtype=torch.long)
    level[: feature_layer.shape[0]] = feature_layer
    level[target_start:] = n_layers
    return level


__all__ = ["InfluenceRanker", "node_levels"]
