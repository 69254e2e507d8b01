"""Norms with their scale frozen at one prompt: the LayerNorm / RMSNorm pieces of the
linearised model (:mod:`tc_circuits.attribution.linearise`) and of its transposed pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits.models.block_plan import NormPlan


@dataclass
class FrozenLN:
    """A LayerNorm / RMSNorm with its scale frozen: ``centre(x) / scale * w + b``.

    TransformerLens' ``hook_normalized`` is ``centre(x) / scale`` *before* ``w`` and ``b``
    (``affine=False``); the transcoder reads that value. Attention and the unembedding read
    the affine output.
    """

    scale: Float[Tensor, " pos"]
    w: Tensor | None
    b: Tensor | None
    center: bool

    def apply(self, x: Tensor, affine: bool = True) -> Tensor:
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        y = x / self.scale[: x.shape[-2], None]
        if affine and self.w is not None:
            y = y * self.w
        if affine and self.b is not None:
            y = y + self.b
        return y

    def adjoint(self, g: Tensor, affine: bool = True, *, inplace: bool = False) -> Tensor:
        """Transpose of the linear part, applied to a gradient ``[..., pos, d]``.

        ``w / scale`` is applied as one ``[pos, d]`` factor; ``inplace=True`` overwrites ``g``
        (the transposed pass uses it on its own temporaries: no ``[batch, pos, d]`` copies).
        """
        f = 1 / self.scale[: g.shape[-2], None]
        if affine and self.w is not None:
            f = f * self.w
        g = g.mul_(f) if inplace else g * f
        if self.center:
            g.sub_(g.mean(-1, keepdim=True))
        return g

    def fold(self, M: Float[Tensor, "n d"], affine: bool = True) -> Float[Tensor, "n d"]:
        """``M`` with this norm's adjoint folded in, all but the per-position ``1 / scale``:
        ``adjoint(x @ M) == (x @ fold(M)) * inv_scale`` (the weight ``w`` scales the columns,
        centring subtracts each row's mean). The transposed pass then applies a norm with one
        ``addcmul`` instead of a multiply, a mean and a subtraction over ``[batch, pos, d]``."""
        if affine and self.w is not None:
            M = M * self.w.to(M.dtype)
        if self.center:
            M = M - M.mean(-1, keepdim=True)
        return M

    def inv_scale(self, n_pos: int, dtype: torch.dtype) -> Float[Tensor, "pos 1"]:
        """``1 / scale`` of the first ``n_pos`` positions, ``[n_pos, 1]``."""
        return (1 / self.scale[:n_pos, None]).to(dtype)


def _module(model, path: str):
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def frozen_ln(model, plan: NormPlan, cache, n_pos: int, device, dtype: torch.dtype | None = None) -> FrozenLN:
    """The norm ``plan`` with its scale fixed to the cached value (identity when there is none).

    ``dtype``: the linearised model's dtype; the cached scale is cast to it (TransformerLens
    computes a half-precision model's norm scales in float32)."""
    if plan.kind is None:
        return FrozenLN(torch.ones(n_pos, device=device, dtype=dtype), None, None, False)
    module = _module(model, plan.module)
    w, b = getattr(module, "w", None), getattr(module, "b", None)
    scale = cache[plan.scale_hook][0, :, 0].detach()
    return FrozenLN(
        scale if dtype is None else scale.to(dtype),
        None if w is None else w.detach(),
        None if b is None else b.detach(),
        plan.kind == "LN",
    )
