"""circuit-tracer (the real package) as a client of our exports, on the organism.

circuit-tracer loads models unprocessed (``fold_ln=False, center_writing_weights=False``), so
here it gets the organism's raw weights, as ``ReplacementModel.from_pretrained_and_transcoders``
would give it; we use the processed organism. Exports go through its own loaders.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from tc_circuits.formats import load_circuit_tracer, save_circuit_tracer
from tc_circuits.organism import load_organism, load_organism_transcoders

RAW = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)


@pytest.fixture(scope="module")
def models():
    return load_organism(), load_organism(**RAW)


def ct_model(raw, tset):
    """circuit-tracer's TransformerLens replacement model holding the raw organism weights."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel

    model = TransformerLensReplacementModel.from_config(raw.cfg, tset)
    ren = {}
    for k, v in raw.state_dict().items():
        k = k.replace(".mlp.", ".mlp.old_mlp.")
        ren[k.replace("unembed.", "unembed.old_unembed.") if k.startswith("unembed.") else k] = v
    missing, unexpected = model.load_state_dict(ren, strict=False)
    bad = [m for m in missing if not m.startswith("transcoders.") and "IGNORE" not in m and "mask" not in m]
    assert not bad and not unexpected, (bad[:5], unexpected[:5])
    model.tokenizer = raw.tokenizer
    return model.eval()


def ct_load(folder: Path):
    """circuit-tracer's own loader on our config.yaml (as its from_pretrained would call it)."""
    from circuit_tracer.utils.hf_utils import load_transcoders

    config = yaml.safe_load((folder / "config.yaml").read_text())
    return load_transcoders(config, device=torch.device("cpu"), lazy_encoder=False, lazy_decoder=False)


def random_jumprelu_set(model):
    out = TranscoderSet()
    for layer in range(model.cfg.n_layers):
        cfg = TranscoderConfig.for_model(model, layer, 96, kind="skip_transcoder", activation="jumprelu", k=None)
        tc = Transcoder(cfg, seed=layer)
        g = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            tc.W_dec.copy_(torch.randn(tc.W_dec.shape, generator=g) * 0.05)
            tc.W_skip.copy_(torch.randn(tc.W_skip.shape, generator=g) * 0.02)
            tc.b_enc.copy_(torch.randn(tc.b_enc.shape, generator=g) * 0.1)
            tc.log_threshold.copy_(torch.rand(tc.log_threshold.shape, generator=g).mul(0.5).log())
        out[layer] = tc
    return out


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("unfold", [True, False])
def test_circuit_tracer_loads_our_export_and_computes_the_same(models, tmp_path, monkeypatch, unfold):
    model, raw = models
    ours = random_jumprelu_set(model)
    save_circuit_tracer(ours, tmp_path / "ct", hf_model=raw if unfold else None)
    monkeypatch.chdir("/")  # any working directory
    ct_set = ct_load(tmp_path / "ct")
    assert ct_set.feature_input_hook == ("mlp.hook_in" if unfold else "ln2.hook_normalized")
    ct = ct_model(raw, ct_set)
    tokens = torch.tensor([[1, 5, 9, 22, 7, 3, 40, 12]])
    _, ct_cache = ct.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    for layer, tc in ours.items():
        x_ct = ct_cache[f"blocks.{layer}.{ct_set.feature_input_hook}"][0]
        mine = tc(cache[tc.cfg.input_site][0])
        theirs_acts = ct_set[layer].encode(x_ct)
        assert rel(theirs_acts, mine.latents) < 1e-5
        assert rel(ct_set[layer](x_ct), mine.output) < 1e-5
        assert int((theirs_acts > 0).sum()) == int((mine.latents > 0).sum())
    back = load_circuit_tracer(tmp_path / "ct", hf_model=raw)
    for layer, tc in ours.items():
        assert back[layer].cfg.model_name == model.cfg.model_name and back[layer].cfg.model_d_model == model.cfg.d_model
        back[layer].check_compatible(model)


def test_topk_refused_for_circuit_tracer_050(models, tmp_path):
    from tc_circuits.formats.circuit_tracer import installed_reads_topk

    assert installed_reads_topk() is False  # the PyPI 0.5.0 wheel has no 'activation: topk'
    with pytest.raises(ValueError, match="TopK"):
        save_circuit_tracer(load_organism_transcoders("skip_transcoder"), tmp_path / "ct")


def test_graph_agrees_edge_by_edge_with_circuit_tracer(models, tmp_path):
    """Our exported TopK skip transcoders in circuit-tracer's loader (TopK as upstream reads
    ``activation: topk`` + ``k``) on its unprocessed model vs our graph on the processed one."""
    from circuit_tracer import attribute as ct_attribute
    from circuit_tracer.transcoder.activation_functions import TopK

    from tc_circuits.attribution import attribute
    from tc_circuits.graph.graph import type_code

    model, raw = models
    tcs = load_organism_transcoders("skip_transcoder", model=model)
    save_circuit_tracer(tcs, tmp_path / "ct", hf_model=raw, allow_topk=True)
    config = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert (config["activation"], config["k"]) == ("topk", tcs[0].cfg.k)
    ct_set = ct_load(tmp_path / "ct")
    for tc in ct_set:  # what upstream circuit-tracer does with activation: topk
        tc.activation_function = TopK(config["k"])
    ct = ct_model(raw, ct_set)
    tokens = model.to_tokens("the cat sat on the mat")[0]
    with torch.no_grad():
        targets = model(tokens[None])[0, -1].topk(3).indices
    g_ct = ct_attribute(tokens, ct, attribution_targets=targets, batch_size=64, verbose=False)
    ours = attribute(model, tcs, tokens, targets=[int(t) for t in targets], batch_size=64, progress=False)

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from bench_vs_circuit_tracer import compare

    n = ours.nodes
    torch.save({"t": ours.edge_target, "s": ours.edge_source, "w": ours.edge_weight, "kind": n.type,
                "layer": n.layer, "pos": n.pos, "latent": n.latent, "token_id": n.token_id}, tmp_path / "o.pt")
    torch.save({"A": g_ct.adjacency_matrix, "active": g_ct.active_features, "selected": g_ct.selected_features,
                "n_pos": int(tokens.shape[0]), "n_layers": model.cfg.n_layers, "targets": targets}, tmp_path / "c.pt")
    res = compare(tmp_path / "o.pt", tmp_path / "c.pt")
    # circuit-tracer zeroes the first (BOS) position's features; every other active feature agrees
    assert int(g_ct.active_features.shape[0]) == int(((n.type == type_code("feature")) & (n.pos > 0)).sum())
    print("edge-by-edge vs circuit-tracer:", res)
    assert res["edges_compared"] > 100
    assert res["max_rel_diff"] < 1e-5, res


def test_circuit_tracer_native_save_imports_into_ours(models, tmp_path):
    """circuit-tracer's own ``TranscoderSet.to_safetensors`` (JumpReLU skip transcoders on its
    ``mlp.hook_in``) imports into ours on the processed organism: LayerNorm folded, output centred."""
    from circuit_tracer.transcoder import TranscoderSet as CTSet
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder

    model, raw = models
    d, n = model.cfg.d_model, 80
    g = torch.Generator().manual_seed(3)
    layers = {}
    for layer in range(model.cfg.n_layers):
        tc = SingleLayerTranscoder(d, n, JumpReLU(torch.rand(n, generator=g) * 0.3, 0.1), layer,
                                   skip_connection=True, device=torch.device("cpu"), dtype=torch.float32)
        with torch.no_grad():
            for name, p in tc.named_parameters():
                if name != "activation_function.threshold":
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        layers[layer] = tc
    ct_set = CTSet(layers, feature_input_hook="mlp.hook_in", feature_output_hook="mlp.hook_out", scan="native")
    ct_set.to_safetensors(str(tmp_path / "native"))
    (tmp_path / "native" / "config.yaml").write_text(yaml.safe_dump({
        "model_name": model.cfg.model_name, "model_kind": "transcoder_set", "scan": "native",
        "feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out",
        "transcoders": [f"layer_{i}.safetensors" for i in range(model.cfg.n_layers)]}))
    ours = load_circuit_tracer(tmp_path / "native", hf_model=raw)
    ct = ct_model(raw, ct_set)
    tokens = torch.tensor([[1, 5, 9, 22, 7, 3, 40, 12]])
    _, ct_cache = ct.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens)
    for layer, tc in ours.items():
        tc.check_compatible(model)
        theirs = ct_set[layer](ct_cache[f"blocks.{layer}.mlp.hook_in"][0]).detach()
        mine = tc(cache[f"blocks.{layer}.ln2.hook_normalized"][0])
        assert rel(mine.output, theirs - theirs.mean(-1, keepdim=True)) < 1e-5
        assert rel(mine.latents, ct_set[layer].encode(ct_cache[f"blocks.{layer}.mlp.hook_in"][0])) < 1e-5
