"""One self-contained HTML page: the graph view plus the dashboards of its features.

The page embeds plotly.js once (no CDN, works offline), the interactive graph, an index of
the graph's features sorted by influence, and one dashboard section per feature. Clicking a
node highlights its upstream and downstream paths and fills the node panel, whose link
scrolls to the feature's dashboard (see :mod:`tc_circuits.viz.view_js`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from tc_circuits.fileio import atomic_write
from tc_circuits.graph import AttributionGraph, prune_graph
from tc_circuits.graph.provenance import check_graph_model, check_graph_transcoders
from tc_circuits.viz.dashboard_html import DASHBOARD_CSS, dashboard_html
from tc_circuits.viz.dashboards import DashboardConfig, FeatureDashboard, compute_dashboards
from tc_circuits.viz.graph_view import GraphViewConfig
from tc_circuits.viz.interactive import graph_view

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px 24px; background: #fafafa; color: #222; }
h1 { font-size: 20px; margin: 4px 0; }
.prompt { font-family: monospace; white-space: pre-wrap; background: #fff; border: 1px solid #ddd;
          padding: 6px 10px; border-radius: 4px; }
.help { color: #555; font-size: 13px; margin: 6px 0 10px 0; }
.index { columns: 5 160px; font-size: 13px; font-family: monospace; }
.index a { text-decoration: none; }
.tcd.flash { box-shadow: 0 0 0 3px #e67e22; }
"""

def graph_latents(graph: AttributionGraph, node_threshold: float = 1.0, edge_threshold: float = 0.98) -> list[tuple[int, int]]:
    """``(layer, latent)`` of the features kept at ``node_threshold``, most influential first."""
    pr = prune_graph(graph, node_threshold=node_threshold, edge_threshold=edge_threshold)
    feats = graph.mask_of("feature") & pr.node_mask
    idx = [int(i) for i in feats.nonzero().flatten()]
    idx.sort(key=lambda i: -float(pr.node_influence[i]))
    out = [(int(graph.nodes.layer[i]), int(graph.nodes.latent[i])) for i in idx]
    return list(dict.fromkeys(out))


def graph_page_html(
    graph: AttributionGraph,
    *,
    model: HookedTransformer | None = None,
    transcoders: Mapping | None = None,
    dashboards: Mapping[tuple[int, int], FeatureDashboard] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    view_cfg: GraphViewConfig = GraphViewConfig(),
    title: str | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    metric: Mapping[str, float] | None = None,
) -> str:
    """The full HTML page (a string); refuses a model or dictionaries other than the graph's."""
    if model is not None:
        check_graph_model(graph, model)
    if transcoders:
        check_graph_transcoders(graph, transcoders)
    view = graph_view(graph, model=model, transcoders=transcoders, dashboards=dashboards,
                      groups=groups, cfg=view_cfg, title=title, labels=labels, metric=metric,
                      static_image=False)
    anchors = {f"feature-{layer}-{latent}" for layer, latent in (dashboards or {})}
    graph_div = view.html_fragment("tc-graph", anchors=anchors)
    boards = list(dashboards.values()) if dashboards else []
    order = graph_latents(graph, max(view_cfg.node_thresholds), view_cfg.edge_threshold)
    rank = {k: r for r, k in enumerate(order)}
    boards.sort(key=lambda b: rank.get(b.key, len(rank)))
    index = "".join(f"<div><a href='#feature-{b.layer}-{b.latent}'>{b.title}</a></div>" for b in boards)
    sections = "".join(dashboard_html(b) for b in boards)
    name = html.escape(title or "Attribution graph")
    meta = graph.metadata.get("model", {})
    model_name = html.escape(str(meta.get("model_name", ""))) if isinstance(meta, dict) else ""
    targets = html.escape(", ".join(graph.target_labels))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{name}</title><style>{PAGE_CSS}{DASHBOARD_CSS}</style></head><body>"
        f"<h1>{name}</h1>"
        f"<div class='help'>model <b>{model_name}</b>; targets: {targets}</div>"
        f"<div class='prompt'>{html.escape(graph.prompt)}</div>"
        "<div class='help'>Rows: layers (token embeddings at the bottom, targets at the top); "
        "columns: token positions (wider where more features sit). Node size = influence on the "
        "targets; blue edges excite, red edges inhibit; each node shows its strongest edges "
        "(edges per node, beside the graph). Hover nodes and edge midpoints for details; click a "
        "node to highlight its upstream and downstream paths (double-click clears), pin nodes to "
        "see their subgraph; the slider prunes more or less.</div>"
        f"{graph_div}"
        + (f"<h2>Features ({len(boards)})</h2><div class='index'>{index}</div>{sections}" if boards else "")
        + "</body></html>"
    )


def write_graph_page(
    path: str | Path,
    graph: AttributionGraph,
    *,
    model: HookedTransformer | None = None,
    transcoders: Mapping | None = None,
    token_source: Iterable[Tensor] | None = None,
    dashboards: Mapping[tuple[int, int], FeatureDashboard] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    view_cfg: GraphViewConfig = GraphViewConfig(),
    dashboard_cfg: DashboardConfig = DashboardConfig(),
    title: str | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    metric: Mapping[str, float] | None = None,
    progress: bool = True,
) -> Path:
    """Write the page to ``path`` (atomically) and return it.

    Without ``dashboards`` but with ``model`` and ``transcoders``, the dashboards of every
    feature kept at the loosest slider threshold are computed (one streaming pass over
    ``token_source``; weight-only dashboards when it is None).
    """
    if dashboards is None and model is not None and transcoders:
        latents = [k for k in graph_latents(graph, max(view_cfg.node_thresholds), view_cfg.edge_threshold)
                   if k[0] in transcoders]
        dashboards = compute_dashboards(model, transcoders, latents, token_source, dashboard_cfg,
                                        progress=progress) if latents else {}
    text = graph_page_html(graph, model=model, transcoders=transcoders, dashboards=dashboards,
                           groups=groups, view_cfg=view_cfg, title=title, labels=labels, metric=metric)
    return atomic_write(Path(path), lambda p: Path(p).write_text(text, encoding="utf-8"))
