"""Helpers shared by the format converters: exact bias folding, shape checks, building."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

#: TransformerLens ``from_pretrained`` defaults: what a foreign checkpoint trained on a
#: ``from_pretrained`` model assumes unless it says otherwise.
TL_DEFAULT_PROCESSING: dict[str, bool] = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
}


def tl_model_name(name: str | None) -> str | None:
    """TransformerLens' ``cfg.model_name`` for ``name`` (``"gpt2-small"`` -> ``"gpt2"``)."""
    if not name:
        return None
    try:
        from transformer_lens.loading_from_pretrained import get_official_model_name

        return get_official_model_name(str(name)).split("/")[-1]
    except (ValueError, ImportError):  # ImportError: TransformerLens 4 has no HookedTransformer loader
        return str(name).split("/")[-1]


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
    tc = Transcoder(cfg, dtype=dtype)
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
            out[key] = bool(overrides[key])
    return out


def finite_or_raise(source: str, tensors: Mapping[str, Tensor]) -> None:
    """Raise ``ValueError`` if a weight holds NaN or infinity (a corrupted file)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{source}: tensor {name} contains NaN or infinite values")
