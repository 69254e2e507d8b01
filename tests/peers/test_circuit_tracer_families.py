"""circuit-tracer (the real package) vs our graphs on Gemma-2- and Llama-3-shaped models.

Two routes into circuit-tracer, each compared edge by edge with our graph of the same model,
transcoders (our JumpReLU sets, written with our exporter and read by circuit-tracer's own
loader), prompt and targets:

* **tiny** (``tests/families.py`` configs: the real structural flags, small sizes, 2 layers,
  Gemma's sliding window 4 active): circuit-tracer's ``TransformerLensReplacementModel`` built
  from the unprocessed TransformerLens model (``from_config`` + its weights, as
  ``from_pretrained_and_transcoders`` would build it);
* **official name** (real d_model / heads / d_mlp, 2 layers, small vocabulary):
  ``ReplacementModel.from_pretrained_and_transcoders("google/gemma-2-2b", ...)`` itself, i.e.
  TransformerLens' hard-coded architecture for the official name, with the weights of a random
  model saved in a fake offline Hub snapshot (``bench/_fake_hub.py``) passed as ``hf_model=``.

Conventions compared like with like: circuit-tracer attributes the *pre-soft-cap* logit (its
logit rows are injected at the final norm's output with the demeaned unembedding column), as we
do (our ``target_values`` are pre-cap logits); it zeroes position-0 features and errors, which
the comparison leaves out (every other edge is independent of them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tc_circuits.attribution import Target, attribute
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from tc_circuits.formats import save_circuit_tracer
from tc_circuits.models.loading import load_model

from .test_circuit_tracer_client import RAW, ct_load, ct_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import _fake_hub  # noqa: E402
from bench_vs_circuit_tracer import compare  # noqa: E402
from families import build_folder, family  # noqa: E402

FAMILIES = ["gemma2", "llama3"]
KIND = {"gemma2": "transcoder", "llama3": "skip_transcoder"}  # GemmaScope: no skip; circuit-tracer's Llama sets: skip


def random_jumprelu_set(model, kind: str, n_latents: int = 96) -> TranscoderSet:
    out = TranscoderSet()
    for layer in range(model.cfg.n_layers):
        cfg = TranscoderConfig.for_model(model, layer, n_latents, kind=kind, activation="jumprelu", k=None)
        tc = Transcoder(cfg, seed=layer)
        g = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            tc.W_dec.copy_(torch.randn(tc.W_dec.shape, generator=g) * 0.05)
            if tc.W_skip is not None:
                tc.W_skip.copy_(torch.randn(tc.W_skip.shape, generator=g) * 0.02)
            tc.b_enc.copy_(torch.randn(tc.b_enc.shape, generator=g) * 0.1)
            tc.log_threshold.copy_(torch.rand(tc.log_threshold.shape, generator=g).mul(0.5).log())
        out[layer] = tc
    return out


def both_graphs(model, ct, tcs, tokens, n_targets, tmp_path):
    """Our graph and circuit-tracer's on the same prompt / targets, compared edge by edge."""
    from circuit_tracer import attribute as ct_attribute

    with torch.no_grad():
        targets = model(tokens[None])[0, -1].topk(n_targets).indices
    V = model.cfg.d_vocab
    tgts = []
    for t in targets.tolist():  # circuit-tracer's demeaned unembedding column, as a direction
        d = torch.full((V,), -1.0 / V)
        d[t] += 1.0
        tgts.append(Target(direction=d, label=str(t), token_id=t))
    ours = attribute(model, tcs, tokens, targets=tgts, batch_size=64, progress=False)
    g_ct = ct_attribute(tokens, ct, attribution_targets=targets, batch_size=64, verbose=False)
    n = ours.nodes
    torch.save({"t": ours.edge_target, "s": ours.edge_source, "w": ours.edge_weight, "kind": n.type,
                "layer": n.layer, "pos": n.pos, "latent": n.latent, "token_id": n.token_id}, tmp_path / "o.pt")
    torch.save({"A": g_ct.adjacency_matrix, "active": g_ct.active_features, "selected": g_ct.selected_features,
                "n_pos": int(tokens.shape[0]), "n_layers": model.cfg.n_layers, "targets": targets}, tmp_path / "c.pt")
    return ours, g_ct, compare(tmp_path / "o.pt", tmp_path / "c.pt")


def check_agreement(ours, g_ct, res, model):
    from tc_circuits.graph.graph import type_code

    n = ours.nodes
    print("edge-by-edge vs circuit-tracer:", res)
    # circuit-tracer zeroes the first (BOS) position's features; every other active feature agrees
    assert int(g_ct.active_features.shape[0]) == int(((n.type == type_code("feature")) & (n.pos > 0)).sum())
    assert res["edges_compared"] > 100
    assert res["max_rel_diff"] < 1e-4, res
    if model.cfg.output_logits_soft_cap > 0:  # both attribute the pre-cap logit (see the docstring)
        plan = ours.metadata["block_plan"]
        assert plan["logit_softcap"] == model.cfg.output_logits_soft_cap == 30.0
        assert plan["target_values"] == "pre-softcap logits"


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_family_graph_agrees_with_circuit_tracer(name, tmp_path, monkeypatch):
    _, folder = build_folder(family(name), tmp_path)
    model, raw = load_model(folder), load_model(folder, **RAW)
    tcs = random_jumprelu_set(model, KIND[name])
    save_circuit_tracer(tcs, tmp_path / "ct", model=model)
    monkeypatch.chdir("/")
    ct_set = ct_load(tmp_path / "ct")
    assert ct_set.feature_input_hook == "ln2.hook_normalized"
    # Gemma's post-MLP norm: circuit-tracer's mlp.hook_out is before it, our hook_mlp_out after it
    assert ct_set.feature_output_hook == ("hook_mlp_out" if name == "gemma2" else "mlp.hook_out")
    ct = ct_model(raw, ct_set)
    tokens = torch.tensor([0, 5, 9, 22, 7, 3, 40, 12, 61, 8])
    ct.tokenizer = _fake_hub.load_tokenizer(_tok_dir(tmp_path, model.cfg.d_vocab))
    ours, g_ct, res = both_graphs(model, ct, tcs, tokens, 3, tmp_path)
    check_agreement(ours, g_ct, res, model)


def _tok_dir(tmp_path, vocab):
    folder = tmp_path / "tok"
    _fake_hub.word_tokenizer(vocab, bos_id=0).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", FAMILIES)
def test_official_name_real_dims_graph_agrees_with_circuit_tracer(name, tmp_path, monkeypatch):
    """circuit-tracer's own ``from_pretrained_and_transcoders`` on the official name."""
    from circuit_tracer import ReplacementModel

    hf = _fake_hub.random_model(name, 2, vocab_size=512)
    snap = _fake_hub.write_fake_hub(tmp_path / "hub", name, 2, model=hf)
    model = load_model(_fake_hub.official_name(name), local_dir=snap)  # ours: our HF-config converter, processed
    assert (model.cfg.d_model, model.cfg.d_mlp) == (hf.config.hidden_size, hf.config.intermediate_size)
    assert model.cfg.model_name == _fake_hub.official_name(name).split("/")[-1]
    tcs = random_jumprelu_set(model, KIND[name], n_latents=64)
    save_circuit_tracer(tcs, tmp_path / "ct", model=model)
    monkeypatch.chdir("/")
    ct_set = ct_load(tmp_path / "ct")
    ct = ReplacementModel.from_pretrained_and_transcoders(
        _fake_hub.official_name(name), ct_set, device=torch.device("cpu"), dtype=torch.float32,
        hf_model=hf, tokenizer=_fake_hub.load_tokenizer(snap), first_n_layers=2,
    )
    assert ct.cfg.d_model == model.cfg.d_model and ct.cfg.n_layers == 2
    tokens = torch.tensor([hf.config.bos_token_id, 5, 9, 22, 7, 3, 40, 12])
    with torch.no_grad():  # TransformerLens' official architecture = the HF model = ours (log-probs)
        ref = hf(tokens[None]).logits[0].log_softmax(-1)
        for m in (ct, model):
            assert (m(tokens[None])[0].log_softmax(-1) - ref).abs().max() < 1e-4
    ours, g_ct, res = both_graphs(model, ct, tcs, tokens, 3, tmp_path)
    check_agreement(ours, g_ct, res, model)
