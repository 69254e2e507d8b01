"""``tc-circuits attribute``: build an attribution graph for one prompt and write it to a folder.

Writes ``OUT/graph.safetensors`` + ``OUT/graph.json`` (the full graph, reloadable with
``AttributionGraph.load``; it records the model, the dictionaries' content hashes and where
they were found) and ``OUT/<slug>.neuronpedia.json`` (the pruned graph in the circuit-tracer /
Neuronpedia schema); prints a summary and the graph's strongest features
(``AttributionGraph.features()``), and with ``--csv`` writes that table.

Model and dictionaries: ``--model`` / ``--transcoders`` (:mod:`tc_circuits.cli.resolve`;
default the organism with its skip transcoders).

Targets: ``top-logits`` (default), ``logit-diff --diff-tokens A B`` (logit A - logit B; the
tokens are read as inside the prompt, so ``Mary`` after ``"... to"`` is ``" Mary"``), or
``greater-than`` (the probability-difference direction of the greater-than task: the prompt
must end like ``"... from 1732 to 17"``). A named token with negligible probability warns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_config_args, add_dataclass_args, dataclass_from_args
from tc_circuits.cli.resolve import ModelOptions

TARGET_KINDS = ("top-logits", "logit-diff", "greater-than")
ATTRIBUTION_CONFIG = "tc_circuits.attribution.engine:AttributionConfig"


@dataclass(frozen=True)
class AttributeOptions:
    """Options of ``tc-circuits attribute`` beyond the model and the engine's config."""

    prompt: str
    """Prompt text."""
    out: str
    """Output folder."""
    target_direction: Literal["top-logits", "logit-diff", "greater-than"] = "top-logits"
    """What to attribute."""
    diff_tokens: tuple[str, ...] = ()
    """Two tokens A B for logit-diff (logit A - logit B), read as inside the prompt."""
    node_threshold: float = 0.8
    """Pruning: keep nodes carrying this share of the influence."""
    edge_threshold: float = 0.98
    """Pruning: keep edges carrying this share of the influence."""
    slug: str = "graph"
    """Graph name; the Neuronpedia JSON is SLUG.neuronpedia.json."""
    top: int = 10
    """Print this many strongest features."""
    csv: str | None = None
    """Write the full feature table (graph.features()) to this CSV file."""

    def __post_init__(self) -> None:
        if self.target_direction == "logit-diff" and len(self.diff_tokens) != 2:
            raise ValueError("--target-direction logit-diff needs --diff-tokens TOK_A TOK_B")
        if self.diff_tokens and self.target_direction != "logit-diff":
            raise ValueError(f"--diff-tokens is only for --target-direction logit-diff, not {self.target_direction!r}")
        if self.top < 0:
            raise ValueError(f"--top must be >= 0, got {self.top}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attribute", help=HELP["attribute"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, AttributeOptions)
    add_dataclass_args(p, ModelOptions)
    add_config_args(p, ATTRIBUTION_CONFIG)
    p.set_defaults(func=run)


def build_targets(model: Any, opts: AttributeOptions) -> list | None:
    """The engine's ``targets`` for ``opts`` (None: the default top logits)."""
    from tc_circuits.attribution.targets import direction_target, logit_diff_target, token_in_context

    if opts.target_direction == "top-logits":
        return None
    if opts.target_direction == "logit-diff":
        if model.tokenizer is None:
            raise ValueError("--diff-tokens needs a model with a tokenizer")
        a, b = (token_in_context(model.tokenizer, t, opts.prompt) for t in opts.diff_tokens)
        return [logit_diff_target(a, b, model.cfg.d_vocab, tokenizer=model.tokenizer)]
    from tc_circuits.tasks.greater_than import prompt_task

    task = prompt_task(model.tokenizer, opts.prompt, d_vocab=model.cfg.d_vocab)
    yy = int(task.yy[0])
    return [direction_target(task.direction()[0], label=f"P(YY>{yy:02d}) - P(YY<={yy:02d})")]


def attribute_prompt(
    opts: AttributeOptions, model_opts: ModelOptions = ModelOptions(), cfg: Any = None, *, loaded: Any = None
) -> tuple[Any, dict[str, Any]]:
    """Build, save and summarise the graph as ``tc-circuits attribute`` does; returns ``(graph, summary)``.

    ``loaded`` (a :class:`~tc_circuits.cli.resolve.Resolved`) skips loading the model again.
    """
    from tc_circuits.attribution.engine import AttributionConfig, attribute
    from tc_circuits.cli.resolve import resolve
    from tc_circuits.graph.export import save_json
    from tc_circuits.graph.prune import prune_graph
    from tc_circuits.graph.scores import compute_graph_scores

    cfg = cfg or AttributionConfig()
    model, tcs, sources = loaded or resolve(model_opts)
    graph = attribute(model, tcs, opts.prompt, targets=build_targets(model, opts), **dataclasses.asdict(cfg))
    graph.metadata["sources"] = sources
    out = Path(opts.out)
    graph.save(out)
    save_json(graph, out / f"{opts.slug}.neuronpedia.json", slug=opts.slug,
              node_threshold=opts.node_threshold, edge_threshold=opts.edge_threshold)
    res = prune_graph(graph, opts.node_threshold, opts.edge_threshold)
    full, pruned = compute_graph_scores(graph), compute_graph_scores(graph, res.node_mask)
    table = graph.features(model=model, transcoders=tcs)
    if opts.csv:
        Path(opts.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(opts.csv, index=False)
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
        "model": graph.metadata["model"]["model_name"],
        "transcoders": sources["transcoders"],
        "out": str(out),
        "csv": opts.csv,
        "top_features": table.head(opts.top).to_dict(orient="records"),
    }
    return graph, summary


def format_top(table: Any, n: int) -> str:
    """The ``n`` strongest features as aligned text (the columns people read first)."""
    cols = [c for c in ("id", "layer", "position", "token", "latent", "activation", "influence", "promoted", "label")
            if c in table.columns]
    cols += [c for c in table.columns if c.startswith("effect[")]
    return table.head(n)[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from tc_circuits.attribution.engine import AttributionConfig

    opts = dataclass_from_args(AttributeOptions, args)
    graph, summary = attribute_prompt(
        opts, dataclass_from_args(ModelOptions, args), dataclass_from_args(AttributionConfig, args)
    )
    top = pd.DataFrame(summary.pop("top_features"))
    print(json.dumps(summary, indent=2))
    if len(top):
        print(f"strongest features (of {summary['active_features']}):")
        print(format_top(top, opts.top))
    return 0
