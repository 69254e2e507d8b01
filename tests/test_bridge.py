"""The whole path on a ``TransformerBridge`` (TransformerLens 3.x beside HookedTransformer, and 4.x).

A tiny random GPT-2 is written as a Hugging Face folder and booted through the bridge
(offline): hook names (canonical and legacy), weights and processing flags, training a few
steps, splicing, evaluation, attribution with the exactness check and edges checked against
an independent hook-built frozen model and against ``intervene``, and checkpoints across
backends. Where HookedTransformer exists (TL < 4) the same weights go through it too and the
graphs must agree edge for edge.

``.ci/run`` runs this file a second time in a virtual environment with the newest
TransformerLens 4.x (and transformers 5.x) from the registry.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformer_lens.model_bridge")

from attribution_helpers import HookedFrozen  # noqa: E402

from tc_circuits.attribution import attribute, logit_target  # noqa: E402
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet  # noqa: E402
from tc_circuits.evaluation.splice import count_hooks, run_spliced, splice  # noqa: E402
from tc_circuits.interventions import intervene  # noqa: E402
from tc_circuits.models import backend  # noqa: E402
from tc_circuits.models.model_info import weight_processing  # noqa: E402
from tc_circuits.models.sites import BRIDGE_SITE_KINDS, Site, global_hook  # noqa: E402

HAS_HOOKED = backend.tl_major() < 4
needs_hooked = pytest.mark.skipif(not HAS_HOOKED, reason="HookedTransformer was removed in TransformerLens 4")
P = 8
D_VOCAB = 50


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random 2-layer GPT-2 saved as a Hugging Face folder (LN gains not exactly 1)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=D_VOCAB, n_positions=16,
                     activation_function="gelu_new")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("tiny_gpt2") / "tiny-gpt2"
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A random 2-layer Llama (RMSNorm, rotary, gated MLP, 2 K/V heads for 4 query heads, no biases)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=D_VOCAB, max_position_embeddings=16)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            scale = 0.1 if "norm" in name else 0.2
            p.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("tiny_llama") / "tiny-llama"
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer

    return gpt2_tokenizer()


def _bridge(hf_dir, tokenizer, *, processed=True, dtype=torch.float64):
    return backend.load_bridge(
        hf_dir, tokenizer=tokenizer, dtype=dtype, fold_ln=processed,
        center_writing_weights=processed, center_unembed=processed, compatibility_mode=processed,
    )


def _transcoders(model, seed=0, n_latents=48, k=4):
    """Random skip transcoders for every layer (float64, non-zero everything)."""
    gen = torch.Generator().manual_seed(seed)
    d = int(model.cfg.d_model)
    out = TranscoderSet()
    for L in range(int(model.cfg.n_layers)):
        cfg = TranscoderConfig.for_model(model, L, n_latents, kind="skip_transcoder", activation="topk", k=k)
        tc = Transcoder(cfg, dtype=torch.float64)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_latents, generator=gen, dtype=torch.float64) / d**0.5)
            tc.b_enc.copy_(0.1 * torch.randn(n_latents, generator=gen, dtype=torch.float64))
            tc.W_dec.copy_(0.3 * torch.randn(n_latents, d, generator=gen, dtype=torch.float64))
            tc.b_dec.copy_(0.1 * torch.randn(d, generator=gen, dtype=torch.float64))
            tc.W_skip.copy_(0.1 * torch.randn(d, d, generator=gen, dtype=torch.float64))
        out[L] = tc
    return out


def _tokens(seed=3):
    return torch.randint(0, D_VOCAB, (P,), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- names, weights, flags


@pytest.mark.parametrize("processed", [False, True])
def test_hook_names_canonical_and_legacy(hf_dir, tokenizer, processed):
    model = _bridge(hf_dir, tokenizer, processed=processed)
    assert backend.backend_of(model) == "bridge"
    hd = model.hook_dict
    for kind in BRIDGE_SITE_KINDS:
        site = Site(1, kind)
        name = site.hook_for(model)
        assert name == BRIDGE_SITE_KINDS[kind].format(L=1) and name in hd, kind
        assert Site.parse(name).layer == 1
        assert site.check(model) is site
        legacy = site.hook_name
        if kind == "mlp_in_resid":
            # the bridge's legacy alias means the MLP input *after* ln2: not this site
            assert hd[legacy] is not hd[name]
        elif legacy in hd:  # TL 3.2.1 and 4.x keep the aliases, compatibility mode or not
            assert hd[legacy] is hd[name], kind
    for g in ("embed", "pos_embed", "ln_final_scale", "ln_final_normalized"):
        assert global_hook(g, model) in hd
    # canonical names parse to the same sites as the legacy ones
    assert Site.parse("blocks.1.mlp.hook_out") == Site(1, "mlp_out")
    assert Site.parse("blocks.0.hook_in") == Site(0, "resid_pre")
    assert Site.parse("blocks.0.attn.o.hook_in") == Site(0, "attn_z")
    # hook values at our canonical sites equal the hand-computed quantities
    toks = _tokens()[None]
    _, cache = model.run_with_cache(toks)
    x = cache[Site(0, "resid_mid").hook_for(model)]
    normed = (x - x.mean(-1, keepdim=True)) / cache[Site(0, "ln2_scale").hook_for(model)]
    torch.testing.assert_close(cache[Site(0, "mlp_in").hook_for(model)], normed)
    torch.testing.assert_close(
        cache[Site(0, "resid_post").hook_for(model)],
        x + cache[Site(0, "mlp_out").hook_for(model)],
    )


def test_weights_and_processing_flags(hf_dir, tokenizer):
    raw = _bridge(hf_dir, tokenizer, processed=False)
    proc = _bridge(hf_dir, tokenizer, processed=True)
    assert weight_processing(raw) == dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
    assert weight_processing(proc) == dict(fold_ln=True, center_writing_weights=True, center_unembed=True)
    assert backend.recorded_processing(proc) == weight_processing(proc)
    # an unrecorded bridge processed by TransformerLens itself: flags read off the weights
    other = backend.load_bridge(hf_dir, tokenizer=tokenizer, compatibility_mode=False, fold_ln=False,
                                center_writing_weights=False, center_unembed=False)
    other.enable_compatibility_mode(disable_warnings=True)
    assert weight_processing(other) == weight_processing(proc)
    for model in (raw, proc):
        assert backend.norm_weights(model, "blocks.0.ln2").kind == "LN"
        ov = backend.attn_ov(model, 0)
        assert ov.W_V.shape == (4, 32, 8) and ov.W_O.shape == (4, 8, 32) and ov.b_V.shape == (4, 8)
        W_E, W_pos = backend.embed_weights(model)
        assert W_E.shape == (D_VOCAB, 32) and W_pos.shape == (16, 32)
        assert backend.model_name(model) == "tiny-gpt2"
    # the raw bridge's LN gain is the HF model's own
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    torch.testing.assert_close(backend.norm_weights(raw, "blocks.1.ln2").w.float(), hf.transformer.h[1].ln_2.weight)
    with pytest.raises(ValueError, match="already processed"):
        backend.process_bridge(proc)
    with pytest.raises(ValueError, match="fold_ln.*compatibility_mode=True"):
        backend.load_bridge(hf_dir, tokenizer=tokenizer, compatibility_mode=False)


# ----------------------------------------------------------------------------- train, splice, evaluate


def test_train_splice_evaluate_save_load(hf_dir, tokenizer, tmp_path):
    from tc_circuits.evaluation.evaluate import evaluate_splice
    from tc_circuits.evaluation.metrics import fvu, next_token_ce
    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.trainer import train_transcoders

    model = _bridge(hf_dir, tokenizer, processed=True, dtype=torch.float32)
    tokens = torch.randint(0, D_VOCAB, (64, 16), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(layers=(0, 1), n_latents=32, k=4, batch_size=64, buffer_tokens=256,
                      total_tokens=64 * 6, warmup_steps=1, lr=3e-3, log_every=2, out_dir=str(tmp_path / "run"))
    result = train_transcoders(model, tokens, cfg, progress=False)
    assert result.steps == 6 and set(result.transcoders) == {0, 1}
    tcs = result.transcoders
    toks = tokens[:4]
    # the reported FVU is the FVU of the transcoder on this bridge's own MLP activations
    _, cache = model.run_with_cache(toks)
    for L in (0, 1):
        x = cache[Site(L, "mlp_in").hook_for(model)][:, 1:]
        y = cache[Site(L, "mlp_out").hook_for(model)][:, 1:]
        with torch.no_grad():
            f = fvu(tcs[L](x).output, y)
        assert 0.0 < f < 1.5 and 0.0 < result.metrics[L].fvu < 1.5
    assert count_hooks(model) == 0
    with torch.no_grad():
        clean = model(toks)
        with splice(model, tcs, error_term=True) as state:
            same = model(toks)
            assert count_hooks(model) == 2 * len(tcs)
        torch.testing.assert_close(same, clean, atol=1e-5, rtol=1e-5)
        assert set(state.latents) == {0, 1}
        spliced = run_spliced(model, toks, tcs)
        # by hand: each MLP output replaced by its transcoder at the (spliced) run's MLP input
        seen = {}
        hooks = []
        for L in (0, 1):
            hooks.append((Site(L, "mlp_in").hook_for(model), lambda x, hook, L=L: seen.__setitem__(L, x)))
            hooks.append((Site(L, "mlp_out").hook_for(model), lambda y, hook, L=L: tcs[L](seen[L]).output.to(y.dtype)))
        by_hand = model.run_with_hooks(toks, fwd_hooks=hooks)
        torch.testing.assert_close(spliced, by_hand)
        assert not torch.allclose(spliced, clean)
    with pytest.raises(RuntimeError, match="boom"):
        with splice(model, tcs):
            raise RuntimeError("boom")
    assert count_hooks(model) == 0
    report = evaluate_splice(model, tcs, toks)
    assert [r.layers for r in report.rows] == [(0,), (1,), (0, 1)]
    with torch.no_grad():
        ce_orig = next_token_ce(clean, toks).mean().item()
        ce_all = next_token_ce(spliced, toks).mean().item()
    assert report.get((0, 1)).ce_orig == pytest.approx(ce_orig, rel=1e-5)
    assert report.get((0, 1)).delta_ce == pytest.approx(ce_all - ce_orig, rel=1e-4, abs=1e-6)
    # save / load round trip, checked against the bridge
    tcs.save(tmp_path / "tcs")
    loaded = TranscoderSet.load(tmp_path / "tcs", model=model)
    for L in (0, 1):
        torch.testing.assert_close(loaded[L].W_enc, tcs[L].W_enc)
        assert loaded[L].cfg.weight_processing == weight_processing(model)
        assert loaded[L].cfg.model_name == "tiny-gpt2"
    # a raw bridge is processed differently: a clear error naming the flags
    raw = _bridge(hf_dir, tokenizer, processed=False, dtype=torch.float32)
    with pytest.raises(ValueError, match="center_writing_weights=True .model: center_writing_weights=False"):
        TranscoderSet.load(tmp_path / "tcs", model=raw)
    if HAS_HOOKED:  # processed alike on the other backend: loads; processed otherwise: names the flag
        from tc_circuits.models.loading import load_model

        TranscoderSet.load(tmp_path / "tcs", model=load_model(hf_dir))
        with pytest.raises(ValueError, match="fold_ln=True .model: fold_ln=False"):
            TranscoderSet.load(tmp_path / "tcs", model=load_model(hf_dir, fold_ln=False))


# ----------------------------------------------------------------------------- attribution


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bfloat16_bridge_graph_is_exact_to_its_rounding(hf_dir, llama_dir, tokenizer, family):
    """A bridge loaded in bfloat16 is attributed in bfloat16 (Hugging Face norms compute in float32):
    the row sums hold to the bfloat16 tolerance and the target matches the float32 graph's to rounding."""
    folder = hf_dir if family == "gpt2" else llama_dir
    m32 = _bridge(folder, tokenizer, processed=True, dtype=torch.float32)
    tcs = {L: tc.float() for L, tc in _transcoders(m32).items()}
    targets = [logit_target(5, D_VOCAB)]
    ref = attribute(m32, tcs, _tokens(), targets=targets, progress=False)
    g = attribute(_bridge(folder, tokenizer, processed=True, dtype=torch.bfloat16), tcs, _tokens(),
                  targets=targets, progress=False)  # raises if the bfloat16 tolerance (5e-2) is not met
    assert 1e-5 < g.metadata["exactness_max_rel_dev"] < 5e-2  # really bfloat16 (measured 3.5e-3 / 3.7e-3)
    v, v32 = float(g.nodes.value[g.target_indices][0]), float(ref.nodes.value[ref.target_indices][0])
    assert v == pytest.approx(v32, rel=0.05, abs=0.05)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("processed", [False, True])
def test_attribution_exact_and_edges_match_interventions(hf_dir, llama_dir, tokenizer, processed, family):
    model = _bridge(hf_dir if family == "gpt2" else llama_dir, tokenizer, processed=processed)
    tcs = _transcoders(model)
    toks = _tokens()
    targets = [logit_target(5, D_VOCAB), logit_target(11, D_VOCAB, position=4)]
    graph = attribute(model, tcs, toks, targets=targets, progress=False, batch_size=8)
    # HF's LlamaRMSNorm computes in float32 even in a float64 model: float32-level exactness there
    tol = 1e-9 if family == "gpt2" else 1e-5
    assert graph.metadata["exactness_max_abs_dev"] < tol
    A = graph.adjacency().to_dense().double()
    if not backend.norm_scale_hooks_live(model):  # TL 3.x bridge of an RMSNorm model
        assert family == "llama" and backend.tl_major() < 4
        with pytest.raises(ValueError, match="ignores writes to hook_scale"):
            intervene(model, tcs, toks, [], mode="frozen")
        return
    # independent frozen model from hooks on the bridge
    ref = HookedFrozen(model, tcs, toks)
    logits, _, _ = ref.run()
    tgt = graph.target_indices.tolist()
    base = torch.stack([t.direction.double() @ logits[t.position if t.position >= 0 else P + t.position] for t in targets])
    torch.testing.assert_close(base, graph.nodes.value[tgt].double(), atol=1e-6, rtol=1e-6)
    feats = graph.indices_of("feature")
    sample = feats[torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))[:12]].tolist()
    for j in sample:
        L, p, lat = int(graph.nodes.layer[j]), int(graph.nodes.pos[j]), int(graph.nodes.latent[j])
        latents = {k: v.clone() for k, v in ref.latents.items()}
        latents[L][p, lat] = 0.0
        new_logits, _, _ = ref.run(latents=latents)
        new = torch.stack([t.direction.double() @ new_logits[t.position if t.position >= 0 else P + t.position] for t in targets])
        torch.testing.assert_close(new - base, -A[tgt, j], atol=1e-9, rtol=1e-7)
        # and the library's own interventions (frozen, features held) agree
        res = intervene(model, tcs, toks, [(L, p, lat, 0.0)], mode="frozen", recompute_features=False)
        iv = torch.stack([t.direction.double() @ res.logits[t.position if t.position >= 0 else P + t.position].double() for t in targets])
        torch.testing.assert_close(iv - base, -A[tgt, j], atol=1e-8, rtol=1e-6)
    # live mode with nothing changed is the real model (the clean errors are added back)
    with torch.no_grad():
        real = model(toks[None])[0]
    live = intervene(model, tcs, toks, [], mode="live")
    torch.testing.assert_close(live.logits.double(), real.double(), atol=1e-9, rtol=1e-9)
    assert count_hooks(model) == 0


# ----------------------------------------------------------------------------- parity with HookedTransformer


@needs_hooked
@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("processed", [False, True])
def test_same_weights_same_graph_on_both_backends(hf_dir, llama_dir, tokenizer, processed, family):
    from tc_circuits.models.loading import load_model

    folder = hf_dir if family == "gpt2" else llama_dir
    ht = load_model(folder, fold_ln=processed, center_writing_weights=processed, center_unembed=processed,
                    dtype="float64", tokenizer=tokenizer)
    br = _bridge(folder, tokenizer, processed=processed)
    assert weight_processing(ht) == weight_processing(br)
    tcs = _transcoders(br)
    for tc in tcs.values():
        tc.check_compatible(ht)  # trained on one, loads on the other
    toks = _tokens()
    targets = [logit_target(5, D_VOCAB), logit_target(11, D_VOCAB, position=4)]
    g_ht = attribute(ht, tcs, toks, targets=targets, progress=False, batch_size=8)
    g_br = attribute(br, tcs, toks, targets=targets, progress=False, batch_size=8)
    assert g_ht.n_nodes == g_br.n_nodes and g_ht.n_edges > 0
    for field in ("layer", "pos", "latent"):
        assert torch.equal(getattr(g_ht.nodes, field), getattr(g_br.nodes, field)), field
    # float32 tolerance in a float64 run: TransformerLens folds HookedTransformer's value biases
    # into b_O in float32 (b_O differs from b_O + b_V W_O by ~1e-8), the bridge keeps b_V
    torch.testing.assert_close(g_br.nodes.value, g_ht.nodes.value, atol=1e-6, rtol=1e-5, equal_nan=True)
    A_ht, A_br = g_ht.adjacency().to_dense(), g_br.adjacency().to_dense()
    assert torch.equal(A_ht != 0, A_br != 0)  # the same edges exist
    torch.testing.assert_close(A_br, A_ht, atol=1e-6, rtol=1e-5)
    assert float((A_br - A_ht).abs().max()) < 1e-6 * float(A_ht.abs().max())


# ----------------------------------------------------------------------------- views


def test_dashboards_and_weight_views_on_a_raw_bridge(hf_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from tc_circuits.viz.dashboards import DashboardConfig, compute_dashboards
    from tc_circuits.viz.feature_stats import latent_activations
    from tc_circuits.viz.feature_weights import de_embeddings, reader_weights

    model = _bridge(hf_dir, tokenizer, processed=False, dtype=torch.float32)
    tcs = _transcoders(model)
    for tc in tcs.values():
        tc.to(torch.float32)
    batches = [torch.randint(0, D_VOCAB, (3, 12), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    # latent activations = encoder of the cached MLP input, computed by hand
    acts = latent_activations(model, tcs, [(1, 2), (0, 5)], batches[0])
    _, cache = model.run_with_cache(batches[0])
    for col, (L, lat) in enumerate([(1, 2), (0, 5)]):
        ref = tcs[L].encode(cache[Site(L, "mlp_in").hook_for(model)])[..., lat]
        torch.testing.assert_close(acts[..., col], ref.detach(), atol=1e-5, rtol=1e-5)
    cfg = DashboardConfig(n_top=3, n_quantiles=2, n_per_quantile=1, context_before=2, context_after=1, n_bins=8)
    boards = compute_dashboards(model, tcs, [(0, 5)], iter(batches), cfg, progress=False)
    all_acts = torch.cat([latent_activations(model, tcs, [(0, 5)], b).reshape(-1) for b in batches])
    assert abs(boards[(0, 5)].max_activation - float(all_acts.max())) < 1e-4
    # weight views see the raw bridge's LayerNorm: centring and the HF gain ln_2.weight
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, local_files_only=True)
    w2 = hf.transformer.h[1].ln_2.weight.detach()
    y = torch.randn(32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(y @ reader_weights(model, tcs[1]), ((y - y.mean()) * w2) @ tcs[1].W_enc.detach(),
                               atol=1e-5, rtol=1e-5)
    WE = hf.transformer.wte.weight.detach()
    scores = ((WE - WE.mean(-1, keepdim=True)) * w2) @ tcs[1].W_enc[:, 6].detach()
    assert [t.token_id for t in de_embeddings(model, tcs[1], 6, k=4)] == torch.topk(scores, 4).indices.tolist()


@pytest.mark.parametrize("kind", sorted(BRIDGE_SITE_KINDS))
def test_bridge_names_round_trip(kind):
    site = Site(3, kind)
    name = site.hook_name_in("bridge")
    prefix, suffix = BRIDGE_SITE_KINDS[kind].split("{L}")
    assert name == f"{prefix}3{suffix}"
    # ln2.hook_in is both resid_mid and mlp_in_resid on a bridge (the same value): parses to the first
    assert Site.parse(name) == (Site(3, "resid_mid") if kind == "mlp_in_resid" else site)
    assert site.hook_name_in("hooked") == site.hook_name
    with pytest.raises(ValueError, match="'jax'"):
        site.hook_name_in("jax")


def test_canonical_site_names_are_recorded_backend_neutral():
    cfg = TranscoderConfig(d_in=32, d_out=32, n_latents=8, k=2, input_site="blocks.1.ln2.hook_normalized",
                           output_site="blocks.1.mlp.hook_out")
    assert cfg.output_site == "blocks.1.hook_mlp_out" and cfg.out_site == Site(1, "mlp_out")
    sae = TranscoderConfig(d_in=32, d_out=32, n_latents=8, k=2, input_site="blocks.0.hook_out",
                           output_site="blocks.0.hook_resid_post")
    assert sae.is_sae and sae.input_site == "blocks.0.hook_resid_post"


def test_load_model_backend_choice(hf_dir, tokenizer):
    from tc_circuits.models.loading import load_model

    model = load_model(hf_dir, backend="bridge", tokenizer=tokenizer)
    assert backend.backend_of(model) == "bridge"
    assert weight_processing(model) == dict(fold_ln=True, center_writing_weights=True, center_unembed=True)
    auto = load_model(hf_dir, tokenizer=tokenizer)
    assert backend.backend_of(auto) == ("hooked" if HAS_HOOKED else "bridge")
    with pytest.raises(ValueError, match="backend='nope'"):
        load_model(hf_dir, backend="nope")
    if not HAS_HOOKED:  # TL 4: a clear error where a HookedTransformer is required
        from tc_circuits.organism import load_organism

        with pytest.raises(ImportError, match="removed in 4.0.*load_bridge"):
            backend.hooked_transformer_class()
        with pytest.raises(ImportError, match="HookedTransformer is not available"):
            load_organism()
