"""The SynthSAEBench reference: SAEs trained by sae-lens's own trainer on our exact samples.

:func:`train_saelens_reference` trains a TopK, BatchTopK, ReLU ("standard") or JumpReLU
``TrainingSAE`` with ``sae_lens.training.sae_trainer.SAETrainer`` -- the trainer behind
``sae_lens.synthetic.train_toy_sae``, with that function's settings -- except that

* the data are the same tensor our run trains on (:class:`TensorBatches`: consecutive
  ``batch_size`` slices; it records the batches it handed out, so a test can check them);
* the learning-rate schedule is ours (warmup, flat, linear decay to 0 over the last
  ``decay_fraction``), expressed in sae-lens's ``lr_warm_up_steps`` / ``lr_decay_steps``;
* JumpReLU thresholds start at the same per-latent quantile of the first batch as ours
  (:func:`~tc_circuits.training.l0_control.quantile_threshold`);
* ReLU / JumpReLU coefficients follow the same
  :class:`~tc_circuits.training.l0_control.L0Controller` as ours (:class:`L0TargetSAETrainer`
  reads the step's L0 from sae-lens's own ``feature_acts``).

Everything else (initialisation, ``decoder_init_norm``, AuxK, gradient clipping at 1, Adam)
is sae-lens's default. Needs the ``bench`` extra (sae-lens).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits.training.l0_control import L0Controller, quantile_threshold

__all__ = ["REFERENCE_ARCHITECTURES", "L0TargetSAETrainer", "TensorBatches", "train_saelens_reference"]

#: Architectures the reference trains; ReLU is sae-lens's "standard" SAE.
REFERENCE_ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu")


class TensorBatches:
    """Consecutive ``batch_size`` slices of ``samples`` (an iterator; raises when they run out)."""

    def __init__(self, samples: Float[Tensor, "n d"], batch_size: int, *, record: bool = False):
        if batch_size < 1 or samples.shape[0] < batch_size:
            raise ValueError(f"batch_size={batch_size} must be in [1, len(samples)={samples.shape[0]}]")
        self.samples, self.batch_size, self.i = samples, batch_size, 0
        self.seen: list[Tensor] | None = [] if record else None

    def __iter__(self) -> TensorBatches:
        return self

    def __next__(self) -> Tensor:
        lo, hi = self.i * self.batch_size, (self.i + 1) * self.batch_size
        if hi > self.samples.shape[0]:
            raise StopIteration(f"only {self.samples.shape[0]} samples ({self.i} batches of {self.batch_size})")
        self.i += 1
        x = self.samples[lo:hi]
        if self.seen is not None:
            self.seen.append(x)
        return x


def _trainer_class():
    from sae_lens.training.sae_trainer import SAETrainer

    class _L0Target(SAETrainer):  # type: ignore[misc, valid-type]
        controller: L0Controller | None = None

        def _train_step(self, sae: Any, sae_in: Tensor) -> Any:
            out = super()._train_step(sae, sae_in)
            if self.controller is not None:
                l0 = float((out.feature_acts > 0).float().sum(-1).mean())
                c = self.controller.update(l0)
                for sched in self.coefficient_schedulers.values():
                    sched.final_value = sched.current_value = c
            return out

    return _L0Target


def L0TargetSAETrainer(*args: Any, controller: L0Controller | None = None, **kwargs: Any) -> Any:
    """sae-lens's ``SAETrainer`` whose (only) sparsity coefficient follows ``controller`` after each step."""
    trainer = _trainer_class()(*args, **kwargs)
    trainer.controller = controller
    if controller is not None:
        if len(trainer.coefficient_schedulers) != 1:
            raise ValueError(f"an L0 target drives one coefficient; this SAE has {list(trainer.coefficient_schedulers)}")
        for sched in trainer.coefficient_schedulers.values():
            sched.final_value = sched.current_value = controller.coefficient
    return trainer


def _sae(architecture: str, d_in: int, d_sae: int, k: int, coefficient: float) -> Any:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    if architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    if architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    if architecture == "relu":
        return StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=coefficient))
    if architecture == "jumprelu":
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l0_coefficient=coefficient))
    raise ValueError(f"architecture must be one of {REFERENCE_ARCHITECTURES}, got {architecture!r}")


def train_saelens_reference(
    architecture: str,
    samples: Float[Tensor, "n d"],
    *,
    n_latents: int,
    k: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    decay_fraction: float,
    dead_tokens_threshold: int,
    controller: L0Controller | None = None,
    progress: bool = True,
    batches: TensorBatches | None = None,
) -> tuple[Any, TensorBatches]:
    """Train one sae-lens SAE on ``samples`` (module docstring); returns ``(sae, the batch iterator)``.

    ``controller`` (ReLU / JumpReLU only) sets and drives the sparsity coefficient; without it
    the SAE keeps sae-lens's default coefficient.
    """
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    if controller is not None and architecture not in ("relu", "jumprelu"):
        raise ValueError(f"controller: an L0 target needs relu or jumprelu, got {architecture!r}")
    steps = samples.shape[0] // batch_size
    coefficient = controller.coefficient if controller is not None else 1.0
    sae = _sae(architecture, samples.shape[1], n_latents, k, coefficient)
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, device="cpu",
        lr=lr, lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=warmup_steps,
        lr_decay_steps=int(steps * decay_fraction), adam_beta1=0.9, adam_beta2=0.999,
        dead_feature_window=max(1, dead_tokens_threshold // batch_size), feature_sampling_window=2000,
        n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
    )
    if architecture == "jumprelu" and controller is not None:  # same threshold start as ours (l0_control)
        with torch.no_grad():
            _, pre = sae.encode_with_hidden_pre(samples[:batch_size])
            sae.threshold.copy_(quantile_threshold(pre, controller.target))
    batches = batches if batches is not None else TensorBatches(samples, batch_size)
    trainer = L0TargetSAETrainer(cfg=cfg, sae=sae, data_provider=batches, save_checkpoint_fn=lambda *_: None,
                                 controller=controller)
    if not progress:
        import functools

        from tqdm import tqdm as _tqdm

        import sae_lens.training.sae_trainer as mod

        orig = mod.tqdm
        mod.tqdm = functools.partial(_tqdm, disable=True)  # type: ignore[assignment]
        try:
            trainer.fit()
        finally:
            mod.tqdm = orig
    else:
        trainer.fit()
    return sae.eval(), batches
