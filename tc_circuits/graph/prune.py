"""Node and edge influence on the targets, and pruning (as in Ameisen et al. 2025).

Let ``A`` be the adjacency matrix (rows = targets of edges) with each row's absolute values
normalised to sum to one. The influence of every node on the weighted targets ``w`` is

    influence = w A + w A^2 + w A^3 + ... = w ((I - A)^-1 - I)

computed here as a sparse power series on the COO edges (the graph is a DAG, so the series
ends after at most depth-many terms). Pruning keeps the most influential nodes until their
cumulative share reaches ``node_threshold``, then the most influential edges (edge score =
normalised weight x influence of its target node, on the node-pruned graph) until
``edge_threshold``; finally it drops nodes left without outgoing edges (and features left
without incoming edges), repeating until nothing changes. Embedding and target nodes are
always kept.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tc_circuits.graph.graph import AttributionGraph
from tc_circuits.graph.influence import normalized_weights, propagate_influence


def node_influence(graph: AttributionGraph) -> Float[Tensor, " n"]:
    """Influence of every node on the graph's weighted targets."""
    nw = normalized_weights(graph.edge_target, graph.edge_weight, graph.n_nodes)
    return propagate_influence(graph.edge_target, graph.edge_source, nw, graph.seed_weights().double())


def find_threshold(scores: Float[Tensor, " m"], threshold: float) -> float:
    """The score cut-off keeping the top scores whose cumulative share first reaches ``threshold``."""
    if scores.numel() == 0:
        return 0.0
    s = torch.sort(scores.double(), descending=True).values
    total = s.sum()
    if total <= 0:
        return 0.0
    cum = s.cumsum(0) / total
    i = int(torch.searchsorted(cum, torch.tensor(threshold, dtype=cum.dtype)).item())
    n_pos = int((s > 0).sum())
    i = min(i, max(n_pos - 1, 0))
    return float(s[i])


class PruneResult(NamedTuple):
    """Which nodes and edges survive pruning."""

    node_mask: Bool[Tensor, " n"]
    """Kept nodes."""
    edge_mask: Bool[Tensor, " e"]
    """Kept edges (aligned with ``graph.edge_weight``)."""
    node_influence: Float[Tensor, " n"]
    """Influence of each node on the targets (full graph)."""
    cumulative_scores: Float[Tensor, " n"]
    """Cumulative influence share of each node when nodes are sorted by influence."""


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> PruneResult:
    """Keep the nodes / edges carrying ``node_threshold`` / ``edge_threshold`` of the influence."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    n = graph.n_nodes
    t, s = graph.edge_target.long(), graph.edge_source.long()
    seed = graph.seed_weights().double()
    infl = node_influence(graph)
    always = graph.mask_of("embedding", "target")
    node_mask = (infl >= find_threshold(infl, node_threshold)) & (infl > 0) | always

    keep_e = node_mask[t] & node_mask[s]
    w_pruned = torch.where(keep_e, graph.edge_weight.double(), torch.zeros((), dtype=torch.float64))
    nw = normalized_weights(t, w_pruned, n)
    infl_pruned = propagate_influence(t, s, nw, seed) + seed
    edge_scores = nw * infl_pruned[t]
    edge_mask = (edge_scores >= find_threshold(edge_scores, edge_threshold)) & (edge_scores > 0)

    feature = graph.mask_of("feature")
    needs_out = ~always
    while True:
        has_out = torch.zeros(n, dtype=torch.bool)
        has_out[s[edge_mask]] = True
        has_in = torch.zeros(n, dtype=torch.bool)
        has_in[t[edge_mask]] = True
        new_mask = node_mask & ~(needs_out & ~has_out) & ~(feature & ~has_in)
        edge_mask = edge_mask & new_mask[t] & new_mask[s]
        if torch.equal(new_mask, node_mask):
            break
        node_mask = new_mask

    order = torch.argsort(infl, descending=True)
    cum = infl[order].cumsum(0) / infl.sum().clamp_min(1e-30)
    cumulative = torch.zeros_like(infl)
    cumulative[order] = cum
    return PruneResult(node_mask, edge_mask, infl.float(), cumulative.float())


def pruned_graph(graph: AttributionGraph, result: PruneResult) -> AttributionGraph:
    """The subgraph of ``graph`` kept by ``result``."""
    return graph.subgraph(result.node_mask, result.edge_mask)
