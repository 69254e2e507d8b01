"""The one-pass influence sum equals the power series; the engine's incremental ranker equals a recompute."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import make_model64, make_transcoders

from tc_circuits.attribution import attribute
from tc_circuits.attribution.edge_sink import EdgeSink, ListEdgeSink
from tc_circuits.attribution.ranking import InfluenceRanker, InfluenceRankerReference, node_levels
from tc_circuits.graph.influence import normalized_weights, propagate_influence, propagate_influence_by_level


def _random_dag(n_levels=5, per=7, n_edges=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    level = torch.arange(n_levels).repeat_interleave(per)
    n = level.numel()
    t = torch.randint(0, n, (n_edges * 3,), generator=g)
    s = torch.randint(0, n, (n_edges * 3,), generator=g)
    keep = level[s] < level[t]
    t, s = t[keep][:n_edges], s[keep][:n_edges]
    w = torch.randn(t.numel(), generator=g, dtype=torch.float64)
    seed_v = torch.zeros(n, dtype=torch.float64)
    seed_v[level == n_levels - 1] = torch.rand(per, generator=g, dtype=torch.float64)
    return t, s, w, seed_v, level


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_equals_power_series(seed):
    t, s, w, seed_v, level = _random_dag(seed=seed)
    nw = normalized_weights(t, w, level.numel())
    ref = propagate_influence(t, s, nw, seed_v)
    torch.testing.assert_close(propagate_influence_by_level((t, s, nw), seed_v, level), ref, rtol=1e-12, atol=1e-14)
    # the same edges split into chunks in any order
    perm = torch.randperm(t.numel(), generator=torch.Generator().manual_seed(seed))
    chunks = [(t[perm[i::3]], s[perm[i::3]], nw[perm[i::3]]) for i in range(3)]
    torch.testing.assert_close(propagate_influence_by_level(chunks, seed_v, level), ref, rtol=1e-12, atol=1e-14)


def test_one_pass_refuses_an_edge_against_the_levels():
    t, s, w, seed_v, level = _random_dag()
    with pytest.raises(ValueError, match="lower to a higher level"):
        propagate_influence_by_level((s, t, w), seed_v, level)  # reversed edges


def test_incremental_ranker_equals_recompute_on_an_engine_graph():
    model = make_model64(n_layers=3)
    tcs = make_transcoders(model)
    tokens = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(4))
    g = attribute(model, tcs, tokens, progress=False)
    feats = g.indices_of("feature")
    tgt0 = int(g.indices_of("target")[0])
    level = node_levels(g.n_nodes, g.nodes.layer[feats].long(), tgt0, model.cfg.n_layers)
    seed_v = g.seed_weights().double()
    ref = propagate_influence(g.edge_target, g.edge_source, normalized_weights(g.edge_target, g.edge_weight, g.n_nodes), seed_v)
    # feed the graph's rows to each sink in three groups of whole rows, ranking after each
    fast_sink = EdgeSink(g.n_nodes, 0, torch.float64, level=level)
    ref_sink = ListEdgeSink()
    rankers = [InfluenceRanker(fast_sink, level, seed_v), InfluenceRankerReference(ref_sink, level, seed_v)]
    rows = g.edge_target.unique()
    for i, part in enumerate(rows.tensor_split(3)):
        m = torch.isin(g.edge_target, part)
        fast_sink.add_edges(g.edge_target[m], g.edge_source[m], g.edge_weight[m])
        ref_sink.t.append(g.edge_target[m]); ref_sink.s.append(g.edge_source[m]); ref_sink.w.append(g.edge_weight[m])
        got, got_ref = (r.influence() for r in rankers)
        assert torch.equal(got, got_ref)  # the same products in the same order
        sub = torch.isin(g.edge_target, torch.cat(rows.tensor_split(3)[: i + 1]))
        want = propagate_influence(g.edge_target[sub], g.edge_source[sub],
                                   normalized_weights(g.edge_target[sub], g.edge_weight[sub], g.n_nodes), seed_v)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_ranker_refuses_an_edge_against_the_levels():
    t, s, w, seed_v, level = _random_dag()
    sink = EdgeSink(level.numel(), 0, torch.float64, level=level)
    sink.add_edges(s, t, w)  # reversed edges
    with pytest.raises(ValueError, match="lower to a higher level"):
        InfluenceRanker(sink, level, seed_v).influence()
    with pytest.raises(ValueError, match="level=... and sums=True"):
        InfluenceRanker(EdgeSink(level.numel()), level, seed_v)
