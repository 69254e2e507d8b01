"""A model's weights as the frozen (linearised) model uses them, for either backend.

Norms (:func:`norm_weights`, with their kind read off the module, not its class name),
attention OV with grouped K/V heads expanded (:func:`attn_ov`), MLP (:func:`mlp_weights`),
embeddings and unembedding, the matrices writing to the residual stream
(:func:`writing_weights`), and the weight-processing state (:func:`fold_ln`: HookedTransformer
records it on its config; a bridge records nothing in TL 3 and only "processed or not" in TL
4, so :func:`tc_circuits.models.bridge_loading.process_bridge` records the flags it applied
and otherwise they are read off the norms).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from tc_circuits.models.backend_kind import backend_of, is_bridge

#: Attribute where :func:`~tc_circuits.models.bridge_loading.process_bridge` records the
#: processing flags it applied.
PROCESSING_ATTR = "_tc_processing"


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
    recorded = getattr(model, PROCESSING_ATTR, None)
    if recorded is not None:
        return bool(recorded["fold_ln"])
    processed = bool(getattr(model, "_weights_processed", False)) or bool(getattr(model, "compatibility_mode", False))
    return processed and _norms_are_identity(model)


def recorded_processing(model: Any) -> dict[str, bool] | None:
    """The flags :func:`process_bridge` applied to ``model``, or None."""
    recorded = getattr(model, PROCESSING_ATTR, None)
    return None if recorded is None else dict(recorded)
