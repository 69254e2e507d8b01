"""oneDNN's float32 linear (``torch.ops.mkldnn._linear_pointwise``), where this PyTorch has it.

On CPUs where MKL's ``sgemm`` is slow (measured on an AMD EPYC, Zen 5: ~95 against ~220
GFLOP/s on one thread, ``bench/bench_packed_matmul.py``) oneDNN runs the same plain float32
products 2-2.6x faster. Used by the attribution pass (:mod:`tc_circuits.attribution.packed_matmul`)
and the TopK training step's encoder (:mod:`tc_circuits.coders.topk_step`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["applies", "available", "linear", "pack"]


def _probe() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the mkldnn namespace
        return False


_AVAILABLE = _probe()


def available() -> bool:
    """Whether this PyTorch has oneDNN's linear (x86 / ARM CPU builds with MKL-DNN)."""
    return _AVAILABLE


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` by oneDNN (``weight``: ``[out, in]``, plain or prepacked)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def applies(*tensors: Tensor) -> bool:
    """oneDNN is here and every tensor is a float32 CPU tensor (the case it is used for)."""
    return _AVAILABLE and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)


def pack(weight: Tensor, batch: int) -> Tensor:
    """``weight`` (``[out, in]``) reordered once into oneDNN's layout for ``batch``-row inputs."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, max(int(batch), 1))
