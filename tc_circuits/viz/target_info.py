"""What a target node explains: its value, its definition and the user's metric (hover text).

The definition comes from ``graph.metadata["targets"][t]["definition"]`` when the engine or
the user recorded one; otherwise it is read from the target: a single token id means a logit
(the engine's default logit targets are demeaned, ``logit - mean logit``), a label
``logit 'a' - 'b'`` a logit difference, anything else a direction ``d . logits[pos]`` over
the vocabulary. The metric (e.g. the probability difference a direction stands for) is given
as ``metric={name: value}`` or stored in ``graph.metadata["metric"]``.
"""

from __future__ import annotations

from collections.abc import Mapping

from tc_circuits.graph import AttributionGraph


def target_definition(graph: AttributionGraph, t: int) -> str:
    """A one-line definition of target ``t``."""
    meta = graph.metadata.get("targets") or []
    rec = meta[t] if t < len(meta) and isinstance(meta[t], dict) else {}
    if rec.get("definition"):
        return str(rec["definition"])
    label = graph.target_labels[t]
    tok = int(graph.nodes.token_id[graph.target_indices[t]])
    if tok >= 0:
        demean = rec.get("demean")
        if demean is False:
            return f"logit of token {tok}"
        return f"demeaned logit of token {tok} (logit − mean logit)"
    if label.startswith("logit ") and " - " in label:
        return "logit difference"
    return "direction d · logits over the vocabulary (e.g. a task's metric direction)"


def target_hover(graph: AttributionGraph, key: str, metric: Mapping[str, float] | None = None) -> str:
    """Hover text of the target whose node id is ``key``."""
    tidx = graph.target_indices.tolist()
    ids = [graph.node_id(i) for i in tidx]
    if key not in ids:
        raise ValueError(f"{key!r} is not a target node of this graph")
    t = ids.index(key)
    i = tidx[t]
    pos = int(graph.nodes.pos[i])
    tok = graph.prompt_strings[pos] if 0 <= pos < graph.n_pos else ""
    lines = [f"<b>Target: {graph.target_labels[t]}</b>",
             f"value explained: {float(graph.nodes.value[i]):.4g} (the sum of all its input edges)",
             f"definition: {target_definition(graph, t)}",
             f"read at position {pos} ({tok!r}); weight in pruning {float(graph.target_weights[t]):.3g}"]
    metrics = dict(graph.metadata.get("metric") or {})
    metrics.update(metric or {})
    for name, value in metrics.items():
        lines.append(f"metric {name}: {value:.4g}" if isinstance(value, (int, float)) else f"metric {name}: {value}")
    return "<br>".join(lines)
