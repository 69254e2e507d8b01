"""``x @ W`` for the transposed pass's fixed matrices through oneDNN, with prepacked weights.

The transposed pass multiplies many gradient blocks by the same few ``d x d`` matrices
(``W_skip``, ``W_O``, ``W_V`` of each layer, fixed for a prompt). PyTorch's CPU ``matmul``
calls MKL's ``sgemm``; on an AMD EPYC (Zen 5) that runs at ~95 GFLOP/s on one thread, while
oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, what ``torch.compile`` emits on CPU)
with the weight reordered once (``_reorder_linear_weight``) runs the same float32 product at
~220 GFLOP/s (``python bench/bench_packed_matmul.py``). Both are plain float32 (no reduced
precision): their results differ by rounding only (accumulation order; ~1e-6 relative,
``tests/test_packed_matmul.py``).

:class:`PackedMatmul` is a per-prompt cache of the packed weights. It takes the oneDNN path for
2-D float32 CPU products outside autograd of matrices at least :data:`_MIN_WIDTH` wide, when
the op exists (PyTorch built with MKL-DNN); every other call, and every call with :data:`_ENABLED` off (the reference), is ``x @ W``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits import onednn

__all__ = ["PackedMatmul", "onednn_available"]

#: False: every product is the plain ``x @ W`` (the reference the fast path is tested against)
_ENABLED = True
#: narrower matrices stay on ``x @ W``: their products are small, and every new row count
#: compiles and caches a oneDNN kernel (memory a small model's graph would notice)
_MIN_WIDTH = 256
#: most packed matrices kept (the oldest is dropped first; a prompt uses 3 per layer)
_MAX_ENTRIES = 128


#: whether this PyTorch has oneDNN's linear (re-exported from :mod:`tc_circuits.onednn`)
onednn_available = onednn.available


class PackedMatmul:
    """``mm(x, W) == x @ W``; for float32 CPU matrices, oneDNN with ``W`` packed once.

    The cache keeps a reference to each ``W`` it packed (so its storage is not reused while
    cached) and keys on its storage, shape, strides, dtype and version counter: an in-place edit
    of ``W`` repacks. Meant to live as long as the prompt's frozen matrices (one
    ``LinearisedModel``).
    """

    def __init__(self) -> None:
        self._packed: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _usable(self, x: Tensor, W: Tensor) -> bool:
        return (
            _ENABLED and onednn.applies(x, W) and x.dim() == 2 and W.dim() == 2
            and x.shape[0] > 0 and x.shape[1] == W.shape[0] and min(W.shape) >= _MIN_WIDTH
            and not (torch.is_grad_enabled() and (x.requires_grad or W.requires_grad))
        )

    def packed(self, W: Float[Tensor, "d_in d_out"], batch: int) -> Tensor:
        """The oneDNN-packed ``W^T`` (made on first use, then cached)."""
        key = (W.data_ptr(), tuple(W.shape), tuple(W.stride()), W.dtype, W._version)
        hit = self._packed.get(key)
        if hit is None:
            if len(self._packed) >= _MAX_ENTRIES:  # a caller passing fresh temporaries: bounded memory
                self._packed.pop(next(iter(self._packed)))
            w = W.detach().T.contiguous()  # [d_out, d_in]: the linear layer's weight layout
            hit = self._packed[key] = (W, onednn.pack(w, batch))
        return hit[1]

    def __call__(self, x: Float[Tensor, "n d_in"], W: Float[Tensor, "d_in d_out"]) -> Float[Tensor, "n d_out"]:
        if not self._usable(x, W):
            return x @ W
        return onednn.linear(x, self.packed(W, x.shape[0]))
