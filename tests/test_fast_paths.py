"""Every fast path equals its plain reference implementation (values, and gradients where trained)."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import make_model64, make_transcoders

from tc_circuits.attribution import attribute
from tc_circuits.attribution import engine
from tc_circuits.attribution.feature_edges import position_layout
from tc_circuits.graph.graph import NODE_TYPES


def _dense(graph) -> dict[tuple[int, int], float]:
    out: dict[tuple[int, int], float] = {}
    for t, s, w in zip(graph.edge_target.tolist(), graph.edge_source.tolist(), graph.edge_weight.tolist()):
        out[(t, s)] = out.get((t, s), 0.0) + w
    return out


def _assert_same_edges(g1, g2) -> None:
    """Both graphs have the same (target, source) edges with equal weights (float64 tolerance)."""
    a, b = _dense(g1), _dense(g2)
    assert set(a) == set(b)
    keys = sorted(a)
    wa = torch.tensor([a[k] for k in keys], dtype=torch.float64)
    wb = torch.tensor([b[k] for k in keys], dtype=torch.float64)
    torch.testing.assert_close(wa, wb, rtol=1e-10, atol=1e-12)


def _with_and_without(monkeypatch, flag: str, activation: str, layers: list[int], n_tokens: int, seed: int, batch: int):
    """The same graph with the engine switch ``flag`` on, then off."""
    model = make_model64()
    tcs = make_transcoders(model, activation=activation, layers=layers)
    tokens = torch.randint(0, 50, (n_tokens,), generator=torch.Generator().manual_seed(seed))
    graphs = []
    for on in (True, False):
        monkeypatch.setattr(engine, flag, on)
        graphs.append(attribute(model, tcs, tokens, batch_size=batch, progress=False))
    return graphs


@pytest.mark.parametrize("activation", ["topk", "relu"])  # relu: uneven features per position
def test_position_batched_feature_edges_equal_reference(monkeypatch, activation):
    fast, ref = _with_and_without(monkeypatch, "_FAST_FEATURE_EDGES", activation, [1], 9, 1, 5)
    _assert_same_edges(fast, ref)
    assert len(fast.edge_weight) == len(ref.edge_weight)  # no duplicate or padding edges


@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_error_edges_in_the_feature_bmm_equal_their_own_einsum(monkeypatch, activation):
    # transcoders on layers 0 and 1; the model's other layers are mlp_const
    fused, plain = _with_and_without(monkeypatch, "_FUSED_ERROR_EDGES", activation, [0, 1], 11, 3, 4)
    _assert_same_edges(fused, plain)
    assert len(fused.edge_weight) == len(plain.edge_weight)
    # the fused path wrote error edges (of transcoder layers), not just features
    err = torch.nonzero(fused.nodes.type == NODE_TYPES.index("error")).squeeze(-1)
    covered = err[torch.isin(fused.nodes.layer[err], torch.tensor([0, 1]))]
    assert bool(torch.isin(fused.edge_source, covered).any())


def test_position_layout_groups_features_by_position():
    model = make_model64()
    tcs = make_transcoders(model, activation="relu", layers=[1])
    tokens = torch.randint(0, 50, (7,), generator=torch.Generator().manual_seed(2))
    from tc_circuits.attribution.linearise import LinearisedModel

    lin = LinearisedModel(model, tcs, tokens)
    lay = position_layout(lin, 1)
    sl = lin.features_in_layer(1)
    # every feature appears exactly once, in the row of its position
    nodes = lay.node[lay.valid]
    assert sorted(nodes.tolist()) == list(range(sl.start, sl.stop))
    rows = torch.nonzero(lay.valid)[:, 0]
    assert torch.equal(lin.features.pos[nodes], rows)


def test_attention_adjoint_matmuls_equal_einsum_reference():
    from tc_circuits.attribution.linearise import LinearisedModel

    model = make_model64()
    tcs = make_transcoders(model, layers=[0, 1])
    tokens = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(3))
    lin = LinearisedModel(model, tcs, tokens)
    g = torch.randn(5, 6, model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for L in range(model.cfg.n_layers):
        torch.testing.assert_close(lin._attn_adjoint(L, g), lin._attn_adjoint_reference(L, g), rtol=1e-12, atol=1e-12)
    # and both are the adjoint: <attn(u), g> == <u, attn^T(g)> for the frozen OV map
    u = torch.randn(5, 6, model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    A = lin.patterns[0][:, :6, :6]
    fwd = torch.einsum("hqk,bkd,hde,hef->bqf", A, u, lin.W_V[0], lin.W_O[0])
    torch.testing.assert_close((fwd * g).sum(), (u * lin._attn_adjoint(0, g)).sum(), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------- training step fast paths
def _topk_tc(d=6, n=16, k=3, seed=0):
    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

    tc = Transcoder(TranscoderConfig(d_in=d, d_out=d + 1, n_latents=n, k=k, skip=True))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return tc


def _grads(tensors):
    out = [torch.zeros_like(t) if t.grad is None else t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_sparse_encode_decode_equals_reference_values_and_gradients(monkeypatch, seed):
    from tc_circuits import losses

    tc = _topk_tc(seed=seed)
    g = torch.Generator().manual_seed(10 + seed)
    x = torch.randn(9, 6, generator=g, requires_grad=True)
    with torch.no_grad():
        pre = x @ tc.W_enc + tc.b_enc
    idx = pre.topk(5, dim=-1).indices.flip(-1)  # unsorted latents; some values are ReLU-zero
    w_rec = torch.randn(9, 7, generator=g)
    w_val = torch.randn(9, 5, generator=g)
    leaves = [x, *tc.parameters()]
    res = {}
    for fast in (True, False):
        monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", fast)
        code = losses.sparse_encode_decode(tc, x, pre, idx)
        ((code.recon * w_rec).sum() + (code.values * w_val).sum()).backward()
        res[fast] = (code.values.detach(), code.recon.detach(), _grads([t for t in leaves if t.requires_grad]))
    torch.testing.assert_close(res[True][0], res[False][0], rtol=0, atol=0)
    torch.testing.assert_close(res[True][1], res[False][1], rtol=1e-6, atol=1e-6)
    assert any((g != 0).any() for g in res[False][2])
    for a, b in zip(res[True][2], res[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # hand check of one entry: d recon / d W_dec[l] = sum over rows using l of their value
    tc.zero_grad()
    monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", True)
    losses.sparse_encode_decode(tc, x, pre, idx).recon[:, 0].sum().backward()
    vals = pre.gather(-1, idx).clamp_min(0)
    lat = int(idx[0, 0])
    assert tc.W_dec.grad[lat, 0].item() == pytest.approx(float(vals[idx == lat].sum()), rel=1e-6)


@pytest.mark.parametrize("dead_every", [3, 8, 20])  # 22 dead: sparse AuxK; 8: dense over dead; 4: all dead chosen
def test_training_step_fast_equals_reference(monkeypatch, dead_every):
    """topk_forward + FVU + AuxK: same loss and gradients with the fast kernels on and off."""
    from tc_circuits import losses

    tc = _topk_tc(d=8, n=64, k=4)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 8, generator=g), torch.randn(40, 9, generator=g)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::dead_every] = True
    res = {}
    for fast in (True, False):
        monkeypatch.setattr(losses, "_FAST_TRAIN_STEP", fast)
        f = losses.topk_forward(tc, x)
        loss = losses.fvu(f.output, y) + losses.auxk_loss(tc, x, f.pre_acts, y - f.output, dead)
        loss.backward()
        res[fast] = (loss.detach(), f.indices.sort(-1).values, _grads(list(tc.parameters())))
    torch.testing.assert_close(res[True][0], res[False][0], rtol=1e-6, atol=1e-7)
    assert torch.equal(res[True][1], res[False][1])
    for a, b in zip(res[True][2], res[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("P, block", [(8, 2), (7, 3), (5, 256)])
def test_causal_transpose_matmul_equals_dense(monkeypatch, P, block):
    import tc_circuits.attribution.adjoint_kernels as kz

    monkeypatch.setattr(kz, "_CAUSAL_BLOCK", block)
    gen = torch.Generator().manual_seed(P)
    A = torch.rand(3, P, P, dtype=torch.float64, generator=gen).tril()  # causal patterns
    x = torch.randn(3, P, 4, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(kz.causal_transpose_matmul(A, x), A.transpose(1, 2) @ x, rtol=1e-12, atol=1e-12)


def test_attention_adjoint_blocked_equals_reference(monkeypatch):
    """The blocked causal path inside the transposed pass (small block so 8 tokens use it)."""
    import tc_circuits.attribution.adjoint_kernels as kz
    import tc_circuits.attribution.linearise as lz

    monkeypatch.setattr(kz, "_CAUSAL_BLOCK", 2)
    model = make_model64()
    tcs = make_transcoders(model, layers=[0, 1])
    tokens = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(3))
    lin = lz.LinearisedModel(model, tcs, tokens)
    g = torch.randn(5, 8, model.cfg.d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    for L in range(model.cfg.n_layers):
        torch.testing.assert_close(lin._attn_adjoint(L, g), lin._attn_adjoint_reference(L, g), rtol=1e-12, atol=1e-12)


def test_attribute_with_blocked_adjoint_equals_dense(monkeypatch):
    import tc_circuits.attribution.adjoint_kernels as kz
    import tc_circuits.attribution.linearise as lz

    model = make_model64()
    tcs = make_transcoders(model)
    tokens = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(5))
    dense = attribute(model, tcs, tokens, progress=False)
    monkeypatch.setattr(kz, "_CAUSAL_BLOCK", 2)
    blocked = attribute(model, tcs, tokens, progress=False)
    assert torch.equal(dense.edge_target, blocked.edge_target)
    assert torch.equal(dense.edge_source, blocked.edge_source)
    torch.testing.assert_close(dense.edge_weight, blocked.edge_weight, rtol=1e-12, atol=1e-12)


def test_vjp_never_mutates_a_yielded_gradient():
    """The transposed pass works in place on its temporaries only: every yielded ``g`` keeps
    its value after the pass moves on (the engine reads edges off it while iterating)."""
    from tc_circuits.attribution.linearise import LinearisedModel

    model = make_model64(n_layers=3)
    tcs = make_transcoders(model, layers=[0, 2])  # layer 1 without a transcoder: no skip path there
    tokens = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(6))
    lin = LinearisedModel(model, tcs, tokens)
    gen = torch.Generator().manual_seed(7)
    # layer 1 gets neither a skip path nor an injected row: its step adds to ``g`` directly
    layers = torch.tensor([model.cfg.n_layers, 2, 0])
    positions = torch.tensor([7, 5, 6])
    vectors = torch.randn(3, model.cfg.d_model, dtype=torch.float64, generator=gen)
    seen = [(L, g, g.clone()) for L, g in lin.vjp(layers, positions, vectors)]
    assert [L for L, _, _ in seen] == [2, 1, 0, -1]
    for _, g, snapshot in seen:
        assert torch.equal(g, snapshot)


@pytest.mark.parametrize("parallel", [False, True])
def test_vjp_skipping_zero_rows_equals_dense(monkeypatch, parallel):
    """The transposed pass's matmuls over live (row, position) pairs only equal the dense ones:
    every yielded gradient, for rows at mixed layers and positions (some rows injected low, so
    most pairs are dead at the top)."""
    import tc_circuits.attribution.adjoint_kernels as kz
    import tc_circuits.attribution.linearise as lz

    monkeypatch.setattr(kz, "_LIVE_DENSE_SHARE", 1.01)  # always gather, however many pairs are live
    model = make_model64(n_layers=3)
    model.cfg.parallel_attn_mlp = parallel  # the blocks share this cfg: a Pythia-style parallel block
    tcs = make_transcoders(model)
    tokens = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(8))
    lin = lz.LinearisedModel(model, tcs, tokens)
    gen = torch.Generator().manual_seed(9)
    layers = torch.tensor([3, 2, 0, 1, 2, 0])
    positions = torch.tensor([8, 3, 6, 0, 7, 2])
    vectors = torch.randn(6, model.cfg.d_model, dtype=torch.float64, generator=gen)
    res = {}
    for skip in (True, False):
        monkeypatch.setattr(kz, "_SKIP_ZERO_ROWS", skip)
        res[skip] = [(L, g.clone()) for L, g in lin.vjp(layers, positions, vectors)]
    assert [L for L, _ in res[True]] == [L for L, _ in res[False]]
    for (_, a), (_, b) in zip(res[True], res[False]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_attribute_skipping_zero_rows_equals_dense(monkeypatch):
    import tc_circuits.attribution.adjoint_kernels as kz
    import tc_circuits.attribution.linearise as lz

    model = make_model64(n_layers=3)
    tcs = make_transcoders(model)
    tokens = torch.randint(0, 50, (10,), generator=torch.Generator().manual_seed(10))
    monkeypatch.setattr(kz, "_LIVE_DENSE_SHARE", 1.01)
    fast = attribute(model, tcs, tokens, batch_size=7, progress=False)
    monkeypatch.setattr(kz, "_SKIP_ZERO_ROWS", False)
    dense = attribute(model, tcs, tokens, batch_size=7, progress=False)
    _assert_same_edges(fast, dense)


def _float32(model, tcs):
    model.cfg.dtype = torch.float32
    model.to(torch.float32)
    for tc in tcs.values():
        tc.to(torch.float32)
    return model, tcs


@pytest.mark.parametrize("case", ["full64", "partial64", "partial32", "clt", "no_check"])
def test_preallocated_edge_sink_equals_list_reference(monkeypatch, case):
    """Edge for edge the same graph (order, indices, weights), expanded set and exactness numbers."""
    from clt_helpers import make_clt

    model = make_model64()
    tcs = make_clt(model) if case == "clt" else make_transcoders(model)
    if case == "partial32":
        model, tcs = _float32(model, tcs)
    kw = dict(batch_size=3, progress=False)
    if case.startswith("partial"):
        kw.update(max_feature_nodes=11, update_interval=1)  # several re-rankings
    if case == "no_check":
        kw.update(check_exactness=False)
    tokens = torch.randint(0, 50, (9,), generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(engine, "_PREALLOCATED_EDGES", False)
    ref = attribute(model, tcs, tokens, **kw)
    monkeypatch.setattr(engine, "_PREALLOCATED_EDGES", True)
    fast = attribute(model, tcs, tokens, **kw)
    assert fast.edge_target.dtype == torch.int32 and ref.edge_target.dtype == torch.int64
    assert torch.equal(fast.edge_target.long(), ref.edge_target)
    assert torch.equal(fast.edge_source.long(), ref.edge_source)
    assert fast.edge_weight.dtype == ref.edge_weight.dtype and torch.equal(fast.edge_weight, ref.edge_weight)
    assert torch.equal(fast.nodes.expanded, ref.nodes.expanded)
    if case.startswith("partial"):
        assert 0 < int(fast.nodes.expanded[fast.indices_of("feature")].sum()) == 11
    for key in ("exactness_max_abs_dev", "exactness_max_rel_dev"):
        assert fast.metadata.get(key) == ref.metadata.get(key)  # the same sums, to the bit
    assert torch.equal(fast.row_sums(), ref.row_sums())


def test_edge_sink_grows_past_its_capacity_and_compacts():
    from tc_circuits.attribution.edge_sink import EdgeSink, ListEdgeSink

    gen = torch.Generator().manual_seed(0)
    fast, ref = EdgeSink(50, capacity=7), ListEdgeSink()
    for _ in range(5):
        w = torch.randn(4, 6, generator=gen) * (torch.rand(4, 6, generator=gen) > 0.3)
        rows, cols = torch.randperm(50, generator=gen)[:4], torch.randperm(50, generator=gen)[:6]
        fast.add(rows, cols, w)
        ref.add(rows, cols, w)
    n = len(fast)
    t, s, w = fast.tensors()
    rt, rs, rw = ref.tensors()
    assert n == rt.numel() > 7 and t.dtype == torch.int32
    assert torch.equal(t.long(), rt) and torch.equal(s.long(), rs) and torch.equal(w, rw)
    assert t.untyped_storage().nbytes() == 4 * n  # compacted to the edge count
    want = torch.zeros(50, dtype=torch.float64).index_add_(0, rt, rw.double())
    assert torch.equal(fast.row_sum, want)
    assert torch.equal(fast.row_abs, torch.zeros(50, dtype=torch.float64).index_add_(0, rt, rw.double().abs()))


@pytest.mark.parametrize("P, block", [(8, 2), (7, 3), (5, 256)])
def test_causal_right_matmul_equals_dense(monkeypatch, P, block):
    """The attention adjoint's transposed-layout product ``x @ A`` over causal patterns."""
    import tc_circuits.attribution.adjoint_kernels as kz

    monkeypatch.setattr(kz, "_CAUSAL_BLOCK", block)
    gen = torch.Generator().manual_seed(P + 10)
    A = torch.rand(3, P, P, dtype=torch.float64, generator=gen).tril()
    x = torch.randn(3, 4, P, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(kz.causal_right_matmul(x, A), x @ A, rtol=1e-12, atol=1e-12)
    # and it is the transpose of causal_transpose_matmul
    xt = x.transpose(1, 2).contiguous()
    torch.testing.assert_close(kz.causal_right_matmul(x, A), kz.causal_transpose_matmul(A, xt).transpose(1, 2))


@pytest.mark.parametrize("center, weighted", [(True, True), (True, False), (False, True)])
def test_norm_folded_into_the_matrix_equals_its_adjoint(center, weighted):
    """``FrozenLN.fold``: ``adjoint(x @ M) == (x @ fold(M)) * inv_scale`` (LayerNorm / RMSNorm,
    with and without a weight), the identity the transposed pass relies on."""
    from tc_circuits.attribution.linearise import FrozenLN

    gen = torch.Generator().manual_seed(11)
    P, d, n = 5, 7, 6
    ln = FrozenLN(
        scale=torch.rand(P, dtype=torch.float64, generator=gen) + 0.5,
        w=torch.randn(d, dtype=torch.float64, generator=gen) if weighted else None,
        b=None,
        center=center,
    )
    x = torch.randn(3, P, n, dtype=torch.float64, generator=gen)
    M = torch.randn(n, d, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(
        (x @ ln.fold(M)) * ln.inv_scale(P, torch.float64), ln.adjoint(x @ M), rtol=1e-12, atol=1e-12
    )


def test_attention_adjoint_with_a_folded_read_back_equals_the_norm_after_it():
    """``_attn_adjoint(..., W_V_T=fold(W_V^T))`` then ``1 / scale`` equals the plain adjoint
    followed by the norm's adjoint, on the gathered, rank-one and dense paths."""
    import tc_circuits.attribution.adjoint_kernels as kz
    from tc_circuits.attribution.linearise import LinearisedModel

    model = make_model64()
    tcs = make_transcoders(model, layers=[0, 1])
    tokens = torch.randint(0, 50, (8,), generator=torch.Generator().manual_seed(12))
    lin = LinearisedModel(model, tcs, tokens)
    gen = torch.Generator().manual_seed(13)
    B, P = 4, 8
    g = torch.randn(B, P, model.cfg.d_model, dtype=torch.float64, generator=gen)
    positions = torch.tensor([7, 3, 5, 6])
    valid = positions[:, None] >= torch.arange(P)[None]
    g = g * valid[..., None]
    single = torch.tensor([False, True, False, False])
    g[1, :3] = 0  # row 1 sits at its own position only (rank-one path)
    for L in range(model.cfg.n_layers):
        live, one = kz.attention_rows(valid, positions, torch.ones(B, dtype=torch.bool), single)
        fast = lin._attn_adjoint(L, g, live, one, W_V_T=lin._folded("attn", L, g.dtype)) * lin.ln1[L].inv_scale(P, g.dtype)
        ref = lin.ln1[L].adjoint(lin._attn_adjoint_reference(L, g))
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    # an attention post-norm (Gemma's ln1_post): RMSNorm folded into W_O and the pattern, LayerNorm applied first
    from tc_circuits.attribution.frozen_norm import FrozenLN

    d = model.cfg.d_model
    for center in (False, True):
        post = FrozenLN(
            torch.rand(P, dtype=torch.float64, generator=gen) + 0.5,
            torch.randn(d, dtype=torch.float64, generator=gen), None, center,
        )
        for L in range(model.cfg.n_layers):
            lin.ln1_post[L] = post
            lin._fold_cache.clear()
            for sg in (single, torch.zeros(B, dtype=torch.bool)):  # gathered + rank-one, gathered only
                live, one = kz.attention_rows(valid, positions, torch.ones(B, dtype=torch.bool), sg)
                fast = lin._attn_adjoint(L, g, live, one, W_V_T=lin._folded("attn", L, g.dtype), post=post)
                ref = lin.ln1[L].adjoint(lin._attn_adjoint_reference(L, post.adjoint(g)))
                torch.testing.assert_close(fast * lin.ln1[L].inv_scale(P, g.dtype), ref, rtol=1e-12, atol=1e-12)
            fast = lin._attn_adjoint(L, g, None, None, post=post)  # dense
            torch.testing.assert_close(fast, lin._attn_adjoint_reference(L, post.adjoint(g)), rtol=1e-12, atol=1e-12)
            lin.ln1_post[L] = None
    lin._fold_cache.clear()
    # every row rank one (all just injected): the result is written by one bmm, no zero buffer
    g1 = torch.zeros_like(g)
    g1[torch.arange(B), positions] = torch.randn(B, model.cfg.d_model, dtype=torch.float64, generator=gen)
    all_single = torch.ones(B, dtype=torch.bool)
    for L in range(model.cfg.n_layers):
        live, one = kz.attention_rows(valid, positions, torch.ones(B, dtype=torch.bool), all_single)
        assert live is not None and not live.numel() and one[0].numel() == B
        fast = lin._attn_adjoint(L, g1, live, one, W_V_T=lin._folded("attn", L, g1.dtype)) * lin.ln1[L].inv_scale(P, g1.dtype)
        ref = lin.ln1[L].adjoint(lin._attn_adjoint_reference(L, g1))
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


def test_cached_decoder_rows_equal_per_batch_gather(monkeypatch):
    """Feature edges read the scaled decoder rows kept for the graph or gathered per batch:
    the same graph edge for edge."""
    import tc_circuits.attribution.feature_edges as fe

    model = make_model64(n_layers=3)
    tcs = make_transcoders(model)
    tokens = torch.randint(0, 50, (10,), generator=torch.Generator().manual_seed(14))
    cached = attribute(model, tcs, tokens, batch_size=7, progress=False)
    monkeypatch.setattr(fe, "_VECTOR_CACHE_BYTES", 0)
    gathered = attribute(model, tcs, tokens, batch_size=7, progress=False)
    assert torch.equal(cached.edge_target, gathered.edge_target)
    assert torch.equal(cached.edge_source, gathered.edge_source)
    torch.testing.assert_close(cached.edge_weight, gathered.edge_weight, rtol=1e-12, atol=1e-12)
