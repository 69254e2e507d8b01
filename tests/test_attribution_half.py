"""Attribution of half-precision models (bfloat16 / float16) against the float32 graph.

A half-precision model's graph is built in the model's dtype (the transposed pass, the edges'
matmuls); TransformerLens normalises such models in float32, and the linearised model casts
those values to the model's dtype as TransformerLens does after ``hook_normalized``. The graph
must pass its own exactness check at the dtype's default tolerance and agree with the float32
graph of the same weights to half-precision rounding (``docs/guarantees.md``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from attribution_helpers import make_transcoders
from conftest import make_tiny_model
from transformer_lens import HookedTransformer

from tc_circuits.attribution import attribute, logit_target
from tc_circuits.attribution.exactness import default_exactness_tol
from tc_circuits.graph import AttributionGraph, to_json_dict, validate_json_dict
from tc_circuits.graph.graph import type_code

#: largest |edge - float32 edge| over the largest |edge|, measured (bfloat16 / float16) 0.7 % / 0.1 %
#: for edges from features, embeddings, positions and the constant: the engine's rounding
NON_ERROR_BOUND = {torch.bfloat16: 0.02, torch.float16: 0.005}
#: the same for error nodes, measured 9 % / 0.14 %: a half-precision model's MLP output is
#: itself rounded (8 / 11 significant bits) and the error node ``mlp_out - transcoder`` is
#: where that difference between the two models lands
ERROR_BOUND = {torch.bfloat16: 0.15, torch.float16: 0.01}


def _half(model, dtype):
    cfg = copy.deepcopy(model.cfg)
    cfg.dtype = dtype
    half = HookedTransformer(cfg)
    half.load_state_dict(model.state_dict())  # cast once from the float32 weights
    half.eval()
    return half


def _edges(graph):
    """``{(target key, source key): weight}`` with nodes keyed by (type, layer, pos, latent)."""
    n = graph.nodes
    key = [(int(n.type[i]), int(n.layer[i]), int(n.pos[i]), int(n.latent[i])) for i in range(graph.n_nodes)]
    return {
        (key[t], key[s]): float(w)
        for t, s, w in zip(graph.edge_target.tolist(), graph.edge_source.tolist(), graph.edge_weight.tolist())
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("coder_dtype", ["model", "float32"])
def test_half_precision_graph_is_exact_and_agrees_with_float32(dtype, coder_dtype):
    model = make_tiny_model(d_model=64, n_heads=4, d_mlp=128, n_ctx=16)
    tcs = make_transcoders(model, activation="topk", skip=True, n_latents=128, k=8)
    toks = torch.randint(0, 50, (12,), generator=torch.Generator().manual_seed(5))
    targets = [logit_target(5, 50), logit_target(11, 50)]
    ref = attribute(model, tcs, toks, targets=targets, progress=False)

    half = _half(model, dtype)
    half_tcs = tcs if coder_dtype == "float32" else {L: copy.deepcopy(tc).to(dtype) for L, tc in tcs.items()}
    g = attribute(half, half_tcs, toks, targets=targets, progress=False)  # default tolerance: raises if not met

    rel = g.metadata["exactness_max_rel_dev"]
    assert rel <= default_exactness_tol(dtype)
    assert rel > 1e-5  # really computed in half precision (float32 gives ~1e-7)
    # the same active features (their pre-activations are far from the TopK boundary here)
    both = set(_edges(ref)) & set(_edges(g))
    assert len(both) >= 0.95 * ref.n_edges
    a, b = _edges(ref), _edges(g)
    err = type_code("error")
    for from_error, bound in ((False, NON_ERROR_BOUND[dtype]), (True, ERROR_BOUND[dtype])):
        keys = [k for k in both if (k[1][0] == err) == from_error]
        wa = torch.tensor([a[k] for k in keys], dtype=torch.float64)
        wb = torch.tensor([b[k] for k in keys], dtype=torch.float64)
        assert float((wa - wb).abs().max()) <= bound * max(abs(v) for v in a.values())
        assert float(torch.nn.functional.cosine_similarity(wa, wb, dim=0)) > 0.99
    # target values: the half model's own logits, within its rounding of the float32 ones
    tv_ref = ref.nodes.value[ref.target_indices].double()
    tv = g.nodes.value[g.target_indices].double()
    assert torch.allclose(tv, tv_ref, rtol=0.05, atol=0.05 * float(tv_ref.abs().max()))


def test_bfloat16_graph_saves_loads_and_exports(tmp_path):
    model = make_tiny_model()
    tcs = make_transcoders(model, activation="topk", skip=True)
    half = _half(model, torch.bfloat16)
    g = attribute(half, tcs, torch.arange(1, 9), progress=False)
    assert g.edge_weight.dtype == torch.bfloat16  # edges kept in the model's dtype
    g.save(tmp_path / "g")
    back = AttributionGraph.load(tmp_path / "g")
    assert torch.equal(back.edge_weight, g.edge_weight) and torch.equal(back.edge_source, g.edge_source)
    data = to_json_dict(g, slug="bf16")
    validate_json_dict(data)
    # the exported link weights are the graph's (pruned) edges as Python floats
    w = {float(x) for x in g.edge_weight.float().tolist()}
    assert data["links"] and all(link["weight"] in w for link in data["links"])
