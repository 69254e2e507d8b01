"""Hugging Face config -> TransformerLens config, read from the config itself (offline).

TransformerLens 3.2 derives a ``HookedTransformerConfig`` from a Hugging Face config for some
families, but for others it uses hard-coded tables keyed by the *official model name*
(every Gemma-2/3 model, Llama-3.x rotary settings): a local folder, or any checkpoint whose
dimensions differ from the named one, would get the wrong shape. :func:`tl_config_dict` reads
every field from the HF config for the families listed in :data:`FAMILIES`; the tests check
that it reproduces TransformerLens' own tables on the real models' configs
(``tests/test_families.py``) and that the loaded model's log-probs equal the HF model's.

Fields the mapping does not know how to carry (e.g. a rope scaling type TransformerLens has no
equivalent for) raise ``ValueError`` naming the field, rather than loading a different model.
"""

from __future__ import annotations

from typing import Any

#: HF ``architectures[0]`` values read here (others go through TransformerLens' own converter).
FAMILIES = (
    "GPTNeoXForCausalLM",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)


def _get(hf: Any, name: str, default: Any = None) -> Any:
    return getattr(hf, name, default) if not isinstance(hf, dict) else hf.get(name, default)


def _rope_theta(hf: Any, default: float = 10000.0) -> float:
    theta = _get(hf, "rope_theta")
    if theta is None:
        params = _get(hf, "rope_parameters") or {}
        theta = params.get("rope_theta", default) if isinstance(params, dict) else default
    return float(theta)


def _rope_scaling(hf: Any, arch: str) -> dict[str, Any]:
    """TransformerLens fields for ``rope_scaling`` (Llama-3 NTK-by-parts, Gemma-3 linear)."""
    rs = _get(hf, "rope_scaling")
    if not rs:
        return {}
    kind = rs.get("rope_type", rs.get("type"))
    if kind in (None, "default"):
        return {}
    if kind == "llama3":
        return {
            "use_NTK_by_parts_rope": True,
            "NTK_by_parts_factor": float(rs["factor"]),
            "NTK_by_parts_low_freq_factor": float(rs["low_freq_factor"]),
            "NTK_by_parts_high_freq_factor": float(rs["high_freq_factor"]),
            "NTK_original_ctx_len": int(rs["original_max_position_embeddings"]),
        }
    if kind == "linear" and arch == "Gemma3ForCausalLM":
        # TransformerLens applies the linear factor to the global layers only, as HF Gemma-3 does
        return {"rotary_scaling_factor": float(rs["factor"])}
    raise ValueError(f"rope_scaling type {kind!r} of a {arch} config is not supported by the TransformerLens conversion")


def _n_kv(hf: Any) -> int | None:
    n_kv = _get(hf, "num_key_value_heads")
    return None if n_kv is None or n_kv == hf.num_attention_heads else int(n_kv)


def _attn_types(hf: Any) -> list[str] | None:
    types = _get(hf, "layer_types")
    if not types:
        return None
    out = []
    for t in types:
        if t not in ("sliding_attention", "full_attention"):
            raise ValueError(f"layer_types entry {t!r} is not supported (expected sliding_attention / full_attention)")
        out.append("local" if t == "sliding_attention" else "global")
    return out


def _head_dim(hf: Any) -> int:
    hd = _get(hf, "head_dim")
    return int(hd) if hd else hf.hidden_size // hf.num_attention_heads


def _common_rms(hf: Any, arch: str) -> dict[str, Any]:
    d_head = _head_dim(hf)
    return {
        "d_model": hf.hidden_size,
        "d_head": d_head,
        "n_heads": hf.num_attention_heads,
        "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers,
        "n_ctx": min(int(hf.max_position_embeddings), 8192),
        "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size,
        "act_fn": _get(hf, "hidden_activation") or hf.hidden_act,
        "n_key_value_heads": _n_kv(hf),
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": d_head,
        "rotary_base": _rope_theta(hf),
        "final_rms": True,
        "gated_mlp": True,
        "initializer_range": _get(hf, "initializer_range", 0.02),
        "original_architecture": arch,
        **_rope_scaling(hf, arch),
    }


def tl_config_dict(hf: Any) -> dict[str, Any] | None:
    """A ``HookedTransformerConfig`` dict for an HF config of one of :data:`FAMILIES`, else None.

    ``hf`` is a ``transformers.PretrainedConfig``. The dict has no processing fields
    (``fold_ln`` turns ``normalization_type`` into its ``Pre`` form in
    :mod:`tc_circuits.models.loading`).
    """
    archs = _get(hf, "architectures") or []
    arch = archs[0] if archs else None
    if arch not in FAMILIES:
        return None
    if arch == "GPTNeoXForCausalLM":
        d_head = hf.hidden_size // hf.num_attention_heads
        pct = _get(hf, "rotary_pct", _get(hf, "partial_rotary_factor", 1.0))
        if _get(hf, "rope_scaling"):
            raise ValueError("rope_scaling on a GPTNeoX config is not supported by the TransformerLens conversion")
        return {
            "d_model": hf.hidden_size,
            "d_head": d_head,
            "n_heads": hf.num_attention_heads,
            "d_mlp": hf.intermediate_size,
            "n_layers": hf.num_hidden_layers,
            "n_ctx": hf.max_position_embeddings,
            "eps": hf.layer_norm_eps,
            "d_vocab": hf.vocab_size,
            "act_fn": hf.hidden_act,
            "use_attn_scale": True,
            "use_local_attn": False,
            "scale_attn_by_inverse_layer_idx": False,
            "parallel_attn_mlp": bool(hf.use_parallel_residual),
            "positional_embedding_type": "rotary",
            "rotary_adjacent_pairs": False,
            "rotary_dim": round(pct * d_head),
            "rotary_base": float(_get(hf, "rotary_emb_base", _rope_theta(hf))),
            "normalization_type": "LN",
            "default_prepend_bos": False,
            "original_architecture": arch,
        }
    cfg = _common_rms(hf, arch)
    if arch == "LlamaForCausalLM":
        if _get(hf, "attention_bias") or _get(hf, "mlp_bias"):
            raise ValueError("attention_bias / mlp_bias on a Llama config are not converted by TransformerLens")
        return cfg
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        cfg.update(use_attn_scale=True, tokenizer_prepends_bos=True, default_prepend_bos=False)
        if arch == "Qwen2ForCausalLM":
            cfg["n_key_value_heads"] = int(hf.num_key_value_heads)  # TL's Qwen2 converter expects it set
        else:
            cfg["use_qk_norm"] = True
        if _get(hf, "use_sliding_window"):
            raise ValueError(f"use_sliding_window=True on a {arch} config is not supported")
        return cfg
    # Gemma-2 / Gemma-3 (text)
    cfg.update(
        use_attn_scale=True,
        use_normalization_before_and_after=True,
        n_key_value_heads=int(hf.num_key_value_heads),  # TL's Gemma converter expects it set
    )
    scalar = _get(hf, "query_pre_attn_scalar")
    if scalar is not None and float(scalar) != float(cfg["d_head"]):
        cfg["attn_scale"] = float(scalar) ** 0.5
    types = _attn_types(hf)
    if types is not None and "local" in types:
        cfg.update(use_local_attn=True, attn_types=types, window_size=int(hf.sliding_window))
    if arch == "Gemma2ForCausalLM":
        for hf_name, tl_name in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                                 ("final_logit_softcapping", "output_logits_soft_cap")):
            value = _get(hf, hf_name)
            if value is not None:
                cfg[tl_name] = float(value)
    else:
        cfg["use_qk_norm"] = True
        local = _get(hf, "rope_local_base_freq")
        if local is not None:
            cfg["rotary_base_local"] = float(local)
        for hf_name in ("attn_logit_softcapping", "final_logit_softcapping"):
            if _get(hf, hf_name) is not None:
                raise ValueError(f"{hf_name} on a Gemma-3 config is not converted by TransformerLens")
    return cfg
