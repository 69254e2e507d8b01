"""Train a cross-layer transcoder through HookedTransformer hooks.

Reuses the per-layer trainer's pieces: :class:`~tc_circuits.training.config.TrainConfig` (``kind``
``"skip_transcoder"`` gives a CLT with a skip at every layer, ``"transcoder"`` one without;
``layers`` must be empty = all layers), the
:class:`~tc_circuits.training.activation_store.ActivationStore` (one forward pass feeds every
layer's ``(mlp_in, mlp_out)`` pair), the learning-rate schedule, and the sparse TopK kernel of
:mod:`tc_circuits.coders.losses`.

Phases of :meth:`CLTTrainer.run`:

1. **setup** — a :class:`~tc_circuits.coders.clt.CrossLayerTranscoder` (per-layer Kaiming-uniform
   encoders from a seeded generator, zero decoders and skip), ``b_dec[L] = mean(y_L)`` over the
   first buffer, one Adam optimiser over all its parameters.
2. **steps** — for every source layer ``L``: TopK on ``x_L @ W_enc[L] + b_enc[L]`` (no grad),
   then one fused sparse encode/decode into all ``N - L`` output layers at once
   (``W_dec[L]`` viewed as ``[n, (N - L) d]``); outputs ``y_hat_L' = sum_{L <= L'} ... + b_dec
   + skip``. Loss::

       sum_{L'} FVU_{L'}  +  auxk_alpha * sum_L AuxK_L      (TopK)
                          +  l1 * sum_L L1_L                (ReLU; decoder norm over all output layers)
                          +  l0 * sum_L L0_L                (JumpReLU)

   AuxK_L: the dead latents of layer L reconstruct the (detached) errors of all output layers
   ``L' >= L`` through their decoders, normalised by those errors' variance. One backward; the
   whole CLT's gradient is clipped to ``grad_clip * sqrt(N)``; Adam step.
3. **bookkeeping** — per-layer dead-latent counters, a metrics window (FVU per output layer,
   L0 and dead fraction per encoder layer) on the progress bar.
4. **output** — ``out_dir/clt/`` (:meth:`CrossLayerTranscoder.save`) and ``metrics.json``.

Memory: the CLT has ``N (d_in n + n + d) + n d N (N + 1) / 2`` parameters (+ ``N d^2`` skip);
Adam training holds 4 float32 copies, i.e. ``16 n d N (N + 1) / 2`` bytes of decoders —
O(N^2 n d) (see :mod:`tc_circuits.coders.clt`). Activations per step: ``2 N B d`` buffer rows
plus the dense ``[B, n]`` pre-activations of one layer at a time.

The out folder is guarded as the per-layer trainer's is: a lock (one run per folder), another
run's outputs refused unless ``overwrite``, writability and free space checked before training.
Not (yet) supported here: data-parallel training, intermediate checkpoints and resume (the
per-layer :class:`~tc_circuits.training.trainer.Trainer` has them).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tc_circuits.coders.clt import CLTConfig, CrossLayerTranscoder
from tc_circuits.coders import losses
from tc_circuits.coders.losses import _SparseEncodeDecode, centered_sum_sq, step_fn
from tc_circuits.fileio import atomic_write
from tc_circuits.validate import check_writable
from tc_circuits.training.activation_store import ActivationStore
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.data import as_token_factory
from tc_circuits.training.guard import OutDirLock, prepare_out_dir
from tc_circuits.training.trainer import LayerMetrics, close_window

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

__all__ = ["CLTTrainResult", "CLTTrainer", "clt_memory_bytes", "train_clt"]


def clt_memory_bytes(n_layers: int, n_latents: int, d_model: int, *, skip: bool = True, bytes_per: int = 4) -> int:
    """Bytes of weights + gradients + Adam moments of a CLT (4 copies): the O(N^2 n d) formula."""
    N, n, d = n_layers, n_latents, d_model
    params = N * (d * n + n + d) + n * d * N * (N + 1) // 2 + (N * d * d if skip else 0)
    return 4 * bytes_per * params


@dataclass
class CLTTrainResult:
    """What :func:`train_clt` returns."""

    clt: CrossLayerTranscoder
    """The trained cross-layer transcoder."""
    metrics: dict[int, LayerMetrics]
    """Per layer: FVU of output layer L, L0 and dead fraction of encoder layer L (last window)."""
    steps: int
    """Optimiser steps taken."""
    tokens_seen: int
    """Training tokens seen."""


def _auxk(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, pre: Tensor, err: Tensor, dead: Tensor, d: int
) -> Tensor:
    """AuxK of one source layer: dead latents' top ``d // 2`` pre-acts reconstruct ``err`` ([B, m d])."""
    n_dead = int(dead.sum())
    k_base = max(d // 2, 1)
    k_aux = min(k_base, n_dead)
    scale = min(n_dead / k_base, 1.0)
    with torch.no_grad():
        dead_idx = dead.nonzero().squeeze(-1)
        local = pre.index_select(-1, dead_idx).topk(k_aux, dim=-1, sorted=False).indices
        idx = dead_idx[local]
    if losses._FAST_TRAIN_STEP and W_dec.dtype in (torch.float32, torch.float64):
        e_hat = _SparseEncodeDecode.apply(x, W_enc, b_enc, W_dec, pre.detach(), idx)[1]
    else:
        vals = (x @ W_enc + b_enc).gather(-1, idx).relu()
        e_hat = torch.einsum("bk,bkd->bd", vals, W_dec[idx])
    return scale * (e_hat - err).pow(2).sum() / centered_sum_sq(err).clamp_min(1e-30)


class CLTTrainer:
    """Trains one :class:`CrossLayerTranscoder` over every layer of ``model`` (see the module doc)."""

    def __init__(
        self, model: HookedTransformer, token_factory: Any, cfg: TrainConfig, *, progress: bool = True,
        overwrite: bool = False,
    ):
        self.model, self.cfg, self.progress = model, cfg, progress
        self._lock: OutDirLock | None = None
        cfg.check_budget()  # warnings (or, strict, an error) for budgets that cannot work, as the trainer
        N = int(model.cfg.n_layers)
        if cfg.kind == "sae":
            raise ValueError("a cross-layer transcoder reads mlp_in and writes mlp_out: kind='sae' is not one")
        if cfg.layers and tuple(cfg.layers) != tuple(range(N)):
            raise ValueError(f"a CLT spans every layer 0..{N - 1}; got layers={cfg.layers} (leave it empty)")
        device = torch.device(cfg.device) if cfg.device else torch.device(model.cfg.device)
        clt_cfg = CLTConfig.for_model(
            model, cfg.n_latents, skip=cfg.kind == "skip_transcoder", activation=cfg.activation,
            k=cfg.k if cfg.activation == "topk" else None, extra={"train_config": cfg.to_dict()},
        )
        self.clt = CrossLayerTranscoder(clt_cfg, seed=cfg.seed).to(device)
        self.N = N
        if cfg.out_dir is not None:  # before any training: one run per folder, writable, room for the CLT
            check_writable(cfg.out_dir, what="training out folder")
            self._lock = OutDirLock(cfg.out_dir)
            try:
                n_params = sum(p.numel() for p in self.clt.parameters())
                prepare_out_dir(cfg.out_dir, resume=False, overwrite=overwrite, need_bytes=int(1.1 * 4 * n_params))
            except BaseException:
                self._release()
                raise
        views = self.clt.layers()
        try:
            self.store = ActivationStore(
                model, {L: (v.cfg.input_site, v.cfg.output_site) for L, v in views.items()},
                as_token_factory(token_factory), batch_size=cfg.batch_size, buffer_tokens=cfg.buffer_tokens,
                exclude_bos=cfg.exclude_bos, seed=cfg.seed, device=device, prefetch=cfg.prefetch,
            )
        except BaseException:
            self._release()
            raise
        self.optimizer = torch.optim.Adam(self.clt.parameters(), lr=cfg.lr_at(0))
        n = cfg.n_latents
        self.since_fired = [torch.zeros(n, dtype=torch.long, device=device) for _ in range(N)]
        self.window = torch.zeros(N, 4, dtype=torch.float64)  # sq_err, den, l0_sum, tokens
        self.metrics: dict[int, LayerMetrics] = {}
        self.step = 0
        self.tokens_seen = 0
        try:
            outs = self.store.buffer_outputs()
            self.clt.init_from_data([outs[L] for L in range(N)])
        except BaseException:
            self.store.close()
            self._release()
            raise

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ----------------------------------------------------------------- one step
    def _encode_decode(self, L: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """``(recon [B, m d], active [B, *] bool, fired [n], latents or None, pre)`` of source layer L."""
        c, clt = self.cfg, self.clt
        W_enc, b_enc = clt.W_enc[L], clt.b_enc[L]
        W_dec = clt.W_dec[L].reshape(c.n_latents, -1)
        if c.activation == "topk" and losses._FAST_TRAIN_STEP and W_dec.dtype in (torch.float32, torch.float64):
            with torch.no_grad():
                pre = torch.addmm(b_enc, x, W_enc)
                idx = pre.topk(c.k, dim=-1, sorted=False).indices
            values, recon = _SparseEncodeDecode.apply(x, W_enc, b_enc, W_dec, pre, idx)
            active = values > 0
            fired = torch.bincount(idx[active], minlength=c.n_latents)
            return recon, active, fired, None, pre
        view = clt.layer(L)
        pre = view.pre_acts(x)
        lat = view.activate(pre)
        active = lat > 0
        return lat @ W_dec, active, active.sum(0), lat, pre

    def train_step(self, batch: dict[Any, Any]) -> None:
        """One optimiser step on ``{layer: PairBatch}``."""
        cfg, clt, N, d = self.cfg, self.clt, self.N, self.clt.cfg.d_out
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step)
        xs = [batch[L][0] for L in range(N)]
        ys = [batch[L][1] for L in range(N)]
        n_tok = xs[0].shape[0]
        contrib: list[list[Tensor]] = [[] for _ in range(N)]
        enc = []
        for L in range(N):
            recon, active, fired, lat, pre = self._encode_decode(L, xs[L])
            enc.append((active, fired, lat, pre))
            for j, part in enumerate(recon.split(d, dim=-1)):
                contrib[L + j].append(part)
        outs, dens, loss = [], [], xs[0].new_zeros(())
        for Lp in range(N):
            out = torch.stack(contrib[Lp]).sum(0) + clt.b_dec[Lp]
            if clt.W_skip is not None:
                out = torch.addmm(out, xs[Lp], clt.W_skip[Lp])
            den = centered_sum_sq(ys[Lp]).clamp_min(1e-30)
            sq = (out - ys[Lp]).pow(2).sum()
            loss = loss + sq / den
            outs.append(out)
            dens.append(den)
            self.window[Lp, 0] += float(sq.detach())
            self.window[Lp, 1] += float(den)
        for L, (active, fired, lat, pre) in enumerate(enc):
            W_dec = clt.W_dec[L].reshape(cfg.n_latents, -1)
            if cfg.activation == "topk" and cfg.auxk_alpha > 0:
                dead = self.since_fired[L] >= cfg.dead_tokens_threshold
                if bool(dead.any()):
                    err = torch.cat([(ys[j] - outs[j]).detach() for j in range(L, N)], dim=-1)
                    loss = loss + cfg.auxk_alpha * _auxk(xs[L], clt.W_enc[L], clt.b_enc[L], W_dec, pre, err, dead, d)
            elif cfg.activation == "relu" and cfg.l1_coefficient > 0:
                y_scale = (sum(dens[L:]) / ((N - L) * n_tok)).sqrt()
                norms = W_dec.pow(2).sum(-1).clamp_min(1e-30).sqrt()
                loss = loss + cfg.l1_coefficient * (lat.abs() @ norms).sum() / (n_tok * y_scale)
            elif cfg.activation == "jumprelu" and cfg.jumprelu_sparsity_coefficient > 0:
                thr = clt.log_threshold[L].exp()
                l0 = step_fn(pre, thr, clt.cfg.jumprelu_bandwidth).sum() / n_tok
                loss = loss + cfg.jumprelu_sparsity_coefficient * l0
            self.window[L, 2] += float(active.sum())
            self.window[L, 3] += n_tok
            self.since_fired[L] += n_tok
            self.since_fired[L][fired.to(self.since_fired[L].device) > 0] = 0
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(clt.parameters(), cfg.grad_clip * math.sqrt(N))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += n_tok

    # ----------------------------------------------------------------- metrics
    def _close_window(self) -> None:
        close_window(self.window, self.since_fired, range(self.N), self.cfg.dead_tokens_threshold,
                     self.tokens_seen, self.metrics)

    def _postfix(self) -> str:
        m = [self.metrics[L] for L in sorted(self.metrics)]
        if not m:
            return ""
        return "fvu " + "/".join(f"{x.fvu:.3f}" for x in m) + " l0 " + "/".join(f"{x.l0:.1f}" for x in m)

    # ----------------------------------------------------------------- loop
    def run(self) -> CLTTrainResult:
        """Train to ``cfg.total_tokens``; write ``out_dir/clt`` and ``metrics.json``; return the CLT."""
        cfg = self.cfg
        total = cfg.total_steps
        bar = tqdm(total=total * cfg.batch_size, unit="tok", unit_scale=True, disable=not self.progress, dynamic_ncols=True)
        self.clt.train()
        try:
            while self.step < total:
                self.train_step(next(self.store))
                bar.update(cfg.batch_size)
                if self.step % cfg.log_every == 0 or self.step == total:
                    self._close_window()
                    bar.set_postfix_str(self._postfix(), refresh=False)
            self._close_window()
            self.clt.eval()
            if cfg.out_dir is not None:
                out = Path(cfg.out_dir)
                self.clt.save(out / "clt")
                metrics = {
                    "steps": self.step, "tokens_seen": self.tokens_seen,
                    "layers": {str(k): dataclasses.asdict(v) for k, v in self.metrics.items()},
                    "config": cfg.to_dict(), "kind": "cross_layer_transcoder",
                }
                atomic_write(out / "metrics.json", lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
        finally:
            self.store.close()  # the background fill runs the model: stop it before anyone else does
            bar.close()
            self._release()
        return CLTTrainResult(self.clt, dict(self.metrics), self.step, self.tokens_seen)


def train_clt(
    model: HookedTransformer, token_source_factory: Any, cfg: TrainConfig, *, progress: bool = True,
    overwrite: bool = False,
) -> CLTTrainResult:
    """Train a cross-layer transcoder over every layer of ``model``; see :class:`CLTTrainer`.

    ``cfg.kind``: ``"skip_transcoder"`` (a skip at every layer) or ``"transcoder"``;
    ``cfg.n_latents`` and ``cfg.k`` are *per layer* (TopK per layer). ``cfg.out_dir`` holding
    another run is refused unless ``overwrite`` (which deletes that run's outputs first).
    """
    return CLTTrainer(model, token_source_factory, cfg, progress=progress, overwrite=overwrite).run()
