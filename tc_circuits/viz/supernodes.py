"""The drawable form of a (pruned) attribution graph, and grouping nodes into supernodes.

:func:`view_graph` turns an :class:`~tc_circuits.graph.AttributionGraph` plus a
:class:`~tc_circuits.graph.PruneResult` into a :class:`ViewGraph`: plain Python lists of the
kept nodes (with influence) and kept edges, keyed by the engine's node ids
(``graph.node_id(i)``, e.g. ``"1_23_4"`` = layer 1, latent 23, position 4).

Supernodes merge several nodes into one: a supernode's activation and influence are the sums
of its members', an edge between two supernodes (or a supernode and a node) is the sum of the
member edges, and edges inside a supernode are dropped.

**Automatic grouping** (:func:`auto_supernodes`): feature nodes at the *same token position*
are clustered by the cosine similarity of their outgoing-edge vectors (the vector of their
edge weights to every node of the view graph: two features with the same role push the
same downstream nodes in the same proportions). Clustering is agglomerative with average
linkage: repeatedly merge the two clusters with the highest mean pairwise similarity while it
is at least ``threshold``. Clusters of two or more features become supernodes named
``"p{pos} L{layers} x{n}"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from tc_circuits.graph import AttributionGraph, PruneResult


@dataclass
class ViewNode:
    """One drawable node (an original node or a supernode)."""

    key: str
    """Node id (``graph.node_id``) or supernode name."""
    kind: str
    """Node type (``"feature"``, ``"error"``, ..., or ``"supernode"``)."""
    layer: float | int
    """Layer (-1 for inputs, ``n_layers`` for targets; the mean layer for a supernode)."""
    pos: int
    """Token position (-1 for the constant node)."""
    latent: int = -1
    """Latent index of a feature."""
    label: str = ""
    """Short label."""
    activation: float = float("nan")
    """Feature activation (sum over members for a supernode)."""
    influence: float = 0.0
    """Influence on the targets (sum over members)."""
    members: list[str] = field(default_factory=list)
    """Node ids of the members of a supernode (the node itself otherwise)."""
    member_kinds: list[str] = field(default_factory=list)
    """Node type of each member (aligned with ``members``)."""
    member_layers: list[int] = field(default_factory=list)
    """Layer of each member."""


@dataclass
class ViewEdge:
    """A drawn edge ``source -> target``."""

    source: int
    """Index of the source in ``ViewGraph.nodes``."""
    target: int
    """Index of the target."""
    weight: float
    """Direct effect (summed over member edges for supernodes)."""


@dataclass
class ViewGraph:
    """Nodes and edges to draw, plus the prompt and layer count for the axes."""

    nodes: list[ViewNode]
    edges: list[ViewEdge]
    prompt_strings: list[str]
    n_layers: int

    def index(self) -> dict[str, int]:
        return {n.key: i for i, n in enumerate(self.nodes)}


def _label(graph: AttributionGraph, i: int, kind: str, target_k: int) -> str:
    nodes = graph.nodes
    pos = int(nodes.pos[i])
    if kind == "feature":
        return f"L{int(nodes.layer[i])} #{int(nodes.latent[i])}"
    if kind in ("error", "mlp_const"):
        return f"{'err' if kind == 'error' else 'mlp'} L{int(nodes.layer[i])}"
    if kind == "embedding":
        return repr(graph.prompt_strings[pos]) if 0 <= pos < len(graph.prompt_strings) else "emb"
    if kind == "position":
        return f"pos {pos}"
    if kind == "constant":
        return "bias"
    label = graph.target_labels[target_k] if target_k < len(graph.target_labels) else "target"
    return label[len("logit "):] if label.startswith("logit ") else label


def n_layers_of(graph: AttributionGraph) -> int:
    """Number of layers (metadata, else one more than the largest node layer)."""
    n = graph.metadata.get("n_layers")
    return int(n) if n is not None else int(graph.nodes.layer.max()) + 1


def view_graph(graph: AttributionGraph, prune: PruneResult, *, all_edges: bool = False) -> ViewGraph:
    """The nodes and edges kept by ``prune`` (influence from ``prune.node_influence``).

    With ``all_edges`` every edge between two kept nodes is included (not only those kept
    by edge pruning), and token embeddings without any such edge are left out: the view
    then chooses its edges per node (:mod:`tc_circuits.viz.edge_select`).
    """
    n_layers = n_layers_of(graph)
    keep = torch.nonzero(prune.node_mask).flatten().tolist()
    tcode = {i: k for k, i in enumerate(graph.target_indices.tolist())}
    nodes, new = [], {}
    for i in keep:
        kind = graph.node_type(i)
        layer = int(graph.nodes.layer[i])
        if kind in ("embedding", "position", "constant"):
            layer = -1
        elif kind == "target":
            layer = n_layers
        infl = float(prune.node_influence[i])
        if kind == "target":
            infl = float(graph.target_weights[tcode[i]])
        key = graph.node_id(i)
        new[i] = len(nodes)
        nodes.append(ViewNode(
            key=key, kind=kind, layer=layer, pos=int(graph.nodes.pos[i]),
            latent=int(graph.nodes.latent[i]), label=_label(graph, i, kind, tcode.get(i, 0)),
            activation=float(graph.nodes.activation[i]), influence=infl, members=[key],
            member_kinds=[kind], member_layers=[int(layer)],
        ))
    if all_edges:
        mask = prune.node_mask[graph.edge_source.long()] & prune.node_mask[graph.edge_target.long()]
        em = torch.nonzero(mask).flatten().tolist()
    else:
        em = torch.nonzero(prune.edge_mask).flatten().tolist()
    edges = [
        ViewEdge(new[s], new[t], float(graph.edge_weight[e]))
        for e, s, t in zip(em, graph.edge_source[em].tolist(), graph.edge_target[em].tolist())
        if s in new and t in new and float(graph.edge_weight[e]) != 0.0
    ]
    view = ViewGraph(nodes, edges, list(graph.prompt_strings), n_layers)
    if all_edges:
        linked = {e.source for e in edges} | {e.target for e in edges}
        view = _drop(view, [i for i, n in enumerate(nodes) if n.kind == "embedding" and i not in linked])
    return view


def _drop(view: ViewGraph, drop: list[int]) -> ViewGraph:
    """``view`` without the nodes ``drop`` (and their edges)."""
    if not drop:
        return view
    gone = set(drop)
    remap, nodes = {}, []
    for i, n in enumerate(view.nodes):
        if i not in gone:
            remap[i] = len(nodes)
            nodes.append(n)
    edges = [ViewEdge(remap[e.source], remap[e.target], e.weight) for e in view.edges
             if e.source in remap and e.target in remap]
    return ViewGraph(nodes, edges, view.prompt_strings, view.n_layers)


def group_nodes(view: ViewGraph, groups: Mapping[str, Sequence[str]]) -> ViewGraph:
    """Merge each group of node ids into one supernode (ids not in ``view`` are ignored)."""
    index = view.index()
    owner: dict[int, str] = {}
    for name, ids in groups.items():
        for key in ids:
            if key in index:
                if index[key] in owner:
                    raise ValueError(f"node {key!r} is in two supernodes: {owner[index[key]]!r} and {name!r}")
                owner[index[key]] = name
    new_nodes: list[ViewNode] = []
    slot: dict[str, int] = {}
    remap: list[int] = []
    for i, node in enumerate(view.nodes):
        name = owner.get(i)
        if name is None:
            remap.append(len(new_nodes))
            new_nodes.append(replace(node, members=list(node.members), member_kinds=list(node.member_kinds),
                                     member_layers=list(node.member_layers)))
            continue
        if name not in slot:
            slot[name] = len(new_nodes)
            new_nodes.append(ViewNode(key=name, kind="supernode", layer=0.0, pos=node.pos, label=name,
                                      activation=0.0, influence=0.0, members=[]))
        sn = new_nodes[slot[name]]
        sn.members.extend(node.members)
        sn.member_kinds.extend(node.member_kinds or [node.kind] * len(node.members))
        sn.member_layers.extend(node.member_layers or [int(node.layer)] * len(node.members))
        sn.influence += node.influence
        if node.activation == node.activation:  # not NaN
            sn.activation += node.activation
        remap.append(slot[name])
    for name, s in slot.items():  # layer/pos: mean over members
        mem = [view.nodes[i] for i, o in owner.items() if o == name]
        new_nodes[s].layer = sum(m.layer for m in mem) / len(mem)
        new_nodes[s].pos = round(sum(m.pos for m in mem) / len(mem))
    summed: dict[tuple[int, int], float] = {}
    for e in view.edges:
        s, t = remap[e.source], remap[e.target]
        if s != t:
            summed[(s, t)] = summed.get((s, t), 0.0) + e.weight
    edges = [ViewEdge(s, t, w) for (s, t), w in summed.items()]
    return ViewGraph(new_nodes, edges, view.prompt_strings, view.n_layers)


def auto_supernodes(view: ViewGraph, threshold: float = 0.9) -> dict[str, list[str]]:
    """Cluster same-position features by outgoing-edge cosine similarity (see module doc)."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    n = len(view.nodes)
    out_vec = torch.zeros(n, n, dtype=torch.float64)
    for e in view.edges:
        out_vec[e.source, e.target] += e.weight
    by_pos: dict[int, list[int]] = {}
    for i, node in enumerate(view.nodes):
        if node.kind == "feature" and bool(out_vec[i].any()):
            by_pos.setdefault(node.pos, []).append(i)
    groups: dict[str, list[str]] = {}
    for pos, idx in sorted(by_pos.items()):
        for cluster in agglomerate(out_vec[idx], threshold):
            if len(cluster) < 2:
                continue
            mem = [view.nodes[idx[c]] for c in cluster]
            layers = "".join(sorted({str(int(m.layer)) for m in mem}))
            name = f"p{pos} L{layers} x{len(mem)}"
            while name in groups:
                name += "'"
            groups[name] = [m.key for m in mem]
    return groups


def agglomerate(vectors: torch.Tensor, threshold: float) -> list[list[int]]:
    """Average-linkage agglomerative clustering of rows by cosine similarity (stop below threshold)."""
    m = vectors.shape[0]
    if m == 0:
        return []
    unit = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-30)
    sim = unit @ unit.T
    clusters = [[i] for i in range(m)]
    while len(clusters) > 1:
        best, pair = -2.0, (0, 0)
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                s = float(sim[clusters[a]][:, clusters[b]].mean())
                if s > best:
                    best, pair = s, (a, b)
        if best < threshold:
            break
        a, b = pair
        clusters[a] = clusters[a] + clusters[b]
        del clusters[b]
    return clusters
