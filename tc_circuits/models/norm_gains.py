"""The MLP-input norm of an *unprocessed* model: the gain (and LayerNorm bias) each family applies.

TransformerLens' ``blocks.L.ln2.hook_normalized`` is the normalised vector ``n(x)`` *before*
the norm's gain ``w`` and bias ``b`` (with ``fold_ln`` they live in the MLP's input weights).
Tools that hook the norm's *output* (a Hugging Face MLP module's input, circuit-tracer's
``mlp.hook_in`` on its unprocessed model, GemmaScope-2's ``pre_feedforward_layernorm.output``)
read ``n(x) * g + b``. Mapping such a checkpoint exactly needs ``g`` and ``b`` from the
unprocessed weights, which this module reads from whatever the user has:

* a local Hugging Face folder (``config.json`` + ``model.safetensors`` / sharded / ``.bin``;
  only the norm tensors are read),
* a Hugging Face model (``PreTrainedModel``) or a ``HookedTransformer`` loaded with
  ``fold_ln=False``,
* a state dict of either.

Per family (the MLP reads this norm's output):

| family | HF tensor | gain | bias |
|---|---|---|---|
| GPT-2 | ``h.L.ln_2`` | ``w`` | ``b`` |
| GPT-NeoX / Pythia (parallel) | ``layers.L.post_attention_layernorm`` of the block input | ``w`` | ``b`` |
| GPT-J (parallel, shared norm) | ``h.L.ln_1`` | ``w`` | ``b`` |
| Llama, Mistral, Qwen2/3, Phi-3 | ``layers.L.post_attention_layernorm`` (RMS) | ``w`` | — |
| Gemma-2/3 | ``layers.L.pre_feedforward_layernorm`` (RMS) | ``1 + w`` | — |
| TransformerLens (``fold_ln=False``) | ``blocks.L.ln2.w`` / ``.b`` (Gemma's already ``1 + w``) | ``w`` | ``b`` |

A processed model (``fold_ln=True``) has no gains left to read and is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: HF ``model_type`` -> (key pattern of the MLP-input norm weight, has a bias, stored as gain - 1).
_HF_MLP_NORM: dict[str, tuple[str, bool, bool]] = {
    "gpt2": (r"h\.{L}\.ln_2\.weight", True, False),
    "gpt_neox": (r"layers\.{L}\.post_attention_layernorm\.weight", True, False),
    "gptj": (r"h\.{L}\.ln_1\.weight", True, False),
    "llama": (r"layers\.{L}\.post_attention_layernorm\.weight", False, False),
    "mistral": (r"layers\.{L}\.post_attention_layernorm\.weight", False, False),
    "qwen2": (r"layers\.{L}\.post_attention_layernorm\.weight", False, False),
    "qwen3": (r"layers\.{L}\.post_attention_layernorm\.weight", False, False),
    "phi3": (r"layers\.{L}\.post_attention_layernorm\.weight", False, False),
    "gemma2": (r"layers\.{L}\.pre_feedforward_layernorm\.weight", False, True),
    "gemma3": (r"layers\.{L}\.pre_feedforward_layernorm\.weight", False, True),
    "gemma3_text": (r"layers\.{L}\.pre_feedforward_layernorm\.weight", False, True),
}
#: TransformerLens ``original_architecture`` / HF architecture class -> HF ``model_type``.
ARCHITECTURE_FAMILY: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPTJForCausalLM": "gptj",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}
#: families with a norm on the MLP's output (Gemma's ``post_feedforward_layernorm``).
POST_MLP_NORM_FAMILIES = frozenset({"gemma2", "gemma3", "gemma3_text"})
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class MLPInputNorm:
    """The affine part of one layer's MLP-input norm: ``out = n(x) * gain + bias``."""

    gain: Tensor
    """``[d_model]`` multiplicative gain as applied (``1 + w`` for Gemma)."""
    bias: Tensor
    """``[d_model]`` additive bias (zeros for RMSNorm)."""
    family: str | None
    """The source's family (HF ``model_type``; ``None`` for a bare TransformerLens state dict)."""
    tensor: str
    """The tensor it was read from (for messages)."""


class WeightSource:
    """Read-only access to the tensors of an unprocessed model, by name, lazily.

    ``source``: a local HF folder, an HF model, an unprocessed ``HookedTransformer``, or a
    state dict (``Mapping[str, Tensor]``).
    """

    def __init__(self, source: Any, *, name: str = "model source") -> None:
        self.name = name
        self.family: str | None = None
        self._get: Callable[[str], Tensor]
        if isinstance(source, (str, os.PathLike)):
            self._open_folder(Path(source))
        elif isinstance(source, torch.nn.Module):
            self.family = module_family(source)
            sd = source.state_dict()
            self.keys, self._get = list(sd), sd.__getitem__
            self.name = f"{name} ({type(source).__name__})"
        elif isinstance(source, Mapping):
            self.keys, self._get = list(source), source.__getitem__
            self.family = _family_from_keys(self.keys)
        else:
            raise ValueError(
                f"{name}: expected a Hugging Face folder, a model or a state dict, got {type(source).__name__}"
            )

    def _open_folder(self, root: Path) -> None:
        cfg_file = root / "config.json"
        if not root.is_dir() or not cfg_file.is_file():
            raise FileNotFoundError(f"{self.name}: {str(root)!r} is not a Hugging Face model folder (no config.json)")
        self.name = str(root)
        cfg = json.loads(cfg_file.read_text())
        self.family = cfg.get("model_type")
        self.config = cfg
        files: dict[str, Path] = {}
        if (root / "model.safetensors").is_file():
            files = {k: root / "model.safetensors" for k in _safetensors_keys(root / "model.safetensors")}
        elif (root / "model.safetensors.index.json").is_file():
            index = json.loads((root / "model.safetensors.index.json").read_text())["weight_map"]
            files = {k: root / f for k, f in index.items()}
        elif (root / "pytorch_model.bin").is_file() or (root / "pytorch_model.bin.index.json").is_file():
            if (root / "pytorch_model.bin").is_file():
                shards = {"pytorch_model.bin": None}
            else:
                shards = dict.fromkeys(json.loads((root / "pytorch_model.bin.index.json").read_text())["weight_map"].values())
            sd: dict[str, Tensor] = {}
            for shard in shards:  # weights_only: never runs code from the file
                sd.update(torch.load(root / shard, map_location="cpu", weights_only=True))
            self.keys, self._get = list(sd), sd.__getitem__
            return
        else:
            raise FileNotFoundError(f"{self.name}: no weights ({' / '.join(_WEIGHT_FILES[:3])}) in {root}")
        self.keys = list(files)

        def get(key: str) -> Tensor:
            from safetensors import safe_open

            with safe_open(str(files[key]), framework="pt") as f:
                return f.get_tensor(key)

        self._get = get

    def find(self, pattern: str) -> str | None:
        """The one key ending in ``pattern`` (a regex, after an optional module prefix)."""
        rx = re.compile(r"(?:^|\.)" + pattern + "$")
        hits = [k for k in self.keys if rx.search(k)]
        if len(hits) > 1:
            raise ValueError(f"{self.name}: several tensors match {pattern!r}: {hits}")
        return hits[0] if hits else None

    def get(self, key: str) -> Tensor:
        return self._get(key).detach()


def _safetensors_keys(file: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return list(f.keys())


def _family_from_keys(keys: list[str]) -> str | None:
    joined = "\n".join(keys[:400])
    if "pre_feedforward_layernorm" in joined:
        return "gemma"  # Gemma-2 or Gemma-3: the same norm layout
    if "gpt_neox." in joined:
        return "gpt_neox"
    if ".mlp.fc_in." in joined:  # GPT-J's MLP (GPT-2's is c_fc): its MLP reads the shared ln_1
        return "gptj"
    if ".mlp.c_fc." in joined:
        return "gpt2"
    return None


def module_family(model: torch.nn.Module) -> str | None:
    """The HF ``model_type`` of an HF model or of a ``HookedTransformer`` (``original_architecture``)."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "model_type", None):
        return str(cfg.model_type)
    cfg = getattr(model, "cfg", None)
    arch = getattr(cfg, "original_architecture", None)
    return ARCHITECTURE_FAMILY.get(str(arch)) if arch else None


def same_family(a: str | None, b: str | None) -> bool:
    """Whether two family ids name the same norm layout (``gemma`` matches Gemma-2 and -3)."""
    if a is None or b is None:
        return True
    norm = {"gemma3_text": "gemma3"}
    a, b = norm.get(a, a), norm.get(b, b)
    return a == b or {a, b} <= {"gemma", "gemma2", "gemma3"} and "gemma" in (a, b)


def has_post_mlp_norm(family: str | None) -> bool:
    """Whether ``family`` normalises the MLP's output (Gemma-2/3)."""
    return family in POST_MLP_NORM_FAMILIES or family == "gemma"


def mlp_input_norm(source: Any, layer: int, *, name: str = "model source") -> MLPInputNorm:
    """The gain and bias of ``layer``'s MLP-input norm in the unprocessed ``source``.

    See the module docstring for the families and tensors. Raises ``ValueError`` naming the
    tensors looked for when ``source`` has none (e.g. a model processed with ``fold_ln``).
    """
    ws = source if isinstance(source, WeightSource) else WeightSource(source, name=name)
    looked: list[str] = []
    tl_key = ws.find(rf"blocks\.{layer}\.ln2\.w")
    if tl_key is not None:  # TransformerLens, unprocessed: the gain as applied
        gain = ws.get(tl_key)
        b_key = ws.find(rf"blocks\.{layer}\.ln2\.b")
        bias = ws.get(b_key) if b_key else torch.zeros_like(gain)
        return MLPInputNorm(gain, bias, ws.family, tl_key)
    looked.append(f"blocks.{layer}.ln2.w")
    families = [ws.family] if ws.family in _HF_MLP_NORM else (
        ["gemma2"] if ws.family == "gemma" else list(dict.fromkeys(_HF_MLP_NORM)))
    for fam in families:
        if ws.family not in _HF_MLP_NORM and fam == "gptj":
            continue  # ln_1 is GPT-2's attention norm: only trusted when the family says GPT-J
        pattern, has_bias, minus_one = _HF_MLP_NORM[fam]
        pat = pattern.format(L=layer)
        key = ws.find(pat)
        looked.append(pat.replace("\\", ""))
        if key is None:
            continue
        if ws.family not in _HF_MLP_NORM and fam in ("llama", "mistral", "qwen2", "qwen3", "phi3") \
                and ws.find(rf"layers\.{layer}\.pre_feedforward_layernorm\.weight"):
            continue  # Gemma's post_attention_layernorm is the attention post-norm
        w = ws.get(key)
        # Gemma's RMSNorm computes (1.0 + weight.float()) in float32, as does TransformerLens' converter
        gain = w.float() + 1.0 if minus_one else w
        bias = torch.zeros_like(gain)
        if has_bias:
            b_key = key[: -len("weight")] + "bias"
            if b_key not in ws.keys:
                if len(families) > 1:
                    continue  # a guess: an RMSNorm family with the same tensor names
                raise ValueError(f"{ws.name}: {key} has no bias tensor {b_key}")
            bias = ws.get(b_key)
        return MLPInputNorm(gain, bias, fam if ws.family is None else ws.family, key)
    raise ValueError(
        f"{ws.name} has no MLP-input norm (LayerNorm weights or RMSNorm gain) for layer {layer} (family {ws.family!r}; looked for "
        f"{sorted(set(looked))}); pass the unprocessed model (a Hugging Face folder or model, or a "
        f"HookedTransformer loaded with fold_ln=False) or its state dict"
    )


__all__ = ["ARCHITECTURE_FAMILY", "MLPInputNorm", "POST_MLP_NORM_FAMILIES", "WeightSource",
           "has_post_mlp_norm", "mlp_input_norm", "module_family", "same_family"]
