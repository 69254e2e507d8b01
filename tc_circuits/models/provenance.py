"""A model's provenance as graphs record it: name, config hash and weight processing.

:func:`model_config_hash` hashes the architecture-defining fields of a TransformerLens
config (not the device, dtype or seed), so the same model loaded on another machine gets the
same hash while a different architecture of the same name does not.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from tc_circuits.models.model_info import model_signature

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

#: Config fields that define the computation (missing ones are recorded as None).
ARCH_FIELDS = (
    "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "d_vocab", "n_ctx", "act_fn",
    "normalization_type", "positional_embedding_type", "attn_only", "gated_mlp",
    "n_key_value_heads", "parallel_attn_mlp", "original_architecture", "rotary_dim",
    "final_rms", "use_attn_scale", "attn_scale", "output_logits_soft_cap",
    "attn_scores_soft_cap", "use_normalization_before_and_after", "tie_word_embeddings",
)  # fmt: skip


def model_config_hash(model: HookedTransformer) -> str:
    """Hex hash (16 chars) of the architecture fields of ``model.cfg``."""
    cfg = model.cfg
    fields = {name: getattr(cfg, name, None) for name in ARCH_FIELDS}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_provenance(model: HookedTransformer) -> dict[str, Any]:
    """``model_signature`` plus ``config_hash``: what a graph records about its model."""
    return {**model_signature(model), "config_hash": model_config_hash(model)}


__all__ = ["ARCH_FIELDS", "model_config_hash", "model_provenance"]
