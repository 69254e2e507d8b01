"""Graph JSON at the circuit-tracer / Neuronpedia boundary: a file in circuit-tracer's own form
(``create_graph_files`` / ``frontend.graph_models.Node``) round trips with its ids, labels,
scan and qParams; our export has the fields Neuronpedia requires and frontend-readable clerps."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_tiny_model
from attribution_helpers import make_transcoders
from tc_circuits.attribution import attribute
from tc_circuits.graph import from_json_dict, save_graph_files, to_json_dict, validate_json_dict


def _cantor(x, y):
    return (x + y) * (x + y + 1) // 2 + y


def circuit_tracer_json(n_layers=2):
    """A graph as circuit-tracer 0.5.0 writes it (node ids/fields per its graph_models.Node)."""
    toks = ["<bos>", "a", "b"]
    nodes = [
        {"node_id": "E_0_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding", "jsNodeId": "E_0-0", "clerp": ""},
        {"node_id": "E_7_2", "feature": 2, "layer": "E", "ctx_idx": 2, "feature_type": "embedding", "jsNodeId": "E_7-2", "clerp": ""},
        {"node_id": "1_5_2", "feature": _cantor(1, 5), "layer": "1", "ctx_idx": 2, "feature_type": "cross layer transcoder",
         "jsNodeId": "1_5-0", "clerp": "", "activation": 1.5, "influence": 0.3},
        {"node_id": "0_1_2", "feature": -1, "layer": "1", "ctx_idx": 2, "feature_type": "mlp reconstruction error",
         "jsNodeId": "1_2-0", "clerp": ""},
        {"node_id": f"{n_layers + 1}_46_2", "feature": 46, "layer": str(n_layers + 1), "ctx_idx": 2, "feature_type": "logit",
         "token_prob": 0.021, "is_target_logit": True, "jsNodeId": "L_46-2", "clerp": 'Output "46" (p=0.021)'},
    ]
    links = [{"source": "E_7_2", "target": "1_5_2", "weight": 0.5},
             {"source": "1_5_2", "target": f"{n_layers + 1}_46_2", "weight": 1.25},
             {"source": "0_1_2", "target": f"{n_layers + 1}_46_2", "weight": -0.25}]
    meta = {"slug": "ct", "scan": "gpt2-transcoders", "transcoder_list": [], "prompt_tokens": toks,
            "prompt": "<bos>ab", "node_threshold": 0.8, "schema_version": 1}
    qparams = {"pinnedIds": ["1_5_2"], "supernodes": [["x", "1_5_2"]], "linkType": "both", "clickedId": "1_5_2", "sg_pos": ""}
    return {"metadata": meta, "qParams": qparams, "nodes": nodes, "links": links}


def test_circuit_tracer_json_round_trips():
    data = circuit_tracer_json()
    g = from_json_dict(data)
    assert g.target_labels == ['logit "46"']
    out = to_json_dict(g, prune=False, slug="ct")
    assert [n["node_id"] for n in out["nodes"]] == [n["node_id"] for n in data["nodes"]]
    logit = next(n for n in out["nodes"] if n["feature_type"] == "logit")
    assert logit["clerp"] == 'Output "46" (p=0.021)' and logit["layer"] == "3"  # not doubled; layer count kept
    assert out["metadata"]["scan"] == "gpt2-transcoders" and out["qParams"] == data["qParams"]
    assert {(lk["source"], lk["target"], lk["weight"]) for lk in out["links"]} == {
        (lk["source"], lk["target"], lk["weight"]) for lk in data["links"]}


@pytest.fixture(scope="module")
def graph():
    model = make_tiny_model()
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(3))
    return attribute(model, tcs, toks, progress=False)


def test_our_export_meets_neuronpedia_and_frontend_forms(graph, tmp_path):
    data = to_json_dict(graph, prune=False, slug="s", clerps={"0_3": "label three"})
    validate_json_dict(data)
    assert "/" not in data["metadata"]["scan"]
    types = {n["tc_type"]: n["feature_type"] for n in data["nodes"]}
    assert types["position"] == "position embedding" and types["constant"] == "bias"
    assert types["embedding"] == "embedding"
    for n in data["nodes"]:
        if n["feature_type"] == "logit":  # circuit-tracer's frontend: +clerp.split('(p=')[1].split(')')[0]
            assert n["clerp"].startswith('Output "')
            assert float(n["clerp"].split("(p=")[1].split(")")[0]) == pytest.approx(n["token_prob"], abs=5e-4)
        if n["tc_type"] == "feature" and (n["tc_layer"], n["tc_latent"]) == (0, 3):
            assert n["clerp"] == "label three"
    back = from_json_dict(data)
    assert back.target_labels == graph.target_labels
    save_graph_files(graph, tmp_path, "one", prune=False)
    save_graph_files(graph, tmp_path, "two", prune=False)
    save_graph_files(graph, tmp_path, "one", prune=False)
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    assert sorted(g["slug"] for g in index["graphs"]) == ["one", "two"]
    assert json.loads((tmp_path / "one.json").read_text())["metadata"]["slug"] == "one"


def test_validation_names_the_bad_field(graph):
    data = to_json_dict(graph, prune=False)
    del data["nodes"][0]["jsNodeId"]
    with pytest.raises(ValueError, match="jsNodeId"):
        validate_json_dict(data)
    data = to_json_dict(graph, prune=False)
    data["links"][0]["target"] = "nope"
    with pytest.raises(ValueError, match="nope"):
        validate_json_dict(data)
    data = to_json_dict(graph, prune=False)
    data["metadata"]["scan"] = 3
    with pytest.raises(ValueError, match="scan"):
        validate_json_dict(data)
