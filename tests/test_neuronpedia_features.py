"""Feature detail files (circuit-tracer frontend ``feature_models.Model`` layout) from our
dashboards, next to the graph JSON whose nodes point at them."""

from __future__ import annotations

import json

import torch
from conftest import make_tiny_model
from test_dashboards import corpus, make_tcs

from tc_circuits.attribution import attribute
from tc_circuits.viz.dashboards import DashboardConfig, compute_dashboards
from tc_circuits.viz.neuronpedia import feature_detail, feature_index, save_graph_with_features

FIELDS = {"transcoder_id", "index", "examples_quantiles", "top_logits", "bottom_logits", "act_min", "act_max",
          "quantile_values", "histogram", "activation_frequency"}


def test_feature_files_follow_dashboards_and_graph_points_at_them(tmp_path):
    model = make_tiny_model()
    tcs = make_tcs(model)
    toks = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(3))
    graph = attribute(model, tcs, toks, progress=False)
    feats = graph.indices_of("feature")
    keys = sorted({(int(graph.nodes.layer[i]), int(graph.nodes.latent[i])) for i in feats.tolist()})[:4]
    cfg = DashboardConfig(n_top=3, n_quantiles=2, n_per_quantile=1, n_bins=8)
    boards = compute_dashboards(model, tcs, keys, iter(corpus()), cfg, progress=False)
    labels = {keys[0]: "first label"}
    path = save_graph_with_features(graph, tmp_path, "g", boards, name="tiny/tcs", labels=labels, prune=False)
    data = json.loads(path.read_text())
    assert data["metadata"]["scan"] == "./graph_data/features/tiny-tcs"
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert index["graphs"][0]["scan"] == data["metadata"]["scan"]
    by_key = {(n["tc_layer"], n["tc_latent"]): n for n in data["nodes"] if n["tc_type"] == "feature"}
    assert by_key[keys[0]]["clerp"] == "first label"
    for key, board in boards.items():
        node = by_key[key]
        f = json.loads((tmp_path / "features" / "tiny-tcs" / f"{node['feature']}.json").read_text())
        assert set(f) == FIELDS and f["index"] == node["feature"] == feature_index(*key)
        assert f["top_logits"] == [t.string for t in board.promoted]
        assert f["act_max"] == board.max_activation and sum(f["histogram"]) == board.n_nonzero
        assert abs(f["activation_frequency"] - board.n_nonzero / board.n_tokens) < 1e-12
        top = f["examples_quantiles"][0]
        assert top["quantile_name"] == "Top activations"
        for ex, ours in zip(top["examples"], board.top_examples):
            assert ex["tokens"] == ours.tokens and ex["tokens_acts_list"] == ours.acts
            assert ex["tokens_acts_list"][ex["train_token_ind"]] == ours.acts[ours.highlight]
    assert feature_detail(boards[keys[0]], "x")["transcoder_id"] == "x"
