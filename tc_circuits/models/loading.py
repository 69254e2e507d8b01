"""Load real models as processed ``HookedTransformer`` s: by TransformerLens name, or offline.

* A TransformerLens name (``"gpt2"``, ``"gpt2-small"``, ``"EleutherAI/pythia-70m"``...) goes
  through ``HookedTransformer.from_pretrained`` (downloads through the Hugging Face cache).
* A local Hugging Face folder (``config.json`` + weights + optional tokenizer files, as written
  by ``save_pretrained``) loads fully offline: the HF model and tokenizer are read with
  ``local_files_only=True`` and converted by TransformerLens' own config / state-dict converters,
  then processed (``fold_ln``, ``center_writing_weights``, ``center_unembed``) exactly as
  ``from_pretrained`` would. ``local_dir=`` gives such a folder for a named model, so the
  loaded model carries that model's TransformerLens name (checkpoints record it).

Both paths swap the fused tanh-GELU kernel into GPT-2-style MLPs
(:func:`tc_circuits.models.fast_kernels.use_fast_kernels`: the same function, ~30 % faster
forward). The processing flags end up in the weights; :func:`tc_circuits.models.model_info.weight_processing`
reads them back.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tc_circuits.models import backend as backends
from tc_circuits.models.fast_kernels import use_fast_kernels
from tc_circuits.models.hf_config import tl_config_dict

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "tokenizer_config.json")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                 "pytorch_model.bin.index.json")


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected e.g. 'float32', 'bfloat16'")
    return value


def is_local_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with a Hugging Face ``config.json`` and weights."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and any((p / f).is_file() for f in _WEIGHT_FILES)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    local_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    tokenizer: Any | None = None,
    backend: str = "auto",
) -> HookedTransformer:
    """A processed ``HookedTransformer`` for a TransformerLens name or a local HF folder.

    Args:
        name_or_path: a TransformerLens model name, or a local Hugging Face model folder.
        fold_ln, center_writing_weights, center_unembed: TransformerLens weight processing.
        local_dir: a local HF folder holding the weights of model ``name_or_path``
            (loaded offline; the model keeps the TransformerLens name).
        device, dtype: where and in which precision to load. A local folder loaded in
            bfloat16 / float16 is processed (LN folding, centring) in float32 and cast after,
            so each weight is rounded once.
        tokenizer: a tokenizer to attach (default: the folder's own, else GPT-2's for a
            GPT-2-vocabulary model, else none).
        backend: ``"hooked"`` (HookedTransformer), ``"bridge"`` (a ``TransformerBridge`` in
            compatibility mode with the same processing, see
            :func:`tc_circuits.models.backend.load_bridge`), or ``"auto"``: the bridge on
            TransformerLens 4 (which has no HookedTransformer), else HookedTransformer.
    """
    if backend not in ("auto", "hooked", "bridge"):
        raise ValueError(f"backend={backend!r}; expected 'auto', 'hooked' or 'bridge'")
    if backend == "bridge" or (backend == "auto" and backends.tl_major() >= 4):
        return backends.load_bridge(
            local_dir if local_dir is not None else name_or_path,
            name=None if local_dir is None else str(name_or_path).split("/")[-1],
            fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed,
            compatibility_mode=True, tokenizer=tokenizer, device=device, dtype=_dtype(dtype),
        )
    flags = dict(
        fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed
    )
    if local_dir is not None:
        if not is_local_model_dir(local_dir):
            raise FileNotFoundError(
                f"local_dir {str(local_dir)!r} is not a Hugging Face model folder (config.json + weights)"
            )
        return _load_local(Path(local_dir), name=str(name_or_path), device=device, dtype=dtype,
                           tokenizer=tokenizer, **flags)
    if is_local_model_dir(name_or_path):
        return _load_local(Path(name_or_path), name=None, device=device, dtype=dtype,
                           tokenizer=tokenizer, **flags)
    if Path(name_or_path).exists():
        raise FileNotFoundError(
            f"{str(name_or_path)!r} exists but is not a Hugging Face model folder (config.json + weights)"
        )
    from transformer_lens import HookedTransformer

    kwargs: dict[str, Any] = dict(flags, device=device, dtype=_dtype(dtype))
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    model = HookedTransformer.from_pretrained(str(name_or_path), **kwargs)
    use_fast_kernels(model)
    return model.eval()


def _local_tokenizer(path: Path, hf_config: Any) -> Any | None:
    if any((path / f).is_file() for f in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if getattr(hf_config, "model_type", None) == "gpt2" and hf_config.vocab_size == 50257:
        from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer

        return gpt2_tokenizer()
    return None


def _completed_config(path: Path) -> dict[str, Any]:
    raw = json.loads((path / "config.json").read_text())
    if raw.get("model_type") == "gpt2" and "n_ctx" not in raw and "n_positions" in raw:
        raw["n_ctx"] = raw["n_positions"]
    return raw


def _config_from_dict(cfg_dict: dict[str, Any], *, fold_ln: bool, device, dtype: torch.dtype):
    """A ``HookedTransformerConfig`` from a mapped dict, processed as TransformerLens' loader does."""
    from transformer_lens import HookedTransformerConfig

    cfg_dict = dict(cfg_dict, init_weights=False, dtype=dtype, device=device, n_devices=1,
                    from_checkpoint=False)
    cfg_dict.setdefault("default_prepend_bos", True)
    if fold_ln:
        cfg_dict["normalization_type"] = {"LN": "LNPre", "RMS": "RMSPre"}.get(
            cfg_dict["normalization_type"], cfg_dict["normalization_type"]
        )
    return HookedTransformerConfig.from_dict(cfg_dict)


def _load_local(
    path: Path,
    *,
    name: str | None,
    fold_ln: bool,
    center_writing_weights: bool,
    center_unembed: bool,
    device: str | torch.device,
    dtype: str | torch.dtype,
    tokenizer: Any | None,
) -> HookedTransformer:
    """Offline load of a local HF folder through TransformerLens' converters (no hub access)."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading
    from transformers import AutoModelForCausalLM

    torch_dtype = _dtype(dtype)
    # weight processing (LN folding, centring) in half precision rounds every folded weight: load and
    # process in float32 and cast the processed model at the end (TransformerLens' advice for reduced
    # precision is to skip processing; this keeps it, without its rounding)
    work_dtype = torch.float32 if torch_dtype in (torch.bfloat16, torch.float16) else torch_dtype
    path = path.resolve()
    hf_model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=work_dtype)
    hf_model.eval()
    if tokenizer is None:
        tokenizer = _local_tokenizer(path, hf_model.config)
    mapped = tl_config_dict(hf_model.config)
    if mapped is not None and mapped.get("output_logits_soft_cap", -1.0) > 0 and center_unembed:
        # as TransformerLens' from_pretrained: a soft-capped logit is not shift-invariant
        logger.warning("center_unembed=True is not valid with a final-logit soft-cap; loading with center_unembed=False")
        center_unembed = False
    with tempfile.TemporaryDirectory(prefix="tc_circuits_cfg_") as tmp:
        if mapped is not None:
            cfg = _config_from_dict(mapped, fold_ln=fold_ln, device=device, dtype=work_dtype)
        else:
            # TransformerLens reads config.json itself; give it a copy completed with the keys it
            # expects but recent ``save_pretrained`` omits (GPT-2's ``n_ctx``).
            Path(tmp, "config.json").write_text(json.dumps(_completed_config(path)))
            cfg = tl_loading.get_pretrained_model_config(
                tmp,
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=fold_ln,
                device=device,
                dtype=work_dtype,
            )
        Path(tmp, "config.json").write_text(json.dumps(_completed_config(path)))
        state_dict = tl_loading.get_pretrained_state_dict(tmp, cfg, hf_model, dtype=work_dtype)
    if name is not None:
        try:
            official = tl_loading.get_official_model_name(name)
        except ValueError:
            official = name
        cfg.model_name = official.split("/")[-1]
    else:
        cfg.model_name = path.name
    cfg.tokenizer_name = None  # the tokenizer is passed in; never look one up on the hub
    model = HookedTransformer(cfg, tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=True,
        refactor_factored_attn_matrices=False,
    )
    model.move_model_modules_to_device()
    if work_dtype != torch_dtype:
        model = model.to(torch_dtype, print_details=False)
    use_fast_kernels(model)
    return model.eval()
