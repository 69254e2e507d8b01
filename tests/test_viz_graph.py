"""Graph view and supernodes on a hand-made AttributionGraph and on one built by the engine."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from tc_circuits.graph import AttributionGraph, NodeTable, prune_graph
from tc_circuits.viz.feature_weights import direct_logit_effects
from tc_circuits.viz.graph_view import GraphViewConfig, edge_traces, graph_figure, write_figure_html
from tc_circuits.viz.layout import Geometry, columns, layout_positions
from tc_circuits.viz.supernodes import ViewEdge, ViewGraph, ViewNode, agglomerate, auto_supernodes, group_nodes, view_graph


def hand_graph() -> AttributionGraph:
    """2 layers, 3 positions. f0, f1 (L0, pos 1) play the same role; f2 (L1, pos 2)."""
    feats = NodeTable.make("feature", 3, layer=torch.tensor([0, 0, 1]), pos=torch.tensor([1, 1, 2]),
                           latent=torch.tensor([5, 6, 7]), activation=torch.tensor([1.0, 0.5, 2.0]))
    errs = NodeTable.make("error", 6, layer=torch.tensor([0, 0, 0, 1, 1, 1]), pos=torch.tensor([0, 1, 2] * 2))
    embs = NodeTable.make("embedding", 3, pos=torch.arange(3), token_id=torch.tensor([3, 4, 5]))
    const = NodeTable.make("constant", 1)
    tgt = NodeTable.make("target", 1, pos=2, token_id=9)
    nodes = NodeTable.concat([feats, errs, embs, const, tgt])
    nodes.expanded[[0, 1, 2, 13]] = True
    # indices: f0 0, f1 1, f2 2, errors 3..8, emb 9..11, const 12, target 13
    edges = [(0, 10, 1.0), (1, 10, 0.5), (2, 0, 2.0), (2, 1, 1.0), (13, 2, 3.0), (13, 0, -1.0),
             (13, 1, -0.5), (2, 11, 0.2), (13, 8, 0.1)]
    t, s, w = zip(*edges)
    return AttributionGraph(
        nodes=nodes, edge_target=torch.tensor(t), edge_source=torch.tensor(s),
        edge_weight=torch.tensor(w, dtype=torch.float32), target_weights=torch.tensor([1.0]),
        target_labels=["logit ' x'"], prompt_tokens=torch.tensor([3, 4, 5]),
        prompt_strings=["a", " b", " c"], prompt="a b c", metadata={"n_layers": 2, "d_vocab": 10},
    )


def test_view_graph_keeps_pruned_nodes_and_edges():
    g = hand_graph()
    pr = prune_graph(g, node_threshold=1.0, edge_threshold=1.0)
    v = view_graph(g, pr)
    assert len(v.nodes) == int(pr.node_mask.sum())
    assert len(v.edges) == int(pr.edge_mask.sum())
    idx = v.index()
    f0, f2, tgt = idx["0_5_1"], idx["1_7_2"], idx["3_9_2"]
    w = {(e.source, e.target): e.weight for e in v.edges}
    assert w[(f0, f2)] == pytest.approx(2.0) and w[(f0, tgt)] == pytest.approx(-1.0)
    assert v.nodes[tgt].layer == 2 and v.nodes[idx["E_4_1"]].layer == -1
    assert v.nodes[tgt].label == "' x'"
    assert v.nodes[f0].influence == pytest.approx(float(pr.node_influence[0]))


def test_group_nodes_sums_edges_and_influence():
    g = hand_graph()
    v = view_graph(g, prune_graph(g, 1.0, 1.0))
    merged = group_nodes(v, {"pair": ["0_5_1", "0_6_1"]})
    assert len(merged.nodes) == len(v.nodes) - 1
    idx = merged.index()
    sn = merged.nodes[idx["pair"]]
    assert sn.kind == "supernode" and sorted(sn.members) == ["0_5_1", "0_6_1"]
    assert sn.activation == pytest.approx(1.5)
    assert sn.influence == pytest.approx(v.nodes[v.index()["0_5_1"]].influence + v.nodes[v.index()["0_6_1"]].influence)
    w = {(merged.nodes[e.source].key, merged.nodes[e.target].key): e.weight for e in merged.edges}
    assert w[("pair", "1_7_2")] == pytest.approx(3.0)  # 2.0 + 1.0
    assert w[("pair", "3_9_2")] == pytest.approx(-1.5)
    assert w[("E_4_1", "pair")] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="two supernodes"):
        group_nodes(v, {"a": ["0_5_1"], "b": ["0_5_1"]})


def test_auto_supernodes_groups_same_role_features():
    g = hand_graph()
    v = view_graph(g, prune_graph(g, 1.0, 1.0))
    groups = auto_supernodes(v, threshold=0.99)
    assert list(groups.values()) == [["0_5_1", "0_6_1"]]  # proportional outgoing edges
    assert list(groups) == ["p1 L0 x2"]


def test_agglomerate_average_linkage():
    vecs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=torch.float64)
    clusters = sorted(sorted(c) for c in agglomerate(vecs, 0.9))
    assert clusters == [[0, 1], [2, 3]]
    assert len(agglomerate(vecs, -1.0)) == 1
    # average linkage: cos(a,c)=0, cos(b,c)~0.11 -> merged at threshold 0 but not 0.2
    assert len(agglomerate(vecs[[0, 1, 2]], 0.2)) == 2


def test_layout_columns_grow_with_features_and_cells_do_not_overlap():
    nodes = [ViewNode("e0", "embedding", -1, 0), ViewNode("e1", "embedding", -1, 1), ViewNode("e2", "embedding", -1, 2),
             ViewNode("b", "constant", -1, -1), ViewNode("t", "target", 2, 2)]
    nodes += [ViewNode(f"f{j}", "feature", 0, 2, latent=j, influence=float(j)) for j in range(5)]
    nodes += [ViewNode("g", "feature", 1, 1, latent=9, influence=1.0)]
    view = ViewGraph(nodes=nodes, edges=[ViewEdge(0, 5, 1.0)], prompt_strings=["x", "y", "z"], n_layers=2)
    geo = Geometry()
    cx, cw, total = columns([view], geo)
    assert cw[0] == geo.min_column  # no node but the embedding: narrow
    assert cw[1] == geo.pitch * 1 + geo.gap and cw[2] == geo.pitch * 5 + geo.gap  # grows with the features
    assert total == pytest.approx(sum(cw.values()))
    assert cx[-1] < cx[0] < cx[1] < cx[2]
    xy = layout_positions(view, cx, geo)
    assert [y for _, y in xy[:5]] == [0, 0, 0, 0, 3]
    cell = sorted(x for x, y in xy[5:10])
    assert all(b - a == pytest.approx(geo.pitch) for a, b in zip(cell, cell[1:]))  # side by side
    assert sum(cell) / 5 == pytest.approx(cx[2])  # centred in the column
    assert xy[9][0] == pytest.approx(cx[2])  # the most influential in the middle
    assert cx[2] - cw[2] / 2 < cell[0] and cell[-1] < cx[2] + cw[2] / 2  # inside its column


def test_edges_per_node_rule_matches_a_brute_force_choice():
    from tc_circuits.viz.edge_select import rank_edges, select_edges

    gen = torch.Generator().manual_seed(0)
    n = 12
    nodes = [ViewNode(str(i), "target" if i == n - 1 else "feature", 0, i) for i in range(n)]
    edges = [ViewEdge(s, t, float(torch.randn(1, generator=gen))) for s in range(n) for t in range(s + 1, n)
             if torch.rand(1, generator=gen) < 0.5]
    view = ViewGraph(nodes, edges, [str(i) for i in range(n)], 1)
    for k, k_t in ((1, 1), (2, 5), (3, 4)):
        got = {(e.source, e.target) for e in select_edges(view, rank_edges(view), k, k_t)}
        want = set()
        for i in range(n):
            outs = sorted((e for e in edges if e.source == i), key=lambda e: -abs(e.weight))[:k]
            ins = sorted((e for e in edges if e.target == i), key=lambda e: -abs(e.weight))[: (max(k, k_t) if i == n - 1 else k)]
            want |= {(e.source, e.target) for e in outs + ins}
        assert got == want
        touched = {s for s, _ in got} | {t for _, t in got}
        assert touched == {e.source for e in edges} | {e.target for e in edges}  # every node keeps an edge
    with pytest.raises(ValueError, match="edges per node"):
        select_edges(view, rank_edges(view), 0, 1)


def test_place_labels_never_overlap_and_targets_first():
    from tc_circuits.viz.labels import place_labels
    from tc_circuits.viz.layout import CHAR_PX, LINE_PX

    gen = torch.Generator().manual_seed(1)
    xy = [(float(x), float(y)) for x, y in (torch.rand(60, 2, generator=gen) * torch.tensor([400.0, 200.0])).tolist()]
    texts = [f"label{i}" for i in range(60)]
    forced = [i == 7 for i in range(60)]
    pos = place_labels(xy, [5.0] * 60, texts, [float(i) for i in range(60)], 20, forced)
    assert pos[7] is not None
    boxes = []
    for (x, y), t, p in zip(xy, texts, pos):
        if p is None:
            continue
        w = len(t) * CHAR_PX + 2
        y0 = y - 5 - LINE_PX - 1 if p == "top center" else y + 5 + 1
        boxes.append((x - w / 2, y0, x + w / 2, y0 + LINE_PX))
    assert 1 < len(boxes) <= 21
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    # a lone node far from the others always gets its label
    pos = place_labels(xy + [(2000.0, 100.0)], [5.0] * 61, texts + ["lone"], [0.0] * 60 + [1.0], 5, forced + [False])
    assert pos[-1] == "top center"


def _visible(fig, vis, name):
    return [tr for tr, v in zip(fig.data, vis) if v and tr.name == name]


def _node_count(fig, visible):
    return sum(len(tr.x) for tr, v in zip(fig.data, visible) if v and tr.mode == "markers+text"
               and not tr.name.startswith("highlight"))


def _expected_nodes(g, t, edge_threshold):
    """Kept nodes minus token embeddings below the influence cut or with no edge to a kept node."""
    from tc_circuits.graph.prune import find_threshold

    pr = prune_graph(g, node_threshold=t, edge_threshold=edge_threshold)
    infl = pr.node_influence.double()
    m = pr.node_mask & ~(g.mask_of("embedding") & (infl < find_threshold(infl, t)))
    both = m[g.edge_source] & m[g.edge_target] & (g.edge_weight != 0)
    linked = torch.zeros_like(m)
    linked[g.edge_source[both]] = True
    linked[g.edge_target[both]] = True
    return int((m & (linked | ~g.mask_of("embedding"))).sum())


def test_graph_figure_slider_matches_pruning():
    model = make_tiny_model(n_layers=2)
    import sys

    sys.path.insert(0, "tests")
    from attribution_helpers import make_transcoders

    from tc_circuits.attribution import attribute

    tcs = make_transcoders(model, n_latents=16, k=3)
    g = attribute(model, tcs, torch.tensor([1, 5, 9, 3, 7]), progress=False, max_n_logits=3)
    cfg = GraphViewConfig(node_thresholds=(0.5, 0.8, 0.95), default_threshold=0.8, supernode_threshold=None)
    fig = graph_figure(g, model=model, transcoders=tcs, cfg=cfg)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 3 and fig.layout.sliders[0].active == 1
    for step, t in zip(steps, (0.5, 0.8, 0.95)):
        assert _node_count(fig, step.args[0]["visible"]) == _expected_nodes(g, t, cfg.edge_threshold)
    assert [bool(tr.visible) for tr in fig.data] == list(steps[1].args[0]["visible"])
    # a feature hover names its top promoted token; customdata is the node id
    feat = _visible(fig, steps[1].args[0]["visible"], "feature")[0]
    text, key = feat.hovertext[0], feat.customdata[0]
    L, lat, _pos = (int(x) for x in key.split("_"))
    top = int(torch.argmax(direct_logit_effects(model, tcs[L], [lat])[0]))
    assert f"L{L} #{lat}" in text and repr(str(top)) in text
    edge_tr = _visible(fig, steps[1].args[0]["visible"], "edges")[0]
    assert edge_tr.text and all("weight" in s for s in edge_tr.text)
    # the target's hover shows the value it explains
    tgt = _visible(fig, steps[1].args[0]["visible"], "target")[0]
    t0 = int(g.target_indices[0])
    assert f"value explained: {float(g.nodes.value[t0]):.4g}" in tgt.hovertext[0]
    assert "demeaned logit" in tgt.hovertext[0]
    assert not fig.layout.updatemenus  # no supernodes requested


def test_graph_figure_supernode_buttons_counts_and_html(tmp_path):
    g = hand_graph()
    cfg = GraphViewConfig(node_thresholds=(0.9, 1.0), default_threshold=1.0, supernode_threshold=None)
    fig = graph_figure(g, groups={"same role": ["0_5_1", "0_6_1"]}, cfg=cfg)
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["features", "supernodes"]
    vis = buttons[1].args[0]["visible"]
    sn = _visible(fig, vis, "supernode")
    assert len(sn) == 1 and list(sn[0].customdata) == ["same role"]
    assert "2 features (L0 ×2)" in sn[0].hovertext[0]
    assert len(buttons[1].args[1]["sliders"][0]["steps"]) == 2
    title = buttons[1].args[1]["title.text"]
    n_view = _node_count(fig, vis)
    assert f"{n_view} nodes: 1 supernodes holding 2 features, 1 other features" in title
    path = write_figure_html(fig, tmp_path / "g.html")
    text = path.read_text()
    assert "<html>" in text and "cdn.plot.ly" not in text.split("</script>")[0][:2000]
    assert len(text) > 1_000_000  # plotly.js is embedded (offline)
    with pytest.raises(ValueError, match="default_threshold"):
        GraphViewConfig(node_thresholds=(0.5,), default_threshold=0.8)


def test_edge_traces_colours_by_sign():
    from tc_circuits.viz.edge_select import rank_edges

    g = hand_graph()
    v = view_graph(g, prune_graph(g, 1.0, 1.0))
    ranked = rank_edges(v)
    xy = [(float(i), float(i)) for i in range(len(v.nodes))]
    traces = edge_traces(xy, v, ranked, [n.label for n in v.nodes])
    pos_lines = sum(len([x for x in tr.x if x is None]) for tr in traces[:3])
    neg_lines = sum(len([x for x in tr.x if x is None]) for tr in traces[3:6])
    assert pos_lines == sum(e.weight >= 0 for e in v.edges) and neg_lines == sum(e.weight < 0 for e in v.edges)
    assert all("31,79,191" in tr.line.color for tr in traces[:3])
    assert all("192,48,42" in tr.line.color for tr in traces[3:6])


def test_labels_from_the_graph_the_argument_or_latent(tmp_path):
    import json

    from tc_circuits.graph import from_json_dict, to_json_dict

    g = hand_graph()
    g.label((0, 5), "year feature")
    g.label("1_7_2", "output")
    cfg = GraphViewConfig(node_thresholds=(1.0,), default_threshold=1.0, supernode_threshold=None, max_labels=10)
    fig = graph_figure(g, cfg=cfg, labels={(0, 6): "second"})
    feat = next(tr for tr in fig.data if tr.name == "feature")
    shown = {t for t in feat.text if t}
    assert "year feature" in shown and shown <= {"year feature", "second", "output"}
    assert sorted(h.split("</b>")[0][3:] for h in feat.hovertext) == sorted(["year feature", "second", "output"])
    edges = next(tr for tr in fig.data if tr.name == "edges")
    assert any(t.startswith("L0 #5 year feature → L1 #7 output") for t in edges.text)
    # labels survive save / load and the Neuronpedia JSON (clerp) both ways
    g2 = AttributionGraph.load(g.save(tmp_path / "g"))
    assert g2.node_label(0) == "year feature" and g2.node_label(2) == "output"
    data = json.loads(json.dumps(to_json_dict(g, prune=False)))
    clerp = {n["node_id"]: n["clerp"] for n in data["nodes"]}
    assert clerp["0_5_1"] == "year feature" and clerp["1_7_2"] == "output"
    data["nodes"] = [dict(n, clerp="edited") if n["node_id"] == "0_6_1" else n for n in data["nodes"]]
    data["metadata"]["tc_circuits"]["graph_metadata"].pop("labels")
    g3 = from_json_dict(data)
    assert g3.node_label(1) == "edited" and g3.node_label(0) == "year feature"
    (tmp_path / "labels.json").write_text(json.dumps({"0_6_1": "from file", "1_7": "feature-wide"}))
    g.load_labels(tmp_path / "labels.json")
    assert g.node_label(1) == "from file" and g.node_label(2) == "output"  # node label beats feature label
    g.label("1_7_2", None)
    assert g.node_label(2) == "feature-wide"
    with pytest.raises(ValueError, match="not a node index"):
        g.label(10_000, "x")
    with pytest.raises((ValueError, TypeError)):  # TypeError from the run-time type check in tests
        g.label(0, 3)


def test_prompt_set_view_names_positions_by_role_and_static_fallback():
    from tc_circuits.viz.interactive import prompt_set_view

    g = hand_graph()
    cfg = GraphViewConfig(node_thresholds=(1.0,), default_threshold=1.0, supernode_threshold=None)
    from tc_circuits.viz.layout import short_token

    plain = prompt_set_view(g, cfg=cfg, static_image=False)  # an aggregated graph's prompt_strings are its roles
    assert list(plain.figure.layout.xaxis.ticktext) == ["bias"] + [short_token(s, 10) for s in g.prompt_strings]
    with pytest.raises(ValueError, match="2 roles"):
        prompt_set_view(g, roles=["a", "b"], cfg=cfg)
    g.metadata["position_roles"] = ["first", "noun", "last token"]
    v = prompt_set_view(g, cfg=cfg, static_image=False, metric={"accuracy": 0.75})
    assert list(v.figure.layout.xaxis.ticktext) == ["bias", "first", "noun", "last token"]
    tgt = next(tr for tr in v.figure.data if tr.name == "target")
    assert "metric accuracy: 0.75" in tgt.hovertext[0]
    html = v.html_fragment("x")
    assert "tcView" in html and "x-panel" in html
    assert set(v._repr_mimebundle_()) == {"text/html"}  # no static image asked for
