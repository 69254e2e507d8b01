"""Booting a ``TransformerBridge`` offline and processing its weights like HookedTransformer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tc_circuits.models.backend_kind import is_bridge
from tc_circuits.models.weights import PROCESSING_ATTR


def process_bridge(
    bridge: Any,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    fold_value_biases: bool = True,
) -> Any:
    """Turn on compatibility mode (legacy hook aliases) and HookedTransformer-style processing.

    The flags are recorded on the bridge (TransformerLens does not record them). All flags off
    gives compatibility mode without processing (the raw Hugging Face weights). Returns ``bridge``.
    """
    if not is_bridge(bridge):
        raise TypeError(f"process_bridge needs a TransformerBridge, got {type(bridge).__name__}")
    if getattr(bridge, PROCESSING_ATTR, None) is not None or getattr(bridge, "_weights_processed", False):
        raise ValueError("this bridge was already processed; boot a fresh one to process it differently")
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if any(flags.values()) or fold_value_biases:
        bridge.enable_compatibility_mode(
            disable_warnings=True, fold_value_biases=fold_value_biases, **flags
        )
    else:
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    object.__setattr__(bridge, PROCESSING_ATTR, dict(flags))
    return bridge


def load_bridge(
    source: str | os.PathLike | Any,
    *,
    name: str | None = None,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    compatibility_mode: bool = True,
    tokenizer: Any | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A ``TransformerBridge`` over a local Hugging Face folder or an in-memory HF model, offline.

    Args:
        source: a local HF model folder (``config.json`` + weights, loaded offline), a loaded
            ``transformers`` causal-LM (``PreTrainedModel``), or a Hub name (downloaded by
            ``TransformerBridge.boot_transformers``).
        name: the model name the bridge (and checkpoints) carry (default: the folder's name,
            or the HF config's ``name_or_path``).
        fold_ln, center_writing_weights, center_unembed: HookedTransformer-style processing,
            applied (and recorded) with compatibility mode.
        compatibility_mode: False leaves the bridge raw (HF weights, no processing; the
            processing flags must then be False).
        tokenizer: a tokenizer (default: the folder's own, else GPT-2's for a GPT-2 vocabulary).
        device, dtype: where and in which precision.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, PreTrainedModel

    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if not compatibility_mode and any(flags.values()):
        on = ", ".join(k for k, v in flags.items() if v)
        raise ValueError(f"weight processing ({on}) needs compatibility_mode=True; pass them False for a raw bridge")
    if isinstance(source, PreTrainedModel):
        hf_model = source
        folder = None
    elif Path(source).is_dir():
        folder = Path(source)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{str(source)!r} is not a Hugging Face model folder (no config.json)")
        hf_model = AutoModelForCausalLM.from_pretrained(
            str(folder), local_files_only=True, dtype=dtype, attn_implementation="eager"
        )
    elif Path(source).exists():
        raise FileNotFoundError(f"{str(source)!r} exists but is not a Hugging Face model folder")
    else:  # a Hub name: TransformerLens downloads it (through the Hugging Face cache)
        bridge = TransformerBridge.boot_transformers(str(source), device=device, dtype=dtype, tokenizer=tokenizer)
        if compatibility_mode:
            process_bridge(bridge, **flags)
        return bridge.eval()
    hf_model = hf_model.to(device).eval()
    if tokenizer is None:
        tokenizer = _default_tokenizer(folder, hf_model.config)
    if tokenizer is None:
        raise ValueError(
            "TransformerBridge needs a tokenizer: the model folder has none and its vocabulary is not GPT-2's; "
            "pass tokenizer="
        )
    if name is None:
        name = folder.name if folder is not None else str(getattr(hf_model.config, "name_or_path", "") or "model")
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )
    if compatibility_mode:
        process_bridge(bridge, **flags)
    return bridge.eval()


def _default_tokenizer(folder: Path | None, hf_config: Any) -> Any | None:
    if folder is not None and any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if getattr(hf_config, "vocab_size", None) == 50257 and getattr(hf_config, "model_type", None) == "gpt2":
        from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer

        return gpt2_tokenizer()
    return None
