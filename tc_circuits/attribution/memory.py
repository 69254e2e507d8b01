"""Memory estimate of an attribution graph, made before the rows are computed.

The engine stores one COO edge ``(target int64, source int64, weight)`` per non-zero direct
effect. A source can only reach a row through the causal frozen model, so the edges of a row
are bounded by its *structural* sources: a feature or error at layer ``L' < L`` and position
``q <= p`` for a feature row at ``(L, p)``; every layer for a logit target; the embeddings /
positions at ``q <= p``; the constant. That bound is tight for full graphs (softmax patterns
and dense decoders make almost every structural edge non-zero), and the largest
``max_feature_nodes`` row counts bound a partial graph.

Peak bytes per edge: the per-batch pieces plus their concatenation (``2 x (16 + w)`` bytes)
and the float64 row sums of the exactness check and index temporaries (20 bytes), i.e. 60 B
for float32 weights (measured: 58 B per edge on full organism graphs).
A batch of transposed passes holds about ``BATCH_BUFFERS`` ``[batch, pos, d_model]`` buffers.
The linearised model's own cache (attention patterns ``n_layers x heads x pos^2``, the
per-layer activations) is counted too. ``docs/guarantees.md`` compares the estimate with
measured peaks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: ``[batch, pos, d_model]`` buffers alive at once in one batch of transposed passes
#: (gradient, LN adjoint, attention read-outs, skip path and their layout copies).
BATCH_BUFFERS = 8


class MemoryEstimate(NamedTuple):
    """Bytes an attribution run is expected to need beyond the model itself."""

    edges: int
    """Upper bound on the number of edges."""
    edge_bytes: int
    """Peak bytes of the edges (pieces, concatenation, exactness check)."""
    batch_bytes: int
    """Bytes of one batch's activations in the transposed pass."""
    cache_bytes: int
    """Bytes of the linearised model's cache (patterns, activations)."""

    @property
    def total(self) -> int:
        return self.edge_bytes + self.batch_bytes + self.cache_bytes


def structural_row_edges(
    feat_layer: Tensor, feat_pos: Tensor, n_layers: int, n_pos: int, has_pos: bool
) -> tuple[Tensor, Tensor]:
    """``(per feature row, per target position)`` upper bounds on incoming edges."""
    counts = torch.zeros(n_layers, n_pos, dtype=torch.long)
    if feat_layer.numel():
        counts.index_put_((feat_layer.long(), feat_pos.long()), torch.ones_like(feat_pos, dtype=torch.long), accumulate=True)
    upto = counts.cumsum(1)  # [L, P]: features at layer L with pos <= p
    below = torch.cat([torch.zeros(1, n_pos, dtype=torch.long), upto.cumsum(0)[:-1]])  # layers < L
    p1 = torch.arange(1, n_pos + 1)
    inputs = p1 * (2 if has_pos else 1) + 1  # embeddings, positions, constant
    layers = torch.arange(n_layers)[:, None]
    per_cell = below + layers * p1[None] + inputs[None]  # [L, P]: features + errors of layers < L
    feat_rows = per_cell[feat_layer.long(), feat_pos.long()] if feat_layer.numel() else torch.zeros(0, dtype=torch.long)
    target_rows = upto.sum(0) + n_layers * p1 + inputs
    return feat_rows, target_rows


def estimate_attribution_memory(
    lin, target_positions: list[int], n_expand: int, batch_size: int
) -> tuple[MemoryEstimate, Tensor]:
    """The estimate for ``lin`` (a ``LinearisedModel``) and the sorted per-feature-row bounds.

    The second value (descending edge bounds of the feature rows) lets the caller find the
    ``max_feature_nodes`` that fits a budget.
    """
    f = lin.features
    feat_rows, target_rows = structural_row_edges(
        f.layer, f.pos, lin.n_layers, lin.n_pos, bool(lin.has_pos_embed)
    )
    sorted_rows = torch.sort(feat_rows, descending=True).values
    edges = int(target_rows[torch.tensor(target_positions, dtype=torch.long)].sum()) + int(sorted_rows[:n_expand].sum())
    wbytes = torch.finfo(lin.embed.dtype).bits // 8
    bpe = bytes_per_edge(wbytes)
    P, d, L = lin.n_pos, lin.d_model, lin.n_layers
    n_heads = int(lin.patterns[0].shape[0]) if L else 0
    batch = BATCH_BUFFERS * batch_size * P * d * wbytes
    cache = L * n_heads * P * P * wbytes + 6 * (L + 1) * P * d * wbytes
    return MemoryEstimate(edges, edges * bpe, batch, cache), sorted_rows


def bytes_per_edge(weight_bytes: int) -> int:
    """Peak bytes per stored edge (see the module docstring)."""
    return 2 * (16 + weight_bytes) + 20


def fitting_feature_nodes(sorted_rows: Tensor, budget_edges: int) -> int:
    """The largest ``n`` whose ``n`` largest feature rows hold at most ``budget_edges`` edges."""
    if budget_edges <= 0:
        return 0
    return int(torch.searchsorted(sorted_rows.cumsum(0), torch.tensor(budget_edges), right=True))


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
