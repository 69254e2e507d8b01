"""Prompt-set graphs: the attribution graph of a whole task, aggregated over its prompts.

Phases of :func:`task_graph`:

1. **graphs** -- one attribution graph per prompt, targeting the task's linear metric
   (``task.direction()[i]`` read at the last position); all prompts share one token length,
   so position ``p`` has the same *role* in every prompt (``YY``, ``{noun}``, ``S2``...).
2. **identify nodes** across prompts by (type, layer, role position, latent): feature ``L``/
   latent ``z`` at position ``p`` is one node whatever the prompt; errors by (layer, p);
   embeddings by position (token id kept where every prompt has the same token, else -1);
   the task target is one node.
3. **average** (:func:`aggregate_graphs`): every edge weight, node value and activation is the
   mean over *all* prompts, a node absent from a prompt counting as zero. Edges then stay
   additive: an expanded node's incoming edges sum to its mean value over the prompts (the
   engine's exactness identity holds for the aggregate). Target weights are averaged too.
4. **rank features** (:attr:`PromptSetGraph.features`): per aggregated feature, the share of
   prompts where it is active (*frequency*), its mean influence on the prompt's target
   (absent = 0; :func:`tc_circuits.graph.prune.node_influence`, each prompt's target
   weights summing to 1) and its mean activation where active.

The result is an :class:`~tc_circuits.graph.graph.AttributionGraph` (``prompt_strings`` are
the role labels), so pruning, export and the views take it like a one-prompt graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tc_circuits.attribution.engine import attribute
from tc_circuits.attribution.targets import direction_target
from tc_circuits.graph.graph import AttributionGraph, NodeTable, type_code
from tc_circuits.graph.prune import node_influence


@dataclass
class FeatureStat:
    """One aggregated feature of a prompt-set graph."""

    layer: int
    pos: int
    role: str
    latent: int
    frequency: float
    """Share of prompts in which the feature is active."""
    mean_influence: float
    """Mean influence on the target over all prompts (absent = 0)."""
    mean_activation: float
    """Mean activation over the prompts where it is active."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class PromptSetGraph:
    """The aggregated graph and its feature ranking."""

    graph: AttributionGraph
    features: list[FeatureStat]
    """Aggregated features, most influential first."""
    n_prompts: int


def role_labels(tokens: Tensor, strings: Sequence[str], names: dict[int, str] | None = None) -> list[str]:
    """A label per position: the token where all prompts agree, else ``names[p]`` or ``<var p>``."""
    names = names or {}
    out = []
    for p in range(tokens.shape[1]):
        col = tokens[:, p]
        if p in names:
            out.append(names[p])
        elif bool((col == col[0]).all()):
            out.append(strings[int(col[0])])
        else:
            out.append(f"<var {p}>")
    return out


def _key(n: NodeTable, i: int, t_rank: int) -> tuple[int, int, int, int]:
    kind = int(n.type[i])
    if kind == type_code("target"):
        return (kind, -1, -1, t_rank)
    return (kind, int(n.layer[i]), int(n.pos[i]), int(n.latent[i]))


def aggregate_graphs(
    graphs: Sequence[AttributionGraph], roles: Sequence[str], *, name: str = "prompt set"
) -> PromptSetGraph:
    """Average ``graphs`` of equal-length prompts into one (see the module docstring)."""
    if not graphs:
        raise ValueError("no graphs to aggregate")
    n_pos = {g.n_pos for g in graphs}
    if len(n_pos) != 1 or len(roles) != graphs[0].n_pos:
        raise ValueError(f"prompt-set graphs need one prompt length matching the roles: lengths {sorted(n_pos)}, {len(roles)} roles")
    n_t = {len(g.target_labels) for g in graphs}
    if len(n_t) != 1:
        raise ValueError(f"every prompt graph needs the same number of targets, got {sorted(n_t)}")
    P = len(graphs)
    index: dict[tuple, int] = {}
    acc: dict[str, list[float]] = {"value": [], "activation": [], "act_sum": [], "count": [], "influence": [], "expanded": []}
    token_of: list[set[int]] = []
    edges: dict[tuple[int, int], float] = {}
    tw = torch.zeros(next(iter(n_t)), dtype=torch.float64)
    for g in graphs:
        n = g.nodes
        infl = node_influence(g)
        tgt = g.target_indices.tolist()
        t_rank = {i: r for r, i in enumerate(tgt)}
        local = []
        for i in range(g.n_nodes):
            k = _key(n, i, t_rank.get(i, -1))
            j = index.setdefault(k, len(index))
            if j == len(token_of):
                token_of.append(set())
                for v in acc.values():
                    v.append(0.0)
            local.append(j)
            token_of[j].add(int(n.token_id[i]))
            val = float(n.value[i])
            if bool(n.expanded[i]) and val == val:
                acc["value"][j] += val / P
                acc["expanded"][j] = 1.0
            act = float(n.activation[i])
            if act == act:
                acc["activation"][j] += act / P
                acc["act_sum"][j] += act
            acc["count"][j] += 1
            acc["influence"][j] += float(infl[i]) / P
        loc = torch.tensor(local)
        for t, s, w in zip(loc[g.edge_target].tolist(), loc[g.edge_source].tolist(), g.edge_weight.double().tolist()):
            edges[(t, s)] = edges.get((t, s), 0.0) + w / P
        tw += g.target_weights.double() / P
    keys = sorted(index, key=lambda k: (k[0], k[1], k[2], k[3]))  # node-table order (type first)
    order = [index[k] for k in keys]
    new = {old: i for i, old in enumerate(order)}
    first = graphs[0]

    def col(name: str, dtype) -> Tensor:
        return torch.tensor([acc[name][j] for j in order], dtype=dtype)

    count = col("count", torch.float64)
    is_feat = torch.tensor([k[0] == type_code("feature") for k in keys])
    activation = torch.where(is_feat, col("activation", torch.float64), torch.full((len(keys),), float("nan"), dtype=torch.float64))
    expanded = col("expanded", torch.float64) > 0
    value = torch.where(expanded, col("value", torch.float64), torch.full((len(keys),), float("nan"), dtype=torch.float64))
    token_ids = [next(iter(token_of[j])) if len(token_of[j]) == 1 else -1 for j in order]
    nodes = NodeTable(
        type=torch.tensor([k[0] for k in keys], dtype=torch.int64),
        layer=torch.tensor([k[1] for k in keys], dtype=torch.int64),
        pos=torch.tensor([k[2] if k[0] != type_code("target") else first.n_pos - 1 for k in keys], dtype=torch.int64),
        latent=torch.tensor([k[3] if k[0] == type_code("feature") else -1 for k in keys], dtype=torch.int64),
        token_id=torch.tensor(token_ids, dtype=torch.int64),
        activation=activation,
        value=value,
        expanded=expanded,
    )
    pairs = sorted(edges.items(), key=lambda kv: (new[kv[0][0]], new[kv[0][1]]))
    labels = [
        lab if all(g.target_labels[r] == lab for g in graphs) else f"target {r}"
        for r, lab in enumerate(first.target_labels)
    ]
    meta = dict(first.metadata)
    meta["prompt_set"] = {"name": name, "n_prompts": P, "prompts": [g.prompt for g in graphs],
                          "aggregation": "mean over prompts, absent = 0"}
    meta["position_roles"] = list(roles)
    graph = AttributionGraph(
        nodes=nodes,
        edge_target=torch.tensor([new[t] for (t, _), _ in pairs], dtype=torch.int64),
        edge_source=torch.tensor([new[s] for (_, s), _ in pairs], dtype=torch.int64),
        edge_weight=torch.tensor([w for _, w in pairs], dtype=torch.float32),
        target_weights=tw.float(),
        target_labels=labels,
        prompt_tokens=first.prompt_tokens.clone(),
        prompt_strings=list(roles),
        prompt=f"{name} ({P} prompts): " + "".join(roles),
        metadata=meta,
    )
    infl = col("influence", torch.float64)
    feats = [
        FeatureStat(
            layer=keys[i][1], pos=keys[i][2], role=roles[keys[i][2]], latent=keys[i][3],
            frequency=float(count[i]) / P, mean_influence=float(infl[i]),
            mean_activation=acc["act_sum"][order[i]] / max(1.0, float(count[i])),
        )
        for i in range(len(keys)) if keys[i][0] == type_code("feature")
    ]
    feats.sort(key=lambda f: (-f.mean_influence, -f.frequency))
    return PromptSetGraph(graph, feats, P)


def task_graph(
    model,
    transcoders: dict,
    task,
    *,
    prompts: Sequence[int] | None = None,
    roles: Sequence[str] | None = None,
    role_names: dict[int, str] | None = None,
    progress: bool = False,
    **attribute_kwargs: Any,
) -> PromptSetGraph:
    """Attribute every prompt of ``task`` (or those in ``prompts``) and aggregate.

    ``roles`` labels each position; by default :func:`role_labels` (the shared token, or
    ``role_names[p]``, or ``<var p>`` where prompts differ).
    """
    tokens = task.tokens
    idx = list(range(tokens.shape[0])) if prompts is None else list(prompts)
    if not idx:
        raise ValueError("no prompts")
    directions = task.direction(model.cfg.d_vocab)
    graphs = []
    for i in idx:
        graphs.append(attribute(model, transcoders, tokens[i], targets=[direction_target(directions[i], label=f"{task.name} metric")],
                                progress=progress, **attribute_kwargs))
    if roles is None:
        strings = [model.tokenizer.decode([t]) for t in range(model.cfg.d_vocab)] if model.tokenizer is not None else [str(t) for t in range(model.cfg.d_vocab)]
        roles = role_labels(tokens[idx], strings, role_names)
    return aggregate_graphs(graphs, roles, name=task.name)


def greater_than_roles(task) -> dict[int, str]:
    """Role names of the varying positions of a greater-than task: ``{noun}`` and ``YY``."""
    tokens = task.tokens
    out = {}
    for p in range(tokens.shape[1]):
        col = tokens[:, p]
        if bool((col == col[0]).all()):
            continue
        out[p] = "YY" if bool(torch.isin(col, task.year_ids).all()) else "{noun}"
    return out


__all__ = ["FeatureStat", "PromptSetGraph", "aggregate_graphs", "greater_than_roles", "role_labels", "task_graph"]
