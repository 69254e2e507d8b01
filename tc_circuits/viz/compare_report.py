"""Render a :class:`~tc_circuits.evaluation.compare.CompareResult` as markdown and as standalone HTML.

The HTML page embeds plotly.js (``include_plotlyjs=True``), so it opens offline. Figures:

1. FVU per layer for each kind (main k);
2. ΔCE when spliced, per layer and all at once (main k);
3. the k sweep: FVU against L0 (all layers, averaged) per kind;
4. the k sweep: ΔCE (all layers spliced at once) against L0 per kind;
5. latent density histograms (log10 firing frequency) per kind at the main k;

and, when the ground-truth / faithfulness numbers exist (:func:`picture_figure`), the seed
paper's picture: ΔCE against the interpretability score, FVU against L0, k-sparse probing
accuracy, faithfulness AUC, per kind at every k. Each figure is also written as a static PNG
when plotly's image export (kaleido) works on this machine.
"""

from __future__ import annotations

import html
from pathlib import Path

from tc_circuits.evaluation.compare import CompareResult, CompareRow, PictureRow, markdown_report, picture_rows, write_tables
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


COLORS = {"sae": "#1f77b4", "transcoder": "#ff7f0e", "skip_transcoder": "#2ca02c", "clt": "#d62728"}


def picture_figure(res: CompareResult):
    """ΔCE vs interpretability, FVU vs L0, probing accuracy, faithfulness AUC (None without data)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    pics = picture_rows(res)
    if not any(p.interp_f1 is not None or p.faith_auc_frozen is not None for p in pics):
        return None
    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "ΔCE (all layers spliced) vs interpretability", "FVU vs L0",
        f"sparse probing accuracy (k={res.config.k})", "faithfulness AUC (frozen; open/dashed: random order)"))
    for kind in res.config.kinds:
        rows = sorted((p for p in pics if p.kind == kind), key=lambda p: p.k)
        c = COLORS.get(kind)
        text = [f"k={p.k}" for p in rows]
        fig.add_trace(go.Scatter(x=[p.interp_f1 for p in rows], y=[p.delta_ce for p in rows], text=text,
                                 mode="lines+markers+text", textposition="top center", name=kind,
                                 line_color=c, legendgroup=kind), row=1, col=1)
        fig.add_trace(go.Scatter(x=[p.l0 for p in rows], y=[p.fvu for p in rows], text=text, mode="lines+markers",
                                 line_color=c, legendgroup=kind, showlegend=False), row=1, col=2)
        main = [p for p in rows if p.k == res.config.k]
        if main and main[0].probe_k1 is not None:
            ex = res.extra.get(f"{kind}_k{res.config.k}", {}).get("ground_truth", [])
            ks = sorted({int(k) for g in ex for k in g["probe"]})
            acc = [sum(g["probe"][str(k)] for g in ex) / len(ex) for k in ks]
            fig.add_trace(go.Scatter(x=ks, y=acc, mode="lines+markers", line_color=c, legendgroup=kind,
                                     showlegend=False), row=2, col=1)
            fig.add_trace(go.Scatter(x=ks, y=[main[0].probe_raw] * len(ks), mode="lines", line_color=c,
                                     line_dash="dot", legendgroup=kind, showlegend=False), row=2, col=1)
        fig.add_trace(go.Scatter(x=[p.k for p in rows], y=[p.faith_auc_frozen for p in rows], mode="lines+markers",
                                 line_color=c, legendgroup=kind, showlegend=False), row=2, col=2)
        fig.add_trace(go.Scatter(x=[p.k for p in rows], y=[p.faith_auc_random for p in rows], mode="lines+markers",
                                 marker_symbol="circle-open", line_color=c, line_dash="dash", legendgroup=kind,
                                 showlegend=False), row=2, col=2)
    fig.update_xaxes(title_text="interpretability (mean best F1)", row=1, col=1)
    fig.update_yaxes(title_text="ΔCE (nats)", row=1, col=1)
    fig.update_xaxes(title_text="L0", row=1, col=2)
    fig.update_yaxes(title_text="FVU", row=1, col=2)
    fig.update_xaxes(title_text="latents in the probe (dotted: raw activation)", row=2, col=1)
    fig.update_yaxes(title_text="test accuracy", row=2, col=1)
    fig.update_xaxes(title_text="k (TopK)", row=2, col=2)
    fig.update_yaxes(title_text="AUC of explained drop", row=2, col=2)
    fig.update_layout(height=900, title="The seed paper's picture: reconstruction vs interpretability")
    return fig


def _picture_table(res: CompareResult) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in PictureRow.COLUMNS)
    body = []
    for p in picture_rows(res):
        vals = [getattr(p, c) for c in PictureRow.COLUMNS]
        cells = ["-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


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
    pic = picture_figure(res)
    if pic is not None:
        fig_html += "\n" + pio.to_html(pic, full_html=False, include_plotlyjs=False)
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
    if pic is not None:
        parts += ["<h2>Reconstruction vs interpretability, probing, faithfulness</h2>", _picture_table(res)]
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
    for name, fig in (("compare", _figure(res)), ("picture", picture_figure(res))):
        if fig is not None and (png := write_png(fig, out / f"{name}.png")) is not None:
            res.files[f"png_{name}"] = png
    return res.files


def write_png(fig, path: Path) -> str | None:
    """Write ``fig`` as a static PNG; None when plotly's image export is unavailable here."""
    try:
        fig.write_image(str(path), width=1200, height=900)
    except Exception as err:  # kaleido missing, or it cannot start its browser
        import logging

        logging.getLogger(__name__).info("no static PNG (%s): %s", path.name, err)
        return None
    return str(path)
