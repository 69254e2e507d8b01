"""The fused tanh-GELU swapped into loaded models equals TransformerLens's own ``gelu_new``."""

from __future__ import annotations

import torch
from transformer_lens.utilities.activation_functions import gelu_fast, gelu_new

import tc_circuits.models.fast_kernels as fk
from tc_circuits.models.fast_kernels import gelu_tanh, use_fast_kernels
from tc_circuits.organism import load_organism


def test_gelu_tanh_values_and_gradients_match_gelu_new():
    x64 = torch.linspace(-20, 20, 100_001, dtype=torch.float64)
    truth = gelu_new(x64)
    x = x64.float()
    # as accurate as TransformerLens's float32 formula (neither is more exact), and close to it
    assert (gelu_tanh(x).double() - truth).abs().max() <= (gelu_new(x).double() - truth).abs().max() + 1e-12
    assert (gelu_tanh(x) - gelu_new(x)).abs().max() < 1e-6
    assert (gelu_tanh(x) - gelu_fast(x)).abs().max() < 1e-6
    # gradients: against the float64 autograd gradient of the reference formula (TransformerLens's
    # float32 formula is off it by 5.6e-7, the fused kernel by 1.0e-6)
    xr = x64.clone().requires_grad_(True)
    gelu_new(xr).sum().backward()
    xf = x.clone().requires_grad_(True)
    gelu_tanh(xf).sum().backward()
    assert (xf.grad.double() - xr.grad).abs().max() < 2e-6
    # and the float64 kernel agrees with the float64 formula to rounding
    assert (gelu_tanh(x64) - truth).abs().max() < 1e-14


def test_loaded_model_uses_it_and_logits_match_the_reference(monkeypatch):
    model = load_organism()
    assert all(b.mlp.act_fn is gelu_tanh for b in model.blocks)
    assert use_fast_kernels(model) == 0  # idempotent
    monkeypatch.setattr(fk, "_ENABLED", False)
    ref = load_organism()
    assert all(b.mlp.act_fn is not gelu_tanh for b in ref.blocks)
    toks = torch.randint(0, model.cfg.d_vocab, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, cache = model.run_with_cache(toks)
        want, ref_cache = ref.run_with_cache(toks)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale
    for name in ("blocks.1.mlp.hook_post", "blocks.2.hook_mlp_out"):
        assert (cache[name] - ref_cache[name]).abs().max() <= 1e-5 * ref_cache[name].abs().max()


def test_other_activations_are_left_alone():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=11, n_ctx=8,
                                  act_fn="gelu")
    model = HookedTransformer(cfg, move_to_device=False)
    before = model.blocks[0].mlp.act_fn
    assert use_fast_kernels(model) == 0 and model.blocks[0].mlp.act_fn is before
    cfg.act_fn = "gelu_new"
    assert use_fast_kernels(model) == 1 and model.blocks[0].mlp.act_fn is gelu_tanh
