"""Training losses and the sparse TopK fast path.

* :func:`fvu` — fraction of variance unexplained, ``sum((y_hat - y)^2) / sum((y - mean(y))^2)``.
* :func:`auxk_loss` — the AuxK loss of Gao et al. (2024), as EleutherAI sparsify uses it: the
  ``k_aux`` largest pre-activations among *dead* latents reconstruct the (detached) residual
  error through ``W_dec`` alone, normalised by the error's variance about its mean.
* :func:`l1_penalty` — ReLU sparsity: L1 of latents weighted by decoder row norms.
* :func:`jumprelu_l0_penalty` — JumpReLU sparsity: L0 through a straight-through step function
  whose pseudo-gradient reaches only the threshold (Rajamanoharan et al. 2024).
* :func:`topk_forward` — a TopK transcoder forward whose backward is sparse: the decoder is an
  ``embedding_bag`` and the encoder gradient flows only through the ``k`` active latents
  (the dense reference is :meth:`Transcoder.forward`; ``tests/test_training.py`` checks they agree).
* :func:`sparse_encode_decode` — the fused kernel behind it (one latent-sorted CSR backward, no
  dense ``[batch, n_latents]`` tensor); :func:`gather_pre_acts` + :func:`sparse_decode` are its
  plain reference, selected by ``_FAST_TRAIN_STEP = False`` (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from tc_circuits.coders.transcoder import Transcoder


def centered_sum_sq(y: Float[Tensor, "batch d"]) -> Tensor:
    """``sum((y - y.mean(0))^2)``: total variance of ``y`` about its mean (times batch)."""
    return (y - y.mean(0)).pow(2).sum()


def fvu(y_hat: Float[Tensor, "batch d"], y: Float[Tensor, "batch d"]) -> Tensor:
    """Fraction of variance unexplained: ``sum((y_hat - y)^2) / sum((y - mean(y))^2)``."""
    return (y_hat - y).pow(2).sum() / centered_sum_sq(y).clamp_min(1e-30)


class _GatherPre(torch.autograd.Function):
    """``pre.gather(-1, idx)`` where ``pre = x @ W_enc + b_enc`` was computed without grad.

    Only the selected entries receive gradient; the backward scatters them into a dense
    ``[rows, n_latents]`` matrix and does one matmul per needed input.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, pre, idx):  # type: ignore[override]
        ctx.save_for_backward(x, W_enc, idx)
        return pre.gather(-1, idx)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, W_enc, idx = ctx.saved_tensors
        d_in, n = W_enc.shape
        # Scatter the k gradients per row into a dense [rows, n] matrix, then one matmul:
        # on CPU this beats index_add over rows*k*d_in products by far (see bench).
        g = W_enc.new_zeros(*idx.shape[:-1], n).scatter_(-1, idx, grad).reshape(-1, n)
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ W_enc.t()).reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_W = x.reshape(-1, d_in).t() @ g
        if ctx.needs_input_grad[2]:
            grad_b = W_enc.new_zeros(n).index_add_(0, idx.reshape(-1), grad.reshape(-1))
        return grad_x, grad_W, grad_b, None, None


def gather_pre_acts(
    tc: Transcoder,
    x: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch n_latents"],
    idx: Int[Tensor, "batch k"],
) -> Float[Tensor, "batch k"]:
    """Pre-activations at ``idx`` with a sparse gradient to ``W_enc``/``b_enc``.

    ``pre`` must equal ``x @ tc.W_enc + tc.b_enc`` (computed without grad).
    """
    return _GatherPre.apply(x, tc.W_enc, tc.b_enc, pre.detach(), idx)


def sparse_decode(
    tc: Transcoder, values: Float[Tensor, "batch k"], idx: Int[Tensor, "batch k"]
) -> Float[Tensor, "batch d_out"]:
    """``sum_j values[:, j] * W_dec[idx[:, j]]`` (no bias, no skip) via ``embedding_bag``."""
    return F.embedding_bag(idx, tc.W_dec, per_sample_weights=values, mode="sum")


#: Use the fused sparse kernel (:func:`sparse_encode_decode`) in :func:`topk_forward` /
#: :func:`auxk_loss`; ``False`` selects the plain reference (:func:`gather_pre_acts` +
#: :func:`sparse_decode`). Tests and benchmarks flip it.
_FAST_TRAIN_STEP = True


class _SparseEncodeDecode(torch.autograd.Function):
    """``values = relu(pre.gather(idx))``, ``recon = sum_j values[:, j] * W_dec[idx[:, j]]``.

    ``pre = x @ W_enc + b_enc`` was computed without grad. Backward without any dense
    ``[batch, n_latents]`` tensor: the ``batch * k`` active entries, sorted by latent, form a
    CSR matrix ``T`` of shape ``[n_latents, batch]`` (one sort shared by all gradients), and

    * ``d values = <d recon[b], W_dec[idx]>``: ``torch.sparse.sampled_addmm`` on ``T``'s pattern;
    * ``d W_dec = T(values) @ d recon``;  ``d W_enc = (T(d pre) @ x)^T``;  ``d b_enc`` = index_add;
    * ``d x = embedding_bag(idx, W_enc^T, d pre)`` (only when ``x`` needs a gradient).

    Reference: :func:`gather_pre_acts` + ``relu`` + :func:`sparse_decode`.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, W_dec, pre, idx):  # type: ignore[override]
        a = pre.gather(-1, idx)
        values = a.clamp_min(0)
        recon = F.embedding_bag(idx, W_dec, per_sample_weights=values, mode="sum")
        ctx.save_for_backward(x, W_enc, W_dec, idx, values)
        ctx.set_materialize_grads(False)
        return values, recon

    @staticmethod
    def backward(ctx, grad_values, grad_recon):  # type: ignore[override]
        x, W_enc, W_dec, idx, values = ctx.saved_tensors
        rows, k = idx.shape
        n = W_dec.shape[0]
        flat = idx.reshape(-1)
        # int32 keys sort ~2x faster than int64 on CPU (n_latents < 2**31)
        order = torch.argsort(flat.to(torch.int32), stable=True)
        lat = flat[order]
        crow = torch.zeros(n + 1, dtype=torch.long, device=idx.device)
        torch.cumsum(torch.bincount(flat, minlength=n), 0, out=crow[1:])
        bcol = torch.div(order, k, rounding_mode="floor")  # batch row of each sorted entry
        v_sorted = values.reshape(-1)[order]

        def T(vals: Tensor, width: int) -> Tensor:
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore")
                return torch.sparse_csr_tensor(crow, bcol, vals, (n, width), check_invariants=False)

        g = torch.zeros_like(v_sorted)  # d values, in sorted order
        grad_W_dec = None
        if grad_recon is not None:
            gr = grad_recon.contiguous()
            g = torch.sparse.sampled_addmm(T(g, rows), W_dec, gr.t(), beta=0.0).values()
            if ctx.needs_input_grad[3]:
                grad_W_dec = T(v_sorted, rows) @ gr
        if grad_values is not None:
            g = g + grad_values.reshape(-1)[order]
        g = g * (v_sorted > 0)  # through the ReLU
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_W = (T(g, rows) @ x).t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = W_enc.new_zeros(n).index_add_(0, lat, g)
        if ctx.needs_input_grad[0]:
            g_rows = torch.empty_like(g).index_copy_(0, order, g).view(rows, k)
            grad_x = F.embedding_bag(idx, W_enc.t().contiguous(), per_sample_weights=g_rows, mode="sum")
        return grad_x, grad_W, grad_b, grad_W_dec, None, None


class SparseCode(NamedTuple):
    """Result of :func:`sparse_encode_decode`."""

    values: Tensor
    """``relu(pre)`` at ``idx``, ``[batch, k]``."""
    recon: Tensor
    """``sum_j values[:, j] * W_dec[idx[:, j]]`` (no bias, no skip), ``[batch, d_out]``."""


def sparse_encode_decode(
    tc: Transcoder,
    x: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch n_latents"],
    idx: Int[Tensor, "batch k"],
) -> SparseCode:
    """Active values and their decoder sum, with a fully sparse backward (see ``_SparseEncodeDecode``).

    ``pre`` must equal ``x @ tc.W_enc + tc.b_enc`` (computed without grad); ``idx`` must hold
    distinct latents per row. With ``_FAST_TRAIN_STEP`` off, or a dtype other than float32 /
    float64 (CPU ``sampled_addmm`` has no half kernels), it runs the plain reference.
    """
    if not _FAST_TRAIN_STEP or tc.W_dec.dtype not in (torch.float32, torch.float64):
        values = gather_pre_acts(tc, x, pre, idx).relu()
        return SparseCode(values, sparse_decode(tc, values, idx))
    values, recon = _SparseEncodeDecode.apply(x, tc.W_enc, tc.b_enc, tc.W_dec, pre.detach(), idx)
    return SparseCode(values, recon)


class TopKForward(NamedTuple):
    """Result of :func:`topk_forward`."""

    output: Tensor
    """Reconstruction ``[batch, d_out]`` (with ``b_dec`` and the skip path)."""
    values: Tensor
    """Active latent values (ReLU'd), ``[batch, k]``."""
    indices: Tensor
    """Active latent indices, ``[batch, k]``."""
    pre_acts: Tensor
    """Dense encoder pre-activations (no grad), ``[batch, n_latents]``."""


def topk_forward(tc: Transcoder, x: Float[Tensor, "batch d_in"]) -> TopKForward:
    """TopK transcoder forward with a sparse backward; equals ``tc(x)`` in value."""
    if tc.cfg.activation != "topk" or tc.cfg.k is None:
        raise ValueError(f"topk_forward needs a TopK transcoder, got activation={tc.cfg.activation!r}")
    with torch.no_grad():
        tc._check_input(x)
        pre = torch.addmm(tc.b_enc, x, tc.W_enc)
        idx = pre.topk(tc.cfg.k, dim=-1, sorted=False).indices
    values, recon = sparse_encode_decode(tc, x, pre, idx)
    out = recon + tc.b_dec
    if tc.W_skip is not None:
        out = torch.addmm(out, x, tc.W_skip)
    return TopKForward(out, values, idx, pre)


def auxk_loss(
    tc: Transcoder,
    x: Float[Tensor, "batch d_in"],
    pre: Float[Tensor, "batch n_latents"],
    error: Float[Tensor, "batch d_out"],
    dead: Tensor,
    *,
    error_var: Tensor | None = None,
) -> Tensor:
    """AuxK loss: dead latents' top ``k_aux`` pre-acts reconstruct the residual ``error``.

    ``error = y - y_hat`` is detached here. ``k_aux = d_out // 2`` (sparsify's heuristic),
    capped by the number of dead latents, and the loss is scaled by
    ``min(n_dead / (d_out // 2), 1)``. The reconstruction uses ``W_dec`` only (no ``b_dec``,
    no skip). Normaliser: ``error_var`` if given (data-parallel training passes the global
    value), else ``sum((error - error.mean(0))^2)``.
    """
    error = error.detach()
    n_dead = int(dead.sum())
    if n_dead == 0:
        return error.new_zeros(())
    k_base = max(tc.cfg.d_out // 2, 1)
    k_aux = min(k_base, n_dead)
    scale = min(n_dead / k_base, 1.0)
    with torch.no_grad():
        dead_idx = dead.nonzero().squeeze(-1)
        pre_dead = pre.index_select(-1, dead_idx)
        local = pre_dead.topk(k_aux, dim=-1, sorted=False).indices if k_aux < n_dead else None
    if _FAST_TRAIN_STEP and n_dead <= 4 * k_aux:
        # Few dead latents: plain dense autograd over the dead columns only (cost ~ n_dead,
        # cheaper here than the sparse kernel's sort over batch * k_aux entries).
        a = torch.addmm(tc.b_enc[dead_idx], x, tc.W_enc[:, dead_idx]).relu()
        if local is not None:
            a = a * torch.zeros_like(pre_dead).scatter_(-1, local, 1.0)
        e_hat = a @ tc.W_dec[dead_idx]
    else:
        idx = dead_idx.expand(x.shape[0], -1) if local is None else dead_idx[local]
        e_hat = sparse_encode_decode(tc, x, pre, idx).recon
    denom = centered_sum_sq(error) if error_var is None else error_var
    return scale * (e_hat - error).pow(2).sum() / denom.clamp_min(1e-30)


def l1_penalty(
    tc: Transcoder, latents: Float[Tensor, "batch n_latents"], n_tokens: int, y_scale: Tensor
) -> Tensor:
    """``sum_t sum_i |f_i(t)| * ||W_dec[i]|| / (n_tokens * y_scale)``.

    ``y_scale`` is the RMS norm of the centred outputs, which makes the penalty
    dimensionless like the FVU. The norm's gradient at a zero row is taken as 0.
    """
    norms = tc.W_dec.pow(2).sum(-1).clamp_min(1e-30).sqrt()
    return (latents.abs() @ norms).sum() / (n_tokens * y_scale.clamp_min(1e-30))


class _StepFn(torch.autograd.Function):
    """Heaviside ``H(z - theta)`` with a rectangle-kernel pseudo-gradient for ``theta`` only."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):  # type: ignore[override]
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        kernel = ((pre - threshold).abs() < bw / 2).to(pre.dtype) / bw
        grad_theta = (-kernel * grad).reshape(-1, pre.shape[-1]).sum(0)
        return torch.zeros_like(pre), grad_theta, None


def step_fn(
    pre: Float[Tensor, "... n"], threshold: Float[Tensor, " n"], bandwidth: float
) -> Float[Tensor, "... n"]:
    """``(pre > threshold)`` as floats, straight-through gradient to ``threshold`` only."""
    return _StepFn.apply(pre, threshold, bandwidth)


def jumprelu_l0_penalty(
    tc: Transcoder, pre: Float[Tensor, "batch n_latents"], n_tokens: int
) -> Tensor:
    """Summed L0 of the JumpReLU latents over the rows of ``pre``, divided by ``n_tokens``."""
    threshold = tc.threshold
    if threshold is None:
        raise ValueError("jumprelu_l0_penalty needs a JumpReLU transcoder")
    return step_fn(pre, threshold, tc.cfg.jumprelu_bandwidth).sum() / n_tokens
