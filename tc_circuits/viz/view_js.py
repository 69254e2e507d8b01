"""The exploration layer of the graph view: data for the page's JavaScript, and the script.

The figure (:mod:`tc_circuits.viz.graph_view`) carries one set of traces per view (node
threshold x features / supernodes). :func:`view_payload` describes each view for the script:
its trace indices, nodes (key, kind, coordinates, size, colour, labels, numbers, dashboard
anchor) and candidate edges ``[source, target, weight, rank_out, rank_in, hover x, hover y]``.

The script (:data:`VIEW_JS`), run after plotly has drawn the figure:

* **click a node**: its upstream (every node with a drawn path into it) and downstream
  (every node it reaches by drawn edges) sets are drawn at full strength in three overlay
  traces, the rest of the view is dimmed; the node panel shows its value, activation,
  influence, top inputs / outputs and a link to its dashboard. Double-click or "clear" undoes;
* **pin**: the panel's "pin" adds the node to a pinned set; "show pinned subgraph" draws
  only the pinned nodes and every candidate edge between them;
* **edges per node**: a control re-selects the drawn edges with the rule of
  :mod:`tc_circuits.viz.edge_select` and redraws the view's edge traces;
* ``window.tcView[div id]`` exposes ``state`` (current view, highlighted keys, pinned keys)
  and ``select(key)`` for scripted checks (tests/browser_check.py).
"""

from __future__ import annotations

import html
import json

from tc_circuits.viz.graph_view import BANDS, NEG_COLOR, NODE_COLORS, POS_COLOR, DrawnView, GraphViewConfig


def view_payload(drawn: list[DrawnView], cfg: GraphViewConfig, n_traces: int,
                 anchors: set[str] | None = None) -> dict:
    """JSON-able description of every view for :data:`VIEW_JS`."""
    views = []
    for d in drawn:
        v = d.view
        where = {}
        for _kind, tr, idx in d.node_traces:
            for p, i in enumerate(idx):
                where[i] = (tr, p)
        nodes = []
        for i, n in enumerate(v.nodes):
            name = (f"L{int(n.layer)} #{n.latent} {d.full_labels[i]}" if n.kind == "feature"
                    else d.full_labels[i])
            anchor = f"feature-{int(n.layer)}-{n.latent}" if n.kind == "feature" else ""
            nodes.append(dict(
                k=n.key, kind=n.kind, x=d.xy[i][0], y=d.xy[i][1], size=d.sizes[i],
                color=NODE_COLORS.get(n.kind, "#888"), label=name, shown=d.label_pos[i] is not None,
                short=d.full_labels[i] if len(d.full_labels[i]) <= cfg.label_chars
                else d.full_labels[i][: cfg.label_chars - 1] + "…",
                tp=d.label_pos[i] or "top center", hover=d.hover[i],
                act=None if n.activation != n.activation else n.activation, infl=n.influence,
                t=where[i][0], p=where[i][1],
                dash=anchor if anchors is not None and anchor in anchors else "",
            ))
        views.append(dict(
            mode=d.mode, threshold=d.threshold, first=d.first_trace, nodes=nodes,
            edgeTraces=list(range(d.first_trace, d.first_trace + 2 * len(BANDS) + 1)),
            nodeTraces=[tr for _k, tr, _i in d.node_traces],
            edges=[[e.source, e.target, e.weight, e.rank_out, e.rank_in, hx, hy]
                   for e, (hx, hy) in zip(d.ranked, d.hover_xy or [(0.0, 0.0)] * len(d.ranked))],
        ))
    return dict(views=views, k=cfg.edges_per_node, kOptions=sorted(set(cfg.edge_options) | {cfg.edges_per_node}),
                targetInputs=cfg.target_inputs, bands=[list(b) for b in BANDS], pos=POS_COLOR, neg=NEG_COLOR,
                overlay=[n_traces - 3, n_traces - 2, n_traces - 1])


PANEL_CSS = """
.tcv-wrap { display: flex; gap: 12px; align-items: flex-start; }
.tcv-plot { overflow-x: auto; max-width: calc(100vw - 330px); order: 1; }
.tcv-panel { width: 290px; min-width: 290px; font: 12px system-ui, sans-serif; background: #fff;
             border: 1px solid #ddd; border-radius: 4px; padding: 8px; order: 2; }
.tcv-panel h3 { font-size: 13px; margin: 2px 0 6px 0; }
.tcv-panel table { border-collapse: collapse; width: 100%; }
.tcv-panel td { padding: 1px 3px; vertical-align: top; }
.tcv-panel button { font-size: 12px; margin: 2px 2px 2px 0; }
.tcv-panel .tcv-info { max-height: 520px; overflow-y: auto; }
.tcv-pos { color: rgb(31,79,191); } .tcv-neg { color: rgb(192,48,42); }
"""


def panel_html(div_id: str, cfg: GraphViewConfig) -> str:
    """The controls and node panel beside the figure."""
    opts = "".join(f"<option value='{k}'{' selected' if k == cfg.edges_per_node else ''}>{k}</option>"
                   for k in sorted(set(cfg.edge_options) | {cfg.edges_per_node}))
    d = html.escape(div_id)
    return (
        f"<div class='tcv-panel' id='{d}-panel'>"
        f"<div>edges per node <select id='{d}-k'>{opts}</select></div>"
        f"<div><button id='{d}-clear'>clear</button><button id='{d}-showpins'>show pinned subgraph</button>"
        f"<button id='{d}-unpin'>unpin all</button></div>"
        f"<div id='{d}-pins' style='color:#555'>pinned: none</div><hr>"
        f"<div class='tcv-info' id='{d}-info'>Click a node to trace its upstream and downstream paths.</div>"
        "</div>"
    )


VIEW_JS = r"""
(function () {
var DIV = '__DIV__';
var P = __PAYLOAD__;
var gd = document.getElementById(DIV);
var $ = function (s) { return document.getElementById(DIV + '-' + s); };
var S = {view: null, k: P.k, selected: null, up: [], down: [], highlighted: [], pinned: [], pinView: false};
window.tcView = window.tcView || {};
function currentView() {
  for (var i = 0; i < P.views.length; i++) {
    var tr = gd.data[P.views[i].nodeTraces[0]];
    if (tr && tr.visible !== false && tr.visible !== 'legendonly') return i;
  }
  return 0;
}
function drawnEdges(v, k) {
  var out = [];
  v.edges.forEach(function (e) {
    var kin = v.nodes[e[1]].kind === 'target' ? Math.max(k, P.targetInputs) : k;
    if (e[3] < k || e[4] < kin) out.push(e);
  });
  return out;
}
function redrawEdges(vi) {
  var v = P.views[vi], es = drawnEdges(v, S.k);
  var wmax = 0; es.forEach(function (e) { wmax = Math.max(wmax, Math.abs(e[2])); });
  wmax = wmax || 1;
  var xs = [], ys = [], hx = [], hy = [], ht = [];
  for (var t = 0; t < 2 * P.bands.length; t++) { xs.push([]); ys.push([]); }
  es.forEach(function (e) {
    var s = v.nodes[e[0]], d = v.nodes[e[1]], r = Math.abs(e[2]) / wmax;
    var b = 0; P.bands.forEach(function (band, j) { if (r >= band[0] && r < band[1]) b = j; });
    var t = (e[2] >= 0 ? 0 : P.bands.length) + b;
    xs[t].push(s.x, d.x, null); ys[t].push(s.y, d.y, null);
    hx.push(e[5]); hy.push(e[6]);
    ht.push(s.label + ' → ' + d.label + '<br>weight ' + e[2].toPrecision(4));
  });
  xs.push(hx); ys.push(hy);
  var texts = v.edgeTraces.map(function (_, j) { return j === v.edgeTraces.length - 1 ? ht : null; });
  Plotly.restyle(gd, {x: xs, y: ys, text: texts}, v.edgeTraces);
  return es;
}
function closure(es, start, up) {
  var adj = {}; es.forEach(function (e) {
    var a = up ? e[1] : e[0], b = up ? e[0] : e[1];
    (adj[a] = adj[a] || []).push(b);
  });
  var seen = {}, stack = [start], out = [];
  while (stack.length) {
    var n = stack.pop();
    (adj[n] || []).forEach(function (m) { if (!seen[m]) { seen[m] = 1; out.push(m); stack.push(m); } });
  }
  return out;
}
function setDim(vi, dim) {
  var v = P.views[vi], idx = v.edgeTraces.concat(v.nodeTraces);
  Plotly.restyle(gd, {opacity: dim ? 0.12 : 1}, idx);
}
function overlay(vi, nodeIdx, edges) {
  var v = P.views[vi], xp = [], yp = [], xn = [], yn = [];
  edges.forEach(function (e) {
    var s = v.nodes[e[0]], d = v.nodes[e[1]];
    if (e[2] >= 0) { xp.push(s.x, d.x, null); yp.push(s.y, d.y, null); }
    else { xn.push(s.x, d.x, null); yn.push(s.y, d.y, null); }
  });
  var ns = nodeIdx.map(function (i) { return v.nodes[i]; });
  Plotly.restyle(gd, {
    x: [xp, xn, ns.map(function (n) { return n.x; })], y: [yp, yn, ns.map(function (n) { return n.y; })],
    text: [null, null, ns.map(function (n) { return n.shown ? n.short : ''; })],
    textposition: [null, null, ns.map(function (n) { return n.tp; })],
    hovertext: [null, null, ns.map(function (n) { return n.hover; })],
    customdata: [null, null, ns.map(function (n) { return n.k; })],
    'marker.size': [null, null, ns.map(function (n) { return n.size; })],
    'marker.color': [null, null, ns.map(function (n) { return n.color; })]
  }, P.overlay);
  S.highlighted = ns.map(function (n) { return n.k; });
}
function fmt(x) { return x === null || x === undefined ? '–' : (+x).toPrecision(4); }
function esc(s) { var d = document.createElement('div'); d.textContent = s; return d.innerHTML; }
function panel(vi, i, es) {
  var v = P.views[vi], n = v.nodes[i];
  var ins = v.edges.filter(function (e) { return e[1] === i && e[4] < 6; });
  var outs = v.edges.filter(function (e) { return e[0] === i && e[3] < 6; });
  function rows(list, other) {
    return list.map(function (e) {
      return '<tr><td class="' + (e[2] >= 0 ? 'tcv-pos' : 'tcv-neg') + '">' + (e[2] >= 0 ? '+' : '') +
        e[2].toPrecision(3) + '</td><td>' + esc(v.nodes[e[other]].label) + '</td></tr>';
    }).join('') || '<tr><td>none</td></tr>';
  }
  var dash = n.dash ? '<p><a href="#' + n.dash + '" data-dash="' + n.dash + '">open its dashboard ↓</a></p>' : '';
  $('info').innerHTML = '<h3>' + esc(n.label) + '</h3><div>' + n.hover + '</div>' +
    '<table><tr><td>activation</td><td>' + fmt(n.act) + '</td></tr><tr><td>influence</td><td>' + fmt(n.infl) +
    '</td></tr><tr><td>upstream</td><td>' + S.up.length + ' nodes</td></tr><tr><td>downstream</td><td>' +
    S.down.length + ' nodes</td></tr></table>' +
    '<p><b>top inputs</b></p><table>' + rows(ins, 0) + '</table><p><b>top outputs</b></p><table>' +
    rows(outs, 1) + '</table>' + dash + '<button id="' + DIV + '-pin">pin this node</button>';
  $('pin').onclick = function () { if (S.pinned.indexOf(n.k) < 0) S.pinned.push(n.k); showPins(); };
  var a = $('info').querySelector('a[data-dash]');
  if (a) a.onclick = function (ev) {
    var el = document.getElementById(n.dash); if (!el) return;
    ev.preventDefault(); el.scrollIntoView({behavior: 'smooth'}); el.classList.add('flash');
    setTimeout(function () { el.classList.remove('flash'); }, 1500);
  };
}
function showPins() { $('pins').textContent = 'pinned: ' + (S.pinned.length ? S.pinned.length + ' nodes (' + S.pinned.join(', ') + ')' : 'none'); }
function select(key) {
  var vi = currentView(), v = P.views[vi];
  var i = -1; v.nodes.forEach(function (n, j) { if (n.k === key) i = j; });
  if (i < 0) return false;
  var es = drawnEdges(v, S.k);
  S.view = vi; S.selected = key; S.pinView = false;
  var up = closure(es, i, true), down = closure(es, i, false);
  S.up = up.map(function (j) { return v.nodes[j].k; }); S.down = down.map(function (j) { return v.nodes[j].k; });
  var on = {}; on[i] = 1; up.forEach(function (j) { on[j] = 1; }); down.forEach(function (j) { on[j] = 1; });
  var onEdges = es.filter(function (e) {
    return (on[e[0]] && on[e[1]]) && ((up.indexOf(e[0]) >= 0 || e[0] === i) && (up.indexOf(e[1]) >= 0 || e[1] === i) ||
           (down.indexOf(e[0]) >= 0 || e[0] === i) && (down.indexOf(e[1]) >= 0 || e[1] === i));
  });
  setDim(vi, true);
  overlay(vi, Object.keys(on).map(Number), onEdges);
  panel(vi, i, es);
  return true;
}
function clear() {
  var vi = S.view === null ? currentView() : S.view;
  setDim(vi, false); overlay(vi, [], []);
  S.selected = null; S.up = []; S.down = []; S.pinView = false;
  $('info').innerHTML = 'Click a node to trace its upstream and downstream paths.';
}
function showPinned() {
  var vi = currentView(), v = P.views[vi], on = {};
  v.nodes.forEach(function (n, j) { if (S.pinned.indexOf(n.k) >= 0) on[j] = 1; });
  var es = v.edges.filter(function (e) { return on[e[0]] && on[e[1]]; });
  S.view = vi; S.pinView = true; setDim(vi, true); overlay(vi, Object.keys(on).map(Number), es);
}
gd.on('plotly_click', function (ev) {
  var pt = ev.points && ev.points[0];
  if (!pt || !pt.data || typeof pt.customdata !== 'string' || !pt.customdata) return;
  select(pt.customdata);
});
gd.on('plotly_doubleclick', clear);
function onViewChange() {
  var vi = currentView();
  if (S.view !== null && S.view !== vi) { setDim(S.view, false); overlay(S.view, [], []); S.selected = null; }
  S.view = vi; redrawEdges(vi);
}
gd.on('plotly_sliderchange', function () { setTimeout(onViewChange, 0); });
gd.on('plotly_buttonclicked', function () { setTimeout(onViewChange, 0); });
$('k').onchange = function () { S.k = +this.value; var vi = currentView(); redrawEdges(vi); if (S.selected) select(S.selected); };
$('clear').onclick = clear;
$('showpins').onclick = showPinned;
$('unpin').onclick = function () { S.pinned = []; showPins(); if (S.pinView) clear(); };
S.view = currentView();
window.tcView[DIV] = {state: S, payload: P, select: select, clear: clear, showPinned: showPinned,
                      drawnEdges: function () { return drawnEdges(P.views[currentView()], S.k); },
                      currentView: currentView, setK: function (k) { S.k = k; redrawEdges(currentView()); }};
})();
"""


def view_script(div_id: str, payload: dict) -> str:
    """The script for the figure in ``div_id`` (goes in plotly's ``post_script``)."""
    data = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    return VIEW_JS.replace("__DIV__", div_id).replace("__PAYLOAD__", data)
