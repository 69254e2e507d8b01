"""Faster, equally accurate kernels swapped into a loaded ``HookedTransformer``.

TransformerLens computes GPT-2's ``gelu_new`` (and ``gelu_fast``) as a chain of elementwise
tensor operations, ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``: six passes over the
``[batch, pos, d_mlp]`` hidden state. ``F.gelu(x, approximate="tanh")`` is the same function
in one fused kernel: on one CPU thread 8x faster on ``[8, 128, 3072]`` (51 -> 6 ms), which takes
~0.5 s off each 1,024-token forward of 6 GPT-2-small blocks (1.66 -> 1.17 s CPU, 1 thread:
the biggest item after the matmuls; ``docs/performance.md``). Both float32 versions are off the float64 value
by at most 9.5e-7 on ``[-20, 20]`` (they round differently, neither is more exact), and
they differ from each other by at most 4.8e-7; ``tests/test_fast_kernels.py`` checks values,
gradients and whole-model logits against TransformerLens's own function.

:func:`use_fast_kernels` is applied by :func:`tc_circuits.models.loading.load_model` and
:func:`tc_circuits.organism.load_organism`; call it on a ``HookedTransformer`` you built
yourself to get the same speed. ``model.cfg.act_fn`` keeps its name (the function is the same).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["FAST_TANH_GELU_NAMES", "gelu_tanh", "use_fast_kernels"]

#: ``cfg.act_fn`` names whose function is the tanh approximation of GELU.
FAST_TANH_GELU_NAMES = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")

#: Swap the kernels in (False: keep TransformerLens's own; for tests and benchmarks).
_ENABLED = True


def gelu_tanh(x: Float[Tensor, "*batch d_mlp"]) -> Float[Tensor, "*batch d_mlp"]:
    """GPT-2's ``gelu_new``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, one fused kernel."""
    return F.gelu(x, approximate="tanh")


def use_fast_kernels(model: Any) -> int:
    """Swap the fused kernels into ``model``'s MLPs in place; returns how many were swapped.

    Only MLPs whose ``act_fn`` computes the tanh-approximate GELU (``cfg.act_fn`` in
    :data:`FAST_TANH_GELU_NAMES`) are touched; hooks and parameters are unchanged. Idempotent.
    Anything without GPT-2-style ``blocks[i].mlp.act_fn`` (e.g. a ``TransformerBridge``) is left as it is.
    """
    cfg = getattr(model, "cfg", None)
    if not _ENABLED or getattr(cfg, "act_fn", None) not in FAST_TANH_GELU_NAMES:
        return 0
    swapped = 0
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if mlp is not None and hasattr(mlp, "act_fn") and mlp.act_fn is not gelu_tanh:
            mlp.act_fn = gelu_tanh
            swapped += 1
    return swapped
