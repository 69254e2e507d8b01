"""Plotly view of an attribution graph (inline in Jupyter, standalone offline HTML, PNG / SVG).

Layout (:mod:`tc_circuits.viz.layout`): rows are layers (token / position embeddings and the
bias at the bottom, targets at the top), one column per token position whose width grows with
the number of nodes there; nodes of a (layer, position) cell sit side by side; positions
without nodes are narrow; the token axis is rotated / shortened when crowded (full token in
the hover of the marker under each column).

* node size: influence on the targets (targets: fixed); colour: node type, or a scale of
  activation / influence for features (``color_by``); short labels
  (:mod:`tc_circuits.viz.labels`) on the most influential nodes, never overlapping;
* edges (:mod:`tc_circuits.viz.edge_select`): each node's ``edges_per_node`` strongest
  incoming and outgoing edges, every target's ``target_inputs`` strongest inputs; blue
  positive, red negative, width and opacity by ``|weight|`` relative to the strongest drawn;
* hover: features show their label, layer, position, latent, activation, pre-activation,
  influence, promoted tokens and top contexts; targets the value explained, its definition
  and the user's metric; supernodes what they hold; edges (hover the midpoint) their weight.

Controls in the figure: a node-threshold slider (one precomputed pruned graph per value,
switched by trace visibility, so it works offline) and, with supernodes (by hand and/or
automatic), feature / supernode buttons. :func:`graph_view` adds the exploration layer
(:mod:`tc_circuits.viz.view_js`): click a node to highlight its upstream and downstream
paths, a node panel, pinning nodes into a subgraph, an edges-per-node control.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import plotly.graph_objects as go

from tc_circuits.graph import AttributionGraph, prune_graph
from tc_circuits.graph.prune import find_threshold
from tc_circuits.viz.edge_select import RankedEdge, candidates, rank_edges, select_edges
from tc_circuits.viz.labels import feature_labels, place_labels, shorten
from tc_circuits.viz.layout import Geometry, Layout, build_layout, layout_positions, short_token, y_px_per_unit
from tc_circuits.viz.supernodes import ViewGraph, auto_supernodes, group_nodes, view_graph
from tc_circuits.viz.hover import node_hover

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from tc_circuits.viz.dashboards import FeatureDashboard

#: Colour of each node type.
NODE_COLORS = {
    "feature": "#f39c12", "error": "#95a5a6", "mlp_const": "#c8ccd0", "embedding": "#27ae60",
    "position": "#a3d9b1", "constant": "#34495e", "target": "#8e44ad", "supernode": "#e84393",
}
NODE_SYMBOLS = {"error": "square", "mlp_const": "square", "supernode": "diamond", "target": "hexagon"}
KINDS = ("embedding", "position", "constant", "mlp_const", "error", "feature", "supernode", "target")
POS_COLOR, NEG_COLOR = "31,79,191", "192,48,42"
#: Edge width bands: (low, high share of the strongest drawn |weight|, width px, opacity).
BANDS = ((0.0, 0.15, 0.8, 0.35), (0.15, 0.5, 2.0, 0.55), (0.5, 1.01, 4.5, 0.8))
N_EDGE_TRACES = 2 * len(BANDS) + 1


@dataclass(frozen=True)
class GraphViewConfig:
    """How the graph view is drawn."""

    node_thresholds: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95)
    """Node-pruning thresholds offered by the slider (cumulative influence kept)."""
    default_threshold: float = 0.8
    """Threshold shown first (must be one of ``node_thresholds``)."""
    edge_threshold: float = 0.98
    """Edge-pruning threshold used while pruning nodes (cumulative edge influence kept)."""
    edges_per_node: int = 3
    """Draw each node's this many strongest incoming and outgoing edges."""
    edge_options: tuple[int, ...] = (1, 2, 3, 5, 8)
    """Choices of the page's edges-per-node control."""
    target_inputs: int = 6
    """Every target shows at least this many of its strongest inputs."""
    max_labels: int = 30
    """Label at most this many nodes besides the targets (most influential first)."""
    label_chars: int = 14
    """Longest shown label (full text in the hover)."""
    max_token_chars: int = 10
    """Longest token on the x axis (full token in the hover)."""
    all_embeddings: bool = False
    """Draw every token embedding (pruning keeps them all); by default only those whose
    influence passes the node threshold (the token axis still names every position)."""
    color_by: Literal["type", "activation", "influence"] = "type"
    """Feature colour: by type, or a colour scale of activation / influence."""
    supernode_threshold: float | None = 0.9
    """Cosine similarity for automatic supernodes (None: only the groups given by hand)."""
    n_hover_tokens: int = 4
    """Promoted tokens shown in a feature's hover."""
    n_hover_contexts: int = 2
    """Top-activating contexts shown in a feature's hover (with dashboards)."""
    height: int = 850
    """Figure height in pixels (the width follows from the columns)."""

    def __post_init__(self) -> None:
        if not self.node_thresholds:
            raise ValueError("node_thresholds is empty")
        for t in self.node_thresholds:
            if not 0.0 < t <= 1.0:
                raise ValueError(f"node thresholds must be in (0, 1], got {t}")
        if self.default_threshold not in self.node_thresholds:
            raise ValueError(
                f"default_threshold {self.default_threshold} is not one of node_thresholds {self.node_thresholds}"
            )
        if not 0.0 <= self.edge_threshold <= 1.0:
            raise ValueError(f"edge_threshold must be in [0, 1], got {self.edge_threshold}")
        for name in ("edges_per_node", "target_inputs", "label_chars", "max_token_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_labels < 0:
            raise ValueError(f"max_labels must be >= 0, got {self.max_labels}")
        if not self.edge_options or min(self.edge_options) < 1:
            raise ValueError(f"edge_options must be positive integers, got {self.edge_options}")
        if self.color_by not in ("type", "activation", "influence"):
            raise ValueError(f"color_by must be 'type', 'activation' or 'influence', got {self.color_by!r}")
        if self.height < 300:
            raise ValueError(f"height must be >= 300 px, got {self.height}")


@dataclass
class DrawnView:
    """One view (a threshold, features or supernodes) as drawn."""

    mode: str
    """``"features"`` or ``"supernodes"``."""
    threshold: float
    view: ViewGraph
    xy: list[tuple[float, float]]
    ranked: list[RankedEdge]
    """Candidate edges (any ``k <= max(edge_options)``), with their per-node ranks."""
    drawn: list[RankedEdge]
    """Edges drawn at the configured ``edges_per_node``."""
    sizes: list[float]
    label_pos: list[str | None]
    hover: list[str]
    full_labels: list[str]
    layout: Layout | None = None
    """This view's columns and figure geometry."""
    hover_xy: list[tuple[float, float]] | None = None
    """Edge-hover marker of each candidate edge (aligned with ``ranked``)."""
    xaxis: dict | None = None
    """Its token axis."""
    first_trace: int = 0
    node_traces: tuple[tuple[str, int, list[int]], ...] = ()
    """(kind, trace index, view node indices) per node trace."""


# ---------------------------------------------------------------------------- traces

def node_sizes(view: ViewGraph) -> list[float]:
    feats = [n.influence for n in view.nodes if n.kind in ("feature", "supernode")]
    imax = max(feats, default=1.0) or 1.0
    omax = max((n.influence for n in view.nodes if n.kind not in ("target",)), default=1.0) or 1.0
    out = []
    for n in view.nodes:
        if n.kind == "target":
            out.append(20.0)
        elif n.kind in ("feature", "supernode"):
            out.append(8 + 14 * math.sqrt(max(n.influence, 0.0) / imax))
        else:
            out.append(8 + 8 * math.sqrt(max(n.influence, 0.0) / omax))
    return out


def hover_points(xy, edges: Sequence[RankedEdge], ypu: float = 100.0, clear_px: float = 14.0) -> list[tuple[float, float]]:
    """Where each edge's hover marker sits: its midpoint, or the nearest point along it (35%,
    65%, 25%, 75%, ...) at least ``clear_px`` from every node, so clicks on a node hit the node."""
    nodes_px = [(x, y * ypu) for x, y in xy]
    out = []
    for e in edges:
        (x0, y0), (x1, y1) = xy[e.source], xy[e.target]
        best = None
        for f in (0.5, 0.35, 0.65, 0.25, 0.75, 0.15, 0.85):
            x, y = x0 + f * (x1 - x0), y0 + f * (y1 - y0)
            if all((x - nx) ** 2 + (y * ypu - ny) ** 2 >= clear_px ** 2 for nx, ny in nodes_px):
                best = (x, y)
                break
        out.append(best or (x0 + 0.5 * (x1 - x0), y0 + 0.5 * (y1 - y0)))
    return out


def edge_traces(xy, view: ViewGraph, edges: Sequence[RankedEdge], names: list[str],
                hover_xy: Sequence[tuple[float, float]] | None = None) -> list[go.Scatter]:
    """``2 x len(BANDS)`` line traces (by sign and width band) and one edge-hover trace."""
    wmax = max((abs(e.weight) for e in edges), default=1.0) or 1.0
    traces = []
    for sign, rgb in ((1, POS_COLOR), (-1, NEG_COLOR)):
        for lo, hi, width, alpha in BANDS:
            xs: list[float | None] = []
            ys: list[float | None] = []
            for e in edges:
                r = abs(e.weight) / wmax
                if (e.weight >= 0) == (sign > 0) and lo <= r < hi:
                    (x0, y0), (x1, y1) = xy[e.source], xy[e.target]
                    xs += [x0, x1, None]
                    ys += [y0, y1, None]
            traces.append(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", showlegend=False,
                                     name="edge lines", line=dict(color=f"rgba({rgb},{alpha})", width=width)))
    hover_xy = hover_xy if hover_xy is not None else hover_points(xy, edges)
    traces.append(go.Scatter(
        x=[p[0] for p in hover_xy], y=[p[1] for p in hover_xy],
        mode="markers", marker=dict(size=7, color="rgba(0,0,0,0.01)"), showlegend=False, name="edges",
        hovertemplate="%{text}<extra></extra>",
        text=[f"{names[e.source]} → {names[e.target]}<br>weight {e.weight:+.4g}" for e in edges],
    ))
    return traces


def node_traces(d: DrawnView, cfg: GraphViewConfig, short: list[str]) -> list[tuple[str, list[int], go.Scatter]]:
    view, xy = d.view, d.xy
    feats = [n for n in view.nodes if n.kind in ("feature", "supernode")]
    imax = max((n.influence for n in feats), default=1.0) or 1.0
    amax = max((abs(n.activation) for n in feats if not math.isnan(n.activation)), default=1.0) or 1.0
    out = []
    for kind in KINDS:
        idx = [i for i, n in enumerate(view.nodes) if n.kind == kind]
        if not idx:
            continue
        nodes = [view.nodes[i] for i in idx]
        marker: dict = dict(size=[d.sizes[i] for i in idx], color=NODE_COLORS[kind],
                            symbol=NODE_SYMBOLS.get(kind, "circle"), line=dict(width=1, color="#333"))
        if kind == "feature" and cfg.color_by != "type":
            vals = [n.activation if cfg.color_by == "activation" else n.influence for n in nodes]
            marker.update(color=vals, colorscale="YlOrRd", cmin=0,
                          cmax=amax if cfg.color_by == "activation" else imax,
                          colorbar=dict(title=cfg.color_by, x=1.02, len=0.5))
        out.append((kind, idx, go.Scatter(
            x=[xy[i][0] for i in idx], y=[xy[i][1] for i in idx], mode="markers+text",
            marker=marker, name=kind, legendgroup=kind,
            text=[short[i] if d.label_pos[i] else "" for i in idx],
            textposition=[d.label_pos[i] or "top center" for i in idx],
            textfont=dict(size=10, color="#222"), cliponaxis=False,
            hovertext=[d.hover[i] for i in idx], hovertemplate="%{hovertext}<extra></extra>",
            customdata=[n.key for n in nodes],
        )))
    return out


# ---------------------------------------------------------------------------- building

def _groups_for(view: ViewGraph, groups, threshold) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    present = view.index()
    for name, ids in (groups or {}).items():
        kept = [k for k in ids if k in present]
        if kept:
            merged[name] = kept
    if threshold is not None:
        claimed = {k for ids in merged.values() for k in ids}
        for name, ids in auto_supernodes(view, threshold).items():
            free = [k for k in ids if k not in claimed]
            if len(free) >= 2 and name not in merged:
                merged[name] = free
    return merged


def view_summary(view: ViewGraph, n_edges: int) -> str:
    """``"57 nodes: 37 features, ... ; 120 edges drawn"`` (supernodes say what they hold)."""
    kinds: dict[str, int] = {}
    for n in view.nodes:
        kinds[n.kind] = kinds.get(n.kind, 0) + 1
    parts = []
    if kinds.get("supernode"):
        held = sum(k == "feature" for n in view.nodes if n.kind == "supernode" for k in n.member_kinds)
        parts.append(f"{kinds['supernode']} supernodes holding {held} features")
    if kinds.get("feature"):
        parts.append(f"{kinds['feature']} {'other ' if kinds.get('supernode') else ''}features")
    other = sum(c for k, c in kinds.items() if k not in ("feature", "supernode"))
    parts.append(f"{other} inputs / errors / targets")
    return f"{len(view.nodes)} nodes: " + ", ".join(parts) + f"; {n_edges} edges drawn"


def _title(graph: AttributionGraph, title: str | None, t: float, d: DrawnView) -> str:
    head = title or f"Attribution graph: {shorten(graph.prompt, 80)!r}"
    return f"{head}<br><sup>node threshold {t:g}: {view_summary(d.view, len(d.drawn))}</sup>"


def build_views(
    graph: AttributionGraph,
    *,
    model: HookedTransformer | None = None,
    transcoders: Mapping | None = None,
    dashboards: Mapping[tuple[int, int], FeatureDashboard] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    cfg: GraphViewConfig = GraphViewConfig(),
    title: str | None = None,
    labels: Mapping[tuple[int, int], str] | None = None,
    metric: Mapping[str, float] | None = None,
    position_labels: Sequence[str] | None = None,
) -> tuple[go.Figure, list[DrawnView]]:
    """The figure and what it draws (used by :func:`graph_figure` and :func:`graph_view`)."""
    levels = sorted(set(cfg.node_thresholds))
    base_views, sn_views = [], []
    for t in levels:
        pr = prune_graph(graph, node_threshold=t, edge_threshold=cfg.edge_threshold)
        if not cfg.all_embeddings:  # pruning keeps every token embedding; show the influential ones
            infl = pr.node_influence.double()
            weak = graph.mask_of("embedding") & (infl < find_threshold(infl, t))
            pr = pr._replace(node_mask=pr.node_mask & ~weak)
        base = view_graph(graph, pr, all_edges=True)
        base_views.append(base)
        merged = _groups_for(base, groups, cfg.supernode_threshold)
        sn_views.append(group_nodes(base, merged) if merged else None)
    # labels: the user's (graph.label / labels=...), else promoted / top-activating tokens
    keys = {(int(n.layer), n.latent) for v in base_views for n in v.nodes if n.kind == "feature"}
    defaults = feature_labels(keys, model=model, transcoders=transcoders, dashboards=dashboards, labels=labels)
    index = {graph.node_id(i): i for i in range(graph.n_nodes)}
    full: dict[str, str] = {}
    names: dict[str, str] = {}  # what edge hovers and the node panel call a node
    values: dict[str, float] = {}
    for v in base_views:
        for n in v.nodes:
            i = index[n.key]
            values[n.key] = float(graph.nodes.value[i])
            user = graph.node_label(i)
            if n.kind == "feature":
                full[n.key] = user or defaults[(int(n.layer), n.latent)]
                names[n.key] = f"L{int(n.layer)} #{n.latent} {full[n.key]}"
            else:
                full[n.key] = names[n.key] = user or n.label
    pos_labels = list(position_labels) if position_labels is not None else graph.metadata.get("position_roles")
    if pos_labels is not None and len(pos_labels) != graph.n_pos:
        raise ValueError(f"{len(pos_labels)} position labels for {graph.n_pos} positions")
    geo = Geometry(height=cfg.height)
    has_groups = any(v is not None for v in sn_views)
    modes = ["features", "supernodes"] if has_groups else ["features"]
    ctx = dict(graph=graph, prompt=list(graph.prompt_strings), model=model, transcoders=transcoders,
               dashboards=dashboards, value=values, names=names, metric=metric)
    drawn: list[DrawnView] = []
    fig = go.Figure()
    for mode in modes:
        for li, t in enumerate(levels):
            v = base_views[li] if mode == "features" else (sn_views[li] or base_views[li])
            # each view gets its own columns (the slider and buttons switch the axis too)
            lay, xaxis = build_layout([v], geo, cfg.max_token_chars, pos_labels)
            d = _draw(mode, t, v, lay, geo, cfg, full, ctx)
            d.layout, d.xaxis = lay, xaxis
            d.first_trace = len(fig.data)
            vnames = [names.get(n.key, n.label) for n in v.nodes]
            d.hover_xy = hover_points(d.xy, d.ranked, y_px_per_unit(lay, geo))
            where = {(e.source, e.target): p for e, p in zip(d.ranked, d.hover_xy)}
            fig.add_traces(edge_traces(d.xy, v, d.drawn, vnames, [where[(e.source, e.target)] for e in d.drawn]))
            short = [shorten(f, cfg.label_chars) for f in d.full_labels]
            tr_info = []
            for kind, idx, tr in node_traces(d, cfg, short):
                tr_info.append((kind, len(fig.data), idx))
                fig.add_trace(tr)
            d.node_traces = tuple(tr_info)
            _add_axis_hover(fig, graph, lay, pos_labels)
            drawn.append(d)
    _add_overlays(fig)
    _finish(fig, graph, drawn, modes, levels, cfg, title)
    return fig, drawn


def _draw(mode, t, v: ViewGraph, lay: Layout, geo: Geometry, cfg, full, ctx) -> DrawnView:
    ypu = y_px_per_unit(lay, geo)
    plot_h = geo.height - geo.margin_t - lay.margin_b
    xy = layout_positions(v, lay.column_x, geo)
    ranked = rank_edges(v)
    k_max = max(max(cfg.edge_options), cfg.edges_per_node)
    ranked = candidates(v, ranked, k_max, cfg.target_inputs)
    drawn = select_edges(v, ranked, cfg.edges_per_node, cfg.target_inputs)
    sizes = node_sizes(v)
    full_labels = [full.get(n.key, n.label) if n.kind != "supernode" else n.label for n in v.nodes]
    px = [(x - lay.x_range[0], (lay.y_range[1] - y) * ypu) for x, y in xy]
    texts = [shorten(f, cfg.label_chars) if n.kind in ("feature", "supernode", "target", "error") else ""
             for f, n in zip(full_labels, v.nodes)]
    pri = [n.influence for n in v.nodes]
    forced = [n.kind == "target" for n in v.nodes]
    plot_w = lay.x_range[1] - lay.x_range[0]
    label_pos = place_labels(px, [s / 2 for s in sizes], texts, pri, cfg.max_labels, forced,
                             bounds=(0.0, -geo.margin_t + 30.0, float(plot_w), float(plot_h)))
    hover = [node_hover(n, f, ctx, cfg.n_hover_tokens, cfg.n_hover_contexts) for n, f in zip(v.nodes, full_labels)]
    return DrawnView(mode, t, v, xy, ranked, drawn, sizes, label_pos, hover, full_labels)


def _add_axis_hover(fig: go.Figure, graph: AttributionGraph, lay: Layout, pos_labels) -> None:
    pos = [p for p in sorted(lay.column_x) if p >= 0]
    text = []
    for p in pos:
        s = f"position {p}: {graph.prompt_strings[p]!r}"
        if pos_labels is not None:
            s = f"{pos_labels[p]}<br>" + s
        text.append(s)
    fig.add_trace(go.Scatter(
        x=[lay.column_x[p] for p in pos], y=[-0.45] * len(pos), mode="markers", name="tokens",
        marker=dict(size=10, color="rgba(0,0,0,0.0)"), showlegend=False,
        hovertext=text, hovertemplate="%{hovertext}<extra></extra>",
    ))


def _add_overlays(fig: go.Figure) -> None:
    """Three empty traces the page's JavaScript fills to highlight a path or a pinned subgraph."""
    for name, rgb in (("highlight +", POS_COLOR), ("highlight -", NEG_COLOR)):
        fig.add_trace(go.Scatter(x=[], y=[], mode="lines", name=name, showlegend=False, hoverinfo="skip",
                                 line=dict(color=f"rgba({rgb},0.9)", width=2.5)))
    fig.add_trace(go.Scatter(x=[], y=[], mode="markers+text", name="highlight nodes", showlegend=False,
                             marker=dict(size=[], color=[], line=dict(width=2, color="#000")),
                             textfont=dict(size=10, color="#000"), cliponaxis=False,
                             hovertemplate="%{hovertext}<extra></extra>"))


def _layout_args(d: DrawnView) -> dict:
    """Layout properties that follow the view (its columns, axis and width)."""
    args = {f"xaxis.{k}": v for k, v in d.xaxis.items() if k in ("tickvals", "ticktext", "tickangle", "range")}
    args.update({"width": d.layout.width, "margin.b": d.layout.margin_b})
    return args


def _finish(fig, graph, drawn: list[DrawnView], modes, levels, cfg, title) -> None:
    n_tr = len(fig.data)
    always = set(range(n_tr - 3, n_tr))  # the overlays
    span = {}
    for i, d in enumerate(drawn):
        end = drawn[i + 1].first_trace if i + 1 < len(drawn) else n_tr - 3
        span[(d.mode, d.threshold)] = (range(d.first_trace, end), d)
    default = cfg.default_threshold
    first = span[("features", default)][1]

    def visible(mode, t):
        on = span[(mode, t)][0]
        return [i in on or i in always for i in range(n_tr)]

    def slider(mode):
        steps = [dict(method="update", label=f"{t:g}",
                      args=[{"visible": visible(mode, t)},
                            {"title.text": _title(graph, title, t, span[(mode, t)][1]), **_layout_args(span[(mode, t)][1])}])
                 for t in levels]
        return dict(active=levels.index(default), steps=steps, currentvalue=dict(prefix="node threshold: "),
                    pad=dict(t=0, b=10), x=0.0, len=min(0.5, 420 / first.layout.width), y=1.0, yanchor="bottom")

    for i, tr in enumerate(fig.data):
        tr.visible = i in span[("features", default)][0] or i in always
    n_layers = drawn[0].view.n_layers
    yt = ["inputs"] + [f"layer {L}" for L in range(n_layers)] + ["targets"]
    geo = Geometry(height=cfg.height)
    fig.update_layout(
        title=dict(text=_title(graph, title, default, span[("features", default)][1]), x=0.01, y=0.985, yanchor="top"),
        sliders=[slider("features")], width=first.layout.width, height=cfg.height, autosize=False,
        template="plotly_white", hovermode="closest", hoverlabel=dict(align="left"), showlegend=False,
        margin=dict(l=geo.margin_l, r=geo.margin_r, t=geo.margin_t, b=first.layout.margin_b),
        xaxis=first.xaxis, dragmode="pan",
        yaxis=dict(tickmode="array", tickvals=list(range(n_layers + 2)), ticktext=yt,
                   range=list(first.layout.y_range), showgrid=True, zeroline=False, fixedrange=False),
    )
    if len(modes) > 1:
        buttons = [
            dict(method="update", label=mode,
                 args=[{"visible": visible(mode, default)},
                       {"sliders": [slider(mode)], "title.text": _title(graph, title, default, span[(mode, default)][1]),
                        **_layout_args(span[(mode, default)][1])}])
            for mode in modes
        ]
        fig.update_layout(updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=1.0, y=1.0,
                                            xanchor="right", yanchor="bottom", showactive=True,
                                            pad=dict(t=0, b=4))])


def graph_figure(graph: AttributionGraph, **kwargs) -> go.Figure:
    """The interactive plotly figure (``fig.show()`` in Jupyter; ``fig.write_image`` for PNG / SVG).

    Keyword arguments: ``model`` / ``transcoders`` (promoted tokens in labels and hovers),
    ``dashboards`` (top-activating contexts), ``groups`` (``{supernode name: [node ids]}``,
    node ids as ``graph.node_id(i)``; with ``cfg.supernode_threshold`` automatic groups are
    added for the features no hand-made group claims), ``cfg``, ``title``, ``labels``
    (``{(layer, latent): label}``, besides the graph's own ``graph.label`` labels),
    ``metric`` (``{name: value}`` shown in the target's hover, e.g. the probability
    difference) and ``position_labels`` (axis names per position, e.g. roles of a prompt
    set; default ``graph.metadata["position_roles"]`` when present, else the tokens).
    :func:`graph_view` adds click-to-trace, the node panel and pinning.
    """
    return build_views(graph, **kwargs)[0]


def write_figure_html(fig: go.Figure, path: str | Path) -> Path:
    """A standalone, offline HTML file of ``fig`` (plotly.js embedded, no CDN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def short_position(graph: AttributionGraph, p: int, max_chars: int = 10) -> str:
    """The token at position ``p`` as the axis shows it."""
    return short_token(graph.prompt_strings[p], max_chars)
