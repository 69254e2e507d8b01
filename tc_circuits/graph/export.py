"""Export attribution graphs to networkx and to the circuit-tracer / Neuronpedia JSON schema.

JSON layout (circuit-tracer ``create_graph_files``): ``metadata`` (slug, scan, prompt_tokens,
prompt, node_threshold, schema_version), ``qParams`` (pinnedIds, supernodes, linkType,
clickedId, sg_pos), ``nodes`` (node_id, feature, layer, ctx_idx, feature_type, token_prob,
is_target_logit, jsNodeId, clerp, influence, activation, ...) and ``links`` (source,
target, weight).

Node ids are ``layer_index_pos`` and unambiguous: features ``"{L}_{latent}_{pos}"``, errors
``"{L}_-1_{pos}"``, constant MLP outputs of uncovered layers ``"{L}_-2_{pos}"``, tokens
``"E_{token}_{pos}"``, positions ``"P_{pos}_{pos}"``, the constant ``"B_0_0"``, targets
``"{n_layers+1}_{token or d_vocab+t}_{pos}"`` (a virtual index for non-token directions).

Each node also carries ``tc_*`` fields (type, latent, token id, value, expanded) and the
metadata a ``tc_circuits`` block, so :func:`from_json_dict` rebuilds the same
:class:`AttributionGraph` exactly; files written by circuit-tracer import too (their
node values are unknown, so they are NaN there) and re-export with their own node ids,
``scan`` and ``qParams``.

Labels go in ``clerp``; logits in circuit-tracer's form ``Output "tok" (p=0.123)`` (its
frontend reads the probability from it). Position and constant nodes are typed
``"position embedding"`` / ``"bias"``: circuit-tracer's frontend relabels every
``"embedding"`` node as the token at its position. :func:`validate_json_dict` checks the
fields Neuronpedia requires; :func:`save_graph_files` writes ``{slug}.json`` and updates
``graph-metadata.json`` the way circuit-tracer's ``create_graph_files`` does.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from tc_circuits.fileio import atomic_write
from tc_circuits.graph.graph import NODE_TYPES, AttributionGraph, NodeTable, type_code
from tc_circuits.graph.prune import prune_graph

_FEATURE_TYPE = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "mlp_const": "mlp reconstruction error",
    "embedding": "embedding",
    "position": "position embedding",
    "constant": "bias",
    "target": "logit",
}


def _f(x: float) -> float | None:
    return None if math.isnan(x) else x


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def to_networkx(graph: AttributionGraph, node_mask=None, edge_mask=None, influence=None):
    """A ``networkx.DiGraph`` (source -> target edges with ``weight``) keyed by node id."""
    import networkx as nx

    g = nx.DiGraph()
    ids = graph.node_ids()
    keep = torch.ones(graph.n_nodes, dtype=torch.bool) if node_mask is None else node_mask.bool()
    for i in torch.nonzero(keep).flatten().tolist():
        nt = graph.nodes
        pos = int(nt.pos[i])
        g.add_node(
            ids[i],
            index=i,
            type=graph.node_type(i),
            layer=int(nt.layer[i]),
            pos=pos,
            latent=int(nt.latent[i]),
            token_id=int(nt.token_id[i]),
            token=graph.prompt_strings[pos] if 0 <= pos < graph.n_pos else "",
            activation=float(nt.activation[i]),
            value=float(nt.value[i]),
            expanded=bool(nt.expanded[i]),
            influence=None if influence is None else float(influence[i]),
        )
    emask = keep[graph.edge_target.long()] & keep[graph.edge_source.long()]
    if edge_mask is not None:
        emask &= edge_mask.bool()
    for t, s, w in zip(
        graph.edge_target[emask].tolist(), graph.edge_source[emask].tolist(), graph.edge_weight[emask].tolist()
    ):
        g.add_edge(ids[s], ids[t], weight=w)
    return g


_LOGIT_LABEL = re.compile(r'^logit "(.*)"$', re.S)
_OUTPUT_CLERP = re.compile(r'^Output "(.*)" \(p=[-+0-9.eE]+\)$', re.S)


def _target_token(label: str) -> str:
    """The token text of a target label (``'logit " 58"'`` -> ``' 58'``; other labels whole)."""
    m = _LOGIT_LABEL.match(label)
    return m.group(1) if m else label


def default_scan(name: str) -> str:
    """A ``scan`` id without ``/`` (Neuronpedia and circuit-tracer use it in URLs and paths)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-") or "tc_circuits"


def _clerp(graph: AttributionGraph, i: int, kind: str) -> str:
    pos = int(graph.nodes.pos[i])
    if kind == "target":
        t = int((graph.nodes.type[:i] == type_code("target")).sum())
        return f'Output "{_target_token(graph.target_labels[t])}" (p={float(graph.target_weights[t]):.3f})'
    if kind == "position":
        return f"Pos: {pos}"
    if kind == "constant":
        return "Bias: constant (biases)"
    if kind == "mlp_const":
        return f"MLP {int(graph.nodes.layer[i])} output (no transcoder)"
    return ""


def to_json_dict(
    graph: AttributionGraph,
    *,
    slug: str = "graph",
    scan: str | None = None,
    prune: bool = True,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    clerps: dict[Any, str] | None = None,
) -> dict[str, Any]:
    """The graph (pruned unless ``prune=False``) as a circuit-tracer / Neuronpedia JSON dict.

    ``clerps`` maps node ids, ``"{layer}_{latent}"`` or ``(layer, latent)`` feature keys to
    labels (the node's ``clerp``, what Neuronpedia and circuit-tracer's frontend show). The result passes :func:`validate_json_dict`.
    """
    if prune:
        res = prune_graph(graph, node_threshold, edge_threshold)
        node_mask, edge_mask, influence = res.node_mask, res.edge_mask, res.cumulative_scores
    else:
        node_mask = torch.ones(graph.n_nodes, dtype=torch.bool)
        edge_mask = torch.ones(graph.n_edges, dtype=torch.bool)
        influence = None
    sub = graph.subgraph(node_mask, edge_mask)
    sub_infl = None if influence is None else influence[node_mask]
    n_layers = int(graph.metadata.get("n_layers", 0))
    foreign = graph.metadata.get("json_node_ids")
    if isinstance(foreign, list) and len(foreign) == graph.n_nodes:  # imported: keep its ids
        ids = [foreign[i] for i in torch.nonzero(node_mask).flatten().tolist()]
    else:
        ids = sub.node_ids()
    nodes = []
    tgt_counter = 0
    for i in range(sub.n_nodes):
        kind = sub.node_type(i)
        nt = sub.nodes
        layer, pos, lat, tok = (int(nt.layer[i]), int(nt.pos[i]), int(nt.latent[i]), int(nt.token_id[i]))
        if kind == "feature":
            feature, layer_s, js = _cantor(layer, lat), str(layer), f"{layer}_{lat}-0"
        elif kind in ("error", "mlp_const"):
            feature, layer_s, js = -1, str(layer), f"{ids[i].rsplit('_', 1)[0]}-{pos}"
        elif kind == "target":
            feature, layer_s, js = sub.target_vocab_index(tgt_counter), str(n_layers + 1), None
            js = f"L_{feature}-{pos}"
        else:
            feature, layer_s, js = pos, "E", f"{ids[i].rsplit('_', 1)[0]}-{pos}"
        is_target = kind == "target"
        node = {
            "node_id": ids[i],
            "feature": feature,
            "layer": layer_s,
            "ctx_idx": max(pos, 0),
            "feature_type": _FEATURE_TYPE[kind],
            "token_prob": float(sub.target_weights[tgt_counter]) if is_target else 0.0,
            "is_target_logit": is_target and tgt_counter == 0,
            "run_idx": 0,
            "reverse_ctx_idx": 0,
            "jsNodeId": js,
            "clerp": _label(clerps, ids[i], kind, layer, lat) or sub.node_label(i) or _clerp(sub, i, kind),
            "influence": None if sub_infl is None else float(sub_infl[i]),
            "activation": _f(float(nt.activation[i])),
            "tc_type": kind,
            "tc_layer": layer,
            "tc_pos": pos,
            "tc_latent": lat,
            "tc_token_id": tok,
            "tc_value": _f(float(nt.value[i])),
            "tc_expanded": bool(nt.expanded[i]),
        }
        if is_target:
            tgt_counter += 1
        nodes.append(node)
    links = [
        {"source": ids[s], "target": ids[t], "weight": w}
        for t, s, w in zip(sub.edge_target.tolist(), sub.edge_source.tolist(), sub.edge_weight.tolist())
    ]
    model_meta = graph.metadata.get("model") if isinstance(graph.metadata.get("model"), dict) else {}
    meta = {
        "slug": slug,
        "scan": scan or graph.metadata.get("json_scan") or default_scan(model_meta.get("model_name", "tc_circuits")),
        "transcoder_list": [],
        "prompt_tokens": list(graph.prompt_strings),
        "prompt": graph.prompt,
        "node_threshold": node_threshold if prune else None,
        "schema_version": 1,
        "tc_circuits": {
            "prompt_token_ids": graph.prompt_tokens.tolist(),
            "target_labels": sub.target_labels,
            "target_weights": sub.target_weights.tolist(),
            "edge_dtype": str(graph.edge_weight.dtype).replace("torch.", ""),
            "edge_threshold": edge_threshold if prune else None,
            "graph_metadata": graph.metadata,
        },
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    if isinstance(graph.metadata.get("json_qparams"), dict):
        qparams.update(graph.metadata["json_qparams"])
    out = {"metadata": meta, "qParams": qparams, "nodes": nodes, "links": links}
    validate_json_dict(out)
    return out


def _label(clerps: dict[Any, str] | None, node_id: str, kind: str, layer: int, latent: int) -> str | None:
    if not clerps:
        return None
    if node_id in clerps:
        return str(clerps[node_id])
    if kind != "feature":
        return None
    label = clerps.get((layer, latent), clerps.get(f"{layer}_{latent}"))
    return None if label is None else str(label)


#: Fields (and JSON types) Neuronpedia requires in a graph file.
REQUIRED_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "metadata": {"slug": (str,), "scan": (str,), "prompt_tokens": (list,), "prompt": (str,)},
    "node": {"node_id": (str,), "feature": (int,), "layer": (str,), "ctx_idx": (int,),
             "feature_type": (str,), "jsNodeId": (str,), "clerp": (str,)},
    "link": {"source": (str,), "target": (str,), "weight": (int, float)},
}


def validate_json_dict(data: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first missing or mistyped Neuronpedia-required field."""
    if not isinstance(data, dict):
        raise ValueError(f"graph JSON must be an object, got {type(data).__name__}")
    for key in ("metadata", "nodes", "links"):
        if key not in data:
            raise ValueError(f"graph JSON: missing {key!r}")

    def check(obj: Any, kind: str, where: str) -> None:
        if not isinstance(obj, dict):
            raise ValueError(f"graph JSON: {where} must be an object")
        for field_name, types in REQUIRED_FIELDS[kind].items():
            if field_name not in obj:
                raise ValueError(f"graph JSON: {where} lacks required field {field_name!r}")
            value = obj[field_name]
            if not isinstance(value, types) or isinstance(value, bool):
                raise ValueError(f"graph JSON: {where}.{field_name} = {value!r} is not {types[0].__name__}")

    check(data["metadata"], "metadata", "metadata")
    ids = set()
    for i, node in enumerate(data["nodes"]):
        check(node, "node", f"nodes[{i}]")
        ids.add(node["node_id"])
    if len(ids) != len(data["nodes"]):
        raise ValueError("graph JSON: node_id values are not unique")
    for i, link in enumerate(data["links"]):
        check(link, "link", f"links[{i}]")
        for end in ("source", "target"):
            if link[end] not in ids:
                raise ValueError(f"graph JSON: links[{i}].{end} = {link[end]!r} is not a node")


def save_graph_files(graph: AttributionGraph, out_dir: str | os.PathLike, slug: str, **kwargs: Any) -> Path:
    """``{slug}.json`` in ``out_dir`` plus ``graph-metadata.json`` (this slug's entry added or
    replaced), as circuit-tracer's ``create_graph_files`` writes them for its local server."""
    if not slug or "/" in slug:
        raise ValueError(f"slug must be a non-empty name without '/', got {slug!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    data = to_json_dict(graph, slug=slug, **kwargs)
    text = json.dumps(data)
    path = atomic_write(root / f"{slug}.json", lambda p: Path(p).write_text(text))
    index_path = root / "graph-metadata.json"
    index: dict[str, Any] = {"graphs": []}
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"corrupted {index_path}: {err}") from err
    meta = {k: v for k, v in data["metadata"].items() if k != "tc_circuits"}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [meta]
    index_text = json.dumps(index, indent=2)
    atomic_write(index_path, lambda p: Path(p).write_text(index_text))
    return path


def _parse_foreign(node: dict[str, Any]) -> tuple[str, int, int, int, int]:
    """(type, layer, pos, latent, token_id) of a node written by circuit-tracer."""
    ft, nid, pos = node["feature_type"], node["node_id"], int(node["ctx_idx"])
    parts = nid.split("_")
    try:
        if ft == "embedding":
            return "embedding", -1, pos, -1, int(parts[1])
        if ft == "position embedding":
            return "position", -1, pos, -1, -1
        if ft == "bias":
            return "constant", -1, -1, -1, -1
        if ft == "logit":
            return "target", -1, pos, -1, int(node["feature"])
        if ft == "mlp reconstruction error":
            return "error", int(node["layer"]), pos, -1, -1
        return "feature", int(node["layer"]), pos, int(parts[1]), -1
    except (ValueError, IndexError) as err:
        raise ValueError(f"cannot parse graph JSON node {nid!r} (feature_type {ft!r}): {err}") from err


def _target_label(clerp: str, node_id: str) -> str:
    """Our target label from a circuit-tracer logit clerp (``Output "x" (p=0.1)`` -> ``logit "x"``)."""
    m = _OUTPUT_CLERP.match(clerp or "")
    return f'logit "{m.group(1)}"' if m else (clerp or node_id)


def from_json_dict(data: dict[str, Any]) -> AttributionGraph:
    """Rebuild an :class:`AttributionGraph` from :func:`to_json_dict` output (or circuit-tracer JSON)."""
    for key in ("metadata", "nodes", "links"):
        if key not in data:
            raise ValueError(f"not an attribution graph JSON: missing {key!r}")
    meta = data["metadata"]
    ours = meta.get("tc_circuits", {})
    cols: dict[str, list] = {f: [] for f in NodeTable.FIELDS}
    index: dict[str, int] = {}
    target_probs = []
    target_labels = []
    foreign_layers = []
    clerps_in: dict[str, str] = {}
    for i, node in enumerate(data["nodes"]):
        if "tc_type" in node:
            kind = node["tc_type"]
            layer, pos, lat, tok = node["tc_layer"], node["tc_pos"], node["tc_latent"], node["tc_token_id"]
            value = node["tc_value"]
            expanded = node["tc_expanded"]
        else:
            kind, layer, pos, lat, tok = _parse_foreign(node)
            value, expanded = None, False
            if kind == "target" and str(node.get("layer", "")).isdigit():
                foreign_layers.append(int(node["layer"]) - 1)
        if kind not in NODE_TYPES:
            raise ValueError(f"unknown node type {kind!r} in node {node.get('node_id')}")
        if kind == "target":
            target_probs.append(float(node.get("token_prob", 0.0)))
            target_labels.append(_target_label(node.get("clerp", ""), node["node_id"]))
        act = node.get("activation")
        for f, v in zip(
            NodeTable.FIELDS,
            (type_code(kind), layer, pos, lat, tok, math.nan if act is None else act,
             math.nan if value is None else value, expanded),
        ):
            cols[f].append(v)
        index[node["node_id"]] = i
        if kind == "feature" and node.get("clerp"):  # user labels come back (foreign files too)
            clerps_in[node["node_id"]] = node["clerp"]
    dtypes = {"activation": torch.float64, "value": torch.float64, "expanded": torch.bool}
    nodes = NodeTable(**{f: torch.tensor(cols[f], dtype=dtypes.get(f, torch.int64)) for f in NodeTable.FIELDS})
    try:
        et = torch.tensor([index[link["target"]] for link in data["links"]], dtype=torch.int64)
        es = torch.tensor([index[link["source"]] for link in data["links"]], dtype=torch.int64)
    except KeyError as err:
        raise ValueError(f"link refers to unknown node {err}") from err
    edge_dtype = getattr(torch, ours.get("edge_dtype", "float32"))
    ew = torch.tensor([link["weight"] for link in data["links"]], dtype=torch.float64).to(edge_dtype)
    strings = list(meta.get("prompt_tokens", []))
    tok_ids = ours.get("prompt_token_ids")
    if tok_ids is None:  # recover ids from the embedding nodes
        tok_ids = [-1] * len(strings)
        for p, t in zip(cols["pos"], cols["token_id"]):
            if 0 <= p < len(tok_ids) and t >= 0 and tok_ids[p] == -1:
                tok_ids[p] = t
    graph_meta = dict(ours.get("graph_metadata", {}))
    if not ours:  # a foreign (circuit-tracer) file: keep what re-export needs
        graph_meta["json_node_ids"] = [node["node_id"] for node in data["nodes"]]
        if foreign_layers:
            graph_meta.setdefault("n_layers", max(foreign_layers))
        graph_meta["json_scan"] = meta.get("scan")
        if isinstance(data.get("qParams"), dict):
            graph_meta["json_qparams"] = data["qParams"]
    if clerps_in:
        graph_meta["labels"] = {**graph_meta.get("labels", {}), **clerps_in}
    return AttributionGraph(
        nodes=nodes,
        edge_target=et,
        edge_source=es,
        edge_weight=ew,
        target_weights=torch.tensor(ours.get("target_weights", target_probs), dtype=torch.float32),
        target_labels=list(ours.get("target_labels", target_labels)),
        prompt_tokens=torch.tensor(tok_ids, dtype=torch.int64),
        prompt_strings=strings,
        prompt=meta.get("prompt", ""),
        metadata=graph_meta,
    )


def save_json(graph: AttributionGraph, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write :func:`to_json_dict` output to ``path`` atomically."""
    text = json.dumps(to_json_dict(graph, **kwargs))
    return atomic_write(path, lambda p: Path(p).write_text(text))


def load_json(path: str | os.PathLike) -> AttributionGraph:
    """Read a graph JSON file (ours or circuit-tracer's)."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"corrupted graph JSON {path}: {err}") from err
    return from_json_dict(data)
