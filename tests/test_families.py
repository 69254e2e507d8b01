"""Every supported model family, from a saved Hugging Face folder to an exact graph.

Per family (``tests/families.py``, one line each): ``load_model(folder)`` gives the HF model's
log-probs; the config mapping reproduces TransformerLens' own tables on the real models'
configs; every edge of a float64 graph equals its intervention effect in the independent
hook-based frozen model and every row sums to its value.
"""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import HookedFrozen, check_edges_by_intervention, make_transcoders
from families import FAMILIES, FAMILY_NAMES, VOCAB, build_folder, family

from tc_circuits.attribution import LinearisedModel, attribute, direction_target, logit_diff_target, logit_target
from tc_circuits.models.block_plan import block_plan
from tc_circuits.models.loading import load_model
from tc_circuits.models.model_info import weight_processing

P = 10


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f.name: build_folder(f, root) for f in FAMILIES}


_MODELS: dict = {}


def model64(folders, name):
    """The family's model loaded in float64 (cached per module)."""
    if name not in _MODELS:
        _MODELS[name] = load_model(folders[name][1], dtype="float64")
    return _MODELS[name]


def _tokens(seed=3, n=P):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_loaded_model_matches_hf(folders, name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, folder = folders[name]
    model = load_model(folder)
    toks = _tokens(n=12)[None]
    with torch.no_grad():
        ours = torch.log_softmax(model(toks).double(), -1)
        ref = torch.log_softmax(hf(toks).logits.double(), -1)
    assert (ours - ref).abs().max().item() < 1e-4
    flags = weight_processing(model)
    assert flags["fold_ln"]
    # TransformerLens centres writing weights only for LayerNorm models (not RMSNorm ones)
    assert flags["center_writing_weights"] == (name in ("pythia", "gptj"))
    # a soft-capped logit is not shift-invariant: the unembedding is left uncentred
    assert flags["center_unembed"] == (name != "gemma2")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_frozen_model_reproduces_real_forward(folders, name):
    model = model64(folders, name)
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens()
    ref = HookedFrozen(model, tcs, toks)
    lin = LinearisedModel(model, tcs, toks)
    out = lin.forward()
    for L in range(model.cfg.n_layers):
        torch.testing.assert_close(out.mlp_in[L], ref.cache[f"blocks.{L}.ln2.hook_normalized"][0], atol=1e-10, rtol=0)
        torch.testing.assert_close(out.mlp_out[L], ref.cache[f"blocks.{L}.hook_mlp_out"][0], atol=1e-10, rtol=0)
    # the linear model ends at the pre-cap logits; capping them gives the real model's
    torch.testing.assert_close(lin.softcap(lin.logits_at(out.final_ln_out)), ref.real_logits[0], atol=1e-10, rtol=0)
    torch.testing.assert_close(lin.last_logits, ref.real_logits[0, -1], atol=1e-10, rtol=0)
    torch.testing.assert_close(lin.logits_at(out.final_ln_out), ref.run()[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("activation,skip", [("topk", True), ("relu", False)])
def test_every_edge_equals_intervention(folders, name, activation, skip):
    model = model64(folders, name)
    tcs = make_transcoders(model, activation=activation, skip=skip)
    toks = _tokens()
    gen = torch.Generator().manual_seed(7)
    targets = [
        logit_target(5, VOCAB),
        logit_diff_target(3, 9, VOCAB, position=3),
        direction_target(torch.randn(VOCAB, generator=gen, dtype=torch.float64), position=6, label="rand"),
    ]
    graph = attribute(model, tcs, toks, targets=targets, progress=False, batch_size=16)
    assert graph.metadata["exactness_max_abs_dev"] < 1e-9
    plan = graph.metadata["block_plan"]
    assert plan["position_nodes"] is False  # every family here is rotary: positions live in the pattern
    assert graph.metadata["has_position_nodes"] is False
    n = check_edges_by_intervention(graph, model, tcs, toks, targets, n_features=30)
    assert n >= 30 + model.cfg.n_layers * P + P + 1


def test_uncovered_layer_and_default_targets(folders):
    """Gemma-2: a layer without transcoder becomes mlp_const nodes; default targets use the
    capped (real) probabilities but their values are the pre-cap logits."""
    model = model64(folders, "gemma2")
    tcs = make_transcoders(model, layers=[1])
    toks = _tokens()
    graph = attribute(model, tcs, toks, progress=False, max_n_logits=3, desired_logit_prob=0.999)
    assert graph.metadata["uncovered_layers"] == [0]
    assert graph.metadata["block_plan"]["logit_softcap"] == 30.0
    assert graph.metadata["block_plan"]["target_values"] == "pre-softcap logits"
    real = model(toks[None])[0, -1].detach()
    top = torch.softmax(real, -1).topk(3)
    t = graph.target_indices
    assert graph.nodes.token_id[t].tolist() == top.indices.tolist()
    ref = HookedFrozen(model, tcs, toks)
    pre = ref.run()[0][-1]
    torch.testing.assert_close(graph.nodes.value[t].double(), (pre - pre.mean())[top.indices], atol=1e-6, rtol=0)
    check_edges_by_intervention(graph, model, tcs, toks, [_t for _t in _default_targets(graph)], n_features=10)


def _default_targets(graph):
    from tc_circuits.attribution.targets import Target

    out = []
    for i, tok in zip(graph.target_indices.tolist(), graph.nodes.token_id[graph.target_indices].tolist()):
        d = torch.full((VOCAB,), -1.0 / VOCAB, dtype=torch.float64)
        d[tok] += 1.0
        out.append(Target(direction=d, position=int(graph.nodes.pos[i]), label=str(tok), token_id=tok))
    return out


#: family -> (parallel, norm, post-norms, final soft-cap, n_key_value_heads)
PLANS = {
    "pythia": (True, "LN", False, None, None),
    "llama3": (False, "RMS", False, None, 2),
    "qwen2": (False, "RMS", False, None, 2),
    "qwen3": (False, "RMS", False, None, 2),
    "gemma2": (False, "RMS", True, 30.0, 2),
    "gemma3": (False, "RMS", True, None, 1),
    "gptj": (True, "LN", False, None, None),
    "mistral": (False, "RMS", False, None, 2),
    "phi3": (False, "RMS", False, None, None),
}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_block_plan(folders, name):
    model = model64(folders, name)
    plan = block_plan(model)
    parallel, norm, post, cap, kv = PLANS[name]
    assert plan.parallel == parallel
    assert plan.ln1[0].kind == norm and plan.ln_final.kind == norm
    assert (plan.ln1_post[0] is not None) == plan.mlp_post_norm == post
    assert plan.logit_softcap == cap
    assert plan.n_key_value_heads == kv
    assert all(h in model.hook_dict for h in plan.frozen_scale_hooks())
    if post:
        assert plan.embed_scale == pytest.approx(64**0.5)


def test_unsupported_config_field_is_named():
    from conftest import make_tiny_model

    model = make_tiny_model()
    model.cfg.attn_only = True
    with pytest.raises(ValueError, match="attn_only=True"):
        block_plan(model)
    model = make_tiny_model()
    model.cfg.original_architecture = "Olmo2ForCausalLM"
    with pytest.raises(ValueError, match="original_architecture='Olmo2ForCausalLM'"):
        block_plan(model)
    model = make_tiny_model()
    model.cfg.attention_dir = "bidirectional"
    with pytest.raises(ValueError, match="attention_dir='bidirectional'"):
        block_plan(model)


# ---------------------------------------------------------------- config mapping vs TL tables
_TL_KEYS = ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "eps", "d_vocab", "act_fn", "n_key_value_heads",
            "normalization_type", "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_base_local",
            "final_rms", "gated_mlp", "use_normalization_before_and_after", "attn_scores_soft_cap",
            "output_logits_soft_cap", "use_qk_norm", "window_size", "use_local_attn", "attn_scale",
            "use_NTK_by_parts_rope", "NTK_by_parts_factor", "NTK_by_parts_low_freq_factor",
            "NTK_by_parts_high_freq_factor", "NTK_original_ctx_len", "parallel_attn_mlp", "rotary_scaling_factor")


def _real_configs():
    import transformers as T

    llama = T.LlamaConfig(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
        max_position_embeddings=131072, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    )
    gemma2 = T.Gemma2Config(  # google/gemma-2-2b
        hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
        num_key_value_heads=4, head_dim=256, vocab_size=256000, query_pre_attn_scalar=256,
        sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        max_position_embeddings=8192,
    )
    gemma2_27b = T.Gemma2Config(
        hidden_size=4608, intermediate_size=36864, num_hidden_layers=46, num_attention_heads=32,
        num_key_value_heads=16, head_dim=128, vocab_size=256000, query_pre_attn_scalar=144,
        sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        max_position_embeddings=8192,
    )
    gemma3 = T.Gemma3TextConfig(  # google/gemma-3-1b-pt
        hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
        num_key_value_heads=1, head_dim=256, vocab_size=262144, query_pre_attn_scalar=256,
        sliding_window=512, rope_theta=1000000.0, rope_local_base_freq=10000.0, max_position_embeddings=32768,
        sliding_window_pattern=6,
    )
    for c, arch in ((llama, "LlamaForCausalLM"), (gemma2, "Gemma2ForCausalLM"),
                    (gemma2_27b, "Gemma2ForCausalLM"), (gemma3, "Gemma3ForCausalLM")):
        c.architectures = [arch]
    return [("meta-llama/Llama-3.2-1B", llama), ("google/gemma-2-2b", gemma2),
            ("google/gemma-2-27b", gemma2_27b), ("google/gemma-3-1b-pt", gemma3)]


@pytest.mark.parametrize("official,hf", _real_configs(), ids=lambda x: x if isinstance(x, str) else "")
def test_mapping_reproduces_transformerlens_tables(official, hf):
    """TL hard-codes these models' configs by name; ours reads them off the HF config."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    from tc_circuits.models.hf_config import tl_config_dict

    from transformer_lens import HookedTransformerConfig

    theirs = convert_hf_model_config(official)
    ours = tl_config_dict(hf)
    # compare the configs TransformerLens builds from both dicts (its defaults filled in)
    ct, co = HookedTransformerConfig.from_dict(theirs), HookedTransformerConfig.from_dict(ours)
    for key in _TL_KEYS:
        a, b = getattr(ct, key), getattr(co, key)
        if key.startswith("NTK") and not ct.use_NTK_by_parts_rope:
            continue
        assert a == pytest.approx(b) if isinstance(a, float) else a == b, (key, a, b)
    if "attn_types" in theirs:
        # TL's Gemma-2 table starts with a global layer where HF (and our mapping) starts with a
        # sliding one; it only matters past the 4096-token window. Gemma-3's tables agree.
        if official.startswith("google/gemma-3"):
            assert theirs["attn_types"] == ours["attn_types"]
        else:
            assert sorted(set(theirs["attn_types"])) == sorted(set(ours["attn_types"]))


def test_one_line_family_registry():
    assert len(set(FAMILY_NAMES)) == len(FAMILIES)
    assert family("pythia").kwargs["use_parallel_residual"] is True


def test_named_model_with_local_dir_keeps_name_and_mapping(folders, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf, folder = folders["gemma2"]
    model = load_model("google/gemma-2-2b", local_dir=folder)
    assert model.cfg.model_name == "gemma-2-2b"
    assert model.cfg.d_model == 64  # read from the folder's config, not TL's table for the name
    toks = _tokens(n=12)[None]
    with torch.no_grad():
        ours = torch.log_softmax(model(toks).double(), -1)
        ref = torch.log_softmax(hf(toks).logits.double(), -1)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("cls,kwargs,field", [
    ("LlamaConfig", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling type 'yarn'"),
    ("LlamaConfig", dict(attention_bias=True), "attention_bias"),
    ("Qwen2Config", dict(use_sliding_window=True), "use_sliding_window"),
    ("Gemma3TextConfig", dict(final_logit_softcapping=30.0), "final_logit_softcapping"),
])
def test_mapping_refuses_fields_it_cannot_carry(cls, kwargs, field):
    import re

    import transformers

    from tc_circuits.models.hf_config import tl_config_dict

    hf = getattr(transformers, cls)(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB, **kwargs)
    hf.architectures = [{"LlamaConfig": "LlamaForCausalLM", "Qwen2Config": "Qwen2ForCausalLM",
                         "Gemma3TextConfig": "Gemma3ForCausalLM"}[cls]]
    with pytest.raises(ValueError, match=re.escape(field)):
        tl_config_dict(hf)
