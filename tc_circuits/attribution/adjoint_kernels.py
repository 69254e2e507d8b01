"""The transposed pass's kernels: which (row, position) pairs are live, and the matmuls over them.

:meth:`tc_circuits.attribution.linearise.LinearisedModel.vjp` runs the transpose of the frozen
model for a batch of rows ``[B, P, d]``. Most of that block is known to be zero: a row's
gradient never reaches positions after its own (attention is causal, everything else acts per
position) nor layers above the one it was injected at, and right after its injection it sits at
its own position only. These helpers pick the live pairs and run the ``d x d`` matmuls on them:

* :func:`live_rows`: flat indices of the live pairs of a ``[B, P]`` mask (``None``: dense);
* :func:`attention_rows`: which rows of an attention adjoint take the rank-one path;
* :func:`rows_matmul`: ``x @ W`` on the live rows only;
* :func:`causal_transpose_matmul`: ``pattern^T @ x`` skipping the zero key blocks;
* :func:`causal_right_matmul`: ``x @ pattern`` (the same product, transposed layout: no copies
  between the matmuls of the attention adjoint) skipping the same blocks.

``_SKIP_ZERO_ROWS = False`` turns the skipping off (the dense reference; tests compare the two).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor

#: Key-block size of :func:`causal_transpose_matmul` / :func:`causal_right_matmul`; prompts up to twice this use one matmul.
_CAUSAL_BLOCK = 256

#: Skip the structurally zero (row, position) pairs in the transposed pass's ``d x d`` matmuls
#: (False: dense matmuls over the whole ``[B, P]`` block; the reference, for tests/benchmarks).
_SKIP_ZERO_ROWS = True

#: Below this share of live (row, position) pairs the matmuls gather the live ones; above it the
#: dense matmul is cheaper than the gather and scatter.
_LIVE_DENSE_SHARE = 0.9


def live_rows(mask: Tensor) -> Tensor | None:
    """Flat indices ``b * P + p`` of the (row, position) pairs in ``mask`` ``[B, P]``.

    The transposed pass marks the pairs that can be non-zero: ``p <= positions[b]`` (a row's
    gradient never reaches later positions: attention is causal, everything else acts per
    position), the row injected at or above the layer, and only its own position while it has
    not been through an attention layer. ``None`` means "use the dense matmul" (skipping is
    off, or almost every pair is live).
    """
    if not _SKIP_ZERO_ROWS:
        return None
    m = mask.reshape(-1)
    n = int(m.sum())
    if n >= _LIVE_DENSE_SHARE * m.numel():
        return None
    return torch.nonzero(m).squeeze(1)


def attention_rows(
    valid_pos: Tensor, positions: Tensor, reads: Tensor, single: Tensor
) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
    """How :meth:`LinearisedModel._attn_adjoint` treats each row: ``(live, single)``.

    ``reads[b]``: the attention's input gradient can be non-zero for row ``b``. Rows whose
    gradient sits at their own position only (``single``) take the rank-one path (their
    ``(rows, positions)``); the others' live pairs are ``live`` (:func:`live_rows`). When the
    dense matmul is chosen (``live is None``) it covers every row and no row is single.
    """
    if not _SKIP_ZERO_ROWS:
        return None, None
    one = reads & single
    live = live_rows(valid_pos & (reads & ~one)[:, None])
    if live is None or not bool(one.any()):
        return live_rows(valid_pos & reads[:, None]), None
    rows = torch.nonzero(one).squeeze(1)
    return live, (rows, positions[rows])


def rows_matmul(
    x: Float[Tensor, "n d"], W: Float[Tensor, "d e"], live: Tensor | None, mm: Callable[[Tensor, Tensor], Tensor] = torch.matmul
) -> Float[Tensor, "n e"]:
    """``x @ W`` computing only the rows in ``live`` (the others are known zero); ``None``: dense.
    ``mm``: the product to use (e.g. a :class:`~tc_circuits.attribution.packed_matmul.PackedMatmul`)."""
    if live is None:
        return mm(x, W)
    out = x.new_zeros(x.shape[0], W.shape[1])
    if live.numel():
        out.index_copy_(0, live, mm(x.index_select(0, live), W))
    return out


def causal_transpose_matmul(A: Float[Tensor, "h q k"], x: Float[Tensor, "h q n"]) -> Float[Tensor, "h k n"]:
    """``A^T @ x`` for causal (lower-triangular) attention patterns, skipping the zero blocks.

    ``A[:, q, k] = 0`` for ``k > q``, so the rows of key block ``[s, e)`` only need the queries
    from ``s`` on: one ``A[:, s:, s:e]^T @ x[:, s:]`` per block (a strided view; no copy of
    ``A``). With blocks of ``_CAUSAL_BLOCK`` keys this does ``(1/2 + block / 2P)`` of the dense
    product's work. Equal to ``A.transpose(1, 2) @ x`` (``tests/test_fast_paths.py``).
    """
    P = A.shape[-1]
    T = _CAUSAL_BLOCK
    if P <= 2 * T:
        return A.transpose(1, 2) @ x
    out = torch.empty(A.shape[0], P, x.shape[-1], dtype=x.dtype, device=x.device)
    for s in range(0, P, T):
        e = min(P, s + T)
        out[:, s:e] = A[:, s:, s:e].transpose(1, 2) @ x[:, s:]
    return out


def causal_right_matmul(x: Float[Tensor, "h n q"], A: Float[Tensor, "h q k"]) -> Float[Tensor, "h n k"]:
    """``x @ A`` for causal (lower-triangular) attention patterns, skipping the zero blocks.

    The transpose of :func:`causal_transpose_matmul` (``(A^T @ x^T)^T``): the attention adjoint
    keeps its gradients as ``[heads, d_head * rows, positions]`` so that ``W_O``, the pattern and
    ``W_V`` are three plain matmuls with no permuting copy between them. Key block ``[s, e)``
    needs the queries from ``s`` on: ``x[..., s:] @ A[:, s:, s:e]``. Equal to ``x @ A``
    (``tests/test_fast_paths.py``).
    """
    P = A.shape[-1]
    T = _CAUSAL_BLOCK
    if P <= 2 * T:
        return torch.bmm(x, A)
    out = torch.empty(A.shape[0], x.shape[1], P, dtype=x.dtype, device=x.device)
    for s in range(0, P, T):
        e = min(P, s + T)
        out[:, :, s:e] = torch.bmm(x[:, :, s:], A[:, s:, s:e])
    return out
