"""The end-to-end demo on the bundled organism (``tc-circuits demo``).

Phases, each printed as it runs:

1. load the organism and its shipped skip transcoders (offline; or any model and dictionaries
   named by ``--model`` / ``--transcoders``, :mod:`tc_circuits.cli.resolve`);
2. splice them in: FVU per layer, ΔCE / KL when spliced, greater-than score original vs
   spliced (with and without the error term);
3. build the attribution graph of the greater-than prompt with the probability-difference
   direction as target, check its exactness, prune it and print the strongest features;
4. write the graph (JSON + safetensors) and a self-contained HTML view, and print its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMPT = "The war lasted from the year 1732 to the year 17"


@dataclass(frozen=True)
class DemoConfig:
    """Options of the demo."""

    out: str = "out/demo"
    """Output folder (graph, HTML view, metrics)."""
    prompt: str = PROMPT
    """Greater-than prompt to attribute (must end with the century token)."""
    eval_sequences: int = 64
    """Held-out corpus sequences (64 tokens each) for FVU / ΔCE."""
    node_threshold: float = 0.8
    """Pruning: keep nodes carrying this share of the influence."""
    edge_threshold: float = 0.98
    """Pruning: keep edges carrying this share of the influence."""
    top_features: int = 12
    """How many features to print."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.eval_sequences < 1:
            raise ValueError(f"eval_sequences must be >= 1, got {self.eval_sequences}")


def run_demo(cfg: DemoConfig = DemoConfig(), model_opts=None, *, progress: bool | None = None) -> dict:
    """Run all phases; return a summary dict (also written to ``out/summary.json``).

    ``model_opts`` (a :class:`tc_circuits.cli.resolve.ModelOptions`) names the model and the
    dictionaries (default: the organism and its skip transcoders); the held-out corpus is the
    organism's, tokenised by the model's own tokenizer.
    """
    import json

    from tc_circuits.attribution import attribute, direction_target, logit_effects, top_tokens
    from tc_circuits.evaluation.evaluate import evaluate_reconstruction, evaluate_splice
    from tc_circuits.graph.prune import prune_graph
    from tc_circuits.cli.resolve import ModelOptions, resolve
    from tc_circuits.organism import organism_token_source
    from tc_circuits.tasks import evaluate_task
    from tc_circuits.tasks.greater_than import GreaterThanTask, prompt_task
    from tc_circuits.viz.html_page import write_graph_page

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}

    progress = cfg.progress if progress is None else progress
    model_opts = model_opts or ModelOptions()
    model, tcs, sources = resolve(model_opts)
    print(f"== 1. load {sources['model']} and its dictionaries ({sources['transcoders']})")
    print(f"   {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, vocab {model.cfg.d_vocab}; "
          f"{len(tcs)} transcoders x {next(iter(tcs.values())).cfg.n_latents} latents")

    print("== 2. splice them in (held-out corpus tokens, seed 12345)")
    tokens = next(organism_token_source(12345, cfg.eval_sequences, 64, tokenizer=model.tokenizer))
    recon = evaluate_reconstruction(model, tcs, tokens, start_pos=1)
    splice_report = evaluate_splice(model, tcs, tokens)
    task = GreaterThanTask.from_tokenizer(model.tokenizer)
    gt = evaluate_task(model, task, tcs)
    gt_err = evaluate_task(model, task, tcs, error_term=True)
    for r in recon.values():
        print(f"   layer {r.layer}: FVU {r.fvu:.3f}  L0 {r.l0:.1f}  dead {r.dead_fraction:.3f}")
    for row in splice_report.rows:
        print(f"   spliced layers {row.layers}: dCE {row.delta_ce:+.4f} nats, KL {row.kl:.4f}, "
              f"CE recovered vs zero-ablation {row.recovered_zero:.3f}")
    print(f"   greater-than prob. diff: original {gt.original:.3f}, spliced {gt.spliced:.3f}, "
          f"spliced + error term {gt_err.spliced:.3f}")
    summary["reconstruction"] = [r.to_dict() for r in recon.values()]
    summary["splice"] = splice_report.to_dict()
    summary["greater_than"] = {"original": gt.original, "spliced": gt.spliced,
                               "spliced_with_error": gt_err.spliced}

    print(f"== 3. attribution graph of {cfg.prompt!r}")
    one = prompt_task(model.tokenizer, cfg.prompt, d_vocab=model.cfg.d_vocab)
    yy = int(one.yy[0])
    metric_name = f"P(YY>{yy:02d}) - P(YY<={yy:02d})"
    target = direction_target(one.direction()[0], label=metric_name)
    graph = attribute(model, tcs, cfg.prompt, targets=[target], progress=progress)
    graph.metadata["sources"] = sources
    err = graph.exactness_error()
    pruned = prune_graph(graph, cfg.node_threshold, cfg.edge_threshold)
    n_feat = int(graph.mask_of("feature").sum())
    kept_feat = int((pruned.node_mask & graph.mask_of("feature")).sum())
    print(f"   {graph.n_nodes} nodes ({n_feat} active features), {graph.n_edges} edges; "
          f"exactness |sum(edges) - value| = {err:.2e}")
    print(f"   pruned to {int(pruned.node_mask.sum())} nodes ({kept_feat} features), "
          f"{int(pruned.edge_mask.sum())} edges")
    feats = graph.indices_of("feature")
    order = feats[pruned.node_influence[feats].argsort(descending=True)][: cfg.top_features]
    str_tokens = model.to_str_tokens(cfg.prompt)
    print("   strongest features (influence on the target):")
    top = []
    for i in order.tolist():
        layer, pos, latent = (int(graph.nodes.layer[i]), int(graph.nodes.pos[i]),
                              int(graph.nodes.latent[i]))
        eff = logit_effects(model, tcs[layer], [latent])[0]
        promoted = top_tokens(eff, k=4, tokenizer=model.tokenizer)
        print(f"     L{layer} #{latent:<5d} at {pos:>2d} {str_tokens[pos]!r:<10} "
              f"act {float(graph.nodes.activation[i]):6.2f}  influence {float(pruned.node_influence[i]):.3f}  "
              f"promotes {promoted.promoted}")
        top.append({"layer": layer, "position": pos, "latent": latent,
                    "influence": float(pruned.node_influence[i])})
    summary["graph"] = {"nodes": graph.n_nodes, "edges": graph.n_edges, "features": n_feat,
                        "exactness_error": err, "top_features": top}

    print("== 4. write the graph and its HTML view")
    graph_dir = graph.save(out / "graph")
    page = write_graph_page(
        out / "greater_than.html", graph, model=model, transcoders=tcs,
        token_source=organism_token_source(777, 32, 64, tokenizer=model.tokenizer),
        title=f"Greater-than circuit: {cfg.prompt!r}", progress=progress,
        metric={f"{metric_name} (model, this prompt)": one.metric(model(one.tokens))},
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"   graph: {graph_dir}")
    print(f"   view:  {page}")
    return summary
