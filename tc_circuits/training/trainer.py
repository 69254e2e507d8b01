"""Train transcoders (or SAEs) for several layers at once through HookedTransformer hooks.

Phases of :meth:`Trainer.run`:

1. **setup** — one :class:`~tc_circuits.coders.transcoder.Transcoder` per layer (Kaiming-uniform
   encoder from a seeded generator, zero ``W_dec`` / ``W_skip``), an
   :class:`~tc_circuits.training.activation_store.ActivationStore` feeding all of them from one forward
   pass, one Adam optimiser; then either ``b_dec = mean(y)`` over the first buffer (so the
   step-0 transcoder outputs exactly the mean) or, with ``resume=True``, the last checkpoint.
2. **steps** — per layer: forward (sparse TopK fast path), loss = FVU + AuxK (TopK) / L1
   (ReLU) / L0 (JumpReLU); one backward; gradients summed over data-parallel ranks; per-layer
   gradient clipping; Adam step with the warmup/decay learning rate of :meth:`TrainConfig.lr_at`.
3. **bookkeeping** — dead-latent counters (tokens since each latent last fired), a metrics
   window (FVU, L0, dead fraction) shown on the progress bar, and a checkpoint every
   ``checkpoint_every`` steps (:mod:`tc_circuits.training.checkpoint`).
4. **output** — ``out_dir/transcoders/layer_{L}/`` (``TranscoderSet.save``) and ``metrics.json``.

Everything random uses explicit ``torch.Generator`` seeds, so a run is reproducible and a
resumed run matches an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tc_circuits.training.activation_store import ActivationStore
from tc_circuits.training.data import as_token_factory
from tc_circuits.training.distributed import all_reduce_sum, barrier, dist_info, rank_slice, sync_gradients
from tc_circuits.fileio import atomic_write
from tc_circuits.coders.losses import (
    auxk_loss,
    centered_sum_sq,
    jumprelu_l0_penalty,
    l1_penalty,
    topk_forward,
)
from tc_circuits.coders import losses as _losses
from tc_circuits.coders.topk_step import TopKWorkspace, fused_step_supported, topk_loss_and_grads
from tc_circuits.training.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint
from tc_circuits.training.guard import (
    DeferredSignals,
    OutDirLock,
    TrainingDivergedError,
    TrainingInterrupted,
    checkpoint_bytes,
    prepare_out_dir,
)
from tc_circuits.training.config import TrainConfig
from tc_circuits.validate import check_writable
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

__all__ = ["LayerMetrics", "TrainConfig", "TrainResult", "Trainer", "train_transcoders"]

#: Adam with ``fused=True`` (one kernel over each parameter instead of ~10 elementwise passes;
#: ~7x faster on CPU at GPT-2 shape). ``False`` selects the plain ``torch.optim.Adam`` (reference).
_FUSED_ADAM = True

#: Config fields that may differ between a run and its resumption.
RESUMABLE_CHANGES = ("out_dir", "checkpoint_every", "log_every", "device", "strict")


@dataclass(frozen=True)
class LayerMetrics:
    """Metrics of one layer's transcoder over the last metrics window."""

    fvu: float
    """Fraction of variance unexplained."""
    l0: float
    """Mean active latents per token."""
    dead_fraction: float
    """Fraction of latents that did not fire in the last ``dead_tokens_threshold`` tokens."""
    tokens_seen: int
    """Training tokens seen so far."""


def close_window(window: Any, since_fired: Any, layers: Any, dead_tokens_threshold: int, tokens_seen: int,
                 metrics: dict[int, LayerMetrics]) -> None:
    """Turn each layer's metrics window ``[sum sq err, sum sq dev, L0 sum, rows]`` into
    ``metrics[layer]`` and zero it (layers whose window is empty keep their last metrics)."""
    for layer in layers:
        sq, den, l0, n = window[layer].tolist()
        if n == 0:
            continue
        dead = since_fired[layer] >= dead_tokens_threshold
        metrics[layer] = LayerMetrics(
            fvu=sq / den, l0=l0 / n, dead_fraction=float(dead.float().mean()), tokens_seen=tokens_seen
        )
        window[layer].zero_()


@dataclass
class TrainResult:
    """What :func:`train_transcoders` returns."""

    transcoders: TranscoderSet
    """``{layer: Transcoder}``, trained."""
    metrics: dict[int, LayerMetrics]
    """Final per-layer metrics (last metrics window)."""
    steps: int
    """Optimiser steps taken in total (including before a resume)."""
    tokens_seen: int
    """Training tokens seen in total."""


class Trainer:
    """Trains one transcoder per layer of ``cfg.layers`` on ``model``'s activations.

    ``token_factory`` is a zero-argument callable returning a fresh, identical stream of
    ``[batch, seq]`` token tensors per call (or anything :func:`as_token_factory` accepts).
    ``store`` replaces the activation store with any iterator of ``{layer: PairBatch}`` that
    also has ``buffer_outputs()``, ``state_dict()``, ``load_state_dict()`` and ``close()`` (data that does
    not come from the model, e.g. a synthetic benchmark); ``token_factory`` is then unused.
    """

    def __init__(
        self,
        model: HookedTransformer,
        token_factory: Any,
        cfg: TrainConfig,
        *,
        resume: bool = False,
        progress: bool = True,
        overwrite: bool = False,
        store: Any = None,
    ):
        self.model, self.cfg, self.progress = model, cfg, progress
        self._lock: OutDirLock | None = None
        self.dist = dist_info()
        if self.dist.is_main or cfg.strict:
            cfg.check_budget()  # before any work: warnings (or, strict, an error) for budgets that cannot work
        if cfg.batch_size % self.dist.world_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} must divide evenly over world_size={self.dist.world_size}"
            )
        if resume and cfg.out_dir is None:
            raise ValueError("resume=True needs cfg.out_dir (where the checkpoint is)")
        if resume and overwrite:
            raise ValueError("resume=True and overwrite=True contradict each other; pick one")
        self.layers = cfg.layers or tuple(range(model.cfg.n_layers))
        for layer in self.layers:
            if layer >= model.cfg.n_layers:
                raise ValueError(f"layer {layer} out of range for a model with {model.cfg.n_layers} layers")
        device = torch.device(cfg.device) if cfg.device else torch.device(model.cfg.device)
        self.transcoders = TranscoderSet()
        for layer in self.layers:
            tc_cfg = TranscoderConfig.for_model(
                model, layer, cfg.n_latents, kind=cfg.kind, activation=cfg.activation, k=cfg.k,
                extra={"train_config": cfg.to_dict()},
            )
            tc = Transcoder(tc_cfg, seed=cfg.seed * 1_000 + layer)
            self.transcoders[layer] = tc.to(device)
        self.store = store if store is not None else ActivationStore(
            model,
            {layer: (tc.cfg.input_site, tc.cfg.output_site) for layer, tc in self.transcoders.items()},
            as_token_factory(token_factory),
            batch_size=cfg.batch_size,
            buffer_tokens=cfg.buffer_tokens,
            exclude_bos=cfg.exclude_bos,
            seed=cfg.seed,
            device=device,
            prefetch=cfg.prefetch,
        )
        self.params = [p for layer in self.layers for p in self.transcoders[layer].parameters()]
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.transcoders[layer].parameters())} for layer in self.layers],
            lr=cfg.lr_at(0),
            fused=True if _FUSED_ADAM and all(
                p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in self.params
            ) else None,
        )
        self._workspace = TopKWorkspace()  # buffers of the fused TopK step, shared by the layers
        n = cfg.n_latents
        self.since_fired = {layer: torch.zeros(n, dtype=torch.long, device=device) for layer in self.layers}
        self.window = {layer: torch.zeros(4, dtype=torch.float64) for layer in self.layers}
        self.metrics: dict[int, LayerMetrics] = {}
        self.step = 0
        self.tokens_seen = 0
        if cfg.out_dir is not None and self.dist.is_main:
            # before any training: one run per folder (lock), no mixing with another run,
            # writable, room for the checkpoints
            check_writable(cfg.out_dir, what="training out folder")  # creates it; clear error if it cannot
            self._lock = OutDirLock(cfg.out_dir)
        try:
            if self._lock is not None:
                n_params = sum(p.numel() for p in self.params)
                prepare_out_dir(cfg.out_dir, resume=resume, overwrite=overwrite, need_bytes=checkpoint_bytes(n_params))
            checkpoint = resume_checkpoint(cfg.out_dir) if resume else None
            if checkpoint is not None:
                self._load(checkpoint)
            else:
                for layer, y in self.store.buffer_outputs().items():
                    self.transcoders[layer].init_from_data(y)
        except BaseException:
            self.store.close()  # no background fill left running
            self._release()
            raise

    # ----------------------------------------------------------------- one step
    def _layer_loss(self, layer: int, x: Tensor, y: Tensor, stats: list[Tensor]) -> Tensor:
        """Loss of one layer on this rank's rows; appends [sq_err, l0_sum, fired counts]."""
        cfg, tc = self.cfg, self.transcoders[layer]
        n_global = x.shape[0]
        den = centered_sum_sq(y).clamp_min(1e-30)  # global batch: identical on all ranks
        rows = rank_slice(n_global, self.dist)
        xr, yr = x[rows], y[rows]
        if cfg.activation == "topk":
            fwd = topk_forward(tc, xr)
            out, pre = fwd.output, fwd.pre_acts
            active = fwd.values > 0
            fired = torch.bincount(fwd.indices[active], minlength=cfg.n_latents)
            l0_sum = active.sum()
        else:
            full = tc(xr)
            out, pre = full.output, full.pre_acts
            active = full.latents > 0
            fired, l0_sum = active.sum(0), active.sum()
        sq = (out - yr).pow(2).sum()
        loss = sq / den
        if cfg.activation == "topk" and cfg.auxk_alpha > 0:
            dead = self.since_fired[layer] >= cfg.dead_tokens_threshold
            if bool(dead.any()):
                err = (yr - out).detach()
                e_stats = torch.cat([err.double().sum(0), err.double().pow(2).sum().view(1)])
                all_reduce_sum(e_stats, self.dist)
                err_var = (e_stats[-1] - e_stats[:-1].pow(2).sum() / n_global).float()
                loss = loss + cfg.auxk_alpha * auxk_loss(tc, xr, pre, err, dead, error_var=err_var)
        elif cfg.activation == "relu" and cfg.l1_coefficient > 0:
            y_scale = (den / n_global).sqrt()
            loss = loss + cfg.l1_coefficient * l1_penalty(tc, full.latents, n_global, y_scale)
        elif cfg.activation == "jumprelu" and cfg.jumprelu_sparsity_coefficient > 0:
            loss = loss + cfg.jumprelu_sparsity_coefficient * jumprelu_l0_penalty(tc, pre, n_global)
        stats.append(torch.cat([sq.detach().double().view(1), l0_sum.double().view(1), fired.double()]))
        self.window[layer][1] += float(den)
        return loss

    def _layer_fused(self, layer: int, x: Tensor, y: Tensor, stats: list[Tensor]) -> Tensor:
        """:meth:`_layer_loss` for TopK by :func:`topk_loss_and_grads`: the same loss and stats,
        gradients set directly (no autograd graph); returns the detached loss."""
        cfg, tc = self.cfg, self.transcoders[layer]
        n_global = x.shape[0]
        den = centered_sum_sq(y).clamp_min(1e-30)
        rows = rank_slice(n_global, self.dist)
        xr, yr = x[rows], y[rows]

        def error_var(err: Tensor) -> Tensor:
            e_stats = torch.cat([err.double().sum(0), err.double().pow(2).sum().view(1)])
            all_reduce_sum(e_stats, self.dist)
            return (e_stats[-1] - e_stats[:-1].pow(2).sum() / n_global).float()

        dead = self.since_fired[layer] >= cfg.dead_tokens_threshold if cfg.auxk_alpha > 0 else None
        res = topk_loss_and_grads(tc, xr, yr, den, dead=dead, auxk_alpha=cfg.auxk_alpha,
                                  error_var=error_var, workspace=self._workspace)
        active = res.values > 0
        fired = torch.bincount(res.indices[active], minlength=cfg.n_latents)
        stats.append(torch.cat([res.sq_err.double().view(1), active.sum().double().view(1), fired.double()]))
        self.window[layer][1] += float(den)
        return res.loss

    def _fused(self) -> bool:
        """Whether this step uses the fused TopK kernel (``losses._FAST_TRAIN_STEP`` and TopK weights)."""
        return _losses._FAST_TRAIN_STEP and all(fused_step_supported(tc) for tc in self.transcoders.values())

    def train_step(self, batch: dict[Any, Any]) -> None:
        """One optimiser step on a global batch ``{layer: PairBatch}``."""
        cfg = self.cfg
        lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        stats: list[Tensor] = []
        fused = self._fused()
        if not fused:  # autograd accumulates: start from no gradient (the fused step may have left buffers)
            self.optimizer.zero_grad(set_to_none=True)
        layer_loss = self._layer_fused if fused else self._layer_loss
        loss = sum(layer_loss(layer, *batch[layer], stats) for layer in self.layers)
        if not bool(torch.isfinite(loss.detach())):  # type: ignore[union-attr]
            raise TrainingDivergedError(
                f"training diverged at step {self.step}: the loss is {float(loss.detach()):g} (lr={lr:g}, "
                f"grad_clip={cfg.grad_clip}); no weights of this step were applied or saved. "
                "Lower lr or set grad_clip"
            )
        if not fused:
            loss.backward()  # type: ignore[union-attr]
        sync_gradients(self.params, self.dist)
        if cfg.grad_clip is not None:
            for layer in self.layers:
                torch.nn.utils.clip_grad_norm_(self.transcoders[layer].parameters(), cfg.grad_clip)
        self.optimizer.step()
        if not fused:  # the fused step overwrites its gradient buffers, kept across steps
            self.optimizer.zero_grad(set_to_none=True)
        if cfg.normalize_decoder:
            with torch.no_grad():
                for tc in self.transcoders.values():
                    norms = tc.W_dec.norm(dim=-1, keepdim=True)
                    tc.W_dec.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))
        flat = all_reduce_sum(torch.cat(stats), self.dist)
        n_tokens = cfg.batch_size
        for i, layer in enumerate(self.layers):
            s = flat[i * (cfg.n_latents + 2) : (i + 1) * (cfg.n_latents + 2)]
            self.window[layer][0] += s[0]
            self.window[layer][2] += s[1]
            self.window[layer][3] += n_tokens
            counter = self.since_fired[layer]
            counter += n_tokens
            counter[s[2:].to(counter.device) > 0] = 0
        self.step += 1
        self.tokens_seen += n_tokens

    # ----------------------------------------------------------------- metrics
    def _close_window(self) -> None:
        close_window(self.window, self.since_fired, self.layers, self.cfg.dead_tokens_threshold,
                     self.tokens_seen, self.metrics)

    def _postfix(self) -> str:
        m = [self.metrics[layer] for layer in self.layers if layer in self.metrics]
        if not m:
            return ""
        fvu = "/".join(f"{x.fvu:.3f}" for x in m)
        l0 = "/".join(f"{x.l0:.1f}" for x in m)
        dead = "/".join(f"{x.dead_fraction:.2f}" for x in m)
        return f"fvu {fvu} l0 {l0} dead {dead}"

    # ----------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        if self.cfg.out_dir is None or not self.dist.is_main:
            barrier(self.dist)
            return
        for layer, tc in self.transcoders.items():
            if not all(bool(torch.isfinite(p).all()) for p in tc.parameters()):
                raise TrainingDivergedError(
                    f"training diverged by step {self.step}: transcoder {layer} has NaN or infinite "
                    "weights; the last checkpoint is kept and nothing non-finite was saved. Lower lr"
                )
        tensors: dict[str, Tensor] = {}
        for pid, st in sorted(self.optimizer.state_dict()["state"].items()):
            for key, value in st.items():
                tensors[f"adam.{pid}.{key}"] = torch.as_tensor(value)
        for layer in self.layers:
            tensors[f"since_fired.{layer}"] = self.since_fired[layer]
            tensors[f"window.{layer}"] = self.window[layer]
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "store": self.store.state_dict(),
            "config": self.cfg.to_dict(),
            "metrics": {str(k): dataclasses.asdict(v) for k, v in self.metrics.items()},
        }
        save_checkpoint(self.cfg.out_dir, dict(self.transcoders), tensors, state)
        barrier(self.dist)

    def _load(self, path: Path) -> None:
        state, tensors = load_checkpoint(path)
        saved = TrainConfig.from_dict(state["config"])
        diff = [
            f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(self.cfg, f.name)
        ]
        if diff:
            raise ValueError(f"cannot resume from {path}: config fields differ: {diff}")
        for layer, tc in self.transcoders.items():
            loaded = Transcoder.load(path / f"layer_{layer}")
            tc.load_tensors({k: v.to(tc.W_enc.device) for k, v in loaded.state_tensors().items()})
        opt_state = self.optimizer.state_dict()
        adam: dict[int, dict[str, Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("adam."):
                _, pid, key = name.split(".", 2)
                adam.setdefault(int(pid), {})[key] = value
        self.optimizer.load_state_dict({"state": adam, "param_groups": opt_state["param_groups"]})
        for layer in self.layers:
            self.since_fired[layer] = tensors[f"since_fired.{layer}"].to(self.since_fired[layer].device)
            self.window[layer] = tensors[f"window.{layer}"].clone()
        self.metrics = {int(k): LayerMetrics(**v) for k, v in state["metrics"].items()}
        self.step, self.tokens_seen = int(state["step"]), int(state["tokens_seen"])
        self.store.load_state_dict(state["store"])

    # ----------------------------------------------------------------- loop
    def run(self) -> TrainResult:
        """Train to ``cfg.total_tokens``; write outputs; return the transcoders and metrics."""
        cfg = self.cfg
        total = cfg.total_steps
        bar = tqdm(
            total=total * cfg.batch_size, initial=self.tokens_seen, unit="tok", unit_scale=True,
            disable=not (self.progress and self.dist.is_main), dynamic_ncols=True,
        )
        signals = DeferredSignals(enabled=self.dist.world_size == 1)
        try:
            with signals:
                for tc in self.transcoders.values():
                    tc.train()
                while self.step < total:
                    self.train_step(next(self.store))
                    bar.update(cfg.batch_size)
                    if self.step % cfg.log_every == 0 or self.step == total:
                        self._close_window()
                        bar.set_postfix_str(self._postfix(), refresh=False)
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < total:
                        self._save()
                    if signals.received is not None and self.step < total:
                        self._interrupted(signals.received)
        except BaseException:
            self._release()
            raise
        finally:
            self.store.close()  # the background fill runs the model: stop it before anyone else does
            bar.close()
        self._close_window()
        if cfg.out_dir is not None:
            self._save()
            if self.dist.is_main:
                self.transcoders.save(Path(cfg.out_dir) / "transcoders")
                metrics = {
                    "steps": self.step,
                    "tokens_seen": self.tokens_seen,
                    "layers": {str(k): dataclasses.asdict(v) for k, v in self.metrics.items()},
                    "config": cfg.to_dict(),
                }
                atomic_write(
                    Path(cfg.out_dir) / "metrics.json",
                    lambda p: Path(p).write_text(json.dumps(metrics, indent=2)),
                )
            barrier(self.dist)
        self._release()
        return TrainResult(self.transcoders, dict(self.metrics), self.step, self.tokens_seen)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _interrupted(self, signum: int) -> None:
        """Write a final checkpoint at this step boundary, then stop with a one-line message."""
        import signal as _signal

        name = _signal.Signals(signum).name
        if self.cfg.out_dir is None:
            raise TrainingInterrupted(f"{name}: training stopped at step {self.step} (no out_dir: nothing saved)")
        self._save()
        raise TrainingInterrupted(
            f"{name}: training stopped at step {self.step}/{self.cfg.total_steps}; checkpoint written to "
            f"{Path(self.cfg.out_dir) / 'checkpoint'} (continue with --resume)"
        )


def train_transcoders(
    model: HookedTransformer,
    token_source_factory: Any,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> TrainResult:
    """Train ``cfg.kind`` transcoders for ``cfg.layers`` of ``model``; see :class:`Trainer`.

    ``token_source_factory``: zero-argument callable returning a fresh iterator of
    ``LongTensor[batch, seq]`` (identical on every call), or a token tensor / list of batches.
    With ``resume=True`` training continues from ``cfg.out_dir``'s last checkpoint (or starts
    fresh when there is none; a damaged checkpoint is an error). A folder holding another
    run is refused unless ``resume`` or ``overwrite`` (which deletes that run's outputs first).
    SIGINT / SIGTERM write a checkpoint and raise :class:`TrainingInterrupted`.
    """
    return Trainer(model, token_source_factory, cfg, resume=resume, progress=progress, overwrite=overwrite).run()
