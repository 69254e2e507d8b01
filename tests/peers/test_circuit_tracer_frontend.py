"""circuit-tracer's frontend as a client of our graph files, and its graph files read by ours.

Our graph JSON and feature files validate against circuit-tracer's own pydantic models
(``frontend.graph_models`` / ``frontend.feature_models``) and are served by its local server;
``create_graph_files`` output imports into ours and re-exports with the same ids, labels,
scan and qParams.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
import torch
import yaml

from tc_circuits.attribution import attribute
from tc_circuits.formats import save_circuit_tracer
from tc_circuits.graph import from_json_dict, to_json_dict
from tc_circuits.organism import load_organism, load_organism_transcoders, organism_token_source
from tc_circuits.viz.dashboards import DashboardConfig, compute_dashboards
from tc_circuits.viz.neuronpedia import save_graph_with_features

from .test_circuit_tracer_client import RAW, ct_load, ct_model


@pytest.fixture(scope="module")
def setup():
    model = load_organism()
    tcs = load_organism_transcoders("skip_transcoder", model=model)
    tokens = model.to_tokens("the cat sat on the mat")[0]
    graph = attribute(model, tcs, tokens, targets=None, max_n_logits=3, batch_size=64, progress=False)
    return model, tcs, graph


def _free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_frontend_models_and_local_server_accept_our_files(setup, tmp_path):
    from circuit_tracer.frontend import feature_models, graph_models
    from circuit_tracer.frontend.local_server import serve

    model, tcs, graph = setup
    feats = graph.indices_of("feature")
    keys = sorted({(int(graph.nodes.layer[i]), int(graph.nodes.latent[i])) for i in feats.tolist()})[:3]
    boards = compute_dashboards(model, tcs, keys, organism_token_source(0, 4, 32),
                                DashboardConfig(n_top=3, n_quantiles=2, n_per_quantile=1, max_batches=2), progress=False)
    path = save_graph_with_features(graph, tmp_path, "cat", boards, name="organism", labels={keys[0]: "a label"})
    data = json.loads(path.read_text())
    parsed = graph_models.Model(**data)
    assert len(parsed.nodes) == len(data["nodes"]) and parsed.metadata.scan == "./graph_data/features/organism"
    by_key = {(n["tc_layer"], n["tc_latent"]): n for n in data["nodes"] if n["tc_type"] == "feature"}
    port = _free_port()
    server = serve(str(tmp_path), port=port)
    try:
        got = json.loads(urllib.request.urlopen(f"http://localhost:{port}/graph_data/cat.json").read())
        assert got["metadata"]["slug"] == "cat"
        index = json.loads(urllib.request.urlopen(f"http://localhost:{port}/data/graph-metadata.json").read())
        assert [g["slug"] for g in index["graphs"]] == ["cat"]
        for key in keys:
            if key not in by_key:  # pruned away: its file exists, no node points at it
                continue
            feature = by_key[key]["feature"]
            url = f"http://localhost:{port}/graph_data/features/organism/{feature}.json"  # frontend: `${scan}/${feature}.json`
            card = feature_models.Model(**json.loads(urllib.request.urlopen(url).read()))
            assert card.index == feature and card.act_max == boards[key].max_activation
    finally:
        server.stop()


def test_create_graph_files_output_round_trips_through_ours(setup, tmp_path, monkeypatch):
    from circuit_tracer import attribute as ct_attribute
    from circuit_tracer.transcoder.activation_functions import TopK
    import importlib

    cgf = importlib.import_module("circuit_tracer.utils.create_graph_files")

    model, tcs, _ = setup
    raw = load_organism(**RAW)
    save_circuit_tracer(tcs, tmp_path / "ct", hf_model=raw, allow_topk=True)
    ct_set = ct_load(tmp_path / "ct")
    k = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())["k"]
    for tc in ct_set:
        tc.activation_function = TopK(k)
    ct = ct_model(raw, ct_set)
    tokens = model.to_tokens("the cat sat on the mat")[0]
    g = ct_attribute(tokens, ct, max_n_logits=3, batch_size=64, verbose=False)
    monkeypatch.setattr(cgf.AutoTokenizer, "from_pretrained", lambda *a, **kw: model.tokenizer)
    cgf.create_graph_files(g, slug="ct-cat", output_path=str(tmp_path / "out"), scan="organism-transcoders")
    data = json.loads((tmp_path / "out" / "ct-cat.json").read_text())
    data["qParams"]["pinnedIds"] = [data["nodes"][0]["node_id"]]
    ours = from_json_dict(data)
    again = to_json_dict(ours, prune=False, slug="ct-cat")
    assert [n["node_id"] for n in again["nodes"]] == [n["node_id"] for n in data["nodes"]]
    assert [n["clerp"] for n in again["nodes"] if n["feature_type"] == "logit"] == [
        n["clerp"] for n in data["nodes"] if n["feature_type"] == "logit"]
    assert again["metadata"]["scan"] == "organism-transcoders" and again["qParams"] == data["qParams"]
    assert {(lk["source"], lk["target"]): lk["weight"] for lk in again["links"]} == pytest.approx(
        {(lk["source"], lk["target"]): lk["weight"] for lk in data["links"]}, rel=1e-6)
    from circuit_tracer.frontend import graph_models

    graph_models.Model(**again)
