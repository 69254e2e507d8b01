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

TransformerLens 3's gated MLP (Llama, Qwen, Gemma, Mistral) and its unembedding copy their
weights into a transposed contiguous layout on **every forward** (``F.linear(x, W.T.contiguous())``,
to match Hugging Face's ``nn.Linear`` accumulation order in bfloat16): for Llama-3.2-1B's
``8192 x 2048`` matrices, 118 ms of copying per layer against 38 ms of matmul on a 64-token
prompt (one CPU thread). :func:`gated_mlp_forward` and :func:`unembed_forward` compute the same
function on the weights as they are stored (``F.linear(x, W.T)``: the BLAS reads the transpose
in place) in float32 / float64, with the same hooks in the same order (the modules' class is
swapped for a subclass, :data:`FAST_CLASSES`, so models still pickle); a half-precision input
takes TransformerLens's own path, so its Hugging Face-matching rounding is kept. float32 results
differ from TransformerLens's by rounding (``tests/test_fast_kernels.py``: at most 1e-6 of the
largest value; bfloat16 identical).

:func:`use_fast_kernels` is applied by :func:`tc_circuits.models.loading.load_model` and
:func:`tc_circuits.organism.load_organism`; call it on a ``HookedTransformer`` you built
yourself to get the same speed. ``model.cfg.act_fn`` keeps its name (the function is the same).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["FAST_TANH_GELU_NAMES", "gated_mlp_forward", "gelu_tanh", "unembed_forward", "use_fast_kernels"]

#: ``cfg.act_fn`` names whose function is the tanh approximation of GELU.
FAST_TANH_GELU_NAMES = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")

#: Swap the kernels in (False: keep TransformerLens's own; for tests and benchmarks).
_ENABLED = True


def gelu_tanh(x: Float[Tensor, "*batch d_mlp"]) -> Float[Tensor, "*batch d_mlp"]:
    """GPT-2's ``gelu_new``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, one fused kernel."""
    return F.gelu(x, approximate="tanh")


def _full_precision(x: Tensor) -> bool:
    return x.dtype in (torch.float32, torch.float64)


def gated_mlp_forward(self: Any, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens 3's ``GatedMLP.forward`` on the weights as stored (no per-call copy)."""
    if self.W_gate.device != x.device:
        x = x.to(self.W_gate.device)
    pre_act = self.hook_pre(F.linear(x, self.W_gate.T))
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T))
    post_act = self.hook_post((self.act_fn(pre_act) * pre_linear) + self.b_in)
    return F.linear(post_act, self.W_out.T, self.b_out)


def unembed_forward(self: Any, residual: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """TransformerLens 3's ``Unembed.forward`` on ``W_U`` as stored (no per-call copy)."""
    residual = self.hook_in(residual)
    return self.hook_out(F.linear(residual, self.W_U.T, self.b_U))


try:  # TransformerLens 3 (TransformerLens 4 has no HookedTransformer components: nothing to swap)
    from transformer_lens.components.mlps.gated_mlp import GatedMLP as _GatedMLP
    from transformer_lens.components.unembed import Unembed as _Unembed
except ImportError:  # pragma: no cover - TransformerLens 4
    _GatedMLP = _Unembed = None
    FAST_CLASSES: dict[type, type] = {}
else:

    class FastGatedMLP(_GatedMLP):
        """``GatedMLP`` whose float32 / float64 forward reads its weights in place."""

        def forward(self, x):  # noqa: D102
            return gated_mlp_forward(self, x) if _full_precision(x) else super().forward(x)

    class FastUnembed(_Unembed):
        """``Unembed`` whose float32 / float64 forward reads ``W_U`` in place."""

        def forward(self, residual):  # noqa: D102
            return unembed_forward(self, residual) if _full_precision(residual) else super().forward(residual)

    #: exact TransformerLens class -> its copy-free subclass (swapped in as ``module.__class__``)
    FAST_CLASSES = {_GatedMLP: FastGatedMLP, _Unembed: FastUnembed}


def _swap_class(module: Any) -> bool:
    fast = FAST_CLASSES.get(type(module))  # exact classes only: a subclass keeps its own forward
    if fast is None:
        return False
    module.__class__ = fast
    return True


def use_fast_kernels(model: Any) -> int:
    """Swap the faster kernels into ``model`` in place; returns how many modules were changed.

    MLPs whose ``act_fn`` computes the tanh-approximate GELU (``cfg.act_fn`` in
    :data:`FAST_TANH_GELU_NAMES`) get :func:`gelu_tanh`; TransformerLens 3's gated MLPs (not the
    layer-norm-activation variant) and unembedding get the copy-free forwards above. Hooks and
    parameters are unchanged. Idempotent. Anything else (e.g. a ``TransformerBridge``) is left as it is.
    """
    cfg = getattr(model, "cfg", None)
    if not _ENABLED or cfg is None:
        return 0
    swapped = 0
    gelu = getattr(cfg, "act_fn", None) in FAST_TANH_GELU_NAMES
    ln_act = bool(getattr(cfg, "is_layer_norm_activation", lambda: False)())
    for block in getattr(model, "blocks", []):
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            continue
        if gelu and hasattr(mlp, "act_fn") and mlp.act_fn is not gelu_tanh:
            mlp.act_fn = gelu_tanh
            swapped += 1
        if not ln_act:
            swapped += _swap_class(mlp)
    unembed = getattr(model, "unembed", None)
    if unembed is not None:
        swapped += _swap_class(unembed)
    return swapped
