"""Sparse activation functions: TopK, ReLU and JumpReLU.

Each maps pre-activations ``[..., n_latents]`` to non-negative latent activations of the same
shape. JumpReLU has a learnable threshold trained with a straight-through estimator
(Rajamanoharan et al. 2024): the forward pass is ``z * (z > theta)``; the threshold receives a
pseudo-gradient through a rectangle kernel of width ``bandwidth``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

ACTIVATIONS = ("topk", "relu", "jumprelu")


def topk(pre: Float[Tensor, "... n"], k: int) -> Float[Tensor, "... n"]:
    """Keep the ``k`` largest pre-activations per row (ReLU'd), zero the rest.

    Exactly ``k`` entries per row are kept as the active set; an active entry whose
    pre-activation is negative becomes 0 after the ReLU.
    """
    _check_k(pre, k)
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def _check_k(pre: Tensor, k: int) -> None:
    if not 1 <= k <= pre.shape[-1]:
        raise ValueError(f"k must be in [1, {pre.shape[-1]}], got {k}")


def topk_indices(pre: Float[Tensor, "... n"], k: int) -> tuple[Tensor, Tensor]:
    """The ``(values, indices)`` of the TopK active set (values ReLU'd)."""
    _check_k(pre, k)
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return values.relu(), indices


class _JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = grad_out * (pre > threshold)
        # d/dtheta of z*H(z-theta) ~ -theta * rect((z-theta)/bw) / bw
        kernel = ((pre - threshold).abs() < bw / 2).to(pre.dtype) / bw
        grad_theta = (-threshold * kernel * grad_out).reshape(-1, pre.shape[-1]).sum(0)
        return grad_pre, grad_theta, None


def jumprelu(
    pre: Float[Tensor, "... n"], threshold: Float[Tensor, " n"], bandwidth: float = 1e-3
) -> Float[Tensor, "... n"]:
    """``pre * (pre > threshold)`` with a straight-through gradient for ``threshold``."""
    return _JumpReLUFn.apply(pre, threshold, bandwidth)


def apply_activation(
    name: str,
    pre: Float[Tensor, "... n"],
    *,
    k: int | None = None,
    threshold: Tensor | None = None,
    bandwidth: float = 1e-3,
) -> Float[Tensor, "... n"]:
    """Dispatch on the activation's name (``"topk"``, ``"relu"``, ``"jumprelu"``)."""
    if name == "topk":
        if k is None:
            raise ValueError("activation 'topk' needs k")
        return topk(pre, k)
    if name == "relu":
        return pre.relu()
    if name == "jumprelu":
        if threshold is None:
            raise ValueError("activation 'jumprelu' needs a threshold")
        return jumprelu(pre, threshold, bandwidth)
    raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")
