"""Attribution graphs: the sparse graph type, pruning, scores and export."""

from tc_circuits.graph.graph import NODE_TYPES, AttributionGraph, NodeTable
from tc_circuits.graph.export import (
    from_json_dict,
    load_json,
    save_graph_files,
    save_json,
    to_json_dict,
    to_networkx,
    validate_json_dict,
)
from tc_circuits.graph.prune import PruneResult, node_influence, prune_graph, pruned_graph
from tc_circuits.graph.scores import GraphScores, compute_graph_scores

__all__ = [
    "NODE_TYPES",
    "AttributionGraph",
    "GraphScores",
    "NodeTable",
    "compute_graph_scores",
    "from_json_dict",
    "load_json",
    "PruneResult",
    "node_influence",
    "prune_graph",
    "pruned_graph",
    "save_graph_files",
    "save_json",
    "to_json_dict",
    "to_networkx",
    "validate_json_dict",
]
