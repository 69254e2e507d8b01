"""Graph views opened in headless Chromium and measured as a person would look at them.

For the greater-than prompt (the demo's graph), an induction prompt, a 200-token prompt and
a prompt-set view (positions named by role), each on the bundled organism: no two visible
labels overlap, every drawn node has a drawn edge, every target a drawn input, no JavaScript
error; a mouse click on a feature highlights exactly the nodes upstream and downstream of it
along the drawn edges (computed here in Python from the view's edges) and dims the rest.
Screenshots go to ``out/browser_check/`` (set ``TC_SCREENSHOTS=0`` to skip them).
Skipped when no Chromium is installed (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, "tests")
from browser_check import build_demo_page, check_page, find_chromium, screenshot  # noqa: E402

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")

GT_PROMPT = "The war lasted from the year 1732 to the year 17"
INDUCTION_PROMPT = "The large farmer took the fish. The large farmer took the"


def test_demo_page_renders_in_headless_chromium(tmp_path):
    page, n_nodes = build_demo_page(tmp_path / "demo.html")
    result = check_page(page)
    assert result.ok, result.problems
    assert result.measure["n_nodes"] == n_nodes
    assert result.measure["has_slider"]


@pytest.fixture(scope="module")
def organism():
    from tc_circuits.organism import load_organism, load_organism_transcoders

    model = load_organism()
    return model, load_organism_transcoders("skip_transcoder", model=model)


def _graph(organism, which):
    import torch

    from tc_circuits.attribution import attribute, direction_target
    from tc_circuits.organism import organism_token_source
    from tc_circuits.tasks.greater_than import GreaterThanConfig, GreaterThanTask

    model, tcs = organism
    if which == "greater_than":
        task = GreaterThanTask.from_tokenizer(model.tokenizer, GreaterThanConfig(nouns=("war",), yy_min=32, yy_max=32))
        target = direction_target(task.direction(model.cfg.d_vocab)[0], label="P(YY>32) - P(YY<=32)")
        with torch.no_grad():
            metric = {"P(YY>32) - P(YY<=32)": float(task.metric(model(task.tokens)))}
        return attribute(model, tcs, GT_PROMPT, targets=[target], progress=False), metric
    if which == "induction":
        return attribute(model, tcs, INDUCTION_PROMPT, progress=False, max_n_logits=5), None
    tokens = next(organism_token_source(5, 1, 200, tokenizer=model.tokenizer))[0]
    return attribute(model, tcs, tokens, progress=False, max_feature_nodes=300, max_n_logits=3), None


def _closure(edges, start, up):
    adj: dict[int, list[int]] = {}
    for e in edges:
        a, b = (e.target, e.source) if up else (e.source, e.target)
        adj.setdefault(a, []).append(b)
    seen, stack = set(), [start]
    while stack:
        for m in adj.get(stack.pop(), []):
            if m not in seen:
                seen.add(m)
                stack.append(m)
    return seen


@pytest.mark.parametrize("which", ["greater_than", "induction", "long_200", "prompt_set"])
def test_organism_views_measured_in_chromium(organism, which, tmp_path):
    from tc_circuits.viz import GraphViewConfig, graph_view, prompt_set_view

    model, tcs = organism
    graph, metric = _graph(organism, "greater_than" if which == "prompt_set" else which)
    thresholds = (0.8,) if which == "long_200" else (0.6, 0.8, 0.9)
    cfg = GraphViewConfig(node_thresholds=thresholds, default_threshold=0.8)
    if which == "prompt_set":
        roles = ["bos", "the", "noun", "verb", "from", "the", "year", "start century", "start year", "to",
                 "the", "year", "last token"]
        view = prompt_set_view(graph, roles=roles, model=model, transcoders=tcs, cfg=cfg, static_image=False)
        assert "start year" in view.figure.layout.xaxis.ticktext
    else:
        view = graph_view(graph, model=model, transcoders=tcs, cfg=cfg, metric=metric, static_image=False)
    page = view.write_html(tmp_path / f"{which}.html")
    d = next(d for d in view.drawn if d.mode == "features" and d.threshold == 0.8)
    # the node to click: the most influential feature with a drawn input and output
    has_in, has_out = {e.target for e in d.drawn}, {e.source for e in d.drawn}
    feats = [i for i, n in enumerate(d.view.nodes) if n.kind == "feature" and i in has_in and i in has_out]
    click = max(feats, key=lambda i: d.view.nodes[i].influence)
    key = d.view.nodes[click].key
    result = check_page(page, click=key, size=f"{int(view.figure.layout.width) + 400},1300")
    m = result.measure
    assert result.ok, result.problems
    assert result.js_errors == []
    assert m["n_nodes"] == len(d.view.nodes)
    assert m["n_labels"] >= min(10, len(d.view.nodes))
    assert m["label_overlaps"] == 0, m["overlap_examples"]
    assert m["nodes_without_edge"] == []
    assert m["targets"] >= 1 and m["targets_without_input"] == []
    up, down = _closure(d.drawn, click, True), _closure(d.drawn, click, False)
    want = {d.view.nodes[i].key for i in up | down | {click}}
    c = result.click
    assert c["selected"] == key, c
    assert set(c["highlighted"]) == want
    assert c["overlay_points_dom"] == len(want)  # exactly these markers drawn on top
    assert set(c["up"]) == {d.view.nodes[i].key for i in up} and set(c["down"]) == {d.view.nodes[i].key for i in down}
    assert c["dimmed_traces"] >= 2  # the rest of the view is dimmed
    assert "top inputs" in c["panel"] and "activation" in c["panel"]
    if os.environ.get("TC_SCREENSHOTS", "1") != "0":
        out = Path("out/browser_check")
        out.mkdir(parents=True, exist_ok=True)
        size = f"{int(view.figure.layout.width) + 340},1000"
        screenshot(page, out / f"{which}.png", size=size)
        screenshot(page, out / f"{which}-click.png", size=size, do_click=True, click=key)


def test_pinned_subgraph_and_edges_per_node_control(organism, tmp_path):
    from tc_circuits.viz import GraphViewConfig, graph_view

    graph, _ = _graph(organism, "greater_than")
    cfg = GraphViewConfig(node_thresholds=(0.8,), supernode_threshold=None)
    view = graph_view(graph, cfg=cfg, static_image=False)
    page = view.write_html(tmp_path / "pin.html")
    result = check_page(page, pin=True, set_k=1, size=f"{int(view.figure.layout.width) + 400},1300")
    assert result.ok, result.problems
    c = result.click
    pinned = [c["selected"]] + c["up"][:3]
    assert sorted(result.pinned) == sorted(pinned)
    # the edges-per-node control applies the same rule as Python's select_edges
    from tc_circuits.viz.edge_select import select_edges

    d = view.drawn[0]
    assert result.k_edges == len(select_edges(d.view, d.ranked, 1, cfg.target_inputs)) < len(d.drawn)
    assert result.k_nodes_without_edge == 0


def test_supernode_view_measured_after_pressing_its_button(organism, tmp_path):
    from tc_circuits.viz import GraphViewConfig, graph_view

    model, tcs = organism
    graph, metric = _graph(organism, "greater_than")
    view = graph_view(graph, model=model, transcoders=tcs, cfg=GraphViewConfig(node_thresholds=(0.8,)),
                      metric=metric, static_image=False)
    d = next(d for d in view.drawn if d.mode == "supernodes")
    assert any(n.kind == "supernode" for n in d.view.nodes)
    page = view.write_html(tmp_path / "sn.html")
    has_in, has_out = {e.target for e in d.drawn}, {e.source for e in d.drawn}
    click = max((i for i, n in enumerate(d.view.nodes) if n.kind == "supernode" and i in has_in and i in has_out),
                key=lambda i: d.view.nodes[i].influence)
    size = f"{int(d.layout.width) + 400},1300"
    result = check_page(page, button=1, click=d.view.nodes[click].key, size=size)
    assert result.ok, result.problems
    assert result.button == "supernodes"
    m = result.measure
    assert m["n_nodes"] == len(d.view.nodes)
    assert m["label_overlaps"] == 0 and m["nodes_without_edge"] == [] and m["targets_without_input"] == []
    want = {d.view.nodes[i].key for i in _closure(d.drawn, click, True) | _closure(d.drawn, click, False) | {click}}
    assert set(result.click["highlighted"]) == want
    if os.environ.get("TC_SCREENSHOTS", "1") != "0":
        out = Path("out/browser_check")
        out.mkdir(parents=True, exist_ok=True)
        screenshot(page, out / "supernodes-click.png", size=f"{int(d.layout.width) + 340},1000", button=1,
                   do_click=True, click=d.view.nodes[click].key)
