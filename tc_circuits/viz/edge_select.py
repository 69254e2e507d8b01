"""Which edges a graph view draws: each node's strongest, not the graph's strongest.

Choosing the globally largest ``|weight|`` edges leaves most nodes unconnected (a few strong
nodes take them all). Instead every edge gets two ranks by ``|weight|``: among the outgoing
edges of its source (``rank_out``) and among the incoming edges of its target (``rank_in``).
With ``k`` edges per node an edge is drawn when ``rank_out < k`` or ``rank_in < k``
(``rank_in < max(k, target_inputs)`` into a target). So every node with any edge keeps its
strongest input and output, and every target shows its ``target_inputs`` strongest inputs.
The page's "edges per node" control applies the same rule in JavaScript.
"""

from __future__ import annotations

from typing import NamedTuple

from tc_circuits.viz.supernodes import ViewGraph


class RankedEdge(NamedTuple):
    """A candidate edge and its ranks."""

    source: int
    target: int
    weight: float
    rank_out: int
    """Rank of ``|weight|`` among the source's outgoing edges (0 = strongest)."""
    rank_in: int
    """Rank among the target's incoming edges."""


def rank_edges(view: ViewGraph) -> list[RankedEdge]:
    """Every edge of ``view`` with its per-node ranks, strongest ``|weight|`` first."""
    order = sorted(range(len(view.edges)), key=lambda e: -abs(view.edges[e].weight))
    seen_out: dict[int, int] = {}
    seen_in: dict[int, int] = {}
    out = []
    for e in order:
        ed = view.edges[e]
        ro, ri = seen_out.get(ed.source, 0), seen_in.get(ed.target, 0)
        seen_out[ed.source], seen_in[ed.target] = ro + 1, ri + 1
        out.append(RankedEdge(ed.source, ed.target, ed.weight, ro, ri))
    return out


def selected(edge: RankedEdge, k: int, target_inputs: int, is_target: bool) -> bool:
    """Whether ``edge`` is drawn with ``k`` edges per node."""
    k_in = max(k, target_inputs) if is_target else k
    return edge.rank_out < k or edge.rank_in < k_in


def select_edges(view: ViewGraph, ranked: list[RankedEdge], k: int, target_inputs: int) -> list[RankedEdge]:
    """The edges drawn with ``k`` edges per node (strongest first)."""
    if k < 1:
        raise ValueError(f"edges per node must be >= 1, got {k}")
    tgt = [n.kind == "target" for n in view.nodes]
    return [e for e in ranked if selected(e, k, target_inputs, tgt[e.target])]


def candidates(view: ViewGraph, ranked: list[RankedEdge], k_max: int, target_inputs: int) -> list[RankedEdge]:
    """The edges any ``k <= k_max`` can draw (what the page ships to its JavaScript)."""
    return select_edges(view, ranked, k_max, target_inputs)
