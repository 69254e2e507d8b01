"""Which features to expand next: their estimated influence on the targets from the rows so far.

With ``max_feature_nodes`` the engine expands features in order of influence, re-ranked every
``update_interval`` batches from the edges computed so far (the targets' rows and the features
already expanded). A row's incoming edges all come from one transposed pass, so a finished
row's normalisation never changes; the influence is summed in one pass per re-ranking (edges
go from lower to higher levels — embeddings, errors and constants, then features by layer,
then targets — so each level's influence is final before its incoming edges are followed),
where :func:`~tc_circuits.graph.influence.propagate_influence` iterates over every edge once per
path length.

* :class:`InfluenceRanker` (fast) reads the :class:`~tc_circuits.attribution.edge_sink.EdgeSink`
  in place: its per-node absolute row sums normalise, its level segments give each level's
  edges as contiguous slices; nothing per edge is kept beyond the sink's buffers.
* :class:`InfluenceRankerReference` keeps a float64 normalised copy of the edges of a
  :class:`~tc_circuits.attribution.edge_sink.ListEdgeSink` (26 bytes per edge) and finds each
  level's edges by comparison (:func:`tc_circuits.graph.influence.propagate_prepared`).

Both add the same products in the same order (equal to the bit; ``tests/test_fast_paths.py``)
and equal the power series up to float rounding (``tests/test_influence_levels.py``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.attribution.edge_sink import EdgeSink, ListEdgeSink
from tc_circuits.graph.influence import LevelChunk, normalized_weights, prepare_chunk, propagate_prepared


class InfluenceRanker:
    """Influence of every node on the seeded targets, from the edges an :class:`EdgeSink` holds.

    The sink must record levels and sums (``EdgeSink(..., level=level, sums=True)``). Call
    :meth:`influence` only between batches (every row in the sink complete).
    """

    def __init__(self, sink: EdgeSink, level: Int[Tensor, " n"], seed: Float[Tensor, " n"]):
        if sink.level is None or not sink.sums:
            raise ValueError("InfluenceRanker needs an EdgeSink built with level=... and sums=True")
        self.sink, self.level, self.seed = sink, level.long(), seed
        self._by_level: dict[int, list[tuple[int, int]]] = {}
        self._seen = 0  # sink segments already checked and filed

    def influence(self) -> Float[Tensor, " n"]:
        """``seed A + seed A^2 + ...`` over the row-normalised edges computed so far."""
        sink = self.sink
        for a, b, lv in sink.segments[self._seen :]:
            if not bool((self.level[sink.s[a:b]] < lv).all()):
                raise ValueError("an edge does not go from a lower to a higher level: use propagate_influence")
            self._by_level.setdefault(lv, []).append((a, b))
        self._seen = len(sink.segments)
        y = self.seed.double().clone()
        if not self._by_level:
            return torch.zeros_like(y)
        denom = sink.row_abs.clamp_min(1e-10)  # as normalized_weights
        for lv in sorted(self._by_level, reverse=True):  # the influence of level lv is final here
            for a, b in self._by_level[lv]:
                t, s, w = sink.view(a, b)
                nw = w.abs().double() / denom[t]
                y.index_add_(0, s, y[t] * nw)
        return y - self.seed.double()


class InfluenceRankerReference:
    """Reference: the same influence from a :class:`ListEdgeSink`'s pieces (a prepared copy per re-ranking)."""

    def __init__(self, sink: ListEdgeSink, level: Int[Tensor, " n"], seed: Float[Tensor, " n"]):
        self.sink, self.level, self.seed = sink, level, seed
        self.n = int(level.shape[0])
        self._chunks: list[LevelChunk] = []
        self._used = 0  # sink pieces already prepared

    def influence(self) -> Float[Tensor, " n"]:
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


__all__ = ["InfluenceRanker", "InfluenceRankerReference", "node_levels"]
