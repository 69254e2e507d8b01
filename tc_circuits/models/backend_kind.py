"""Which kind of TransformerLens model this is, and what it is called.

* ``"hooked"``: ``transformer_lens.HookedTransformer`` (TransformerLens 2.16 - 3.x; removed in 4.0);
* ``"bridge"``: ``transformer_lens.model_bridge.TransformerBridge`` (TransformerLens 3.x and 4.x).

Also the model's name as checkpoints record it, its device and its tokenizer. Nothing here
imports ``HookedTransformer`` at module level, so the package imports on TL 4. The facade
:mod:`tc_circuits.models.backend` re-exports all of it.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

import torch
from torch import Tensor

BACKENDS = ("hooked", "bridge")


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
