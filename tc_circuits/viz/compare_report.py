"""Render a :class:`~tc_circuits.evaluation.compare.CompareResult` as markdown and as standalone HTML.

The HTML page embeds plotly.js (``include_plotlyjs=True``), so it opens offline. Figures:

1. FVU per layer for each kind (main k);
2. ΔCE when spliced, per layer and all at once (main k);
3. the k sweep: FVU against L0 (all layers, averaged) per kind;
4. the k sweep: ΔCE (all layers spliced at once) against L0 per kind;
5. latent density histograms (log10 firing frequency) per kind at the main k.
"""

from __future__ import annotations

import html
from pathlib import Path

from tc_circuits.evaluation.compare import CompareResult, CompareRow, markdown_report, write_tables
from tc_circuits.fileio import atomic_write


def _figure(res: CompareResult):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cfg = res.config
    fig = make_subplots(
        rows=3,
        cols=2,
        subplot_titles=(
            f"FVU per layer (k={cfg.k})",
            f"ΔCE spliced (k={cfg.k})",
            "k sweep: FVU vs L0",
            "k sweep: ΔCE (all layers) vs L0",
            f"latent density (k={cfg.k}, all layers)",
            "",
        ),
    )
    colors = {"sae": "#1f77b4", "transcoder": "#ff7f0e", "skip_transcoder": "#2ca02c"}
    main = res.main_rows()
    for kind in cfg.kinds:
        color = colors.get(kind)
        rows = [r for r in main if r.kind == kind]
        fig.add_trace(go.Bar(x=[r.layer for r in rows], y=[r.fvu for r in rows], name=kind,
                             marker_color=color, legendgroup=kind), row=1, col=1)
        fig.add_trace(go.Bar(x=[r.layer for r in rows], y=[r.delta_ce for r in rows], name=kind,
                             marker_color=color, legendgroup=kind, showlegend=False), row=1, col=2)
        sweep = sorted((r for r in res.sweep_rows() if r.kind == kind), key=lambda r: r.k)
        text = [f"k={r.k}" for r in sweep]
        fig.add_trace(go.Scatter(x=[r.l0 for r in sweep], y=[r.fvu for r in sweep], text=text,
                                 mode="lines+markers", name=kind, line_color=color,
                                 legendgroup=kind, showlegend=False), row=2, col=1)
        fig.add_trace(go.Scatter(x=[r.l0 for r in sweep], y=[r.delta_ce for r in sweep], text=text,
                                 mode="lines+markers", name=kind, line_color=color,
                                 legendgroup=kind, showlegend=False), row=2, col=2)
        freqs = [
            f for key, d in res.density.items() if key.startswith(f"{kind}_k{cfg.k}_L")
            for f in d["frequencies"] if f > 0
        ]
        if freqs:
            import math

            fig.add_trace(go.Histogram(x=[math.log10(f) for f in freqs], name=kind, marker_color=color,
                                       opacity=0.6, legendgroup=kind, showlegend=False), row=3, col=1)
    fig.update_layout(barmode="group", height=1100, title="SAE vs transcoder vs skip transcoder")
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="layer", row=1, col=2)
    fig.update_xaxes(title_text="L0", row=2, col=1)
    fig.update_xaxes(title_text="L0", row=2, col=2)
    fig.update_xaxes(title_text="log10 firing frequency", row=3, col=1)
    fig.update_yaxes(title_text="FVU", row=1, col=1)
    fig.update_yaxes(title_text="ΔCE (nats)", row=1, col=2)
    fig.update_yaxes(title_text="FVU", row=2, col=1)
    fig.update_yaxes(title_text="ΔCE (nats)", row=2, col=2)
    fig.update_yaxes(title_text="latents", row=3, col=1)
    return fig


def _html_table(rows) -> str:

    head = "".join(f"<th>{html.escape(c)}</th>" for c in CompareRow.COLUMNS)
    body = []
    for r in rows:
        vals = [getattr(r, c) for c in CompareRow.COLUMNS]
        cells = ["-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def html_report(res: CompareResult) -> str:
    """A standalone HTML page: the tables and the plotly figures (plotly.js inlined)."""
    import plotly.io as pio

    fig_html = pio.to_html(_figure(res), full_html=False, include_plotlyjs=True)
    style = (
        "body{font-family:sans-serif;margin:2em;}table{border-collapse:collapse;margin:1em 0;}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;}"
    )
    cfg = res.config
    intro = html.escape(markdown_report(res).split("\n")[2])
    parts = [
        "<h1>SAE vs transcoder vs skip transcoder</h1>",
        f"<p>{intro}</p>",
        f"<h2>Main comparison (k={cfg.k})</h2>",
        _html_table(res.main_rows()),
    ]
    if len(cfg.ks) > 1:
        parts += ["<h2>k sweep (all layers)</h2>",
                  _html_table(sorted(res.sweep_rows(), key=lambda r: (r.kind, r.k)))]
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>tc-circuits compare</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(parts) + f"\n{fig_html}\n</body></html>\n"
    )


def write_outputs(res: CompareResult, out: Path) -> dict[str, str]:
    """Write ``compare.md``, ``compare.json`` and ``compare.html`` into ``out``."""
    write_tables(res, out)
    path = out / "compare.html"
    page = html_report(res)
    atomic_write(path, lambda p: Path(p).write_text(page))
    res.files = {**res.files, "html": str(path)}
    return res.files
