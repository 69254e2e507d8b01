"""Where every node of a graph view sits, in screen pixels.

The x axis is measured in pixels (one data unit = one pixel of the figure's plot area), so
that label placement (:mod:`tc_circuits.viz.labels`) can work with real sizes:

* one **column** per token position, left to right, after a column for the bias node;
  a column is as wide as its most crowded (layer, position) cell (``pitch`` pixels per
  node) plus a gap, and positions holding no node except a token embedding get
  ``min_column`` pixels only (enough for a rotated token label);
* nodes of one cell sit side by side, ``pitch`` apart, most influential in the middle;
* rows are layers: inputs (embeddings, positions, bias) at ``y = 0``, layer ``L`` at
  ``y = L + 1``, targets at ``y = n_layers + 1``; a supernode sits on its mean layer.

The token axis (:func:`token_axis`) shows each position's token, shortened to
``max_token_chars`` and rotated when the columns are narrow; the full token is in the hover
of an invisible marker under each column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from tc_circuits.viz.supernodes import ViewGraph

#: Width (px) of one character of the 10 px label / tick font, a little over plotly's average.
CHAR_PX = 6.2
#: Height (px) of one line of 10 px text.
LINE_PX = 13.0


@dataclass(frozen=True)
class Geometry:
    """Pixel sizes of the layout."""

    pitch: float = 26.0
    """Distance between neighbouring nodes of one cell."""
    gap: float = 10.0
    """Space added to every column holding nodes."""
    min_column: float = 14.0
    """Width of a column with no node (rotated token label)."""
    height: int = 850
    """Figure height."""
    margin_l: int = 70
    margin_r: int = 30
    margin_t: int = 150
    """Top margin: title, slider and buttons."""
    min_width: int = 900
    """Narrowest figure (narrower content is centred)."""


class Layout(NamedTuple):
    """Node coordinates and the axis geometry."""

    xy: list[tuple[float, float]]
    """``(x, y)`` per node: x in pixels, y = layer + 1."""
    column_x: dict[int, float]
    """Centre x of each position column (-1 = the bias column)."""
    column_w: dict[int, float]
    """Width of each column (px)."""
    x_range: tuple[float, float]
    """x axis range (its length is the plot-area width in px)."""
    width: int
    """Figure width in px."""
    margin_b: int
    """Bottom margin (room for the token labels)."""
    y_range: tuple[float, float]
    """y axis range."""


def _cell_key(node) -> tuple[int, float]:
    return node.pos, float(node.layer)


def columns(views: list[ViewGraph], geo: Geometry) -> tuple[dict[int, float], dict[int, float], float]:
    """Column centres and widths shared by several views (each column fits its widest cell)."""
    n_pos = len(views[0].prompt_strings) if views else 0
    widest = {p: 0 for p in range(-1, n_pos)}
    for view in views:
        count: dict[tuple[int, float], int] = {}
        for n in view.nodes:
            if n.kind == "embedding":
                continue  # one per position, always fits
            key = _cell_key(n)
            count[key] = count.get(key, 0) + 1
        for (pos, _), k in count.items():
            widest[pos] = max(widest.get(pos, 0), k)
    column_x, column_w = {}, {}
    x = 0.0
    for p in sorted(widest):
        w = geo.min_column if widest[p] == 0 else max(geo.min_column, geo.pitch * widest[p] + geo.gap)
        if p == -1:
            w = max(w, geo.pitch + geo.gap)
        column_x[p], column_w[p] = x + w / 2, w
        x += w
    return column_x, column_w, x


def layout_positions(view: ViewGraph, column_x: dict[int, float], geo: Geometry = Geometry()) -> list[tuple[float, float]]:
    """``(x, y)`` of every node of ``view`` in the given columns."""
    cells: dict[tuple[int, float], list[int]] = {}
    for i, n in enumerate(view.nodes):
        cells.setdefault(_cell_key(n), []).append(i)
    xy: list[tuple[float, float]] = [(0.0, 0.0)] * len(view.nodes)
    for (pos, layer), idx in cells.items():
        # most influential in the middle, the others alternating right / left of it
        idx = sorted(idx, key=lambda i: -view.nodes[i].influence)
        k = len(idx)
        slots = sorted(range(k), key=lambda j: (abs(j - (k - 1) / 2), j))
        for i, j in zip(idx, slots):
            xy[i] = (column_x[pos] + geo.pitch * (j - (k - 1) / 2), layer + 1.0)
    return xy


def short_token(s: str, max_chars: int) -> str:
    """``repr``-like token text, cut to ``max_chars`` with an ellipsis."""
    t = repr(s)[1:-1] if s.strip() != s or not s.isprintable() else s
    t = t.replace(" ", "␣") if t.strip() == "" else t
    return t if len(t) <= max_chars else t[: max_chars - 1] + "…"


def token_axis(prompt: list[str], column_x: dict[int, float], column_w: dict[int, float], max_chars: int,
               position_labels: list[str] | None = None) -> dict:
    """Plotly x-axis settings: a tick per position, rotated when a column is narrower than its text."""
    names = position_labels or prompt
    texts = ["bias"] + [short_token(s, max_chars) for s in names]
    widths = [column_w[p] for p in sorted(column_x)]
    rotate = any(len(t) * CHAR_PX + 4 > w for t, w in zip(texts, widths))
    return dict(tickmode="array", tickvals=[column_x[p] for p in sorted(column_x)], ticktext=texts,
                tickangle=-90 if rotate else 0, tickfont=dict(size=10), showgrid=False, zeroline=False)


def figure_geometry(total_w: float, n_layers: int, tick_chars: int, rotate: bool, geo: Geometry) -> tuple:
    """``(x_range, width, margin_b, y_range)`` so that one x unit is one pixel."""
    plot_w = max(total_w, geo.min_width - geo.margin_l - geo.margin_r)
    pad = (plot_w - total_w) / 2
    margin_b = int(60 + (tick_chars * CHAR_PX if rotate else LINE_PX))
    return (-pad, total_w + pad), int(plot_w + geo.margin_l + geo.margin_r), margin_b, (-0.6, n_layers + 1.45)


def y_px_per_unit(lay: Layout, geo: Geometry) -> float:
    """Pixels per y unit of the plot area."""
    plot_h = geo.height - geo.margin_t - lay.margin_b
    return plot_h / (lay.y_range[1] - lay.y_range[0])


def build_layout(views: list[ViewGraph], geo: Geometry, max_token_chars: int,
                 position_labels: list[str] | None = None) -> tuple[Layout, dict]:
    """Shared columns for ``views`` and the x axis; returns the layout (no node xy) and the axis dict."""
    column_x, column_w, total = columns(views, geo)
    prompt = views[0].prompt_strings
    axis = token_axis(prompt, column_x, column_w, max_token_chars, position_labels)
    n_chars = max((len(t) for t in axis["ticktext"]), default=4)
    x_range, width, margin_b, y_range = figure_geometry(total, views[0].n_layers, n_chars,
                                                        axis["tickangle"] != 0, geo)
    axis["range"] = list(x_range)
    return Layout([], column_x, column_w, x_range, width, margin_b, y_range), axis
