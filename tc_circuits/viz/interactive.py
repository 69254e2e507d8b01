"""``graph_view``: the explorable graph view, inline in Jupyter or as a standalone offline page.

A :class:`GraphView` holds the plotly figure and what its script needs. In Jupyter it shows
itself (``_repr_mimebundle_``) as the interactive HTML (figure, controls and node panel, see
:mod:`tc_circuits.viz.view_js`) with a static PNG inside it that the script hides once
plotly runs: where scripts do not run (nbconvert to HTML without JS, GitHub) the picture
stays. The PNG is also offered as ``image/png``.

Static images (:func:`write_image`, ``GraphView.write_image``) use plotly's ``write_image``
with kaleido >= 1, which drives the system Chromium offline (``pip install kaleido``;
Debian ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import html
import itertools
from pathlib import Path

import plotly.graph_objects as go

from tc_circuits.graph import AttributionGraph
from tc_circuits.viz.graph_view import DrawnView, GraphViewConfig, build_views
from tc_circuits.viz.view_js import PANEL_CSS, panel_html, view_payload, view_script

_ids = itertools.count()


def write_image(fig: go.Figure, path: str | Path, *, fmt: str | None = None, scale: float = 1.0) -> Path:
    """PNG / SVG / PDF of ``fig`` (``fmt``, else from the suffix) through kaleido and the system Chromium."""
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("png", "svg", "pdf", "jpg", "jpeg", "webp"):
        raise ValueError(f"unknown image format {path.suffix!r} for {path} (use .png, .svg or .pdf)")
    try:
        import kaleido  # noqa: F401
    except ImportError as err:
        raise ImportError("static images need kaleido >= 1: pip install 'tc-circuits[images]' "
                          "(it uses the system Chromium: apt-get install chromium)") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.write_image(str(path), format=fmt, scale=scale)
    except Exception:  # noqa: BLE001 - one retry: a fresh Chromium start can time out on a busy machine
        fig.write_image(str(path), format=fmt, scale=scale)
    return path


def png_bytes(fig: go.Figure) -> bytes | None:
    """The figure as PNG bytes, or None when kaleido / Chromium is not available."""
    try:
        import kaleido  # noqa: F401

        return fig.to_image(format="png")
    except Exception:  # noqa: BLE001 - no kaleido, no Chromium: no fallback image
        return None


class GraphView:
    """The figure plus its exploration script; displays itself in Jupyter."""

    def __init__(self, graph: AttributionGraph, figure: go.Figure, drawn: list[DrawnView],
                 cfg: GraphViewConfig, static_image: bool = True):
        self.graph = graph
        self.figure = figure
        """The plotly figure (``fig.show()``, ``fig.write_image``)."""
        self.drawn = drawn
        """What each view draws (nodes, coordinates, edges), for tests and scripts."""
        self.cfg = cfg
        self.static_image = static_image
        """Embed a PNG fallback in the Jupyter output."""

    def payload(self, anchors: set[str] | None = None) -> dict:
        return view_payload(self.drawn, self.cfg, len(self.figure.data), anchors)

    def html_fragment(self, div_id: str | None = None, *, include_plotlyjs: bool = True,
                      anchors: set[str] | None = None, fallback_png: bytes | None = None) -> str:
        """``<div>`` with the figure, the controls and the node panel (plotly.js embedded)."""
        div_id = div_id or f"tc-graph-{next(_ids)}"
        script = view_script(div_id, self.payload(anchors))
        if fallback_png:
            script = f"var st = document.getElementById('{div_id}-static'); if (st) st.style.display = 'none';\n" + script
        plot = self.figure.to_html(full_html=False, include_plotlyjs=include_plotlyjs, div_id=div_id,
                                   post_script=script, config={"scrollZoom": True, "displaylogo": False})
        static = ""
        if fallback_png:
            b64 = base64.b64encode(fallback_png).decode()
            static = f"<div id='{div_id}-static'><img alt='graph view' src='data:image/png;base64,{b64}'></div>"
        # the panel comes first in the page (the script, run right after the plot, needs it)
        return (f"<style>{PANEL_CSS}</style>{static}<div class='tcv-wrap'>{panel_html(div_id, self.cfg)}"
                f"<div class='tcv-plot'>{plot}</div></div>")

    def to_html(self, title: str | None = None) -> str:
        """A standalone offline page of the view."""
        name = html.escape(title or f"Attribution graph: {self.graph.prompt!r}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{name}</title></head>"
                f"<body style='font-family: system-ui, sans-serif'>{self.html_fragment('tc-graph')}</body></html>")

    def write_html(self, path: str | Path, title: str | None = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(title), encoding="utf-8")
        return path

    def write_image(self, path: str | Path, *, scale: float = 1.0) -> Path:
        """PNG / SVG of the default view (see :func:`write_image`)."""
        return write_image(self.figure, path, scale=scale)

    def _repr_mimebundle_(self, include=None, exclude=None):
        png = png_bytes(self.figure) if self.static_image else None
        out = {"text/html": self.html_fragment(fallback_png=png)}
        if png:
            out["image/png"] = base64.b64encode(png).decode()
        return out


def graph_view(graph: AttributionGraph, *, cfg: GraphViewConfig = GraphViewConfig(), static_image: bool = True,
               **kwargs) -> GraphView:
    """The explorable view of ``graph`` (same keyword arguments as :func:`graph_figure`).

    In Jupyter just end a cell with it; ``.write_html(path)`` writes a standalone offline
    page, ``.write_image("g.png" / "g.svg")`` a static image, ``.figure`` is the plotly figure.
    """
    fig, drawn = build_views(graph, cfg=cfg, **kwargs)
    return GraphView(graph, fig, drawn, cfg, static_image)


def prompt_set_view(graph: AttributionGraph, *, roles=None, **kwargs) -> GraphView:
    """The view of a graph aggregated over a task's prompts, positions named by role.

    ``graph`` is any :class:`AttributionGraph` whose positions stand for roles (e.g. "start
    year", "last token"). The column names are ``roles`` if given, else
    ``graph.metadata["position_roles"]``, else ``graph.prompt_strings`` (an aggregated
    prompt-set graph carries its role labels there).
    """
    if roles is None:
        roles = graph.metadata.get("position_roles") or graph.prompt_strings
    roles = [str(r) for r in roles]
    if len(roles) != graph.n_pos:
        raise ValueError(f"{len(roles)} roles for a graph with {graph.n_pos} positions")
    return graph_view(graph, position_labels=roles, **kwargs)
