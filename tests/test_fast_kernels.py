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
    assert use_fast_kernels(model) == 1  # the unembedding only
    assert model.blocks[0].mlp.act_fn is before and type(model.unembed) is fk.FastUnembed
    cfg.act_fn = "gelu_new"
    assert use_fast_kernels(model) == 1 and model.blocks[0].mlp.act_fn is gelu_tanh


def _gated_model(dtype=torch.float32):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=192, d_vocab=97, n_ctx=16,
                                  act_fn="silu", gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
                                  seed=0, dtype=dtype)
    model = HookedTransformer(cfg, move_to_device=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.2).to(dtype))
    return model


def test_gated_mlp_and_unembed_forwards_match_transformer_lens():
    ref = _gated_model()
    model = _gated_model()
    assert use_fast_kernels(model) == 3 and use_fast_kernels(model) == 0  # 2 gated MLPs + unembed; idempotent
    assert type(model.blocks[0].mlp) is fk.FastGatedMLP and isinstance(model.blocks[0].mlp, fk._GatedMLP)
    toks = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    names = lambda n: n.endswith(("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post", "hook_mlp_out"))  # noqa: E731
    with torch.no_grad():
        got, cache = model.run_with_cache(toks, names_filter=names)
        want, ref_cache = ref.run_with_cache(toks, names_filter=names)
    assert set(cache.keys()) == set(ref_cache.keys()) and len(cache.keys()) == 8  # the same hooks fire
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    for name in ref_cache.keys():
        assert (cache[name] - ref_cache[name]).abs().max() <= 1e-6 * ref_cache[name].abs().max(), name
    # gradients of the parameters agree too (training runs through these forwards)
    model(toks, return_type="loss").backward()
    ref(toks, return_type="loss").backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5 * (1 + q.grad.abs().max()), n


def test_half_precision_keeps_transformer_lens_path_and_models_still_pickle():
    import copy
    import io

    ref = _gated_model(torch.bfloat16)
    model = _gated_model(torch.bfloat16)
    use_fast_kernels(model)
    toks = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(toks), ref(toks))  # bfloat16: TransformerLens's own contiguous-copy path
    clone = copy.deepcopy(model)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert type(clone.blocks[1].mlp) is type(loaded.blocks[1].mlp) is fk.FastGatedMLP
    with torch.no_grad():
        assert torch.equal(loaded(toks), ref(toks))


def test_subclasses_and_disabled_swap_are_left_alone(monkeypatch):
    model = _gated_model()

    class MyMLP(fk._GatedMLP):
        pass

    model.blocks[0].mlp.__class__ = MyMLP
    assert use_fast_kernels(model) == 2 and type(model.blocks[0].mlp) is MyMLP
    monkeypatch.setattr(fk, "_ENABLED", False)
    other = _gated_model()
    assert use_fast_kernels(other) == 0 and type(other.unembed) is fk._Unembed
