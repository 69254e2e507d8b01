"""Helpers shared by the format converters: exact bias folding, shape checks, building."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
from tc_circuits.validate import strict_bool

#: TransformerLens ``from_pretrained`` defaults: what a foreign checkpoint trained on a
#: ``from_pretrained`` model assumes unless it says otherwise.
TL_DEFAULT_PROCESSING: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
}


def tl_model_name(name: str | None) -> str | None:
    """TransformerLens' ``cfg.model_name`` for ``name`` (``"gpt2-small"`` -> ``"gpt2"``).

    Names TransformerLens knows become its ``cfg.model_name``; any other name (a local model,
    ``"tc-circuits/organism"``) is kept whole, as the model reports it.
    """
    if not name:
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(str(name)).split("/")[-1]
    except (ValueError, ImportError):  # ImportError: TransformerLens 4 has no HookedTransformer loader
        return str(name)


def check_shape(source: str, name: str, tensor: Tensor, expected: tuple[int, ...]) -> None:
    """Raise ``ValueError`` unless ``tensor`` has shape ``expected``."""
    if tuple(tensor.shape) != tuple(expected):
        raise ValueError(
            f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the config implies {tuple(expected)}"
        )


def require(source: str, tensors: Mapping[str, Tensor], *names: str) -> None:
    """Raise ``ValueError`` naming the tensors missing from ``tensors``."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"{source}: missing tensors {missing}; found {sorted(tensors)}")


def fold_pre_encoder_bias(
    W_enc: Tensor, b_enc: Tensor, b_pre: Tensor
) -> Tensor:
    """``b_enc - b_pre @ W_enc``: ``(x - b_pre) @ W_enc + b_enc == x @ W_enc + result``.

    Computed in float64 and rounded once to ``b_enc``'s dtype.
    """
    out = b_enc.double() - b_pre.double() @ W_enc.double()
    return out.to(b_enc.dtype)


def threshold_to_log(source: str, threshold: Tensor) -> Tensor:
    """``log(threshold)`` for our ``log_threshold`` parameter; negative thresholds are refused.

    Our JumpReLU computes ``z * (z > theta)``; for ``theta >= 0`` this equals the usual
    ``relu(z) * (z > theta)`` of SAELens / circuit-tracer, for ``theta < 0`` it does not.
    """
    if torch.isnan(threshold).any() or (threshold < 0).any():
        bad = int(((threshold < 0) | torch.isnan(threshold)).sum())
        raise ValueError(
            f"{source}: {bad} JumpReLU thresholds are negative or NaN; tc_circuits' JumpReLU "
            f"(z * (z > theta)) equals relu(z) * (z > theta) only for theta >= 0"
        )
    return threshold.log()


def build(cfg: TranscoderConfig, tensors: dict[str, Tensor], *, source: str) -> Transcoder:
    """A :class:`Transcoder` with ``tensors`` copied in (names and shapes checked exactly)."""
    dtype = tensors["W_enc"].dtype
    if not dtype.is_floating_point:
        raise ValueError(f"{source}: W_enc has non-float dtype {dtype}")
    tc = Transcoder(cfg, dtype=dtype, init=False)  # every parameter is loaded next
    tc.load_tensors({k: v.to(dtype) for k, v in tensors.items()}, source=source)
    return tc.eval()


def make_config(**kwargs: Any) -> TranscoderConfig:
    """``TranscoderConfig(**kwargs)`` with ``k=None`` unless the activation is TopK."""
    if kwargs.get("activation") != "topk":
        kwargs["k"] = None
    return TranscoderConfig(**kwargs)


def processing_from(
    overrides: Mapping[str, Any] | None, base: Mapping[str, bool] | None = None
) -> dict[str, bool]:
    """``base`` (default: TransformerLens defaults) updated with the known keys of ``overrides``."""
    out = dict(TL_DEFAULT_PROCESSING if base is None else base)
    for key in TL_DEFAULT_PROCESSING:
        if overrides and key in overrides and overrides[key] is not None:
            out[key] = strict_bool(overrides[key], key, "weight-processing flags")
    return out


def finite_or_raise(source: str, tensors: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` if a weight holds NaN or infinity (a corrupted file)."""
    for name, t in tensors.items():
        if not t.is_floating_point() or (t.numel() and bool(torch.isfinite(t.sum()))):
            continue  # a finite sum proves every element finite (as validate.check_finite)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{source}: tensor {name} contains NaN or infinite values")


def ln2_gain_bias(weights: Any, layer: int, *, source: str = "hf_model") -> tuple[Tensor, Tensor]:
    """The MLP-input norm gain ``g`` and bias ``b`` of ``layer`` (``out = n(x) * g + b``).

    ``weights`` is the unprocessed model: a Hugging Face folder or model, a ``HookedTransformer``
    loaded with ``fold_ln=False``, or a state dict of either (see
    :mod:`tc_circuits.models.norm_gains`; Gemma's stored ``w`` gives ``g = 1 + w``, RMSNorm
    gives ``b = 0``). TransformerLens' ``ln2.hook_normalized`` is ``n(x)`` (before gain and
    bias) whatever the processing, so tools that read the norm's *output* (sparsify's MLP
    input, circuit-tracer's ``mlp.hook_in``) need these to map exactly.
    """
    from tc_circuits.models.norm_gains import mlp_input_norm

    norm = mlp_input_norm(weights, layer, name=source)
    return norm.gain, norm.bias


def fold_norm(t: dict[str, Tensor], weights: Any, layer: int, d_in: int, *, source: str,
              hook: str) -> dict[str, Tensor]:
    """:func:`fold_input_affine` with ``layer``'s MLP-input norm read from ``weights``.

    ``hook`` names the foreign site in the error raised when ``weights`` is missing.
    """
    if weights is None:
        raise ValueError(
            f"{source}: input hook {hook!r} is the MLP-input norm's output n(x) * g + b (its gain and "
            f"bias applied), while our blocks.{layer}.ln2.hook_normalized is n(x); pass hf_model= (the "
            f"Hugging Face folder or model, or a HookedTransformer with fold_ln=False, or a state dict) "
            f"so the gain folds into the encoder exactly"
        )
    w, b = ln2_gain_bias(weights, layer, source=f"{source}: hf_model")
    check_shape(source, f"layer {layer} MLP-input norm gain", w, (d_in,))
    return fold_input_affine(t, w, b)


def fold_input_affine(t: dict[str, Tensor], w: Tensor, b: Tensor) -> dict[str, Tensor]:
    """Tensors (our orientation, float64) reading ``n`` from ones reading ``n * w + b``.

    ``W_enc' = diag(w) W_enc``, ``b_enc' = b_enc + b @ W_enc``; a skip likewise, its constant
    going into ``b_dec``.
    """
    out = dict(t)
    w, b = w.double(), b.double()
    out["b_enc"] = t["b_enc"] + b @ t["W_enc"]
    out["W_enc"] = w[:, None] * t["W_enc"]
    if t.get("W_skip") is not None:
        out["b_dec"] = t["b_dec"] + b @ t["W_skip"]
        out["W_skip"] = w[:, None] * t["W_skip"]
    return out


def unfold_input_affine(t: dict[str, Tensor], w: Tensor, b: Tensor, *, source: str) -> dict[str, Tensor]:
    """The inverse of :func:`fold_input_affine` (reading ``n * w + b`` instead of ``n``)."""
    if (w == 0).any():
        raise ValueError(f"{source}: the LayerNorm gain has {int((w == 0).sum())} zero entries; cannot unfold it")
    out = dict(t)
    inv, shift = 1.0 / w.double(), b.double() / w.double()
    out["b_enc"] = t["b_enc"] - shift @ t["W_enc"]
    out["W_enc"] = inv[:, None] * t["W_enc"]
    if t.get("W_skip") is not None:
        out["b_dec"] = t["b_dec"] - shift @ t["W_skip"]
        out["W_skip"] = inv[:, None] * t["W_skip"]
    return out


def center_output(t: dict[str, Tensor]) -> dict[str, Tensor]:
    """Decoder (and skip) composed with ``P = I - 11^T/d``: what ``center_writing_weights`` does
    to an MLP's output, so the transcoder reconstructs the centred ``hook_mlp_out``."""
    out = dict(t)
    out["W_dec"] = t["W_dec"] - t["W_dec"].mean(-1, keepdim=True)
    out["b_dec"] = t["b_dec"] - t["b_dec"].mean()
    if t.get("W_skip") is not None:
        out["W_skip"] = t["W_skip"] - t["W_skip"].mean(-1, keepdim=True)
    return out
