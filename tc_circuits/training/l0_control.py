"""Train a ReLU or JumpReLU coder to a target L0 by adapting its sparsity coefficient.

ReLU (L1) and JumpReLU (L0 penalty) coders have no direct L0 knob: the L0 they reach depends
on the coefficient, the data and the learning rate. To compare them with TopK at the same
L0 (SynthSAEBench scores every SAE at one L0), :class:`L0Controller` adapts the coefficient
during training:

1. **measure** -- after each optimiser step, the step's L0 (mean active latents per token) is
   folded into an exponential running estimate ``l0_hat`` (``ema`` per step);
2. **update** (proportional-integral, in log space) -- an integral part is multiplied by
   ``(l0_hat / target) ** gain`` (clipped to ``max_factor`` per step): above the target the
   penalty grows, below it shrinks, and it stops moving when ``l0_hat == target``; being
   geometric, it reaches a coefficient orders of magnitude away from the start in a few
   hundred steps. The coefficient used is that times ``(l0_hat / target) ** proportional``
   (clipped to [1/2, 2]), an immediate push that does not accumulate: the L0 answers a
   coefficient change only after some optimiser steps, and an integral part alone then
   overshoots (it kills ReLU latents, which do not come back) and oscillates.

:class:`L0TargetTrainer` is :class:`~tc_circuits.training.trainer.Trainer` with that loop
around each step (the trainer's config is frozen; each step gets a copy with the new
coefficient, and the run's final coefficient is in ``trainer.cfg``).

JumpReLU's L0 penalty moves only the thresholds (its pseudo-gradient reaches ``theta`` and not
the pre-activations), by about ``lr`` per Adam step, so from a small initial threshold a short
run cannot lower the L0 far whatever the coefficient. :func:`quantile_threshold` therefore
starts each latent's threshold at the ``1 - target / n_latents`` quantile of its
pre-activations on the first batch (the initial L0 is then the target); the controller keeps
it there as the encoder trains.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from tc_circuits.training.trainer import Trainer

__all__ = ["COEFFICIENT_FIELD", "L0Controller", "L0TargetTrainer", "quantile_threshold"]

#: The TrainConfig field the controller drives, per activation.
COEFFICIENT_FIELD = {"relu": "l1_coefficient", "jumprelu": "jumprelu_sparsity_coefficient"}


def quantile_threshold(pre: Float[Tensor, "batch n_latents"], target_l0: float,
                       min_threshold: float = 1e-6) -> Float[Tensor, " n_latents"]:
    """Per-latent thresholds at which each latent fires on ``target_l0 / n_latents`` of the rows
    of ``pre`` (so the mean L0 over ``pre`` is about ``target_l0``); at least ``min_threshold``."""
    n = pre.shape[1]
    if not 0 < target_l0 < n:
        raise ValueError(f"target_l0={target_l0} must be in (0, n_latents={n})")
    return torch.quantile(pre.detach().float(), 1.0 - target_l0 / n, dim=0).clamp_min(min_threshold)


class L0Controller:
    """Multiplicative controller of a sparsity coefficient towards a target L0 (module docstring)."""

    def __init__(self, target: float, coefficient: float, *, gain: float = 0.1, proportional: float = 0.5,
                 ema: float = 0.5, max_factor: float = 1.02, min_coefficient: float = 1e-8,
                 max_coefficient: float = 1e4):
        for name, value in (("target", target), ("coefficient", coefficient), ("gain", gain),
                            ("max_factor", max_factor), ("min_coefficient", min_coefficient)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value} must be a finite positive number")
        if not (proportional >= 0 and math.isfinite(proportional)):
            raise ValueError(f"proportional={proportional} must be a finite number >= 0")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema={ema} must be in [0, 1)")
        if max_factor <= 1.0:
            raise ValueError(f"max_factor={max_factor} must be > 1")
        if not min_coefficient <= coefficient <= max_coefficient:
            raise ValueError(f"coefficient={coefficient} must be in [min_coefficient={min_coefficient}, "
                             f"max_coefficient={max_coefficient}]")
        self.target, self.gain, self.proportional, self.ema = float(target), gain, proportional, ema
        self.max_factor, self.min_coefficient, self.max_coefficient = max_factor, min_coefficient, max_coefficient
        self.integral = float(coefficient)
        """The accumulated (integral) part of the coefficient."""
        self.coefficient = float(coefficient)
        """The coefficient to use next: ``integral * clip((l0_hat / target) ** proportional)``."""
        self.l0_hat: float | None = None
        self.history: list[tuple[float, float]] = []
        """``(measured step L0, coefficient after the update)`` per step."""

    def update(self, l0: float) -> float:
        """Fold one step's measured L0 in and return the new coefficient."""
        if not (l0 >= 0 and math.isfinite(l0)):
            raise ValueError(f"l0={l0} must be a finite number >= 0")
        self.l0_hat = l0 if self.l0_hat is None else self.ema * self.l0_hat + (1 - self.ema) * l0
        ratio = max(self.l0_hat, 1e-3 * self.target) / self.target
        step = min(max(ratio**self.gain, 1 / self.max_factor), self.max_factor)
        self.integral = min(max(self.integral * step, self.min_coefficient), self.max_coefficient)
        push = min(max(ratio**self.proportional, 0.5), 2.0)
        self.coefficient = min(max(self.integral * push, self.min_coefficient), self.max_coefficient)
        self.history.append((float(l0), self.coefficient))
        return self.coefficient


class L0TargetTrainer(Trainer):
    """A :class:`Trainer` of one ReLU / JumpReLU layer whose sparsity coefficient follows ``controller``.

    The step's L0 is read from the trainer's own metrics window (the L0 sum and token count the
    step added), so it is the L0 the loss saw, before the optimiser update.
    """

    def __init__(self, *args: Any, controller: L0Controller, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.cfg.activation not in COEFFICIENT_FIELD:
            raise ValueError(f"activation={self.cfg.activation!r}: an L0 target needs relu or jumprelu "
                             "(TopK sets its L0 with k)")
        if len(self.layers) != 1:
            raise ValueError(f"an L0 target drives one layer's coefficient; got layers={self.layers}")
        self.controller = controller
        self.field = COEFFICIENT_FIELD[self.cfg.activation]
        self.cfg = dataclasses.replace(self.cfg, **{self.field: controller.coefficient})
        if self.cfg.activation == "jumprelu" and not kwargs.get("resume", False):
            tc = self.transcoders[self.layers[0]]
            x = self.store.buffer_outputs()[self.layers[0]]
            with torch.no_grad():
                tc.log_threshold.copy_(quantile_threshold(tc(x).pre_acts, controller.target).log())

    def train_step(self, batch: dict[Any, Any]) -> None:
        window = self.window[self.layers[0]]
        l0_sum, tokens = float(window[2]), float(window[3])
        super().train_step(batch)
        step_l0 = (float(window[2]) - l0_sum) / (float(window[3]) - tokens)
        self.cfg = dataclasses.replace(self.cfg, **{self.field: self.controller.update(step_l0)})
