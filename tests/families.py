"""Tiny random Hugging Face models of every supported family, with the real models' flags.

Each family is one :class:`Family` line: the ``transformers`` config class and the
structural settings of the real model it stands for (norm placement, parallel residual,
rotary fraction and base, GQA ratio, q/k norms, soft-cap values, sliding windows, query
scaling), with small sizes. :func:`build_folder` instantiates the HF model with random weights
(norm gains perturbed away from their defaults so folding them is tested), saves it with
``save_pretrained`` and returns ``(hf_model, folder)``; tests load the folder through
``tc_circuits.models.loading.load_model``. A new family is one more line in :data:`FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

VOCAB = 97


@dataclass(frozen=True)
class Family:
    """One model family: an HF config class name and the structural flags of the real model."""

    name: str
    """Short id used in test ids (``pythia``, ``gemma2``...)."""
    config_class: str
    """Name of the ``transformers`` config class."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Config arguments: the real model's structural flags at small sizes."""
    real: str = ""
    """The real model these flags are taken from."""


_SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=VOCAB,
              max_position_embeddings=64)

FAMILIES: list[Family] = [
    Family("pythia", "GPTNeoXConfig", dict(
        _SMALL, num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
        hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
    ), "EleutherAI/pythia-160m"),
    Family("llama3", "LlamaConfig", dict(
        _SMALL, num_attention_heads=8, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    ), "meta-llama/Llama-3.2-1B"),
    Family("qwen2", "Qwen2Config", dict(
        _SMALL, num_attention_heads=4, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=True,
    ), "Qwen/Qwen2.5-0.5B"),
    Family("qwen3", "Qwen3Config", dict(
        _SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=32, hidden_act="silu",
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
    ), "Qwen/Qwen3-0.6B"),
    Family("gemma2", "Gemma2Config", dict(
        _SMALL, num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=10000.0,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
    ), "google/gemma-2-2b"),
    Family("gemma3", "Gemma3TextConfig", dict(
        _SMALL, num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, rope_theta=1000000.0,
        rope_local_base_freq=10000.0, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
    ), "google/gemma-3-1b-pt"),
    # loaded through TransformerLens' own HF-config converter (not in models/hf_config.py)
    Family("gptj", "GPTJConfig", dict(
        n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB, rotary_dim=4,
        activation_function="gelu_new", tie_word_embeddings=False,
    ), "EleutherAI/gpt-j-6b"),
    Family("mistral", "MistralConfig", dict(
        _SMALL, num_attention_heads=8, num_key_value_heads=2, hidden_act="silu", rms_norm_eps=1e-5,
        rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False,
    ), "mistralai/Mistral-7B-v0.3"),
    Family("phi3", "Phi3Config", dict(
        _SMALL, num_attention_heads=4, num_key_value_heads=4, hidden_act="silu", rms_norm_eps=1e-5,
        rope_theta=10000.0, pad_token_id=0, tie_word_embeddings=False,
    ), "microsoft/Phi-3-mini-4k-instruct"),
]

FAMILY_NAMES = [f.name for f in FAMILIES]


def family(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(name)


def hf_model(fam: Family, seed: int = 0):
    """The HF causal LM of ``fam`` with random weights (norm gains perturbed, biases non-zero)."""
    import transformers
    from transformers import AutoModelForCausalLM

    cfg = getattr(transformers, fam.config_class)(**fam.kwargs)
    torch.manual_seed(seed)  # HF init draws from the global RNG; every weight is overwritten below
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    gemma = fam.config_class.startswith("Gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                # Gemma's RMSNorm multiplies by (1 + w); the others by w
                p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
            else:
                p.copy_(0.15 * noise)
    return model.eval()


def build_folder(fam: Family, root: Path, seed: int = 0):
    """Save a random ``fam`` model under ``root/fam.name``; returns ``(hf_model, folder)``."""
    model = hf_model(fam, seed)
    folder = Path(root) / fam.name
    model.save_pretrained(folder)
    return model, folder
