"""``tc-circuits view GRAPH_DIR --out page.html``: one offline HTML page of a saved graph.

The graph is loaded with ``AttributionGraph.load``; the model and transcoders are the bundled
organism's by default (``--model`` / ``--transcoders`` for others). Dashboards of the graph's
features scan the organism corpus once (``--no-corpus``, or another model: weight-only
dashboards). Options of the view and the dashboards come from ``GraphViewConfig`` and
``DashboardConfig``, so the defaults are the API's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args


@dataclass(frozen=True)
class ViewOptions:
    """Options of ``tc-circuits view`` beyond the view and dashboard configs."""

    model: str | None = None
    """TransformerLens model name or local Hugging Face folder (default: the bundled organism)."""
    transcoders: str | None = None
    """TranscoderSet folder (default: the organism's shipped transcoders of --transcoder-kind)."""
    transcoder_kind: Literal["skip_transcoder", "transcoder", "sae"] = "skip_transcoder"
    """Which shipped organism transcoders to use."""
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
    labels: str | None = None
    """JSON file ``{node id or "layer_latent": "label"}`` of feature labels (added to the graph's own)."""
    png: str | None = None
    """Also write a static PNG of the graph view here (needs kaleido and Chromium)."""
    svg: str | None = None
    """Also write a static SVG of the graph view here (needs kaleido and Chromium)."""

    def __post_init__(self) -> None:
        if self.model is not None and self.transcoders is None:
            raise ValueError(f"--model {self.model!r} needs --transcoders (shipped ones fit only the organism)")
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(f"need batch_size >= 1 and seq_len >= 2, got {self.batch_size}, {self.seq_len}")


def register(sub: argparse._SubParsersAction) -> None:
    from tc_circuits.viz.dashboards import DashboardConfig
    from tc_circuits.viz.graph_view import GraphViewConfig

    parser = sub.add_parser("view", help="write an offline HTML page: graph view + feature dashboards")
    parser.add_argument("graph_dir", help="folder written by AttributionGraph.save")
    parser.add_argument("--out", required=True, help="HTML file to write")
    add_dataclass_args(parser, ViewOptions)
    add_dataclass_args(parser, GraphViewConfig)
    add_dataclass_args(parser, DashboardConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tc_circuits.viz.dashboards import DashboardConfig
    from tc_circuits.viz.graph_view import GraphViewConfig

    path = view(
        args.graph_dir, args.out, dataclass_from_args(ViewOptions, args),
        view_cfg=dataclass_from_args(GraphViewConfig, args),
        dashboard_cfg=dataclass_from_args(DashboardConfig, args),
    )
    print(path)
    return 0


def view(graph_dir, out, opts: ViewOptions = ViewOptions(), *, view_cfg=None, dashboard_cfg=None) -> Path:
    """Load the graph, model and transcoders as ``opts`` says and write the page; returns its path."""
    from tc_circuits.graph import AttributionGraph
    from tc_circuits.coders.transcoder import TranscoderSet
    from tc_circuits.viz.dashboards import DashboardConfig
    from tc_circuits.viz.graph_view import GraphViewConfig
    from tc_circuits.viz.html_page import write_graph_page

    graph = AttributionGraph.load(graph_dir)
    token_source = None
    if opts.model is None:
        from tc_circuits.organism import load_organism, load_organism_transcoders, organism_token_source

        model = load_organism()
        tcs = (TranscoderSet.load(opts.transcoders, model=model) if opts.transcoders
               else load_organism_transcoders(opts.transcoder_kind, model=model))
        if opts.corpus:
            token_source = organism_token_source(opts.corpus_seed, opts.batch_size, opts.seq_len)
    else:
        from tc_circuits.models.loading import load_model

        model = load_model(opts.model)
        tcs = TranscoderSet.load(opts.transcoders, model=model)
    recorded = graph.metadata.get("model", {}).get("model_name") if isinstance(graph.metadata.get("model"), dict) else None
    if recorded is not None and recorded != model.cfg.model_name:
        raise ValueError(f"the graph was computed on model {recorded!r}, not {model.cfg.model_name!r}")
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
        title=opts.title,
    ).resolve()
