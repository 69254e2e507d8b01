"""Rendering of :class:`~tc_circuits.viz.dashboards.FeatureDashboard`: HTML (no JS) and plotly.

The HTML needs no script: contexts are spans shaded by activation (orange, relative to the
latent's maximum), the histogram is an inline SVG. :data:`DASHBOARD_CSS` is included once by a
page; ``dashboard_html(board, standalone=True)`` embeds it for a single dashboard (Jupyter).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import plotly.graph_objects as go

from tc_circuits.viz.feature_weights import Connection, TokenScore

DASHBOARD_CSS = """
.tcd { font-family: system-ui, sans-serif; font-size: 13px; border: 1px solid #ccc;
       border-radius: 6px; padding: 8px 12px; margin: 10px 0; background: #fff; }
.tcd h3 { margin: 2px 0 6px 0; font-size: 15px; }
.tcd .meta { color: #555; margin-bottom: 6px; }
.tcd .cols { display: flex; flex-wrap: wrap; gap: 18px; }
.tcd .col { min-width: 180px; }
.tcd table { border-collapse: collapse; }
.tcd td { padding: 0 6px 0 0; font-family: monospace; white-space: pre; }
.tcd .pos { color: #1f4fbf; } .tcd .neg { color: #c0302a; }
.tcd .ctx { font-family: monospace; white-space: pre; margin: 1px 0; line-height: 1.5; }
.tcd .ctx span { border-radius: 2px; margin-right: 1px; }
.tcd .ctx .hl { outline: 2px solid #d35400; font-weight: bold; }
.tcd .act { color: #555; display: inline-block; width: 4.5em; text-align: right; margin-right: 6px; }
.tcd h4 { margin: 8px 0 2px 0; font-size: 13px; }
"""


@dataclass
class ContextExample:
    """One occurrence of a latent firing, with a window of context."""

    activation: float
    """Activation at the active token."""
    document: int
    """Index of the corpus row."""
    position: int
    """Position of the active token in that row."""
    tokens: list[str]
    """Decoded tokens of the window."""
    token_ids: list[int]
    """Token ids of the window."""
    acts: list[float]
    """Activation of the latent on each window token."""
    highlight: int
    """Index of the active token inside the window."""


@dataclass
class FeatureDashboard:
    """Everything shown about one latent."""

    layer: int
    latent: int
    promoted: list[TokenScore]
    """Tokens with the largest direct logit effect."""
    suppressed: list[TokenScore]
    """Tokens with the most negative direct logit effect."""
    de_embeddings: list[TokenScore]
    """Input tokens that most excite the latent through the direct path."""
    upstream: list[Connection]
    """Strongest virtual weights from earlier layers' latents into this one."""
    downstream: list[Connection]
    """Strongest virtual weights from this latent into later layers' latents."""
    top_examples: list[ContextExample] = field(default_factory=list)
    """Top-activating contexts, descending."""
    quantile_examples: list[tuple[str, list[ContextExample]]] = field(default_factory=list)
    """``(band label, examples)`` per activation quantile band, highest band first."""
    hist_edges: list[float] = field(default_factory=list)
    """Histogram bin edges (``n_bins + 1``) of the nonzero activations."""
    hist_counts: list[int] = field(default_factory=list)
    """Histogram counts (sum == ``n_nonzero``)."""
    n_nonzero: int = 0
    """Nonzero activations seen in the corpus."""
    n_tokens: int = 0
    """Tokens scanned."""
    max_activation: float = 0.0
    """Largest activation seen."""

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.latent)

    @property
    def density(self) -> float:
        """Fraction of scanned tokens where the latent is active."""
        return self.n_nonzero / self.n_tokens if self.n_tokens else 0.0

    @property
    def title(self) -> str:
        return f"L{self.layer} #{self.latent}"

    def _repr_html_(self) -> str:  # Jupyter
        return dashboard_html(self, standalone=True)



def _esc(s: str) -> str:
    return html.escape(s.replace("\n", "\\n"))


def _tok_table(title: str, items: list[TokenScore], cls: str) -> str:
    rows = "".join(
        f"<tr><td>{_esc(repr(t.string))}</td><td class='{cls}'>{t.score:+.3f}</td></tr>" for t in items
    )
    return f"<div class='col'><h4>{title}</h4><table>{rows}</table></div>"


def _conn_table(title: str, items: list[Connection]) -> str:
    rows = "".join(
        f"<tr><td><a href='#feature-{c.layer}-{c.latent}'>L{c.layer} #{c.latent}</a></td>"
        f"<td class='{'pos' if c.weight >= 0 else 'neg'}'>{c.weight:+.3f}</td></tr>"
        for c in items
    )
    return f"<div class='col'><h4>{title}</h4><table>{rows or '<tr><td>none</td></tr>'}</table></div>"


def context_html(ex: ContextExample, max_act: float) -> str:
    """One context line, tokens shaded by activation, the active token outlined."""
    scale = max_act if max_act > 0 else 1.0
    parts = []
    for j, (tok, a) in enumerate(zip(ex.tokens, ex.acts)):
        alpha = min(1.0, max(0.0, a / scale))
        cls = " class='hl'" if j == ex.highlight else ""
        parts.append(
            f"<span{cls} style='background: rgba(255,140,0,{alpha:.2f})' "
            f"title='act {a:.3f}'>{_esc(tok)}</span>"
        )
    return f"<div class='ctx'><span class='act'>{ex.activation:.3f}</span>{''.join(parts)}</div>"


def histogram_svg(edges: list[float], counts: list[int], width: int = 260, height: int = 80) -> str:
    """Inline SVG bar chart of a histogram."""
    if not counts or max(counts) == 0:
        return "<div class='meta'>no nonzero activations</div>"
    last = max(i for i, c in enumerate(counts) if c > 0)
    counts, edges = counts[: last + 1], edges[: last + 2]  # the doubling range can be ~2x the max
    top = max(counts)
    bw = width / len(counts)
    bars = "".join(
        f"<rect x='{i * bw:.1f}' y='{height - height * c / top:.1f}' width='{max(bw - 1, 1):.1f}' "
        f"height='{height * c / top:.1f}' fill='#e67e22'><title>[{edges[i]:.3g}, {edges[i + 1]:.3g}): {c}"
        f"</title></rect>"
        for i, c in enumerate(counts)
    )
    return (
        f"<svg width='{width}' height='{height + 14}' role='img'>{bars}"
        f"<text x='0' y='{height + 12}' font-size='10'>0</text>"
        f"<text x='{width}' y='{height + 12}' font-size='10' text-anchor='end'>{edges[-1]:.3g}</text></svg>"
    )


def dashboard_html(board: FeatureDashboard, *, standalone: bool = False, max_contexts: int | None = None) -> str:
    """HTML of one dashboard (a ``<div id='feature-L-i'>``); ``standalone`` adds the CSS."""
    meta = (
        f"density {board.density:.2%} ({board.n_nonzero} / {board.n_tokens} tokens), "
        f"max activation {board.max_activation:.3f}" if board.n_tokens else "no corpus scanned"
    )
    tops = board.top_examples[:max_contexts] if max_contexts else board.top_examples
    ctx = "".join(context_html(e, board.max_activation) for e in tops)
    quant = "".join(
        f"<h4>{_esc(label)}</h4>" + "".join(context_html(e, board.max_activation) for e in exs)
        for label, exs in board.quantile_examples
    )
    body = (
        f"<div class='tcd' id='feature-{board.layer}-{board.latent}'>"
        f"<h3>Feature {board.title}</h3><div class='meta'>{meta}</div>"
        f"<div class='cols'>"
        f"<div class='col'><h4>Activation histogram (nonzero)</h4>"
        f"{histogram_svg(board.hist_edges, board.hist_counts)}</div>"
        + _tok_table("Promoted tokens", board.promoted, "pos")
        + _tok_table("Suppressed tokens", board.suppressed, "neg")
        + _tok_table("De-embeddings", board.de_embeddings, "pos")
        + _conn_table("From earlier layers", board.upstream)
        + _conn_table("To later layers", board.downstream)
        + "</div>"
        + (f"<h4>Top activations</h4>{ctx}" if ctx else "")
        + quant
        + "</div>"
    )
    return f"<style>{DASHBOARD_CSS}</style>{body}" if standalone else body


def dashboard_figure(board: FeatureDashboard) -> go.Figure:
    """Plotly figure for Jupyter: activation histogram and promoted / suppressed tokens."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("activation histogram", "direct logit effect"))
    if board.hist_counts:
        mids = [(a + b) / 2 for a, b in zip(board.hist_edges, board.hist_edges[1:])]
        fig.add_trace(go.Bar(x=mids, y=board.hist_counts, marker_color="#e67e22", name="count"), 1, 1)
    toks = board.suppressed[::-1] + board.promoted[::-1]
    fig.add_trace(
        go.Bar(
            x=[t.score for t in toks], y=[repr(t.string) for t in toks], orientation="h",
            marker_color=["#c0302a" if t.score < 0 else "#1f4fbf" for t in toks], name="logit effect",
        ), 1, 2,
    )
    fig.update_layout(title=f"Feature {board.title}", showlegend=False, height=360)
    return fig
