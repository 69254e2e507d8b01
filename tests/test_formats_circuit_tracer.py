"""circuit-tracer import/export against circuit-tracer's own equations, with its conventions:
unprocessed models (``mlp.hook_in`` = LayerNorm output n(x) * w + b, uncentred MLP output)."""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from tc_circuits.formats import detect_format, load_any, load_circuit_tracer, save_circuit_tracer

D, N = 8, 24
NONE = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def ln_state(n_layers=2):
    """An unprocessed TransformerLens state dict's ln2 gain/bias (what hf_model= accepts)."""
    g = _gen(7)
    sd = {}
    for layer in range(n_layers):
        sd[f"blocks.{layer}.ln2.w"] = 1 + 0.3 * torch.randn(D, generator=g)
        sd[f"blocks.{layer}.ln2.b"] = 0.2 * torch.randn(D, generator=g)
    return sd


def write_ct(path, n_layers=2, *, skip=True, threshold=True, in_hook="mlp.hook_in", out_hook="mlp.hook_out"):
    """A circuit-tracer set in its documented layout: W_enc [n, d], W_dec [n, d], W_skip [d, d]."""
    g = _gen()
    layers = []
    for layer in range(n_layers):
        t = {
            "W_enc": torch.randn(N, D, generator=g),
            "W_dec": torch.randn(N, D, generator=g),
            "b_enc": torch.randn(N, generator=g) * 0.3,
            "b_dec": torch.randn(D, generator=g),
        }
        if skip:
            t["W_skip"] = torch.randn(D, D, generator=g)
        if threshold:
            t["activation_function.threshold"] = torch.rand(N, generator=g)
        save_file(t, str(path / f"layer_{layer}.safetensors"))
        layers.append(t)
    cfg = {"model_name": "gpt2", "model_kind": "transcoder_set", "scan": "x", "feature_input_hook": in_hook,
           "feature_output_hook": out_hook, "transcoders": [f"layer_{i}.safetensors" for i in range(n_layers)]}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return layers


def ct_forward(t, x):
    """circuit-tracer: F.linear(x, W_enc, b_enc) -> JumpReLU / ReLU -> acts @ W_dec + b_dec + x @ W_skip.T."""
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    thr = t.get("activation_function.threshold")
    acts = pre * (pre > thr) if thr is not None else pre.relu()
    out = acts @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return out, acts


def normed(seed=3, n=5):
    x = torch.randn(n, D, generator=_gen(seed))
    x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt()


@pytest.mark.parametrize("skip,threshold", [(True, True), (False, False)])
def test_import_folds_layernorm_and_centres(tmp_path, skip, threshold):
    layers = write_ct(tmp_path, skip=skip, threshold=threshold)
    assert detect_format(tmp_path) == "circuit-tracer"
    sd = ln_state()
    tset = load_circuit_tracer(tmp_path, hf_model=sd)  # target: from_pretrained processing
    n = normed()
    for layer, t in enumerate(layers):
        tc = tset[layer]
        assert tc.cfg.input_site == f"blocks.{layer}.ln2.hook_normalized"
        assert tc.cfg.activation == ("jumprelu" if threshold else "relu") and tc.cfg.skip == skip
        assert tc.cfg.weight_processing["center_writing_weights"] is True
        x_ct = n * sd[f"blocks.{layer}.ln2.w"] + sd[f"blocks.{layer}.ln2.b"]  # circuit-tracer's mlp.hook_in
        ref_out, ref_acts = ct_forward(t, x_ct)
        out = tc(n)
        assert torch.allclose(out.latents, ref_acts, atol=1e-5)
        assert torch.allclose(out.output, ref_out - ref_out.mean(-1, keepdim=True), atol=1e-4)
    assert tset[0].cfg.model_name == "gpt2"


def test_import_unprocessed_target_and_tl_hook_needs_no_layernorm(tmp_path):
    layers = write_ct(tmp_path, n_layers=1, in_hook="ln2.hook_normalized", out_hook="hook_mlp_out")
    tc = load_circuit_tracer(tmp_path, processing=NONE)[0]
    n = normed()
    ref_out, _ = ct_forward(layers[0], n)
    assert torch.allclose(tc(n).output, ref_out, atol=1e-5)
    write_ct(tmp_path, n_layers=1)
    with pytest.raises(ValueError, match="hf_model"):
        load_circuit_tracer(tmp_path)


def test_relative_tl_hook_names(tmp_path):
    write_ct(tmp_path, n_layers=1, in_hook="hook_resid_mid", out_hook="hook_mlp_out")
    tc = load_any(tmp_path)[0]
    assert tc.cfg.input_site == "blocks.0.hook_resid_mid"


def _random_set(activation, skip, n_layers=2, processing=None):
    out = TranscoderSet()
    for layer in range(n_layers):
        cfg = TranscoderConfig(d_in=D, d_out=D, n_latents=N, input_site=f"blocks.{layer}.ln2.hook_normalized",
                               output_site=f"blocks.{layer}.hook_mlp_out", activation=activation,
                               k=4 if activation == "topk" else None, skip=skip, model_name="tc-circuits/organism",
                               model_d_model=D, weight_processing=dict(processing or {}))
        tc = Transcoder(cfg)
        g = _gen(10 + layer)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        out[layer] = tc
    return out


@pytest.mark.parametrize("activation,skip", [("relu", True), ("topk", False), ("jumprelu", True)])
def test_export_import_round_trip_is_bit_exact(tmp_path, activation, skip):
    proc = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True}
    tset = _random_set(activation, skip, processing=proc)
    save_circuit_tracer(tset, tmp_path / "ct", allow_topk=True)
    back = load_circuit_tracer(tmp_path / "ct")
    for layer, tc in tset.items():
        b = back[layer]
        assert (b.cfg.activation, b.cfg.k, b.cfg.skip) == (activation, tc.cfg.k, skip)
        assert (b.cfg.input_site, b.cfg.output_site) == (tc.cfg.input_site, tc.cfg.output_site)
        assert (b.cfg.model_name, b.cfg.model_d_model, b.cfg.weight_processing) == (
            "tc-circuits/organism", D, proc)
        for name, p in tc.named_parameters():
            if name == "log_threshold":  # stored as exp(): within an ulp
                assert torch.allclose(dict(b.named_parameters())[name], p, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(dict(b.named_parameters())[name], p), name
    raw = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert raw["feature_input_hook"] == "ln2.hook_normalized" and raw["model_kind"] == "transcoder_set"
    assert "/" not in raw["scan"] and raw["scan"]
    assert all(os.path.isabs(p) for p in raw["transcoders"])
    assert raw.get("activation") == {"relu": "relu", "topk": "topk", "jumprelu": None}[activation]
    if activation == "topk":
        assert raw["k"] == 4
    if activation == "jumprelu":
        assert "activation_function.threshold" in load_file(raw["transcoders"][0])


def test_export_unfolds_layernorm_to_mlp_hook_in(tmp_path, monkeypatch):
    sd = ln_state()
    tset = _random_set("jumprelu", True)
    save_circuit_tracer(tset, tmp_path / "ct", hf_model=sd)
    raw = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert raw["feature_input_hook"] == "mlp.hook_in" and raw["feature_output_hook"] == "mlp.hook_out"
    n = normed()
    for layer, tc in tset.items():
        t = load_file(raw["transcoders"][layer])
        x_ct = n * sd[f"blocks.{layer}.ln2.w"] + sd[f"blocks.{layer}.ln2.b"]
        ref_out, ref_acts = ct_forward(t, x_ct)
        ours = tc(n)
        assert torch.allclose(ref_acts, ours.latents, rtol=1e-5, atol=1e-4)
        assert torch.allclose(ref_out, ours.output, rtol=1e-5, atol=1e-4)
    # moved folder, other working directory: still loads (entries resolved beside config.yaml)
    (tmp_path / "ct").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    back = load_circuit_tracer(tmp_path / "moved", hf_model=sd)
    for layer, tc in tset.items():
        assert torch.allclose(back[layer](n).output, tc(n).output, rtol=1e-5, atol=1e-4)


def test_topk_refused_without_a_reader(tmp_path, monkeypatch):
    import tc_circuits.formats.circuit_tracer as ct

    for reads in (None, False):
        monkeypatch.setattr(ct, "installed_reads_topk", lambda reads=reads: reads)
        with pytest.raises(ValueError, match="TopK"):
            save_circuit_tracer(_random_set("topk", False), tmp_path / "a")
    monkeypatch.setattr(ct, "installed_reads_topk", lambda: True)
    save_circuit_tracer(_random_set("topk", False), tmp_path / "b")
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["activation"] == "topk"


def test_bad_inputs(tmp_path):
    layers = write_ct(tmp_path, n_layers=1)
    sd = ln_state(1)
    bad = dict(layers[0], W_dec=torch.zeros(N, D + 1))
    save_file(bad, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(ValueError, match="W_dec"):
        load_circuit_tracer(tmp_path, hf_model=sd)
    save_file(dict(layers[0], **{"activation_function.threshold": -torch.ones(N)}), str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(ValueError, match="negative"):
        load_circuit_tracer(tmp_path, hf_model=sd)
    save_file(layers[0], str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(ValueError, match="LayerNorm weights"):
        load_circuit_tracer(tmp_path, hf_model={"unrelated": torch.zeros(1)})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model_kind": "crosslayer_transcoder"}))
    with pytest.raises(ValueError, match="crosslayer"):
        load_circuit_tracer(tmp_path)
    (tmp_path / "layer_0.safetensors").write_bytes(b"garbage")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out", "transcoders": ["layer_0.safetensors"]}))
    with pytest.raises(ValueError, match="corrupted"):
        load_circuit_tracer(tmp_path)
    gap = _random_set("relu", False)
    gap[2] = gap.pop(1)
    with pytest.raises(ValueError, match="every layer"):
        save_circuit_tracer(gap, tmp_path / "out")
    zero = ln_state(2)
    zero["blocks.0.ln2.w"][0] = 0.0
    with pytest.raises(ValueError, match="zero"):
        save_circuit_tracer(_random_set("relu", False), tmp_path / "z", hf_model=zero)


def test_layernorm_sources():
    from tc_circuits.formats._common import ln2_gain_bias

    w = torch.rand(D) + 0.5
    got_w, got_b = ln2_gain_bias({"blocks.1.ln2.w": w}, 1)  # TransformerLens RMSNorm: no bias
    assert torch.equal(got_w, w) and torch.equal(got_b, torch.zeros(D))
    got_w, got_b = ln2_gain_bias({"transformer.h.0.ln_2.weight": w, "transformer.h.0.ln_2.bias": w + 1}, 0)
    assert torch.equal(got_b, w + 1)
    # a Hugging Face Gemma state dict stores the gain minus one; its post_attention_layernorm is the
    # attention post-norm, not the MLP's input norm
    got_w, got_b = ln2_gain_bias({"model.layers.0.pre_feedforward_layernorm.weight": w,
                                  "model.layers.0.post_attention_layernorm.weight": w * 3}, 0)
    assert torch.equal(got_w, w + 1) and torch.equal(got_b, torch.zeros(D))
