"""circuit-tracer import (against circuit-tracer's own equations) and bit-exact export round trip."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tc_circuits.formats import detect_format, load_any, load_circuit_tracer, save_circuit_tracer
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet

D, N = 8, 24


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


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
            t["threshold"] = torch.rand(N, generator=g)
        save_file(t, str(path / f"layer_{layer}.safetensors"))
        layers.append(t)
    cfg = {"model_name": "gpt2", "model_kind": "transcoder_set", "feature_input_hook": in_hook,
           "feature_output_hook": out_hook, "transcoders": [f"layer_{i}.safetensors" for i in range(n_layers)]}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return layers


def reference_forward(t, x):
    """circuit-tracer: F.linear(x, W_enc, b_enc) -> JumpReLU -> acts @ W_dec + b_dec + x @ W_skip.T."""
    pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])
    acts = pre * (pre > t["threshold"]) if "threshold" in t else pre.relu()
    out = acts @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        out = out + x @ t["W_skip"].T
    return out, acts


@pytest.mark.parametrize("skip,threshold", [(True, True), (False, False)])
def test_import_matches_circuit_tracer_equations(tmp_path, skip, threshold):
    layers = write_ct(tmp_path, skip=skip, threshold=threshold)
    assert detect_format(tmp_path) == "circuit-tracer"
    tset = load_circuit_tracer(tmp_path)
    assert sorted(tset) == [0, 1]
    x = torch.randn(5, D, generator=_gen(3))
    for layer, t in enumerate(layers):
        tc = tset[layer]
        assert tc.cfg.input_site == f"blocks.{layer}.ln2.hook_normalized"
        assert tc.cfg.output_site == f"blocks.{layer}.hook_mlp_out"
        assert tc.cfg.activation == ("jumprelu" if threshold else "relu") and tc.cfg.skip == skip
        ref_out, ref_acts = reference_forward(t, x)
        out = tc(x)
        assert torch.allclose(out.latents, ref_acts, atol=1e-5)
        assert torch.allclose(out.output, ref_out, atol=1e-4)
    assert tset[0].cfg.model_name == "gpt2"


def test_relative_tl_hook_names(tmp_path):
    write_ct(tmp_path, n_layers=1, in_hook="hook_resid_mid", out_hook="hook_mlp_out")
    tc = load_any(tmp_path)[0]
    assert tc.cfg.input_site == "blocks.0.hook_resid_mid"


def _random_set(activation, skip, n_layers=2):
    out = TranscoderSet()
    for layer in range(n_layers):
        cfg = TranscoderConfig(d_in=D, d_out=D, n_latents=N, input_site=f"blocks.{layer}.ln2.hook_normalized",
                               output_site=f"blocks.{layer}.hook_mlp_out", activation=activation,
                               k=4 if activation == "topk" else None, skip=skip, model_name="tiny")
        tc = Transcoder(cfg)
        g = _gen(10 + layer)
        with torch.no_grad():
            for p in tc.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        out[layer] = tc
    return out


@pytest.mark.parametrize("activation,skip", [("relu", True), ("topk", False), ("jumprelu", True)])
def test_export_import_round_trip_is_bit_exact(tmp_path, activation, skip):
    tset = _random_set(activation, skip)
    save_circuit_tracer(tset, tmp_path)
    back = load_circuit_tracer(tmp_path)
    for layer, tc in tset.items():
        b = back[layer]
        assert (b.cfg.activation, b.cfg.k, b.cfg.skip) == (activation, tc.cfg.k, skip)
        assert (b.cfg.input_site, b.cfg.output_site) == (tc.cfg.input_site, tc.cfg.output_site)
        for name, p in tc.named_parameters():
            if name == "log_threshold":  # stored as exp(): within an ulp
                assert torch.allclose(dict(b.named_parameters())[name], p, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(dict(b.named_parameters())[name], p), name
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert raw["feature_input_hook"] == "mlp.hook_in" and raw["model_kind"] == "transcoder_set"


def test_bad_inputs(tmp_path):
    layers = write_ct(tmp_path, n_layers=1)
    bad = dict(layers[0], W_dec=torch.zeros(N, D + 1))
    save_file(bad, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(ValueError, match="W_dec"):
        load_circuit_tracer(tmp_path)
    save_file(dict(layers[0], threshold=-torch.ones(N)), str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(ValueError, match="negative"):
        load_circuit_tracer(tmp_path)
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
