"""``tc-circuits attribute``: build an attribution graph for one prompt and write it to a folder.

Writes ``OUT/graph.safetensors`` + ``OUT/graph.json`` (the full graph, reloadable with
``AttributionGraph.load``) and ``OUT/<slug>.neuronpedia.json`` (the pruned graph in the
circuit-tracer / Neuronpedia schema). The default model is the bundled organism with its skip transcoders.

Targets: ``top-logits`` (default), ``logit-diff --diff-tokens A B`` (logit A - logit B), or
``greater-than`` (the probability-difference direction of the greater-than task: the
prompt must end like ``"... from 1732 to 17"``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from tc_circuits.attribution.engine import AttributionConfig
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args

TARGET_KINDS = ("top-logits", "logit-diff", "greater-than")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attribute", help="build an attribution graph for a prompt")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--target-direction", choices=TARGET_KINDS, default="top-logits", help="what to attribute")
    p.add_argument("--diff-tokens", nargs=2, metavar=("TOK_A", "TOK_B"), help="tokens for logit-diff")
    p.add_argument("--kind", default="skip_transcoder", help="organism transcoder kind (default: skip_transcoder)")
    p.add_argument("--node-threshold", type=float, default=0.8, help="pruning node threshold (default: 0.8)")
    p.add_argument("--edge-threshold", type=float, default=0.98, help="pruning edge threshold (default: 0.98)")
    p.add_argument("--slug", default="graph", help="graph name; the Neuronpedia JSON is SLUG.neuronpedia.json (default: graph)")
    add_dataclass_args(p, AttributionConfig)
    p.set_defaults(func=run)


def load_model_and_transcoders(kind: str):
    """The organism and its shipped transcoders (imported lazily)."""
    from tc_circuits.organism import load_organism, load_organism_transcoders

    model = load_organism()
    return model, load_organism_transcoders(kind, model=model)


def _single_token(tokenizer, text: str) -> int:
    from tc_circuits.attribution.targets import warn_unknown_tokens

    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{text!r} is not a single token (ids {ids})")
    warn_unknown_tokens(tokenizer, ids, text, "--diff-tokens")
    return int(ids[0])


def build_targets(model, args: argparse.Namespace):
    from tc_circuits.attribution.targets import direction_target, logit_diff_target

    if args.target_direction == "top-logits":
        return None
    if args.target_direction == "logit-diff":
        if not args.diff_tokens:
            raise ValueError("--target-direction logit-diff needs --diff-tokens TOK_A TOK_B")
        a, b = (_single_token(model.tokenizer, t) for t in args.diff_tokens)
        return [logit_diff_target(a, b, model.cfg.d_vocab, tokenizer=model.tokenizer)]
    from tc_circuits.tasks.greater_than import prompt_task

    direction = prompt_task(model.tokenizer, args.prompt, d_vocab=model.cfg.d_vocab).direction()[0]
    return [direction_target(direction, label="greater-than prob. diff")]


def run(args: argparse.Namespace) -> int:
    from tc_circuits.attribution.engine import attribute
    from tc_circuits.graph.export import save_json
    from tc_circuits.graph.prune import prune_graph
    from tc_circuits.graph.scores import compute_graph_scores

    from tc_circuits.validate import check_slug

    cfg = dataclass_from_args(AttributionConfig, args)
    check_slug(args.slug)  # before any work: SLUG names a file inside --out
    model, tcs = load_model_and_transcoders(args.kind)
    graph = attribute(model, tcs, args.prompt, targets=build_targets(model, args), **dataclasses.asdict(cfg))
    out = Path(args.out)
    graph.save(out)
    save_json(
        graph, out / f"{args.slug}.neuronpedia.json", slug=args.slug,
        node_threshold=args.node_threshold, edge_threshold=args.edge_threshold,
    )
    res = prune_graph(graph, args.node_threshold, args.edge_threshold)
    full, pruned = compute_graph_scores(graph), compute_graph_scores(graph, res.node_mask)
    summary = {
        "nodes": graph.n_nodes,
        "edges": graph.n_edges,
        "active_features": graph.metadata["n_active_features"],
        "pruned_nodes": int(res.node_mask.sum()),
        "pruned_edges": int(res.edge_mask.sum()),
        "targets": graph.target_labels,
        "replacement_score": full.replacement,
        "completeness_score": full.completeness,
        "pruned_replacement_score": pruned.replacement,
        "pruned_completeness_score": pruned.completeness,
        "exactness_max_abs_dev": graph.metadata.get("exactness_max_abs_dev"),
        "out": str(out),
    }
    print(json.dumps(summary, indent=2))
    return 0
