"""The attribution engine against an independent frozen model built from hooks.

Every edge must equal the change of its target when the source is removed from the frozen
model (features held fixed), for features, errors, tokens, positions and the constant; the
sum of each row must equal the value from the real forward pass.
"""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import HookedFrozen, make_model64, make_transcoders
from conftest import make_tiny_model

from tc_circuits.attribution import (
    AttributionExactnessError,
    LinearisedModel,
    attribute,
    direction_target,
    logit_diff_target,
    logit_target,
)
from tc_circuits.graph.graph import type_code

P = 8
CONFIGS = [("topk", True), ("relu", False), ("jumprelu", True)]


def _tokens(seed=3, n=P, d_vocab=50):
    return torch.randint(0, d_vocab, (n,), generator=torch.Generator().manual_seed(seed))


def _targets(d_vocab=50):
    gen = torch.Generator().manual_seed(7)
    return [
        logit_target(5, d_vocab),
        logit_diff_target(3, 9, d_vocab, position=3),
        direction_target(torch.randn(d_vocab, generator=gen, dtype=torch.float64), position=5, label="rand"),
    ]


def _row_values(graph, targets, logits, pre):
    """Value of each expanded node in a frozen run: {node index: value}."""
    out = {}
    tgt_idx = graph.target_indices.tolist()
    for i in torch.nonzero(graph.nodes.expanded).flatten().tolist():
        if graph.node_type(i) == "feature":
            L, p, lat = (int(graph.nodes.layer[i]), int(graph.nodes.pos[i]), int(graph.nodes.latent[i]))
            out[i] = pre[L][p, lat]
        else:
            t = targets[tgt_idx.index(i)]
            out[i] = t.direction.to(logits.dtype) @ logits[int(graph.nodes.pos[i])]
    return out


@pytest.mark.parametrize("activation,skip", CONFIGS)
def test_frozen_model_reproduces_real_forward(activation, skip):
    model = make_model64()
    tcs = make_transcoders(model, activation=activation, skip=skip)
    toks = _tokens()
    ref = HookedFrozen(model, tcs, toks)
    logits, pre, _ = ref.run()
    torch.testing.assert_close(logits, ref.real_logits[0], atol=1e-10, rtol=0)
    lin = LinearisedModel(model, tcs, toks)
    out = lin.forward()
    for L in range(model.cfg.n_layers):
        torch.testing.assert_close(out.mlp_in[L], ref.cache[f"blocks.{L}.ln2.hook_normalized"][0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out.mlp_out[L], ref.cache[f"blocks.{L}.hook_mlp_out"][0], atol=1e-10, rtol=0)
    torch.testing.assert_close(lin.logits_at(out.final_ln_out), ref.real_logits[0], atol=1e-10, rtol=0)
    # the last position's logits are unembedded from the cached final-LN output only
    torch.testing.assert_close(lin.last_logits, ref.real_logits[0, -1], atol=1e-10, rtol=0)


@pytest.mark.parametrize("activation,skip", CONFIGS)
def test_every_edge_equals_intervention(activation, skip):
    model = make_model64()
    tcs = make_transcoders(model, activation=activation, skip=skip)
    toks = _tokens()
    targets = _targets()
    graph = attribute(model, tcs, toks, targets=targets, progress=False, batch_size=16)
    assert graph.metadata["exactness_max_abs_dev"] < 1e-9
    A = graph.adjacency().to_dense().double()
    ref = HookedFrozen(model, tcs, toks)
    base = _row_values(graph, targets, *ref.run()[:2])
    rows = sorted(base)
    base_v = torch.stack([base[i] for i in rows])
    # the real forward pass gives the same values the rows sum to
    torch.testing.assert_close(base_v, graph.nodes.value[rows].double(), atol=1e-5, rtol=1e-5)

    def check(col, **kw):
        new = _row_values(graph, targets, *ref.run(**kw)[:2])
        delta = torch.stack([new[i] for i in rows]) - base_v
        torch.testing.assert_close(delta, -A[rows, col], atol=1e-9, rtol=1e-7)

    feats = graph.indices_of("feature")
    sample = set(feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:40]].tolist())
    n_checked = 0
    for j in range(graph.n_nodes):
        kind = graph.node_type(j)
        if kind == "feature" and j not in sample:
            continue
        L, p = int(graph.nodes.layer[j]), int(graph.nodes.pos[j])
        if kind == "feature":
            lat = {k: v.clone() for k, v in ref.latents.items()}
            lat[L][p, int(graph.nodes.latent[j])] = 0.0
            check(j, latents=lat)
        elif kind == "error":
            err = {k: v.clone() for k, v in ref.errors.items()}
            err[L][p] = 0.0
            check(j, errors=err)
        elif kind in ("embedding", "position"):
            s = torch.ones(P, dtype=torch.float64)
            s[p] = 0.0
            check(j, **({"embed_scale": s} if kind == "embedding" else {"pos_scale": s}))
        else:
            continue
        n_checked += 1
    assert n_checked == graph.n_nodes - 1 - len(targets) - len(feats) + len(sample)
    # constant node: every source removed
    zero_lat = {k: torch.zeros_like(v) for k, v in ref.latents.items()}
    zero_err = {k: torch.zeros_like(v) for k, v in ref.errors.items()}
    z = torch.zeros(P, dtype=torch.float64)
    zv = _row_values(graph, targets, *ref.run(latents=zero_lat, errors=zero_err, embed_scale=z, pos_scale=z)[:2])
    const = int(graph.indices_of("constant")[0])
    torch.testing.assert_close(torch.stack([zv[i] for i in rows]), A[rows, const], atol=1e-9, rtol=1e-7)


def test_vjp_matches_autograd_of_hooked_model():
    model = make_model64()
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens()
    lin = LinearisedModel(model, tcs, toks)
    ref = HookedFrozen(model, tcs, toks)
    gen = torch.Generator().manual_seed(0)
    # row 0: a logit direction at pos 6; row 1: latent 3 of layer 1 at pos 4
    d = torch.randn(50, generator=gen, dtype=torch.float64)
    vecs = torch.stack([model.W_U @ d, tcs[1].W_enc[:, 3].detach()])
    grads = dict(lin.vjp(torch.tensor([2, 1]), torch.tensor([6, 4]), vecs))
    for row, read in enumerate([lambda lg, pre: d @ lg[6], lambda lg, pre: pre[1][4, 3]]):
        logits, pre, cap = ref.run(grad=True)
        y = read(logits, pre)
        wrt = [cap["embed"], cap["mlp_out0"], cap["mlp_out1"]]
        g_emb, g0, g1 = torch.autograd.grad(y, wrt, allow_unused=True)
        Pg = grads[-1].shape[1]
        torch.testing.assert_close(grads[-1][row], g_emb[0, :Pg], atol=1e-10, rtol=0)
        assert torch.all(g_emb[0, Pg:] == 0)
        torch.testing.assert_close(grads[0][row], g0[0, :Pg], atol=1e-10, rtol=0)
        if row == 0:
            torch.testing.assert_close(grads[1][row], g1[0, :Pg], atol=1e-10, rtol=0)


def test_finite_difference_float32():
    model = make_tiny_model()
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens()
    targets = [logit_target(5, 50)]
    graph = attribute(model, tcs, toks, targets=targets, progress=False)
    ref = HookedFrozen(model, tcs, toks)
    t = int(graph.target_indices[0])
    m = (graph.edge_target == t) & (graph.nodes.type[graph.edge_source] == type_code("feature"))
    j = int(graph.edge_source[m][graph.edge_weight[m].abs().argmax()])
    edge = float(graph.edge_weight[m][graph.edge_weight[m].abs().argmax()])
    L, p, lat = (int(graph.nodes.layer[j]), int(graph.nodes.pos[j]), int(graph.nodes.latent[j]))
    h = 0.5

    def val(scale):
        lats = {k: v.clone() for k, v in ref.latents.items()}
        lats[L][p, lat] *= scale
        return float(targets[0].direction @ ref.run(latents=lats)[0][-1])

    fd = (val(1 + h) - val(1 - h)) / (2 * h)
    assert fd == pytest.approx(edge, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("norm", ["LNPre", "RMS"])
def test_exact_for_other_normalisations(norm):
    model = make_tiny_model(normalization_type=norm)
    tcs = make_transcoders(model, activation="relu", skip=True)
    graph = attribute(model, tcs, _tokens(), progress=False)
    assert graph.metadata["exactness_max_rel_dev"] < 1e-5


def test_missing_layer_becomes_mlp_const_nodes():
    model = make_model64()
    tcs = make_transcoders(model, layers=[1])
    toks = _tokens()
    graph = attribute(model, tcs, toks, targets=_targets(), progress=False)
    assert graph.metadata["uncovered_layers"] == [0]
    const_nodes = graph.indices_of("mlp_const")
    assert len(const_nodes) == P and set(graph.nodes.layer[const_nodes].tolist()) == {0}
    assert graph.metadata["exactness_max_abs_dev"] < 1e-9
    assert set(graph.nodes.layer[graph.indices_of("feature")].tolist()) == {1}
    # removing the layer-0 MLP output at position 2 changes targets by minus its edges
    ref = HookedFrozen(model, tcs, toks)
    A = graph.adjacency().to_dense()
    base = ref.run()[0]
    err = dict(ref.errors)
    err[0] = err[0].clone()
    err[0][2] = 0
    new = ref.run(errors=err)[0]
    t0 = int(graph.target_indices[0])
    d = _targets()[0].direction.double()
    j = int(const_nodes[2])
    assert float(d @ (new[-1] - base[-1])) == pytest.approx(-float(A[t0, j]), abs=1e-9)


def test_max_feature_nodes_rows_match_full_graph():
    model = make_model64()
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens()
    full = attribute(model, tcs, toks, progress=False)
    part = attribute(model, tcs, toks, progress=False, max_feature_nodes=7, batch_size=3, update_interval=1)
    feats = part.indices_of("feature")
    assert int(part.nodes.expanded[feats].sum()) == 7
    assert part.n_nodes == full.n_nodes
    Af, Ap = full.adjacency().to_dense(), part.adjacency().to_dense()
    exp = torch.nonzero(part.nodes.expanded).flatten()
    torch.testing.assert_close(Ap[exp], Af[exp], atol=1e-12, rtol=0)
    assert Ap[~part.nodes.expanded].abs().sum() == 0
    assert part.metadata["exactness_max_abs_dev"] < 1e-9
    # the first feature chosen is the one with the largest direct influence on the targets
    from tc_circuits.graph.prune import normalized_weights

    t = part.target_indices
    m = torch.isin(full.edge_target, t)
    nw = normalized_weights(full.edge_target[m], full.edge_weight[m], full.n_nodes)
    direct = torch.zeros(full.n_nodes, dtype=torch.float64).index_add_(
        0, full.edge_source[m], nw * full.seed_weights().double()[full.edge_target[m]]
    )
    best = int(torch.argmax(direct[feats]))
    assert bool(part.nodes.expanded[feats[best]])


def test_default_targets_and_values():
    model = make_tiny_model()
    tcs = make_transcoders(model)
    toks = _tokens()
    graph = attribute(model, tcs, toks, max_n_logits=4, desired_logit_prob=0.99, progress=False)
    logits = model(toks[None])[0, -1].detach().double()
    probs = logits.softmax(-1)
    top = probs.topk(4)
    t = graph.target_indices
    assert len(t) == 4
    assert graph.nodes.token_id[t].tolist() == top.indices.tolist()
    torch.testing.assert_close(graph.target_weights.double(), top.values, atol=1e-6, rtol=0)
    # demeaned logits: logit - mean logit
    torch.testing.assert_close(
        graph.nodes.value[t].double(), (logits - logits.mean())[top.indices], atol=1e-4, rtol=0
    )
    few = attribute(model, tcs, toks, max_n_logits=10, desired_logit_prob=float(top.values[0]) / 2, progress=False)
    assert len(few.target_indices) == 1


def test_logit_diff_target_value_and_position():
    model = make_tiny_model()
    tcs = make_transcoders(model)
    toks = _tokens()
    g = attribute(model, tcs, toks, targets=[logit_diff_target(3, 9, 50, position=2)], progress=False)
    logits = model(toks[None])[0].detach()
    t = int(g.target_indices[0])
    assert int(g.nodes.pos[t]) == 2
    assert float(g.nodes.value[t]) == pytest.approx(float(logits[2, 3] - logits[2, 9]), abs=1e-5)
    # nothing at a later position can reach a target at position 2
    src = g.edge_source[g.edge_target == t]
    assert int(g.nodes.pos[src].max()) <= 2


def test_exactness_violation_raises_and_warns(monkeypatch):
    model = make_tiny_model()
    tcs = make_transcoders(model)
    import tc_circuits.attribution.engine as eng

    orig = eng._node_table

    def corrupt(*a, **k):
        nodes = orig(*a, **k)
        nodes.value = nodes.value + 1.0
        return nodes

    monkeypatch.setattr(eng, "_node_table", corrupt)
    with pytest.raises(AttributionExactnessError, match="not exact"):
        attribute(model, tcs, _tokens(), progress=False)
    with pytest.warns(UserWarning, match="not exact"):
        attribute(model, tcs, _tokens(), progress=False, check_exactness="warn")
    attribute(model, tcs, _tokens(), progress=False, check_exactness=False)


def test_bad_inputs():
    model = make_tiny_model()
    tcs = make_transcoders(model)
    with pytest.raises(ValueError, match="empty"):
        attribute(model, tcs, torch.zeros(0, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="n_ctx"):
        attribute(model, tcs, torch.zeros(17, dtype=torch.long), progress=False)
    with pytest.raises(ValueError, match="token ids"):
        attribute(model, tcs, torch.tensor([1, 2, 99]), progress=False)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        attribute(model, tcs, _tokens(), targets=[50], progress=False)
    with pytest.raises(ValueError, match="position"):
        attribute(model, tcs, _tokens(), targets=[logit_target(1, 50, position=P)], progress=False)
    other = make_tiny_model(model_name="other-model")
    with pytest.raises(ValueError, match="other-model|tiny-test"):
        attribute(other, tcs, _tokens(), progress=False)
    sae = make_transcoders(model)
    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

    sae[0] = Transcoder(TranscoderConfig.for_model(model, 0, 16, kind="sae", k=2))
    with pytest.raises(ValueError, match="SAE"):
        attribute(model, sae, _tokens(), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        attribute(model, tcs, _tokens(), batch_size=0, progress=False)


def test_gc_paused_during_attribution_and_restored(monkeypatch):
    import gc

    import tc_circuits.attribution.engine as eng

    model = make_tiny_model()
    tcs = make_transcoders(model)
    seen = []
    real = eng.LinearisedModel

    def spy(*a, **k):
        seen.append(gc.isenabled())
        return real(*a, **k)

    monkeypatch.setattr(eng, "LinearisedModel", spy)
    assert gc.isenabled()
    attribute(model, tcs, _tokens(), progress=False)
    assert seen == [False] and gc.isenabled()
    # restored after an error too, and left disabled if the caller had disabled it
    with pytest.raises(ValueError):
        attribute(model, tcs, torch.zeros(0, dtype=torch.long), progress=False)
    assert gc.isenabled()
    gc.disable()
    try:
        attribute(model, tcs, _tokens(), progress=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
