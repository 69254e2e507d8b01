"""oneDNN products with prepacked weights (``attribution/packed_matmul.py``) equal ``x @ W``."""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import make_model64, make_transcoders

import tc_circuits.attribution.packed_matmul as pm
from tc_circuits.attribution import attribute
from tc_circuits.attribution.packed_matmul import PackedMatmul, onednn_available

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear")


@pytest.fixture(autouse=True)
def _any_width(monkeypatch):
    """These matrices are small: take the oneDNN path whatever their width."""
    monkeypatch.setattr(pm, "_MIN_WIDTH", 0)


def test_narrow_matrices_stay_on_the_plain_matmul(monkeypatch):
    monkeypatch.setattr(pm, "_MIN_WIDTH", 256)
    mm = PackedMatmul()
    x, W = _rand(300, 64, seed=1), _rand(64, 512, seed=2)
    assert torch.equal(mm(x, W), x @ W) and not mm._packed


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _close_to_float64(out, x, W):
    ref = x.double() @ W.double()
    scale = float((x.double().abs() @ W.double().abs()).max())
    assert out.dtype == torch.float32 and out.shape == ref.shape
    # float32 rounding of a sum of d products: both libraries stay within ~1e-6 of the magnitudes
    assert float((out.double() - ref).abs().max()) <= 2e-6 * scale


@needs_onednn
@pytest.mark.parametrize("n, d, e", [(1, 8, 8), (37, 64, 48), (300, 96, 96), (4096, 32, 40)])
def test_packed_product_equals_matmul_for_contiguous_transposed_and_gathered_inputs(n, d, e):
    mm = PackedMatmul()
    W = _rand(d, e, seed=1)
    x = _rand(n, d, seed=2)
    xt = _rand(d, n, seed=3).T  # a transposed view, as the attention adjoint passes it
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(4))[: max(1, n // 2)]
    for inp in (x, xt, x.index_select(0, rows)):
        out = mm(inp, W)
        _close_to_float64(out, inp, W)
        _close_to_float64(inp @ W, inp, W)  # the reference meets the same bound
    WT = _rand(e, d, seed=5).T  # a transposed weight (W_O_flat.T in the adjoint)
    _close_to_float64(mm(x, WT), x, WT)


@needs_onednn
def test_one_pack_per_matrix_and_an_in_place_edit_repacks():
    mm = PackedMatmul()
    W = _rand(16, 12, seed=1)
    x = _rand(20, 16, seed=2)
    mm(x, W), mm(x[:7], W), mm(x.T.contiguous().T, W)
    assert len(mm._packed) == 1
    with torch.no_grad():
        W.mul_(3.0)  # a new version of the same storage
    out = mm(x, W)
    assert len(mm._packed) == 2
    _close_to_float64(out, x, W)


@needs_onednn
def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(pm, "_MAX_ENTRIES", 3)
    mm = PackedMatmul()
    x = _rand(5, 8, seed=2)
    for i in range(6):  # fresh temporaries every call
        W = _rand(8, 4, seed=10 + i)
        _close_to_float64(mm(x, W), x, W)
    assert len(mm._packed) == 3


def test_other_calls_are_the_plain_matmul(monkeypatch):
    mm = PackedMatmul()
    W, x = _rand(16, 12, seed=1), _rand(20, 16, seed=2)
    for a, b in ((x.double(), W.double()), (x.bfloat16(), W.bfloat16()), (x[:0], W)):
        assert torch.equal(mm(a, b), a @ b)
    xg = x.clone().requires_grad_(True)  # under autograd: the differentiable matmul, with its gradient
    mm(xg, W).sum().backward()
    torch.testing.assert_close(xg.grad, W.sum(1).expand(20, 16), rtol=0, atol=1e-6)
    monkeypatch.setattr(pm, "_ENABLED", False)
    assert torch.equal(mm(x, W), x @ W) and not mm._packed


@needs_onednn
@pytest.mark.parametrize("activation", ["topk", "relu"])
def test_float32_graph_with_onednn_equals_the_reference_graph(monkeypatch, activation):
    """Whole float32 graphs, oneDNN on / off: the same edges to float32 rounding, both exact."""
    model = make_model64()
    tcs = make_transcoders(model, activation=activation)
    model.cfg.dtype = torch.float32
    model.to(torch.float32)
    for tc in tcs.values():
        tc.to(torch.float32)
    tokens = torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(5))
    graphs = {}
    for on in (True, False):
        monkeypatch.setattr(pm, "_ENABLED", on)
        graphs[on] = attribute(model, tcs, tokens, batch_size=4, progress=False)  # exactness checked inside
    fast, ref = graphs[True], graphs[False]
    assert torch.equal(fast.edge_target, ref.edge_target) and torch.equal(fast.edge_source, ref.edge_source)
    scale = float(ref.edge_weight.abs().max())
    assert float((fast.edge_weight - ref.edge_weight).abs().max()) <= 1e-5 * scale
    assert fast.metadata["exactness_max_rel_dev"] < 1e-5
