"""sparsify import onto a real (tiny) GPT-2 converted by TransformerLens: the HF-module hookpoint
is mapped exactly onto TransformerLens sites (LayerNorm gain/bias, output centring)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tc_circuits.formats import detect_format, load_any, load_sparsify, load_sparsify_many
from tc_circuits.formats.sparsify import parse_hookpoint
from tc_circuits.models.loading import load_model

D, N, K, LAYER = 32, 64, 6, 1


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=D, n_head=4, vocab_size=97, n_positions=32))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.3 * noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.2 * noise)
    hf.eval()
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    return hf, path


def hf_mlp_io(hf, tokens, layer=LAYER):
    """The input and output of HF module ``h.{layer}.mlp`` (what sparsify hooks)."""
    seen = {}
    handle = hf.transformer.h[layer].mlp.register_forward_hook(
        lambda mod, args, out: seen.update(x=args[0].detach(), y=out.detach()))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    return seen["x"][0], seen["y"][0]


def write_sparsify(path, *, transcode=True, skip=True, activation="topk"):
    g = torch.Generator().manual_seed(1)
    t = {"encoder.weight": torch.randn(N, D, generator=g) / D**0.5, "encoder.bias": torch.randn(N, generator=g) * 0.1,
         "W_dec": torch.randn(N, D, generator=g), "b_dec": torch.randn(D, generator=g)}
    if skip:
        t["W_skip"] = torch.randn(D, D, generator=g) / D**0.5
    path.mkdir(parents=True)
    save_file(t, str(path / "sae.safetensors"))
    cfg = {"activation": activation, "expansion_factor": 32, "normalize_decoder": True, "num_latents": N,
           "k": K, "multi_topk": False, "skip_connection": skip, "transcode": transcode, "d_in": D}
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t


def reference_forward(t, x, transcode=True):
    """sparsify SparseCoder.forward: relu(linear) -> top-k -> W_dec + b_dec (+ x @ W_skip.T)."""
    if not transcode:
        x_enc = x - t["b_dec"]
    else:
        x_enc = x
    pre = torch.relu(x_enc @ t["encoder.weight"].T + t["encoder.bias"])
    vals, idx = pre.topk(K, dim=-1)
    out = torch.zeros_like(pre).scatter(-1, idx, vals) @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return out


TOKENS = torch.tensor([[5, 17, 3, 88, 42, 9, 60, 1]])


def test_transcoder_maps_exactly_onto_processed_model(gpt2, tmp_path):
    hf, path = gpt2
    model = load_model(path)  # fold_ln + center_writing_weights + center_unembed
    t = write_sparsify(tmp_path / "h.1.mlp")
    assert detect_format(tmp_path / "h.1.mlp") == "sparsify"
    tc = load_sparsify(tmp_path / "h.1.mlp", hf_model=hf, model_name=model.cfg.model_name)
    assert (tc.cfg.input_site, tc.cfg.output_site) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    tc.check_compatible(model)  # sites, widths, name and processing flags agree
    x_hf, y_hf = hf_mlp_io(hf, TOKENS)
    _, cache = model.run_with_cache(TOKENS)
    x_tl, y_tl = cache["blocks.1.ln2.hook_normalized"][0], cache["blocks.1.hook_mlp_out"][0]
    # the premise: TL's MLP output is HF's, centred over d_model
    assert torch.allclose(y_tl, y_hf - y_hf.mean(-1, keepdim=True), atol=1e-4)
    ref = reference_forward(t, x_hf)
    with torch.no_grad():
        ours = tc(x_tl).output
    assert torch.allclose(ours, ref - ref.mean(-1, keepdim=True), atol=1e-4)
    assert tc.cfg.weight_processing["fold_ln"] and tc.cfg.k == K


def test_unprocessed_model(gpt2, tmp_path):
    hf, path = gpt2
    model = load_model(path, fold_ln=False, center_writing_weights=False, center_unembed=False)
    t = write_sparsify(tmp_path / "h.1.mlp")
    proc = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    tc = load_sparsify(tmp_path / "h.1.mlp", processing=proc, hf_model=hf)
    tc.check_compatible(model)
    x_hf, _ = hf_mlp_io(hf, TOKENS)
    _, cache = model.run_with_cache(TOKENS)
    x_tl = cache["blocks.1.ln2.hook_normalized"][0]
    # even unfolded, TransformerLens hooks the normalised vector before LN's gain and bias
    ln = hf.transformer.h[1].ln_2
    assert torch.allclose(x_tl * ln.weight + ln.bias, x_hf, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(tc(x_tl).output, reference_forward(t, x_hf), atol=1e-4)


def test_residual_sae_needs_uncentred_model(gpt2, tmp_path):
    hf, _ = gpt2
    t = write_sparsify(tmp_path / "transformer.h.0", transcode=False, skip=False)
    with pytest.raises(ValueError, match="center_writing_weights"):
        load_sparsify(tmp_path / "transformer.h.0")
    proc = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}
    tc = load_sparsify(tmp_path / "transformer.h.0", processing=proc)
    assert tc.cfg.input_site == tc.cfg.output_site == "blocks.0.hook_resid_post"
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # b_dec subtracted before the encoder, folded into b_enc
        assert torch.allclose(tc(x).output, reference_forward(t, x, transcode=False), atol=1e-4)


def test_many_and_refusals(gpt2, tmp_path):
    hf, _ = gpt2
    write_sparsify(tmp_path / "set" / "h.0.mlp")
    write_sparsify(tmp_path / "set" / "h.1.mlp")
    tset = load_any(tmp_path / "set", hf_model=hf.state_dict())
    assert sorted(tset) == [0, 1]
    assert sorted(load_sparsify_many(tmp_path / "set", hf_model=hf)) == [0, 1]
    with pytest.raises(ValueError, match="hf_model"):
        load_sparsify(tmp_path / "set" / "h.0.mlp")
    with pytest.raises(ValueError, match="ln_2"):
        load_sparsify(tmp_path / "set" / "h.0.mlp", hf_model={})
    write_sparsify(tmp_path / "attn" / "h.0.attn")
    with pytest.raises(ValueError, match="cannot be mapped"):
        load_sparsify(tmp_path / "attn" / "h.0.attn", hf_model=hf)
    write_sparsify(tmp_path / "gm" / "h.0.mlp", activation="groupmax")
    with pytest.raises(ValueError, match="groupmax"):
        load_sparsify(tmp_path / "gm" / "h.0.mlp", hf_model=hf)
    cfg = json.loads((tmp_path / "gm" / "h.0.mlp" / "cfg.json").read_text())
    (tmp_path / "gm" / "h.0.mlp" / "cfg.json").write_text(json.dumps(dict(cfg, activation="topk", num_latents=N + 1)))
    with pytest.raises(ValueError, match="encoder.weight"):
        load_sparsify(tmp_path / "gm" / "h.0.mlp", hf_model=hf)
    assert parse_hookpoint("transformer.h.11.mlp") == (11, "mlp")
    assert parse_hookpoint("h.2") == (2, "resid")


def test_export_reads_hf_activations_and_round_trips(gpt2, tmp_path):
    """save_sparsify: sparsify's equations on HF's h.1.mlp input give our output (centred
    decoder written as is); importing it back gives our transcoder."""
    from safetensors.torch import load_file

    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
    from tc_circuits.formats import save_sparsify

    hf, path = gpt2
    model = load_model(path)
    tc = Transcoder(TranscoderConfig.for_model(model, LAYER, N, kind="skip_transcoder", activation="topk", k=K), seed=1)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_sparsify({LAYER: tc}, tmp_path / "out", hf_model=hf)
    folder = tmp_path / "out" / f"h.{LAYER}.mlp"
    raw = json.loads((folder / "cfg.json").read_text())
    assert raw["transcode"] and raw["skip_connection"] and raw["k"] == K and raw["num_latents"] == N
    t = load_file(str(folder / "sae.safetensors"))
    x_hf, _ = hf_mlp_io(hf, TOKENS)
    _, cache = model.run_with_cache(TOKENS)
    with torch.no_grad():
        ours = tc(cache[f"blocks.{LAYER}.ln2.hook_normalized"][0]).output
    assert torch.allclose(reference_forward(t, x_hf), ours, atol=1e-4)
    back = load_sparsify(folder, hf_model=hf, model_name=model.cfg.model_name)
    for name in ("W_enc", "b_enc"):
        assert torch.allclose(getattr(back, name), getattr(tc, name), atol=1e-5), name
    x = cache[f"blocks.{LAYER}.ln2.hook_normalized"][0]
    with torch.no_grad():  # the import centres the decoder (center_writing_weights): same up to the mean
        assert torch.allclose(back(x).output, ours - ours.mean(-1, keepdim=True), atol=1e-5)
    relu = Transcoder(TranscoderConfig.for_model(model, LAYER, N, activation="relu", k=None))
    with pytest.raises(ValueError, match="TopK"):
        save_sparsify({LAYER: relu}, tmp_path / "bad", hf_model=hf)
    with pytest.raises(ValueError, match="hf_model"):
        save_sparsify({LAYER: tc}, tmp_path / "bad")
