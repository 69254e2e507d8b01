"""Open a graph-view page in headless Chromium, as a person would, and measure what it shows.

    python tests/browser_check.py [PAGE.html] [--screenshot shot.png] [--click KEY]

Without a page, a demo page is built from a tiny random model. A measuring script is added
to a copy of the page; after plotly has drawn, it reads the browser's DOM and plotly's own
state and writes JSON into the DOM, which ``--dump-dom`` returns:

* ``label_overlaps``: pairs of visible node labels (SVG ``text`` of the drawn traces) whose
  on-screen boxes intersect;
* ``nodes_without_edge`` / ``targets_without_input``: node markers of the visible traces
  that no drawn edge segment touches (an input of a target = a segment ending at the target
  from a lower row);
* ``js_errors``: errors caught by ``window.onerror`` plus Chromium's "Uncaught" log lines;
* a click: mouse events at the screen position of a node (``--click KEY``, default the most
  influential feature with both inputs and outputs), then the keys drawn in the highlight
  overlay and how many of its points are in the DOM.

Needs ``chromium`` (Debian: ``apt-get install -y chromium``); tests/test_viz_browser.py runs
the checks and is skipped when it is missing.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome executable, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium not found (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=15000", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


ERRORS_JS = "<script>window.__tcErrors=[];window.addEventListener('error',function(e){window.__tcErrors.push(String(e.message))});</script>"

MEASURE_JS = r"""
<script>
(function () {
function rect(el) { var r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }
function overlap(a, b) { return Math.min(a[2], b[2]) - Math.max(a[0], b[0]) > 0.5 && Math.min(a[3], b[3]) - Math.max(a[1], b[1]) > 0.5; }
function measure(gd) {
  var out = {};
  // labels: SVG text of the visible traces
  var labels = [];
  gd.querySelectorAll('.scatterlayer .trace').forEach(function (tr) {
    if (tr.style.opacity === '0' || tr.getAttribute('display') === 'none') return;
    tr.querySelectorAll('.textpoint text').forEach(function (t) {
      if (t.textContent.trim() && t.getBBox().width > 0) labels.push({text: t.textContent, box: rect(t)});
    });
  });
  var pairs = [];
  for (var i = 0; i < labels.length; i++) for (var j = i + 1; j < labels.length; j++)
    if (overlap(labels[i].box, labels[j].box)) pairs.push([labels[i].text, labels[j].text]);
  out.n_labels = labels.length; out.label_overlaps = pairs.length; out.overlap_examples = pairs.slice(0, 5);
  out.labels = labels.map(function (l) { return l.text; });
  // nodes and drawn edge segments from plotly's state of the visible traces
  var key = function (x, y) { return x.toFixed(2) + ',' + y.toFixed(2); };
  var ends = {}, inputs = {};
  var nodes = [];
  gd.data.forEach(function (tr) {
    if (tr.visible === false || !tr.name) return;
    if (tr.mode === 'lines' && tr.name === 'edge lines') {
      for (var i = 0; i + 1 < tr.x.length; i += 3) {
        var a = key(tr.x[i], tr.y[i]), b = key(tr.x[i + 1], tr.y[i + 1]);
        ends[a] = 1; ends[b] = 1;
        if (tr.y[i] < tr.y[i + 1]) inputs[b] = 1; else if (tr.y[i + 1] < tr.y[i]) inputs[a] = 1;
      }
    } else if (tr.mode === 'markers+text' && tr.name.indexOf('highlight') < 0) {
      for (var k = 0; k < tr.x.length; k++) nodes.push({kind: tr.name, k: tr.customdata[k], at: key(tr.x[k], tr.y[k])});
    }
  });
  out.n_nodes = nodes.length;
  out.n_segments = Object.keys(ends).length;
  out.nodes_without_edge = nodes.filter(function (n) { return !ends[n.at]; }).map(function (n) { return n.k; });
  out.targets = nodes.filter(function (n) { return n.kind === 'target'; }).length;
  out.targets_without_input = nodes.filter(function (n) { return n.kind === 'target' && !inputs[n.at]; }).map(function (n) { return n.k; });
  out.n_points_dom = gd.querySelectorAll('.scatterlayer .point').length;
  out.has_slider = !!gd.querySelector('.slider-container');
  out.width = gd.getBoundingClientRect().width;
  return out;
}
function click(gd, key) {
  // a real mouse click at the node's marker on screen
  var found = null;
  gd.querySelectorAll('.scatterlayer .trace').forEach(function (tr) {
    var td = tr.__data__ && tr.__data__[0] && tr.__data__[0].trace;
    if (!td || td.visible === false || td.mode !== 'markers+text' || !td.customdata) return;
    var pts = tr.querySelectorAll('.point');
    td.customdata.forEach(function (k, i) { if (k === key && pts[i]) found = pts[i]; });
  });
  if (!found) return {clicked: false, why: 'no marker for ' + key};
  found.scrollIntoView({block: 'center', inline: 'center'});
  var r = found.getBoundingClientRect(), x = (r.left + r.right) / 2, y = (r.top + r.bottom) / 2;
  var target = document.elementFromPoint(x, y) || gd;
  ['mousemove', 'mousedown', 'mouseup', 'click'].forEach(function (type) {
    target.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true, clientX: x, clientY: y, view: window, buttons: type === 'mousedown' ? 1 : 0}));
  });
  var dbg = {target: target.tagName + '.' + (target.getAttribute('class') || ''), hover: (gd._hoverdata || []).map(function (p) { return p.customdata; })};
  var api = window.tcView && window.tcView[gd.id];
  var hl = gd.data[gd.data.length - 1];
  var dimmed = gd.data.filter(function (t) { return t.visible !== false && t.opacity === 0.12; }).length;
  return {clicked: true, at: [x, y], dbg: dbg, selected: api ? api.state.selected : null,
          highlighted: (hl.customdata || []).slice(), up: api ? api.state.up.slice() : [],
          down: api ? api.state.down.slice() : [], dimmed_traces: dimmed,
          overlay_points_dom: gd.querySelectorAll('.scatterlayer .trace:last-child .point').length,
          panel: (document.getElementById(gd.id + '-info') || {}).textContent || ''};
}
function run() {
  var gd = document.querySelector('.js-plotly-plot');
  var res = {errors: window.__tcErrors || []};
  if (!gd) { res.errors.push('no plotly div'); return res; }
  try {
    res.button = window.__tcButton || null;
    res.measure = measure(gd);
    var api = window.tcView && window.tcView[gd.id];
    var key = __CLICK__;
    if (!key && api) {
      var v = api.payload.views[api.currentView()], es = api.drawnEdges(), hasIn = {}, hasOut = {};
      es.forEach(function (e) { hasOut[e[0]] = 1; hasIn[e[1]] = 1; });
      var best = -1;
      v.nodes.forEach(function (n, i) { if (n.kind === 'feature' && hasIn[i] && hasOut[i] && (best < 0 || n.infl > v.nodes[best].infl)) best = i; });
      key = best >= 0 ? v.nodes[best].k : null;
    }
    if (key && __DO_CLICK__) res.click = click(gd, key);
    if (__SETK__ > 0 && api) {  // the edges-per-node control: redraw, then count the drawn edges
      api.setK(__SETK__);
      var n = 0;
      gd.data.forEach(function (tr) { if (tr.visible !== false && tr.name === 'edge lines') n += tr.x.filter(function (x) { return x === null; }).length; });
      res.k_edges = n;
      res.k_nodes_without_edge = measure(gd).nodes_without_edge.length;
    }
    if (__PIN__ && api && key) { api.state.pinned = [key].concat(api.state.up.slice(0, 3)); api.showPinned(); res.pinned = api.state.highlighted.slice(); }
  } catch (e) { res.errors.push('measure: ' + e); }
  return res;
}
function pressButton() {  // press a button of the figure (features / supernodes) like a person
  var gd = document.querySelector('.js-plotly-plot');
  var btn = gd && gd.querySelectorAll('.updatemenu-button')[__BUTTON__];
  if (!btn) { (window.__tcErrors = window.__tcErrors || []).push('no button ' + __BUTTON__); return; }
  ['mousedown', 'mouseup', 'click'].forEach(function (type) { btn.dispatchEvent(new MouseEvent(type, {bubbles: true, view: window})); });
  window.__tcButton = btn.textContent;
}
window.addEventListener('load', function () {
  if (__BUTTON__ >= 0) setTimeout(pressButton, 400);
  setTimeout(function () {
    var pre = document.createElement('pre'); pre.id = 'tc-check'; pre.style.display = 'none';
    pre.textContent = JSON.stringify(run());
    document.body.insertBefore(pre, document.body.firstChild);
    if (__SCROLL_TOP__) window.scrollTo(0, 0);
  }, __BUTTON__ >= 0 ? 1600 : 800);
});
})();
</script>
"""


def instrumented(page: str | Path, out: str | Path, *, click: str | None = None, do_click: bool = True,
                 pin: bool = False, set_k: int = 0, button: int = -1) -> Path:
    """A copy of ``page`` with the error catcher and the measuring script added."""
    text = Path(page).read_text(encoding="utf-8")
    js = (MEASURE_JS.replace("__CLICK__", json.dumps(click)).replace("__DO_CLICK__", "true" if do_click else "false")
          .replace("__PIN__", "true" if pin else "false").replace("__SETK__", str(int(set_k))).replace("__BUTTON__", str(int(button))).replace("__SCROLL_TOP__", "true"))
    text = text.replace("<head>", "<head>" + ERRORS_JS, 1)
    text = text.replace("</body>", js + "</body>", 1) if "</body>" in text else text + js
    out = Path(out)
    out.write_text(text, encoding="utf-8")
    return out


class BrowserResult(NamedTuple):
    """What Chromium saw."""

    ok: bool
    """Rendered, measured, no JavaScript error."""
    problems: list[str]
    """Why not (empty when ok)."""
    measure: dict
    """The measurements (see the module docstring)."""
    click: dict | None
    """What the click highlighted."""
    js_errors: list[str]
    """JavaScript errors (window.onerror and Chromium's log)."""
    pinned: list[str] | None = None
    """Keys drawn in the pinned-subgraph view (when asked)."""
    k_edges: int | None = None
    """Edges drawn after setting the edges-per-node control to ``set_k`` (when asked)."""
    k_nodes_without_edge: int | None = None
    """Nodes without a drawn edge after that."""
    button: str | None = None
    """Text of the figure button pressed before measuring (when asked)."""


def check_page(page: str | Path, *, click: str | None = None, do_click: bool = True, pin: bool = False,
               set_k: int = 0, button: int = -1, size: str = "2600,1400", timeout: float = 120.0) -> BrowserResult:
    """Open an instrumented copy of ``page`` in headless Chromium and return the measurements."""
    page = Path(page)
    with tempfile.TemporaryDirectory() as tmp:
        copy = instrumented(page, Path(tmp) / page.name, click=click, do_click=do_click, pin=pin, set_k=set_k, button=button)
        proc = _chromium([f"--window-size={size}", "--dump-dom", copy.resolve().as_uri()], timeout)
    dom, log = proc.stdout, proc.stderr
    errors = [line for line in log.splitlines() if "Uncaught" in line]
    m = re.search(r'<pre id="tc-check"[^>]*>(.*?)</pre>', dom, re.S)
    problems = []
    if not m:
        return BrowserResult(False, ["the measuring script wrote nothing (page did not load?)"], {}, None, errors)
    import html as _html

    res = json.loads(_html.unescape(m.group(1)))
    errors += res.get("errors", [])
    measure = res.get("measure", {})
    if errors:
        problems.append(f"JavaScript errors: {errors[:3]}")
    if 'class="scatterlayer' not in dom:
        problems.append("no plotly scatterlayer in the DOM (the graph did not render)")
    return BrowserResult(not problems, problems, measure, res.get("click"), errors, res.get("pinned"), res.get("k_edges"),
                         res.get("k_nodes_without_edge"), res.get("button"))


def screenshot(page: str | Path, out: str | Path, *, size: str = "1500,1100", click: str | None = None,
               do_click: bool = False, pin: bool = False, button: int = -1, timeout: float = 120.0) -> Path:
    """PNG screenshot of the page's first screen (optionally after the click / pinning)."""
    out = Path(out).resolve()
    page = Path(page)
    with tempfile.TemporaryDirectory() as tmp:
        copy = instrumented(page, Path(tmp) / page.name, click=click, do_click=do_click, pin=pin, button=button)
        _chromium([f"--screenshot={out}", f"--window-size={size}", copy.resolve().as_uri()], timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


def build_demo_page(out: str | Path) -> tuple[Path, int]:
    """A page from a tiny random model; returns (path, nodes in the default view)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from attribution_helpers import make_transcoders
    from conftest import make_tiny_model

    from tc_circuits.attribution import attribute
    from tc_circuits.viz import DashboardConfig, GraphViewConfig, write_graph_page

    model = make_tiny_model(n_layers=3)
    tcs = make_transcoders(model, n_latents=32, k=4)
    prompt = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(0))
    graph = attribute(model, tcs, prompt, progress=False, max_n_logits=4)
    gen = torch.Generator().manual_seed(1)
    corpus = [torch.randint(0, 50, (8, 16), generator=gen) for _ in range(4)]
    cfg = GraphViewConfig()
    path = write_graph_page(out, graph, model=model, transcoders=tcs, token_source=corpus, view_cfg=cfg,
                            dashboard_cfg=DashboardConfig(max_batches=4), progress=False)
    from tc_circuits.viz.interactive import graph_view

    view = graph_view(graph, model=model, transcoders=tcs, cfg=cfg, static_image=False)
    d = next(d for d in view.drawn if d.mode == "features" and d.threshold == cfg.default_threshold)
    return path, len(d.view.nodes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", help="HTML page (default: build a demo page)")
    parser.add_argument("--screenshot", help="also write PNG screenshots here (NAME.png and NAME-click.png)")
    parser.add_argument("--click", help="node id to click (default: the most influential feature)")
    args = parser.parse_args(argv)
    page = args.page
    if page is None:
        page, _ = build_demo_page(Path(tempfile.mkdtemp()) / "demo.html")
        print(f"demo page: {page}")
    result = check_page(page, click=args.click)
    m = result.measure
    print(json.dumps({k: m.get(k) for k in ("n_nodes", "n_labels", "label_overlaps", "nodes_without_edge",
                                            "targets", "targets_without_input", "n_points_dom")}))
    if result.click:
        c = result.click
        print(f"clicked {c.get('selected')}: {len(c.get('highlighted', []))} highlighted "
              f"({len(c.get('up', []))} upstream, {len(c.get('down', []))} downstream)")
    if args.screenshot:
        shot = Path(args.screenshot)
        print(f"screenshot: {screenshot(page, shot)}")
        print(f"screenshot: {screenshot(page, shot.with_name(shot.stem + '-click.png'), do_click=True, click=args.click)}")
    for p in result.problems:
        print(f"FAIL: {p}")
    bad = m.get("label_overlaps", 1) or m.get("nodes_without_edge") or m.get("targets_without_input")
    print("OK" if result.ok and not bad else "FAILED")
    return 0 if result.ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
