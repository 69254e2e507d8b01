"""The one room that knows which kind of TransformerLens model it is talking to.

Two backends, one interface for the engine, the trainer, splicing and the views:

* ``"hooked"``: ``transformer_lens.HookedTransformer`` (TransformerLens 2.16 - 3.x; removed in 4.0).
* ``"bridge"``: ``transformer_lens.model_bridge.TransformerBridge`` (TransformerLens 3.x and 4.x),
  which wraps a Hugging Face model directly, with or without ``enable_compatibility_mode()``
  (HookedTransformer-style weight processing and legacy hook aliases).

Hook *names* per backend are built in :mod:`tc_circuits.models.sites` (``Site.hook_for(model)``,
``global_hook(name, model)``); this module gives everything else a caller needs from a model:

* the backend and the TransformerLens version (:func:`backend_of`, :func:`tl_version`);
* weights: norms (:func:`norm_weights`, with their kind read off the module, not its class
  name), attention OV (:func:`attn_ov`), MLP (:func:`mlp_weights`), embeddings and unembedding
  (:func:`embed_weights`, :func:`unembed_weights`), the matrices writing to the residual
  stream (:func:`writing_weights`);
* the weight-processing state: :func:`fold_ln` (HookedTransformer records it on its config;
  a bridge records nothing in TL 3 and only "processed or not" in TL 4, so we record the flags
  we applied in :func:`process_bridge` and otherwise read them off the norms);
* the model's name as checkpoints record it (:func:`model_name`), its device, its tokenizer;
* hook bookkeeping that aliases would double-count (:func:`hook_points`, :func:`count_hooks`),
  and whether norm-scale hooks can be written (:func:`norm_scale_hooks_live`: not on TL 3's
  bridge for RMSNorm models);
* loading: :func:`load_bridge` boots a bridge offline from a local HF folder or an in-memory
  HF model; :func:`hooked_transformer_class` imports ``HookedTransformer`` with a clear error
  on TL 4.

Nothing here imports ``HookedTransformer`` at module level, so the package imports on TL 4.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens.hook_points import HookPoint

BACKENDS = ("hooked", "bridge")

#: Attribute where :func:`process_bridge` records the processing flags it applied.
_PROCESSING_ATTR = "_tc_processing"


def tl_version() -> str:
    """The installed TransformerLens version (``"3.2.1"``, ``"4.3.0"``...)."""
    return importlib.metadata.version("transformer-lens")


def tl_major() -> int:
    """Major version of the installed TransformerLens."""
    return int(tl_version().split(".")[0])


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a ``TransformerBridge`` (checked by class name: no import needed)."""
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)


def backend_of(model: Any) -> str:
    """``"bridge"`` for a ``TransformerBridge``, ``"hooked"`` for a ``HookedTransformer``."""
    if is_bridge(model):
        return "bridge"
    if hasattr(model, "cfg") and hasattr(model, "hook_dict") and hasattr(model, "blocks"):
        return "hooked"
    raise TypeError(
        f"expected a TransformerLens HookedTransformer or TransformerBridge, got {type(model).__name__}"
    )


def hooked_transformer_class() -> type:
    """``transformer_lens.HookedTransformer``, or an ``ImportError`` saying what to use on TL 4."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError as err:
        raise ImportError(
            f"HookedTransformer is not available in TransformerLens {tl_version()} (removed in 4.0); "
            "load models as a TransformerBridge: tc_circuits.models.backend.load_bridge(path_or_hf_model) "
            "or tc_circuits.load_model(..., backend='bridge')"
        ) from err
    return HookedTransformer


# ----------------------------------------------------------------------------- hooks


def hook_points(model: Any) -> dict[int, HookPoint]:
    """Every distinct hook point of ``model`` (a bridge lists each under its alias names too)."""
    return {id(hp): hp for hp in model.hook_dict.values()}


def count_hooks(model: Any) -> int:
    """Number of forward hooks currently on ``model`` (0 on a clean model), aliases counted once."""
    return sum(len(hp.fwd_hooks) for hp in hook_points(model).values())


@torch.no_grad()
def norm_scale_hooks_live(model: Any) -> bool:
    """Whether writing a norm's ``hook_scale`` changes the forward pass (needed to freeze it).

    Always on a HookedTransformer. A TL 3.x bridge runs Hugging Face's own norm for RMSNorm
    models (``use_native_layernorm_autograd``) and only *reports* the scale; TL 4 recomputes
    from the hook. Found out once per model with a one-token forward pass.
    """
    if not is_bridge(model):
        return True
    cached = getattr(model, "_tc_norm_hooks_live", None)
    if cached is not None:
        return cached
    name = "blocks.0.ln1.hook_scale"
    if name not in model.hook_dict or model.cfg.normalization_type is None:
        live = True
    else:
        toks = torch.zeros(1, 1, dtype=torch.long, device=device(model))
        base = model(toks)
        live = not torch.equal(base, model.run_with_hooks(toks, fwd_hooks=[(name, lambda x, hook: 2 * x)]))
    object.__setattr__(model, "_tc_norm_hooks_live", live)
    return live


# ----------------------------------------------------------------------------- weights


class NormWeights(NamedTuple):
    """A norm's kind and affine part, as the frozen (linearised) model uses them."""

    kind: str | None
    """``"LN"`` (centres its input), ``"RMS"``, or None (no norm)."""
    w: Tensor | None
    """Gain ``[d_model]`` (None when folded away on a HookedTransformer)."""
    b: Tensor | None
    """Bias ``[d_model]`` (None when absent)."""


class AttnOV(NamedTuple):
    """The value / output weights of one attention layer (``[heads, ...]``, K/V heads expanded)."""

    W_V: Tensor
    b_V: Tensor
    W_O: Tensor
    b_O: Tensor


class MLPWeights(NamedTuple):
    W_in: Tensor
    b_in: Tensor | None
    W_out: Tensor
    b_out: Tensor | None


def _module(model: Any, path: str) -> Any:
    module = model
    for part in path.split("."):
        if module is None:
            return None
        module = module[int(part)] if part.isdigit() else getattr(module, part, None)
    return module


def norm_kind(module: Any) -> str | None:
    """``"LN"``, ``"RMS"`` or None for a norm module of either backend."""
    if module is None:
        return None
    name = type(module).__name__
    if name in ("LayerNorm", "LayerNormPre"):
        return "LN"
    if name in ("RMSNorm", "RMSNormPre"):
        return "RMS"
    if name == "NormalizationBridge" or hasattr(module, "uses_rms_norm"):
        return "RMS" if bool(module.uses_rms_norm) else "LN"
    if name == "Identity":
        return None
    raise ValueError(f"norm module is a {name}; expected a LayerNorm(Pre) / RMSNorm(Pre) or a bridge norm")


def _detached(t: Any) -> Tensor | None:
    return t.detach() if isinstance(t, Tensor) else None


def norm_weights(model: Any, path: str) -> NormWeights:
    """The norm at attribute path ``path`` (``"blocks.3.ln2"``, ``"ln_final"``) of ``model``."""
    module = _module(model, path)
    kind = norm_kind(module)
    if kind is None:
        return NormWeights(None, None, None)
    return NormWeights(kind, _detached(getattr(module, "w", None)), _detached(getattr(module, "b", None)))


def _expand_kv(t: Tensor, n_heads: int) -> Tensor:
    """Repeat grouped K/V heads (dim 0) so there is one per query head."""
    if t.shape[0] == n_heads:
        return t
    if n_heads % t.shape[0]:
        raise ValueError(f"{t.shape[0]} key/value heads do not divide {n_heads} query heads")
    return t.repeat_interleave(n_heads // t.shape[0], dim=0)


@torch.no_grad()
def _affine_map(module: Any, d_in: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(W [d_in, d_out], b [d_out])`` of an affine module, read off its forward pass.

    Pushing the identity (and zero) through the module gives its matrix whatever the storage
    (``nn.Linear``'s ``[out, in]``, GPT-2's ``Conv1D`` ``[in, out]``, processed or not).
    """
    eye = torch.eye(d_in, dtype=like.dtype, device=like.device)
    out = module(torch.cat([eye, torch.zeros(1, d_in, dtype=like.dtype, device=like.device)]))
    return out[:-1] - out[-1], out[-1]


def _bridge_ov(model: Any, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A bridge's OV weights from the ``v`` and ``o`` linear maps its attention actually runs.

    (TL 3.2.1's ``W_O`` property reshapes an ``nn.Linear`` ``o_proj`` without transposing it;
    the forward pass is the ground truth: ``hook_z`` is ``o``'s input, ``hook_v`` ``v``'s output.)
    """
    attn = model.blocks[layer].attn
    cfg = model.cfg
    d, h, dh = int(cfg.d_model), int(cfg.n_heads), int(cfg.d_head)
    like = model.embed.W_E
    W_v, b_v = _affine_map(getattr(attn.v, "original_component", attn.v), d, like)
    W_o, b_o = _affine_map(getattr(attn.o, "original_component", attn.o), h * dh, like)
    n_kv = W_v.shape[1] // dh
    W_V = W_v.reshape(d, n_kv, dh).permute(1, 0, 2)
    return W_V, b_v.reshape(n_kv, dh), W_o.reshape(h, dh, d), b_o


def attn_ov(model: Any, layer: int) -> AttnOV:
    """``W_V [h, d, dh]``, ``b_V [h, dh]``, ``W_O [h, dh, d]``, ``b_O [d]`` of block ``layer``."""
    n_heads = int(model.cfg.n_heads)
    if is_bridge(model):
        W_V, b_V, W_O, b_O = _bridge_ov(model, layer)
        return AttnOV(_expand_kv(W_V, n_heads), _expand_kv(b_V, n_heads), W_O, b_O)
    attn = model.blocks[layer].attn
    W_O = attn.W_O.detach()
    W_V = _expand_kv(attn.W_V.detach(), n_heads)
    b_V = _detached(attn.b_V)
    b_O = _detached(attn.b_O)
    b_V = torch.zeros(W_V.shape[0], W_V.shape[2], dtype=W_V.dtype, device=W_V.device) if b_V is None else _expand_kv(b_V, n_heads)
    b_O = torch.zeros(W_O.shape[-1], dtype=W_O.dtype, device=W_O.device) if b_O is None else b_O
    return AttnOV(W_V, b_V, W_O, b_O)


def mlp_weights(model: Any, layer: int) -> MLPWeights:
    """``W_in [d, d_mlp]``, ``b_in``, ``W_out [d_mlp, d]``, ``b_out`` of block ``layer``."""
    mlp = model.blocks[layer].mlp
    return MLPWeights(mlp.W_in.detach(), _detached(mlp.b_in), mlp.W_out.detach(), _detached(mlp.b_out))


def embed_weights(model: Any) -> tuple[Tensor, Tensor | None]:
    """``(W_E [vocab, d], W_pos [n_ctx, d] or None)``."""
    pos = getattr(model, "pos_embed", None)
    W_pos = getattr(pos, "W_pos", None) if pos is not None else None
    return model.embed.W_E.detach(), _detached(W_pos)


def unembed_weights(model: Any) -> tuple[Tensor, Tensor]:
    """``(W_U [d, vocab], b_U [vocab])`` (zeros for a bias-free unembedding)."""
    W_U = model.unembed.W_U.detach()
    b_U = _detached(getattr(model, "b_U", None))
    if b_U is None:
        b_U = torch.zeros(W_U.shape[-1], dtype=W_U.dtype, device=W_U.device)
    return W_U, b_U


def _output_last(bridge_linear: Any) -> Tensor:
    """The stored weight of a bridge's linear map as a view with the output dimension last."""
    m = getattr(bridge_linear, "original_component", bridge_linear)
    if type(m).__name__ == "Conv1D":  # GPT-2: [in, out]
        return m.weight
    if isinstance(m, torch.nn.Linear):  # [out, in]
        return m.weight.T
    raise ValueError(f"cannot read the weight of a {type(m).__name__} writing to the residual stream")


def writing_weights(model: Any) -> list[Tensor]:
    """Per-layer matrices that write to the residual stream (``W_E``, ``W_pos``, each ``W_O``,
    ``W_out``), each with ``d_model`` last; the stored tensors (views), so their versions tell
    when they change."""
    W_E, W_pos = embed_weights(model)
    ws = [W_E] + ([W_pos] if W_pos is not None else [])
    bridge = is_bridge(model)
    for block in model.blocks:
        ws.append(_output_last(block.attn.o) if bridge else block.attn.W_O)
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            continue
        if bridge and getattr(mlp, "out", None) is not None:
            ws.append(_output_last(mlp.out))
        elif getattr(mlp, "W_out", None) is not None:
            ws.append(mlp.W_out)
    return ws


# ----------------------------------------------------------------------------- processing state


def _norm_paths(model: Any) -> list[str]:
    n = int(model.cfg.n_layers)
    return [f"blocks.{L}.{ln}" for L in range(n) for ln in ("ln1", "ln2")] + ["ln_final"]


def _norms_are_identity(model: Any) -> bool:
    for path in _norm_paths(model):
        nw = norm_weights(model, path)
        if nw.kind is None:
            continue
        if nw.w is not None and not bool(torch.all(nw.w == 1)):
            return False
        if nw.b is not None and not bool(torch.all(nw.b == 0)):
            return False
    return True


def fold_ln(model: Any) -> bool:
    """Whether the norms' affine parts are folded into the next weights.

    HookedTransformer records it on its config. A bridge: the flag :func:`process_bridge`
    recorded; else, when the bridge's weights were processed (TL 4's ``_weights_processed``,
    TL 3's compatibility mode), whether every norm is left with ``w = 1`` and ``b = 0``.
    """
    cfg = model.cfg
    if backend_of(model) == "hooked":
        return bool(getattr(cfg, "layer_norm_folding", False)) or cfg.normalization_type in ("LNPre", "RMSPre")
    recorded = getattr(model, _PROCESSING_ATTR, None)
    if recorded is not None:
        return bool(recorded["fold_ln"])
    processed = bool(getattr(model, "_weights_processed", False)) or bool(getattr(model, "compatibility_mode", False))
    return processed and _norms_are_identity(model)


def recorded_processing(model: Any) -> dict[str, bool] | None:
    """The flags :func:`process_bridge` applied to ``model``, or None."""
    recorded = getattr(model, _PROCESSING_ATTR, None)
    return None if recorded is None else dict(recorded)


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
    if getattr(bridge, _PROCESSING_ATTR, None) is not None or getattr(bridge, "_weights_processed", False):
        raise ValueError("this bridge was already processed; boot a fresh one to process it differently")
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights, center_unembed=center_unembed)
    if any(flags.values()) or fold_value_biases:
        bridge.enable_compatibility_mode(
            disable_warnings=True, fold_value_biases=fold_value_biases, **flags
        )
    else:
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    object.__setattr__(bridge, _PROCESSING_ATTR, dict(flags))
    return bridge


# ----------------------------------------------------------------------------- names, devices, tokens


def model_name(model: Any) -> str:
    """The model's name as checkpoints record it.

    HookedTransformer: ``cfg.model_name`` (``from_pretrained`` already drops the organisation:
    ``"pythia-70m"``; a local folder gives the folder's name). A bridge carries the name it was
    booted with (a Hub id or a path): its last component, so both backends agree.
    """
    name = str(model.cfg.model_name)
    if backend_of(model) == "hooked":
        return name
    return name.rstrip("/").split("/")[-1] or name


def device(model: Any) -> torch.device:
    """Device of the model's first parameter."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device(str(getattr(model.cfg, "device", "cpu") or "cpu"))


def tokenizer(model: Any) -> Any | None:
    """The model's tokenizer (None when it has none)."""
    return getattr(model, "tokenizer", None)


def to_tokens(model: Any, text: str, *, prepend_bos: bool | None = None) -> Tensor:
    """``[1, pos]`` token ids of ``text`` with the model's BOS convention (both backends)."""
    if tokenizer(model) is None:
        raise ValueError("a string prompt needs a model with a tokenizer; pass token ids")
    kwargs = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
    return model.to_tokens(text, **kwargs)


# ----------------------------------------------------------------------------- loading


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


__all__ = [
    "BACKENDS",
    "AttnOV",
    "MLPWeights",
    "NormWeights",
    "attn_ov",
    "backend_of",
    "count_hooks",
    "device",
    "embed_weights",
    "fold_ln",
    "hook_points",
    "hooked_transformer_class",
    "is_bridge",
    "load_bridge",
    "mlp_weights",
    "model_name",
    "norm_kind",
    "norm_scale_hooks_live",
    "norm_weights",
    "process_bridge",
    "recorded_processing",
    "tl_major",
    "tl_version",
    "to_tokens",
    "tokenizer",
    "unembed_weights",
    "writing_weights",
]
