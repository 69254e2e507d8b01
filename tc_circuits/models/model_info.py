"""What a checkpoint must know about the model it was trained on.

HookedTransformer records ``fold_ln`` on the config (``layer_norm_folding`` /
``normalization_type``); a TransformerBridge does not (:func:`tc_circuits.models.backend.fold_ln`
reads it there). Neither records the centering flags, so we read those from the weights:
``center_writing_weights`` leaves every matrix that writes to the residual stream with zero
mean over ``d_model``, and ``center_unembed`` leaves ``W_U`` with zero mean over the vocabulary.
A checkpoint records these flags; loading it onto a model whose flags differ is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from tc_circuits.models import backend

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

PROCESSING_KEYS = ("fold_ln", "center_writing_weights", "center_unembed")


def _centered(weights: list[torch.Tensor], dim: int) -> bool:
    """Whether each tensor has zero mean along ``dim``, relative to its own mean ``|w|``.

    The tolerance is 1e-4, or the dtype's epsilon for half precision (a centred float32 weight
    rounded to bfloat16 keeps a mean of up to ~1e-3 of its scale).
    """
    for weight in weights:
        tol = 1e-4 if weight.dtype.itemsize >= 4 else float(torch.finfo(weight.dtype).eps)
        w = weight.detach().float()
        # the L1 norm needs no |w| temporary (W_U of a 50k vocabulary is 150 MB)
        scale = max(float(torch.linalg.vector_norm(w.reshape(-1), 1)) / max(1, w.numel()), 1e-12)
        if not float(w.mean(dim).abs().max()) / scale < tol:
            return False
    return True


def _writing_weights(model: HookedTransformer) -> list[torch.Tensor]:
    """Per-layer matrices that write to the residual stream (no stacked copy of all layers)."""
    return backend.writing_weights(model)


def _weights_key(weights: list[torch.Tensor]) -> tuple | None:
    """Changes whenever a weight is replaced or modified in place (``_version``).

    ``None`` (do not cache) if a weight is an inference-mode tensor: those have no version counter.
    """
    if any(w.is_inference() for w in weights):
        return None
    return tuple((w.data_ptr(), w._version, tuple(w.shape), w.dtype) for w in weights)


def weight_processing(model: HookedTransformer) -> dict[str, bool]:
    """The TransformerLens weight-processing flags of ``model``, read off the model itself.

    Reading them scans every writing matrix and ``W_U``; the answer is cached on the model
    and recomputed when any of those tensors is replaced or modified in place.
    """
    fold_ln = backend.fold_ln(model)
    writing = _writing_weights(model)
    W_U = backend.unembed_weights(model)[0]
    wkey = _weights_key([*writing, W_U])
    key = None if wkey is None else (fold_ln, wkey)
    cached = getattr(model, "_tc_weight_processing", None)
    if key is not None and cached is not None and cached[0] == key:
        return dict(cached[1])
    flags = {
        "fold_ln": fold_ln,
        "center_writing_weights": _centered(writing, -1),
        "center_unembed": _centered([W_U], -1),
    }
    object.__setattr__(model, "_tc_weight_processing", (key, dict(flags)))
    return flags


def model_signature(model: HookedTransformer) -> dict[str, Any]:
    """Name, shape and weight processing of ``model``, as recorded in checkpoints."""
    cfg = model.cfg
    return {
        "model_name": backend.model_name(model),
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "d_vocab": int(cfg.d_vocab),
        "weight_processing": weight_processing(model),
    }
