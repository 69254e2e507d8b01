"""Memory estimate of an attribution graph, made before the rows are computed.

The engine stores one COO edge ``(target int32, source int32, weight)`` per non-zero direct
effect (:class:`~tc_circuits.attribution.edge_sink.EdgeSink`; int64 indices past 2^31 nodes). A source can only reach a row through the causal frozen model, so the edges of a row
are bounded by its *structural* sources: a feature or error at layer ``L' < L`` and position
``q <= p`` for a feature row at ``(L, p)``; every layer for a logit target; the embeddings /
positions at ``q <= p``; the constant. That bound is tight for full graphs (softmax patterns
and dense decoders make almost every structural edge non-zero), and the largest
``max_feature_nodes`` row counts bound a partial graph.

Peak bytes per edge: the buffers the edges are written into once, ``2 x 4 + w`` bytes (12 B for
float32 weights); graphs whose edges take at most ``COMPACT_BYTES`` are copied to their exact
size at the end, one column at a time (``+ max(4, w)`` bytes per edge then). Per node: the
float64 row sums and absolute row sums (the exactness check and the influence ranker read them)
and the ranker's influence vectors. A batch of transposed passes holds about ``BATCH_BUFFERS``
``[batch, pos, d_model]`` buffers, plus the temporaries of one block of edges being written
(at most ``PIECE_ENTRIES`` entries: the dense block, its non-zero indices, the gathered nodes).
The linearised model's own cache (attention patterns ``n_layers x heads x pos^2``, the
per-layer activations) is counted too. ``docs/guarantees.md`` compares the estimate with
measured peaks.

Before any row is computed the engine fits the run to its budget (``max_memory``, or 0.8 x the
available RAM) with :func:`_fit_memory`: a smaller batch size if that is enough, otherwise an
:class:`AttributionMemoryError` naming the ``max_feature_nodes`` that fits.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from tc_circuits.attribution.edge_sink import COMPACT_BYTES, index_dtype

#: ``[batch, pos, d_model]`` buffers alive at once in one batch of transposed passes
#: (gradient, LN adjoint, attention read-outs, skip path and their layout copies).
BATCH_BUFFERS = 8
#: Largest block of candidate edges written at once (``feature_edges`` chunks its positions so
#: that ``B x positions x kmax`` stays near ``2^22``), and the bytes each entry takes meanwhile
#: (the dense block and its masked copy, two int64 non-zero indices, the gathered target and
#: source nodes, the weight and its float64 copy for the row sums).
PIECE_ENTRIES = 1 << 22
PIECE_BYTES = 64
#: float64 vectors per node: row sums, absolute row sums, the ranker's influence and seed.
NODE_VECTORS = 5


class MemoryEstimate(NamedTuple):
    """Bytes an attribution run is expected to need beyond the model itself."""

    edges: int
    """Upper bound on the number of edges."""
    edge_bytes: int
    """Peak bytes of the edges (buffers, final compaction, per-node sums)."""
    batch_bytes: int
    """Bytes of one batch's activations in the transposed pass."""
    cache_bytes: int
    """Bytes of the linearised model's cache (patterns, activations)."""

    bytes_per_edge: int = 12
    """Bytes per stored edge (without the final compaction)."""

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


def _row_bounds(lin, target_positions: list[int]) -> tuple[int, Tensor]:
    """``(edges of the target rows, descending per-feature-row bounds)``."""
    f = lin.features
    feat_rows, target_rows = structural_row_edges(
        f.layer, f.pos, lin.n_layers, lin.n_pos, bool(lin.has_pos_embed)
    )
    sorted_rows = torch.sort(feat_rows, descending=True).values
    return int(target_rows[torch.tensor(target_positions, dtype=torch.long)].sum()), sorted_rows


def edge_bound(lin, target_positions: list[int], n_expand: int) -> int:
    """Upper bound on the edges of the target rows plus any ``n_expand`` feature rows."""
    target_edges, sorted_rows = _row_bounds(lin, target_positions)
    return target_edges + int(sorted_rows[:n_expand].sum())


def n_nodes_of(lin, n_targets: int) -> int:
    """Nodes of the engine's layout: features, errors, embeddings, positions, constant, targets."""
    P = lin.n_pos
    return lin.n_features + lin.n_layers * P + P * (2 if lin.has_pos_embed else 1) + 1 + n_targets


def estimate_attribution_memory(
    lin, target_positions: list[int], n_expand: int, batch_size: int
) -> tuple[MemoryEstimate, Tensor]:
    """The estimate for ``lin`` (a ``LinearisedModel``) and the sorted per-feature-row bounds.

    The second value (descending edge bounds of the feature rows) lets the caller find the
    ``max_feature_nodes`` that fits a budget.
    """
    target_edges, sorted_rows = _row_bounds(lin, target_positions)
    edges = target_edges + int(sorted_rows[:n_expand].sum())
    wbytes = torch.finfo(lin.embed.dtype).bits // 8
    n_nodes = n_nodes_of(lin, len(target_positions))
    ibytes = torch.empty(0, dtype=index_dtype(n_nodes)).element_size()
    bpe = bytes_per_edge(wbytes, ibytes)
    compact = edges * max(ibytes, wbytes) if edges * bpe <= COMPACT_BYTES else 0
    edge_bytes = edges * bpe + compact + NODE_VECTORS * 8 * n_nodes
    P, d, L = lin.n_pos, lin.d_model, lin.n_layers
    n_heads = int(lin.patterns[0].shape[0]) if L else 0
    batch = BATCH_BUFFERS * batch_size * P * d * wbytes + min(PIECE_ENTRIES, batch_size * n_nodes) * PIECE_BYTES
    cache = L * n_heads * P * P * wbytes + 6 * (L + 1) * P * d * wbytes
    return MemoryEstimate(edges, edge_bytes, batch, cache, bpe), sorted_rows


def bytes_per_edge(weight_bytes: int, index_bytes: int = 4) -> int:
    """Bytes per stored edge: two node indices and the weight (see the module docstring)."""
    return 2 * index_bytes + weight_bytes


def fitting_feature_nodes(sorted_rows: Tensor, budget_edges: int) -> int:
    """The largest ``n`` whose ``n`` largest feature rows hold at most ``budget_edges`` edges."""
    if budget_edges <= 0:
        return 0
    return int(torch.searchsorted(sorted_rows.cumsum(0), torch.tensor(budget_edges), right=True))


def gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class AttributionMemoryError(MemoryError, ValueError):
    """The graph is estimated to need more memory than the budget (``max_memory``)."""


def _fit_memory(
    lin, tpos: list[int], max_feature_nodes: int | None, batch_size: int, budget: int | None,
    max_memory: float | None,
) -> int:
    """The batch size to use under ``budget`` bytes; raise before any row is computed if none fits."""
    if budget is None:
        return batch_size
    n_expand = lin.n_features if max_feature_nodes is None else min(max_feature_nodes, lin.n_features)
    est, rows = estimate_attribution_memory(lin, tpos, n_expand, batch_size)
    if est.total <= budget:
        return batch_size
    fixed = est.edge_bytes + est.cache_bytes
    per_row = est.batch_bytes // batch_size
    if fixed + per_row <= budget:
        fit = max(1, min(batch_size, (budget - fixed) // max(per_row, 1)))
        warnings.warn(
            f"attribution estimated at {gb(est.total)} > budget {gb(budget)}: "
            f"batch_size {batch_size} -> {fit} to fit (same graph, more passes)",
            UserWarning, stacklevel=3,
        )
        return int(fit)
    target_edges = est.edges - int(rows[:n_expand].sum())
    spare = budget - est.cache_bytes - est.batch_bytes  # at the requested batch size
    fit_nodes = fitting_feature_nodes(rows, spare // est.bytes_per_edge - target_edges)
    where = "max_memory" if max_memory is not None else "0.8 x the available RAM"
    raise AttributionMemoryError(
        f"this graph is estimated to need {gb(est.total)} ({est.edges:,} edges: {gb(est.edge_bytes)}; "
        f"attention/activation cache {gb(est.cache_bytes)}; one batch {gb(est.batch_bytes)}) but the "
        f"budget is {gb(budget)} ({where}). Expand fewer features: max_feature_nodes={fit_nodes} "
        f"(--max-feature-nodes {fit_nodes}) fits; or raise the budget with max_memory (--max-memory GB)"
    )
