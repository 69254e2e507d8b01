"""``tc-circuits view GRAPH_DIR --out page.html``: one offline HTML page of a saved graph.

The graph is loaded with ``AttributionGraph.load``; the model and dictionaries default to
the ones the graph records (:func:`tc_circuits.cli.resolve.resolve_for_graph`: its
``sources``, else the organism's shipped dictionaries whose content hash matches). Others
given with ``--model`` / ``--transcoders`` are refused when they are not the graph's own.
Dashboards of the graph's features scan the organism corpus once (``--no-corpus``, or
another model: weight-only dashboards). Options of the view and the dashboards come from
``GraphViewConfig`` and ``DashboardConfig``, so the defaults are the API's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_config_args, add_dataclass_args, dataclass_from_args
from tc_circuits.cli.resolve import ModelOptions


@dataclass(frozen=True)
class ViewOptions:
    """Options of ``tc-circuits view`` beyond the model, view and dashboard configs."""

    corpus: bool = True
    """Scan the organism corpus for top-activating contexts (organism only)."""
    corpus_seed: int = 12345
    """Seed of the organism corpus stream used for the dashboards."""
    batch_size: int = 16
    """Corpus rows per batch."""
    seq_len: int = 64
    """Tokens per corpus row."""
    groups: str | None = None
    """JSON file ``{supernode name: [node ids]}`` of hand-made supernodes."""
    title: str | None = None
    """Page title (default: the prompt)."""
    progress: bool = True
    """Show a progress bar while the dashboards scan the corpus."""
    labels: str | None = None
    """JSON file ``{node id or "layer_latent": "label"}`` of feature labels (added to the graph's own)."""
    png: str | None = None
    """Also write a static PNG of the graph view here (needs kaleido and Chromium)."""
    svg: str | None = None
    """Also write a static SVG of the graph view here (needs kaleido and Chromium)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got {self.batch_size}, {self.seq_len}")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("view", help=HELP["view"],
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph_dir", help="folder written by AttributionGraph.save")
    parser.add_argument("--out", required=True, help="HTML file to write")
    add_dataclass_args(parser, ModelOptions)
    add_dataclass_args(parser, ViewOptions)
    add_config_args(parser, "tc_circuits.viz.graph_view:GraphViewConfig")
    add_config_args(parser, "tc_circuits.viz.dashboards:DashboardConfig")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tc_circuits.viz.dashboards import DashboardConfig
    from tc_circuits.viz.graph_view import GraphViewConfig

    path = view(
        args.graph_dir, args.out, dataclass_from_args(ViewOptions, args),
        model_opts=dataclass_from_args(ModelOptions, args),
        view_cfg=dataclass_from_args(GraphViewConfig, args),
        dashboard_cfg=dataclass_from_args(DashboardConfig, args),
    )
    print(path)
    return 0


def view(graph_dir, out, opts: ViewOptions = ViewOptions(), *, model_opts: ModelOptions = ModelOptions(),
         view_cfg=None, dashboard_cfg=None) -> Path:
    """Load the graph, its model and dictionaries and write the page; returns its path."""
    from tc_circuits.cli.resolve import resolve_for_graph
    from tc_circuits.graph import AttributionGraph
    from tc_circuits.organism.tokenizer import ORGANISM_NAME
    from tc_circuits.viz.dashboards import DashboardConfig
    from tc_circuits.viz.graph_view import GraphViewConfig
    from tc_circuits.viz.html_page import write_graph_page

    graph = AttributionGraph.load(graph_dir)
    model, tcs, _ = resolve_for_graph(graph, model_opts)
    token_source = None
    if opts.corpus and model.cfg.model_name == ORGANISM_NAME:
        from tc_circuits.organism import organism_token_source

        token_source = organism_token_source(opts.corpus_seed, opts.batch_size, opts.seq_len)
    groups = json.loads(Path(opts.groups).read_text()) if opts.groups else None
    if opts.labels:
        graph.load_labels(opts.labels)
    if opts.png or opts.svg:
        from tc_circuits.viz.graph_view import graph_figure
        from tc_circuits.viz.interactive import write_image

        fig = graph_figure(graph, model=model, transcoders=tcs, groups=groups,
                           cfg=view_cfg or GraphViewConfig(), title=opts.title)
        for image, fmt in ((opts.png, "png"), (opts.svg, "svg")):
            if image:
                print(write_image(fig, image, fmt=fmt).resolve())
    return write_graph_page(
        out, graph, model=model, transcoders=tcs, token_source=token_source, groups=groups,
        view_cfg=view_cfg or GraphViewConfig(), dashboard_cfg=dashboard_cfg or DashboardConfig(),
        title=opts.title, progress=opts.progress,
    ).resolve()
