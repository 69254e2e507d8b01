"""Hover texts of the graph view's nodes (features, supernodes, inputs; targets in
:mod:`tc_circuits.viz.target_info`)."""

from __future__ import annotations

from tc_circuits.viz.feature_weights import promoted_tokens
from tc_circuits.viz.target_info import target_hover


def _feature_hover(node, full_label, ctx, n_tokens: int, n_contexts: int) -> str:
    prompt = ctx["prompt"]
    tok = prompt[node.pos] if 0 <= node.pos < len(prompt) else ""
    lines = [f"<b>{full_label}</b>", f"Feature L{int(node.layer)} #{node.latent} at position {node.pos} ({tok!r})",
             f"activation {node.activation:.3f}, pre-activation {ctx['value'].get(node.key, float('nan')):.3f}",
             f"influence {node.influence:.3g}"]
    key = (int(node.layer), node.latent)
    board = ctx["dashboards"].get(key) if ctx["dashboards"] else None
    promoted = board.promoted if board else None
    model, tcs = ctx["model"], ctx["transcoders"]
    if promoted is None and model is not None and tcs and key[0] in tcs:
        promoted = promoted_tokens(model, tcs[key[0]], node.latent, n_tokens)[0]
    if promoted:
        lines.append("promotes: " + ", ".join(repr(t.string) for t in promoted[: n_tokens]))
    if board:
        for ex in board.top_examples[: n_contexts]:
            text = "".join(f"[{t}]" if j == ex.highlight else t for j, t in enumerate(ex.tokens))
            lines.append(f"{ex.activation:.2f}: {text!r}")
    return "<br>".join(lines)


def supernode_summary(node) -> str:
    """What a supernode holds, e.g. ``"4 features (L1 x3, L2 x1), 1 error"``."""
    kinds: dict[str, int] = {}
    for k in node.member_kinds:
        kinds[k] = kinds.get(k, 0) + 1
    parts = []
    for k, c in sorted(kinds.items(), key=lambda kc: (kc[0] != "feature", kc[0])):
        name = {"feature": "feature", "error": "error node", "mlp_const": "MLP constant",
                "embedding": "embedding", "position": "position"}.get(k, k)
        text = f"{c} {name}{'s' if c != 1 else ''}"
        if k == "feature":
            layers: dict[int, int] = {}
            for kk, L in zip(node.member_kinds, node.member_layers):
                if kk == "feature":
                    layers[L] = layers.get(L, 0) + 1
            text += " (" + ", ".join(f"L{L} ×{n}" for L, n in sorted(layers.items())) + ")"
        parts.append(text)
    return ", ".join(parts)


def node_hover(node, full_label: str, ctx: dict, n_tokens: int = 4, n_contexts: int = 2) -> str:
    """Hover text of a view node (``ctx``: graph, prompt, model, transcoders, dashboards, value, names, metric)."""
    if node.kind == "feature":
        return _feature_hover(node, full_label, ctx, n_tokens, n_contexts)
    if node.kind == "target":
        return target_hover(ctx["graph"], node.key, ctx["metric"])
    if node.kind == "supernode":
        names = [ctx["names"].get(m, m) for m in node.members]
        tok = ctx["prompt"][node.pos] if 0 <= node.pos < len(ctx["prompt"]) else ""
        return (f"<b>Supernode {node.label!r}</b>: {supernode_summary(node)}<br>at position {node.pos} ({tok!r})"
                f"<br>summed influence {node.influence:.3g}, summed activation {node.activation:.3g}"
                "<br>members: " + "<br>".join(", ".join(names[j:j + 3]) for j in range(0, min(len(names), 12), 3))
                + (" …" if len(names) > 12 else ""))
    head = f"<b>{node.label}</b> ({node.kind})"
    extra = f"<br>position {node.pos}" if node.pos >= 0 else ""
    return head + extra + f"<br>influence {node.influence:.3g}<br>id {node.key}"
