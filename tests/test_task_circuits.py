"""Faithfulness curves and prompt-set graphs: hand-built graphs and a tiny random model."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import make_model64, make_transcoders

from tc_circuits.attribution import attribute
from tc_circuits.attribution.targets import direction_target
from tc_circuits.circuits.faithfulness import ablation_metric, faithfulness, ranked_features
from tc_circuits.circuits.prompt_set import aggregate_graphs, role_labels, task_graph
from tc_circuits.graph.graph import AttributionGraph, NodeTable


class TinyTask:
    name = "tiny"

    def __init__(self, n=3, P=6, d_vocab=50, seed=0):
        g = torch.Generator().manual_seed(seed)
        self._tokens = torch.randint(0, d_vocab, (n, P), generator=g)
        self._tokens[:, :3] = self._tokens[0, :3]  # shared prefix: role-aligned, same tokens
        self._dir = torch.zeros(n, d_vocab)
        self._dir[:, 1], self._dir[:, 2] = 1.0, -1.0

    @property
    def tokens(self):
        return self._tokens

    def direction(self, d_vocab=None):
        return self._dir


def _hand_graph(w_t1=3.0, w_t2=1.0, w_21=0.5, with_f3=True):
    """features f1 (L0, latent 5), f2 (L1, latent 7)[, f3 (L0, latent 9)] -> one target."""
    feats = NodeTable.make("feature", 3 if with_f3 else 2, layer=torch.tensor([0, 1, 0][: 3 if with_f3 else 2]),
                           pos=1, latent=torch.tensor([5, 7, 9][: 3 if with_f3 else 2]), activation=1.0)
    emb = NodeTable.make("embedding", 2, pos=torch.tensor([0, 1]), token_id=torch.tensor([4, 4]))
    tgt = NodeTable.make("target", 1, pos=1)
    nodes = NodeTable.concat([feats, emb, tgt])
    nf = len(feats)
    t = nf + 2
    et, es, ew = [t, t, 1], [0, 1, 0], [w_t1, w_t2, w_21]
    if with_f3:
        et.append(t), es.append(2), ew.append(0.1)
    nodes.expanded[t] = True
    nodes.expanded[1] = True
    nodes.value[t] = sum(w for tt, w in zip(et, ew) if tt == t)
    nodes.value[1] = w_21
    return AttributionGraph(nodes, torch.tensor(et), torch.tensor(es), torch.tensor(ew, dtype=torch.float32),
                            torch.ones(1), ["m"], torch.tensor([4, 4]), ["a", "b"])


def test_ranked_features_follow_hand_computed_influence():
    g = _hand_graph()
    # normalised |w| into the target: f1 3/4.1, f2 1/4.1, f3 0.1/4.1; f1 also feeds f2 (row of f2: 1.0)
    # influence f1 = 3/4.1 + (1/4.1) * 1 ; f2 = 1/4.1 ; f3 = 0.1/4.1
    assert ranked_features(g) == [(0, 1, 5), (1, 1, 7), (0, 1, 9)]


def test_aggregate_means_edges_with_absent_as_zero_and_keeps_exactness():
    g1, g2 = _hand_graph(3.0, 1.0, 0.5, with_f3=True), _hand_graph(1.0, 2.0, 0.25, with_f3=False)
    ps = aggregate_graphs([g1, g2], ["a", "b"])
    g = ps.graph
    assert g.exactness_error() < 1e-6
    ids = {(int(g.nodes.type[i]), int(g.nodes.layer[i]), int(g.nodes.latent[i])): i for i in range(g.n_nodes)}
    t = int(g.target_indices[0])
    w = {(int(a), int(b)): float(c) for a, b, c in zip(g.edge_target, g.edge_source, g.edge_weight)}
    assert w[(t, ids[(0, 0, 5)])] == pytest.approx(2.0)
    assert w[(t, ids[(0, 1, 7)])] == pytest.approx(1.5)
    assert w[(t, ids[(0, 0, 9)])] == pytest.approx(0.05)  # present in one of two prompts
    freq = {(f.layer, f.latent): f.frequency for f in ps.features}
    assert freq == {(0, 5): 1.0, (1, 7): 1.0, (0, 9): 0.5}
    assert [(f.layer, f.latent) for f in ps.features][0] == (0, 5)
    assert g.prompt_strings == ["a", "b"] and g.metadata["prompt_set"]["n_prompts"] == 2
    with pytest.raises(ValueError, match="one prompt length"):
        aggregate_graphs([g1], ["a"])


def test_prompt_set_graph_of_a_task_is_exact_and_averages_real_graphs():
    model = make_model64()
    tcs = make_transcoders(model)
    task = TinyTask()
    ps = task_graph(model, tcs, task, check_exactness=True)
    assert ps.graph.exactness_error() < 1e-6
    single = [attribute(model, tcs, task.tokens[i], targets=[direction_target(task.direction()[i])], progress=False)
              for i in range(3)]
    t = int(ps.graph.target_indices[0])
    mean_value = sum(float(g.nodes.value[g.target_indices[0]]) for g in single) / 3
    assert float(ps.graph.nodes.value[t]) == pytest.approx(mean_value, rel=1e-6)
    roles = role_labels(task.tokens, [str(i) for i in range(50)])
    assert roles[:3] == [str(int(x)) for x in task.tokens[0, :3]] and roles[3].startswith("<var")


def test_faithfulness_frozen_all_ablated_equals_non_feature_edges():
    model = make_model64()
    tcs = make_transcoders(model)
    task = TinyTask(n=2)
    toks, d = task.tokens[0], task.direction()[0]
    g = attribute(model, tcs, toks, targets=[direction_target(d)], progress=False)
    clean = ablation_metric(model, tcs, toks, d, [], "frozen")
    t = int(g.target_indices[0])
    assert clean == pytest.approx(float(g.nodes.value[t]), abs=1e-8)
    feats = ranked_features(g)
    into_t = g.edge_target == t
    non_feat = ~g.mask_of("feature")[g.edge_source]
    expect = float(g.edge_weight[into_t & non_feat].double().sum())
    # features held (not recomputed): ablating every active feature leaves only the direct
    # edges of errors, embeddings and biases (with recomputation new latents may switch on)
    assert ablation_metric(model, tcs, toks, d, feats, "frozen", recompute_features=False) == pytest.approx(expect, abs=1e-6)
    res0 = faithfulness(model, tcs, task, prompts=[0], fractions=(0.0, 1.0), modes=("frozen",), recompute_features=False)
    assert res0.curves["frozen"].metric_graph == pytest.approx([clean, expect], abs=1e-6)
    res = faithfulness(model, tcs, task, fractions=(0.0, 0.5, 1.0), n_random=2)
    for mode, c in res.curves.items():
        assert c.graph[0] == 0.0 and c.graph[-1] == pytest.approx(1.0)
        assert c.random[-1] == pytest.approx(1.0)
        assert 0 <= c.auc_random <= 1.5
    with pytest.raises(ValueError, match="fractions"):
        faithfulness(model, tcs, task, fractions=(0.5, 1.0))


def test_prompt_set_graph_views_saves_and_loads(tmp_path):
    from tc_circuits.viz.interactive import prompt_set_view

    model = make_model64()
    tcs = make_transcoders(model)
    ps = task_graph(model, tcs, TinyTask(), role_names={3: "X"})
    assert ps.graph.metadata["position_roles"][3] == "X"
    view = prompt_set_view(ps.graph)
    assert view is not None
    loaded = type(ps.graph).load(ps.graph.save(tmp_path / "g"))
    assert torch.equal(loaded.edge_weight, ps.graph.edge_weight) and loaded.prompt_strings == ps.graph.prompt_strings
