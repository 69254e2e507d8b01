"""A fused TopK training step: forward, FVU + AuxK loss and hand-written gradients, no autograd.

:func:`topk_loss_and_grads` computes exactly what the reference autograd path computes,

    loss = sum((out - y)^2) / den  +  auxk_alpha * auxk_loss(...)

with ``out = topk_forward(tc, x).output`` and :func:`~tc_circuits.coders.losses.auxk_loss`, and
*sets* (does not accumulate) ``.grad`` of every parameter of ``tc``. What it saves over
``topk_forward`` + ``auxk_loss`` + ``loss.backward()``:

* **one sparse backward for both losses**: the ``rows * k`` main entries and the
  ``rows * k_aux`` AuxK entries are sorted by latent once into one CSR matrix of shape
  ``[n_latents, 2 rows]`` (main rows, then AuxK rows), so ``d W_dec``, ``d W_enc`` and the
  ``d values`` products are one sparse kernel each (not one per loss plus a gradient add).
  With few dead latents (``n_dead <= 4 k_aux``, as in ``auxk_loss``) AuxK is instead dense
  over the dead columns only and added to those columns' gradients;
* **no dense ``[rows, n_latents]`` gradient** anywhere: ``d W_enc = x^T @ S`` with ``S`` the
  k-sparse pre-activation gradient, ``d W_dec`` only touches selected rows' sums;
* **a workspace** (:class:`TopKWorkspace`): the ``[rows, n_latents]`` pre-activations and every
  gradient are written into buffers kept across steps (``out=``), so a step allocates and
  page-faults no large tensor (at GPT-2 shape the fresh 100 MB pre-activation buffer alone
  costs ~0.3 of a matmul on CPU), and sparse products write straight into the gradient
  (``torch.addmm(..., beta=0, out=grad)``: ~8x faster than ``S @ x`` into a new tensor).

Reference: :func:`~tc_circuits.coders.losses.topk_forward` + ``auxk_loss`` + autograd, selected
by ``losses._FAST_TRAIN_STEP = False``; ``tests/test_topk_step.py`` checks values and
gradients agree (and whole training runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from tc_circuits import onednn
from tc_circuits.coders.losses import centered_sum_sq
from tc_circuits.coders.transcoder import Transcoder

__all__ = ["TopKStepResult", "TopKWorkspace", "fused_step_supported", "topk_loss_and_grads"]


class TopKWorkspace:
    """Buffers kept across steps, keyed by name; reallocated only when shape/dtype/device change."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised buffer ``name`` of ``shape`` with ``like``'s dtype and device."""
        buf = self._bufs.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape) or buf.dtype != like.dtype or buf.device != like.device:
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._bufs[name] = buf
        return buf


class TopKStepResult(NamedTuple):
    """What :func:`topk_loss_and_grads` returns (all detached)."""

    loss: Tensor
    """Scalar total loss (FVU term + ``auxk_alpha`` x AuxK)."""
    sq_err: Tensor
    """``sum((out - y)^2)`` over these rows."""
    values: Tensor
    """Active latent values (ReLU'd), ``[rows, k]``."""
    indices: Tensor
    """Active latent indices, ``[rows, k]``."""


def fused_step_supported(tc: Transcoder) -> bool:
    """True when :func:`topk_loss_and_grads` handles ``tc`` (TopK, float32/float64 weights)."""
    return tc.cfg.activation == "topk" and tc.cfg.k is not None and tc.W_dec.dtype in (torch.float32, torch.float64)


#: Up to this many sparse entries the ``W_enc`` gradient product writes straight through the
#: transposed view of the gradient; beyond it (sparse AuxK: ``rows * (k + k_aux)``) a contiguous
#: product plus one transposing copy is faster (1 thread, GPT-2 shape: 27 vs 44 ms at
#: ``1024 * 32`` entries, 294 vs 64 ms at ``1024 * 416``; ``bench/bench_floor.py``).
_TRANSPOSED_WRITE_MAX_NNZ = 65_536

#: the encoder product ``x @ W_enc + b_enc`` through oneDNN (:mod:`tc_circuits.onednn`) for float32
#: CPU coders at least this wide in ``d_in`` (GPT-2 shape, 1 thread, AMD EPYC: 403 -> 232 ms per
#: ``[1024, 768] @ [768, 24576]``); ``None`` or narrower: ``torch.addmm`` into the workspace (the reference)
_ONEDNN_ENCODER_MIN_D_IN: int | None = 256


def _encoder(tc: Transcoder, x: Tensor, ws: TopKWorkspace, rows: int, n: int) -> Tensor:
    """``x @ W_enc + b_enc``: oneDNN on its plain ``W_enc^T`` view where it applies, else ``addmm``."""
    W_enc = tc.W_enc
    m = _ONEDNN_ENCODER_MIN_D_IN
    if m is not None and onednn.applies(x, W_enc) and x.dim() == 2 and W_enc.shape[0] >= m:
        return onednn.linear(x, W_enc.detach().T, tc.b_enc.detach())
    return torch.addmm(tc.b_enc, x, W_enc, out=ws.get("pre", (rows, n), W_enc))


def _grad_buffer(p: Tensor) -> Tensor:
    """``p.grad``, (re)allocated to ``p``'s shape and layout when missing; its values are overwritten."""
    if p.grad is None or p.grad.shape != p.shape or not p.grad.is_contiguous():
        p.grad = torch.empty_like(p, memory_format=torch.contiguous_format)
    return p.grad


def _csr(crow: Tensor, col: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)


@torch.no_grad()
def topk_loss_and_grads(
    tc: Transcoder,
    x: Float[Tensor, "rows d_in"],
    y: Float[Tensor, "rows d_out"],
    den: Tensor,
    *,
    dead: Bool[Tensor, " n_latents"] | None = None,
    auxk_alpha: float = 0.0,
    error_var: Callable[[Tensor], Tensor] | None = None,
    workspace: TopKWorkspace | None = None,
) -> TopKStepResult:
    """Loss ``sum((out - y)^2) / den + auxk_alpha * AuxK`` and its gradients, set in ``tc``'s ``.grad``.

    ``den`` is the FVU denominator (the trainer passes the global batch's centred sum of
    squares). AuxK runs when ``auxk_alpha > 0`` and ``dead`` marks any latent; it is
    :func:`~tc_circuits.coders.losses.auxk_loss` of the residual ``y - out`` with normaliser
    ``error_var(residual)`` (default: its centred sum of squares). ``x`` gets no gradient.
    """
    if not fused_step_supported(tc):
        raise ValueError(
            f"topk_loss_and_grads needs a TopK transcoder with float32/float64 weights, got "
            f"activation={tc.cfg.activation!r}, dtype={tc.W_dec.dtype}"
        )
    tc._check_input(x)
    if y.shape != (x.shape[0], tc.cfg.d_out):
        raise ValueError(f"expected y of shape {(x.shape[0], tc.cfg.d_out)}, got {tuple(y.shape)}")
    ws = workspace if workspace is not None else TopKWorkspace()
    rows, n, k = x.shape[0], tc.cfg.n_latents, int(tc.cfg.k)  # type: ignore[arg-type]
    W_enc, W_dec = tc.W_enc, tc.W_dec

    # ---- forward (the same operations as topk_forward, so the same values)
    pre = _encoder(tc, x, ws, rows, n)
    idx = pre.topk(k, dim=-1, sorted=False).indices
    values = pre.gather(-1, idx).clamp_min(0)
    out = F.embedding_bag(idx, W_dec, per_sample_weights=values, mode="sum") + tc.b_dec
    if tc.W_skip is not None:
        out = torch.addmm(out, x, tc.W_skip)
    r = out - y
    sq = r.pow(2).sum()
    loss = sq / den

    # ---- AuxK (the same operations as auxk_loss)
    aux = None
    n_dead = int(dead.sum()) if dead is not None and auxk_alpha > 0 else 0
    if n_dead:
        err = y - out
        ev = centered_sum_sq(err) if error_var is None else error_var(err)
        k_base = max(tc.cfg.d_out // 2, 1)
        k_aux = min(k_base, n_dead)
        scale = min(n_dead / k_base, 1.0)
        dead_idx = dead.nonzero().squeeze(-1)  # type: ignore[union-attr]
        pre_dead = pre.index_select(-1, dead_idx)
        local = pre_dead.topk(k_aux, dim=-1, sorted=False).indices if k_aux < n_dead else None
        denom = ev.clamp_min(1e-30)
        coef = 2 * auxk_alpha * scale / denom
        if n_dead <= 4 * k_aux:
            # few dead latents: dense over the dead columns (as auxk_loss), cheaper than sorting rows * k_aux entries
            act = pre_dead.clamp_min(0)
            if local is not None:
                act = act * torch.zeros_like(pre_dead).scatter_(-1, local, 1.0)
            W_dead = W_dec.index_select(0, dead_idx)
            ra = act @ W_dead - err
            aux = ("dense", dead_idx, act, W_dead, ra * coef)
        else:
            aidx = dead_idx[local] if local is not None else dead_idx.expand(rows, -1).contiguous()
            avals = pre.gather(-1, aidx).clamp_min(0)
            ra = F.embedding_bag(aidx, W_dec, per_sample_weights=avals, mode="sum") - err
            aux = ("sparse", aidx, avals, ra * coef)
        loss = loss + auxk_alpha * (scale * ra.pow(2).sum() / denom)

    # ---- backward, by hand
    dout = r * (2 / den)
    torch.sum(dout, 0, out=_grad_buffer(tc.b_dec))
    if tc.W_skip is not None:
        torch.mm(x.t(), dout, out=_grad_buffer(tc.W_skip))
    sparse_aux = aux is not None and aux[0] == "sparse"
    main_rows = torch.arange(rows, device=x.device).view(-1, 1).expand(rows, k).reshape(-1)
    if not sparse_aux:
        flat, flat_v, rhs_dec, rhs_enc, row_of = idx.reshape(-1), values.reshape(-1), dout, x, main_rows
    else:
        _, aidx, avals, d_ehat = aux  # type: ignore[misc]
        kk = aidx.shape[1]
        flat = torch.cat([idx.reshape(-1), aidx.reshape(-1)])
        flat_v = torch.cat([values.reshape(-1), avals.reshape(-1)])
        rhs_dec, rhs_enc = torch.cat([dout, d_ehat]), torch.cat([x, x])
        aux_rows = torch.arange(rows, rows * 2, device=x.device).view(-1, 1).expand(rows, kk).reshape(-1)
        row_of = torch.cat([main_rows, aux_rows])
    # one latent-sorted CSR [n, rows or 2 rows] (int32 keys sort ~2x faster than int64 on CPU)
    order = torch.argsort(flat.to(torch.int32), stable=True)
    lat = flat.index_select(0, order)
    crow = torch.zeros(n + 1, dtype=torch.long, device=x.device)
    torch.cumsum(torch.bincount(flat, minlength=n), 0, out=crow[1:])
    col = row_of.index_select(0, order)
    v_sorted = flat_v.index_select(0, order)
    width = rhs_dec.shape[0]
    # d values = <d out[row], W_dec[latent]> on the pattern only
    g = torch.sparse.sampled_addmm(
        _csr(crow, col, torch.zeros_like(v_sorted), (n, width)), W_dec, rhs_dec.t(), beta=0.0
    ).values()
    W_dec_grad = _grad_buffer(W_dec)
    torch.addmm(W_dec_grad, _csr(crow, col, v_sorted, (n, width)), rhs_dec, beta=0, out=W_dec_grad)
    g = g * (v_sorted > 0)  # through the ReLU
    b_enc_grad = _grad_buffer(tc.b_enc).zero_().index_add_(0, lat, g)
    W_enc_grad = _grad_buffer(W_enc)
    S_enc = _csr(crow, col, g, (n, width))
    if flat.numel() <= _TRANSPOSED_WRITE_MAX_NNZ:
        W_enc_grad_t = W_enc_grad.t()  # [n, d_in] view of the [d_in, n] gradient, written in place
        torch.addmm(W_enc_grad_t, S_enc, rhs_enc, beta=0, out=W_enc_grad_t)
    else:  # many entries (sparse AuxK): a contiguous product, then one transposing copy
        buf = ws.get("W_enc_grad_t", (n, x.shape[1]), W_enc)
        W_enc_grad.copy_(torch.addmm(buf, S_enc, rhs_enc, beta=0, out=buf).t())
    if aux is not None and aux[0] == "dense":
        _, dead_idx, act, W_dead, d_ehat = aux
        d_pre = (d_ehat @ W_dead.t()) * (act > 0)  # through the mask and the ReLU
        W_dec_grad.index_add_(0, dead_idx, act.t() @ d_ehat)
        W_enc_grad.index_add_(1, dead_idx, x.t() @ d_pre)
        b_enc_grad.index_add_(0, dead_idx, d_pre.sum(0))
    return TopKStepResult(loss, sq, values, idx)
