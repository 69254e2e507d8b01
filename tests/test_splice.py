"""Splicing: exact reproductions leave logits unchanged; hooks always removed; bad input errors."""

from __future__ import annotations

import pytest
import torch

from tc_circuits.models.sites import Site
from tc_circuits.evaluation.splice import count_hooks, run_spliced, splice
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from tests.conftest import make_tiny_model


def _random_tc(model, layer, kind="transcoder", n_latents=48, seed=0, **kw):
    cfg = TranscoderConfig.for_model(model, layer, n_latents, kind=kind, k=8, **kw)
    tc = Transcoder(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return tc


def _linear_mlp_model(seed=0):
    """Tiny model whose layer-0 MLP is exactly affine: relu(z) - relu(-z) = z.

    Returns the model and the affine map (W, b) from ``ln2.hook_normalized`` (which is *before*
    the LayerNorm gain w and bias b_ln in an unfolded model) to ``hook_mlp_out``:
    ``mlp_out = (x * w + b_ln) @ A @ B + b_out``.
    """
    model = make_tiny_model(act_fn="relu", d_mlp=64, seed=seed)
    d, r = model.cfg.d_model, 32
    gen = torch.Generator().manual_seed(seed + 7)
    A = 0.3 * torch.randn(d, r, generator=gen)
    B = 0.3 * torch.randn(r, d, generator=gen)
    mlp = model.blocks[0].mlp
    with torch.no_grad():
        mlp.W_in.copy_(torch.cat([A, -A], 1))
        mlp.b_in.zero_()
        mlp.W_out.copy_(torch.cat([B, -B], 0))
    ln = model.blocks[0].ln2
    W = ln.w.detach()[:, None] * (A @ B)
    b = ln.b.detach() @ A @ B + mlp.b_out.detach()
    return model, W, b


def test_exact_skip_transcoder_leaves_logits_unchanged(tiny_tokens):
    model, W, b = _linear_mlp_model()
    tc = _random_tc(model, 0, kind="skip_transcoder")
    with torch.no_grad():
        tc.W_dec.zero_()  # latents fire but contribute nothing
        tc.W_skip.copy_(W)
        tc.b_dec.copy_(b)
    orig = model(tiny_tokens)
    spliced = run_spliced(model, tiny_tokens, {0: tc})
    torch.testing.assert_close(spliced, orig, atol=1e-5, rtol=1e-5)
    # a wrong skip map changes the logits: the splice really replaced the MLP
    with torch.no_grad():
        tc.W_skip.mul_(0.5)
    assert (run_spliced(model, tiny_tokens, [tc]) - orig).abs().max() > 1e-2


def test_exact_sae_leaves_logits_unchanged(tiny_model, tiny_tokens):
    d = tiny_model.cfg.d_model
    cfg = TranscoderConfig.for_model(tiny_model, 1, 2 * d, kind="sae", activation="relu")
    sae = Transcoder(cfg)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    orig = tiny_model(tiny_tokens)
    with splice(tiny_model, {1: sae}) as state:
        spliced = tiny_model(tiny_tokens)
    torch.testing.assert_close(spliced, orig, atol=1e-5, rtol=1e-5)
    _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter="blocks.1.hook_mlp_out")
    y = cache["blocks.1.hook_mlp_out"]
    torch.testing.assert_close(state.latents[1], torch.cat([y.relu(), (-y).relu()], -1))


def test_error_term_is_identity_and_latents_match_direct_encode(tiny_model, tiny_tokens):
    tcs = TranscoderSet({0: _random_tc(tiny_model, 0), 1: _random_tc(tiny_model, 1, seed=1)})
    orig, cache = tiny_model.run_with_cache(tiny_tokens)
    with splice(tiny_model, tcs, error_term=True) as state:
        logits = tiny_model(tiny_tokens)
    torch.testing.assert_close(logits, orig, atol=1e-5, rtol=1e-5)
    for layer, tc in tcs.items():
        x = cache[Site(layer, "mlp_in").hook_name]
        y = cache[Site(layer, "mlp_out").hook_name]
        out = tc(x)
        torch.testing.assert_close(state.latents[layer], out.latents)
        torch.testing.assert_close(state.errors[layer], y - out.output)
    assert count_hooks(tiny_model) == 0


def test_splice_last_layer_matches_manual_recomputation(tiny_model, tiny_tokens):
    tc = _random_tc(tiny_model, 1)
    _, cache = tiny_model.run_with_cache(tiny_tokens)
    resid = cache["blocks.1.hook_resid_mid"] + tc(cache["blocks.1.ln2.hook_normalized"]).output
    expected = tiny_model.unembed(tiny_model.ln_final(resid))
    torch.testing.assert_close(run_spliced(tiny_model, tiny_tokens, tc), expected, atol=1e-5, rtol=1e-5)
    # splicing only layer 0 of a set leaves layer 1's MLP in place
    tcs = {0: _random_tc(tiny_model, 0), 1: tc}
    with splice(tiny_model, tcs, layers=[0]) as state:
        tiny_model(tiny_tokens)
    assert state.layers == [0] and set(state.latents) == {0}


def test_composes_with_run_with_cache_and_hooks(tiny_model, tiny_tokens):
    tc = _random_tc(tiny_model, 0)
    with splice(tiny_model, {0: tc}) as state:
        n_splice_hooks = count_hooks(tiny_model)
        assert n_splice_hooks == 2
        _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter=lambda n: "mlp_out" in n)
        assert count_hooks(tiny_model) == n_splice_hooks
        torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], state.reconstructions[0])
        # the user's own ablation of layer 1 composes with the splice of layer 0
        out = tiny_model.run_with_hooks(
            tiny_tokens, fwd_hooks=[("blocks.1.hook_mlp_out", lambda a, hook: torch.zeros_like(a))]
        )
        assert count_hooks(tiny_model) == n_splice_hooks
    # reference: both interventions done by hand with plain hooks
    recon = {}

    def rec(a, hook):
        recon["x"] = a

    ref = tiny_model.run_with_hooks(
        tiny_tokens,
        fwd_hooks=[
            ("blocks.0.ln2.hook_normalized", rec),
            ("blocks.0.hook_mlp_out", lambda a, hook: tc(recon["x"]).output),
            ("blocks.1.hook_mlp_out", lambda a, hook: torch.zeros_like(a)),
        ],
    )
    torch.testing.assert_close(out, ref)
    assert count_hooks(tiny_model) == 0


def test_latent_gradients_flow_through_decoder(tiny_model, tiny_tokens):
    tc = _random_tc(tiny_model, 0)
    grads = {}

    def keep(a, hook):
        a.retain_grad()
        grads["y"] = a

    with splice(tiny_model, {0: tc}, error_term=True, retain_grad=True) as state:
        logits = tiny_model.run_with_hooks(tiny_tokens, fwd_hooks=[("blocks.0.hook_mlp_out", keep)])
        logits[:, -1, 3].sum().backward()
    lat = state.latents[0]
    assert lat.grad is not None
    torch.testing.assert_close(lat.grad, grads["y"].grad @ tc.W_dec.detach().T)


def test_hooks_removed_after_exception(tiny_model, tiny_tokens):
    tc = _random_tc(tiny_model, 0)
    with pytest.raises(RuntimeError, match="boom"):
        with splice(tiny_model, [tc]):
            tiny_model(tiny_tokens)
            assert count_hooks(tiny_model) == 2
            raise RuntimeError("boom")
    assert count_hooks(tiny_model) == 0


def test_incompatible_transcoders_raise(tiny_model):
    other = make_tiny_model(model_name="other-model")
    with pytest.raises(ValueError, match="other-model"):
        with splice(tiny_model, [_random_tc(other, 0)]):
            pass
    wide = make_tiny_model(d_model=16, n_heads=2)
    with pytest.raises(ValueError, match="d_in=16|d_model"):
        run_spliced(tiny_model, torch.zeros(1, 4, dtype=torch.long), [_random_tc(wide, 0)])
    tc = _random_tc(tiny_model, 0)
    folded = Transcoder(tc.cfg.replace(weight_processing={"fold_ln": True}))
    with pytest.raises(ValueError, match="fold_ln"):
        run_spliced(tiny_model, torch.zeros(1, 4, dtype=torch.long), [folded])
    deep = Transcoder(tc.cfg.replace(input_site="blocks.5.ln2.hook_normalized", output_site="blocks.5.hook_mlp_out"))
    with pytest.raises(ValueError, match="layer 5"):
        run_spliced(tiny_model, torch.zeros(1, 4, dtype=torch.long), [deep])
    with pytest.raises(ValueError, match="stored under layer 1"):
        run_spliced(tiny_model, torch.zeros(1, 4, dtype=torch.long), {1: tc})
    with pytest.raises(ValueError, match="no transcoder for layers"):
        run_spliced(tiny_model, torch.zeros(1, 4, dtype=torch.long), [tc], layers=[1])
    with pytest.raises(ValueError, match="two transcoders"):
        run_spliced(tiny_model, torch.zeros(1, 4, dtype=torch.long), [tc, tc])
    assert count_hooks(tiny_model) == 0
