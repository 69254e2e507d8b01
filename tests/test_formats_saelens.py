"""SAELens import (against SAELens' equations) and bit-exact export round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tc_circuits.formats import detect_format, load_any, load_saelens, save_saelens
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

D_IN, D_OUT, N = 8, 6, 20


def _g(seed):
    return torch.Generator().manual_seed(seed)


def write_saelens(path, arch, *, apply_b_dec=True, v6=True, kwargs=None, k=None, rescale=False, norm="none"):
    g = _g(0)
    transcoder = "transcoder" in arch
    d_out = D_OUT if transcoder else D_IN
    t = {"W_enc": torch.randn(D_IN, N, generator=g), "b_enc": torch.randn(N, generator=g) * 0.3,
         "W_dec": torch.randn(N, d_out, generator=g), "b_dec": torch.randn(d_out, generator=g)}
    if arch.endswith("skip_transcoder"):
        t["W_skip"] = torch.randn(d_out, D_IN, generator=g)
    if "jumprelu" in arch:
        t["threshold"] = torch.rand(N, generator=g) - 0.2  # some negative: relu(z) * (z > t)
    if arch == "gated":
        b = t.pop("b_enc")
        t.update(b_gate=b, b_mag=torch.randn(N, generator=g) * 0.3, r_mag=torch.randn(N, generator=g) * 0.5)
    hook_in = "blocks.1.ln2.hook_normalized" if transcoder else "blocks.1.hook_resid_post"
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": N, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": norm,
           "rescale_acts_by_decoder_norm": rescale}
    meta = {"model_name": "gpt2-small", "hook_head_index": None,
            "model_from_pretrained_kwargs": kwargs or {}}
    if v6:
        meta["hook_name"] = hook_in
    else:
        cfg["hook_name"] = hook_in
    cfg["metadata"] = meta
    if transcoder:
        cfg.update(d_out=D_OUT, hook_name_out="blocks.1.hook_mlp_out", hook_layer_out=1)
    if k is not None:
        cfg["k"] = k
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "sae_weights.safetensors"))
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t, cfg


def reference_forward(t, cfg, x, scale=None):
    """SAELens: sae_in = x - b_dec * apply_b_dec_to_input (SAEs only); relu / topk / jumprelu /
    gated; TopK pre-activations times |W_dec| (rescale_acts_by_decoder_norm); a mid-training
    checkpoint's activation scaler multiplies the input and divides the output."""
    arch = cfg["architecture"]
    transcoder = "transcoder" in arch
    x_in = x if scale is None else x * scale
    sae_in = x_in if transcoder else x_in - t["b_dec"] * cfg["apply_b_dec_to_input"]
    norms = t["W_dec"].norm(dim=-1)
    if arch == "gated":
        gate = (sae_in @ t["W_enc"] + t["b_gate"]) > 0
        acts = gate * (sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"]).relu()
    else:
        pre = sae_in @ t["W_enc"] + t["b_enc"]
        if cfg.get("rescale_acts_by_decoder_norm"):
            pre = pre * norms
        if arch == "topk":
            vals, idx = pre.topk(cfg["k"], dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        elif "jumprelu" in arch:
            acts = pre.relu() * (pre > t["threshold"])
        else:
            acts = pre.relu()
    dec_in = acts / norms if cfg.get("rescale_acts_by_decoder_norm") else acts
    out = dec_in @ t["W_dec"] + t["b_dec"]
    if scale is not None:
        out = out / scale
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return out, acts


@pytest.mark.parametrize("arch,apply_b_dec,v6", [
    ("standard", True, True), ("standard", False, False), ("topk", True, True), ("jumprelu", True, False),
    ("transcoder", True, True), ("skip_transcoder", True, True), ("jumprelu_transcoder", False, True),
    ("jumprelu_skip_transcoder", False, True), ("gated", True, True), ("gated", False, True),
])
def test_import_matches_saelens_equations(tmp_path, arch, apply_b_dec, v6):
    t, cfg = write_saelens(tmp_path / arch, arch, apply_b_dec=apply_b_dec, v6=v6, k=5 if arch == "topk" else None)
    assert detect_format(tmp_path / arch) == "saelens"
    tc = load_any(tmp_path / arch)
    x = torch.randn(7, D_IN, generator=_g(2))
    ref_out, ref_acts = reference_forward(t, cfg, x)
    out = tc(x)
    assert torch.allclose(out.output, ref_out, atol=1e-4)
    assert torch.equal(out.latents > 0, ref_acts > 0)
    assert tc.cfg.model_name == "gpt2"
    assert tc.cfg.is_sae == ("transcoder" not in arch)
    assert tc.cfg.weight_processing == {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}


@pytest.mark.parametrize("scaled", [False, True])
def test_topk_training_output_rescale_and_normalisation_folded(tmp_path, scaled):
    """SAELens' TopK defaults: rescale_acts_by_decoder_norm=True, expected_average_only_in (the
    final save has the factor folded; a checkpoint keeps it in activation_scaler.json)."""
    t, cfg = write_saelens(tmp_path, "topk", k=5, rescale=True, norm="expected_average_only_in")
    if scaled:
        (tmp_path / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 2.5}))
    tc = load_saelens(tmp_path)
    x = torch.randn(7, D_IN, generator=_g(2))
    ref_out, ref_acts = reference_forward(t, cfg, x, scale=2.5 if scaled else None)
    out = tc(x)
    assert torch.allclose(out.output, ref_out, atol=1e-4)
    assert torch.equal(out.latents > 0, ref_acts > 0)


def test_processing_from_model_kwargs(tmp_path):
    write_saelens(tmp_path, "standard", kwargs={"center_writing_weights": False})
    tc = load_saelens(tmp_path)
    assert tc.cfg.weight_processing == {"fold_ln": True, "center_writing_weights": False, "center_unembed": True}


def _random(activation, skip, sae=False):
    d_out = D_IN if sae else D_OUT
    cfg = TranscoderConfig(d_in=D_IN, d_out=d_out, n_latents=N, input_site="blocks.2.ln2.hook_normalized" if not sae
                           else "blocks.2.hook_mlp_out", output_site="blocks.2.hook_mlp_out", activation=activation,
                           k=3 if activation == "topk" else None, skip=skip, model_name="tiny", model_d_model=D_IN,
                           weight_processing={"fold_ln": True, "center_writing_weights": False, "center_unembed": True})
    tc = Transcoder(cfg)
    g = _g(5)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return tc


@pytest.mark.parametrize("activation,skip,sae", [
    ("relu", False, False), ("relu", True, False), ("jumprelu", False, False),
    ("topk", False, True), ("relu", False, True), ("jumprelu", False, True), ("jumprelu", True, False),
])
def test_export_import_round_trip_is_bit_exact(tmp_path, activation, skip, sae):
    tc = _random(activation, skip, sae)
    save_saelens(tc, tmp_path)
    raw = json.loads((tmp_path / "cfg.json").read_text())
    assert raw["metadata"]["sae_lens_version"].startswith("6.")
    back = load_saelens(tmp_path)
    assert back.cfg.replace(extra={}) == tc.cfg.replace(extra={})
    for name, p in tc.named_parameters():
        q = dict(back.named_parameters())[name]
        if name == "log_threshold":
            assert torch.allclose(q, p, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(q, p), name


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="TopK transcoder"):
        save_saelens(_random("topk", False), tmp_path / "a")
    with pytest.raises(ValueError, match="TopK"):
        save_saelens(_random("topk", True), tmp_path / "b")
    t, cfg = write_saelens(tmp_path / "c", "standard")
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(dict(cfg, normalize_activations="layer_norm")))
    with pytest.raises(ValueError, match="normalize_activations"):
        load_saelens(tmp_path / "c")
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(dict(cfg, architecture="gated")))
    with pytest.raises(ValueError, match="b_gate"):
        load_saelens(tmp_path / "c")
    (tmp_path / "c" / "cfg.json").write_text(json.dumps(dict(cfg, d_sae=N + 1)))
    with pytest.raises(ValueError, match="W_enc"):
        load_saelens(tmp_path / "c")
