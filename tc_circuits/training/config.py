"""``TrainConfig``: every knob of transcoder training, in one frozen dataclass.

The CLI (``tc-circuits train``) is generated from it, so its defaults are the API's.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

KINDS = ("transcoder", "skip_transcoder", "sae")


def default_lr(n_latents: int) -> float:
    """sparsify's scaling rule: ``2e-4 / sqrt(n_latents / 2**14)``."""
    return 2e-4 / math.sqrt(n_latents / 2**14)


@dataclass(frozen=True)
class TrainConfig:
    """Configuration of :func:`tc_circuits.training.trainer.train_transcoders` (never mutated)."""

    layers: tuple[int, ...] = ()
    """Layers to train one transcoder each for, all from one forward pass (empty = every layer)."""
    kind: Literal["transcoder", "skip_transcoder", "sae"] = "skip_transcoder"
    """``transcoder`` (ln2.hook_normalized -> hook_mlp_out), ``skip_transcoder`` (the same plus an affine skip) or ``sae`` (on hook_mlp_out)."""
    n_latents: int = 1024
    """Latents per transcoder (dictionary size)."""
    activation: Literal["topk", "relu", "jumprelu"] = "topk"
    """Sparse activation: ``topk`` (+ AuxK), ``relu`` (+ L1) or ``jumprelu`` (+ L0)."""
    k: int = 16
    """Active latents per token for TopK."""
    lr: float | None = None
    """Adam learning rate; None = sparsify's ``2e-4 / sqrt(n_latents / 2**14)``."""
    warmup_steps: int = 50
    """Linear learning-rate warmup from 0, in optimiser steps."""
    decay_fraction: float = 0.2
    """Fraction of the run, at the end, over which the learning rate decays linearly to 0."""
    batch_size: int = 4096
    """Tokens per optimiser step (the global batch, split over data-parallel ranks)."""
    total_tokens: int = 2_000_000
    """Training tokens; the run has ``total_tokens // batch_size`` steps."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss on dead latents (TopK only; 0 disables)."""
    dead_tokens_threshold: int = 200_000
    """A latent is dead when it has not fired in this many training tokens."""
    l1_coefficient: float = 0.01
    """ReLU only: weight of the decoder-norm-weighted L1 penalty (divided by the RMS output norm)."""
    jumprelu_sparsity_coefficient: float = 1e-3
    """JumpReLU only: weight of the L0 penalty (mean active latents per token)."""
    grad_clip: float | None = 1.0
    """Clip each transcoder's gradient norm to this value (None = no clipping)."""
    normalize_decoder: bool = False
    """After each step rescale every non-zero decoder row to unit norm (off: W_dec starts at zero)."""
    seed: int = 0
    """Seeds encoder initialisation and buffer shuffling (explicit generators; global RNG untouched)."""
    buffer_tokens: int = 32_768
    """Tokens per activation-buffer fill (shuffled together; at least batch_size)."""
    prefetch: bool = False
    """Compute the next activation-buffer fill in a background thread while this one trains
    (identical batches; twice the buffer memory). Helps when a core is idle during the step
    (e.g. a GPU step); on a 2-core CPU it measured 0.83x (``bench/results/prefetch.md``)."""
    exclude_bos: bool = True
    """Leave the BOS position (sequence position 0) out of training."""
    checkpoint_every: int = 100
    """Write out_dir/checkpoint every this many steps (0 = only at the end)."""
    log_every: int = 10
    """Steps per metrics window (progress-bar refresh)."""
    out_dir: str | None = None
    """Output folder (checkpoint/, transcoders/, metrics.json); None writes nothing."""
    device: str | None = None
    """Device for the buffer and transcoders (None = the model's device)."""
    strict: bool = False
    """Budgets that cannot work (see :meth:`budget_problems`) are errors instead of warnings."""

    def __post_init__(self) -> None:
        if not isinstance(self.layers, tuple):
            raise ValueError(f"layers must be a tuple of ints, got {self.layers!r}")
        for layer in self.layers:
            if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
                raise ValueError(f"layers must be non-negative ints, got layer {layer!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers contains duplicates: {self.layers!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {KINDS}")
        if self.activation not in ("topk", "relu", "jumprelu"):
            raise ValueError(f"activation={self.activation!r} is not one of topk, relu, jumprelu")
        self._positive("n_latents", "batch_size", "total_tokens", "buffer_tokens", "log_every")
        self._positive("dead_tokens_threshold")
        if self.activation == "topk" and not 1 <= self.k <= self.n_latents:
            raise ValueError(f"k={self.k} must be in [1, n_latents={self.n_latents}]")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr} must be a finite positive number (or None for the default)")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction={self.decay_fraction} must be in [0, 1]")
        if self.total_tokens < self.batch_size:
            raise ValueError(f"total_tokens={self.total_tokens} is less than batch_size={self.batch_size}")
        if self.buffer_tokens < self.batch_size:
            raise ValueError(f"buffer_tokens={self.buffer_tokens} is less than batch_size={self.batch_size}")
        for name in ("auxk_alpha", "l1_coefficient", "jumprelu_sparsity_coefficient"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value} must be a finite number >= 0")
        if self.grad_clip is not None and not (self.grad_clip > 0 and math.isfinite(self.grad_clip)):
            raise ValueError(f"grad_clip={self.grad_clip} must be a finite positive number (or None)")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every={self.checkpoint_every} must be >= 0")

    def _positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive int")

    @property
    def total_steps(self) -> int:
        """Optimiser steps in the run."""
        return self.total_tokens // self.batch_size

    @property
    def base_lr(self) -> float:
        """The learning rate after warmup (``lr`` or the sparsify default)."""
        return self.lr if self.lr is not None else default_lr(self.n_latents)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): warmup, flat, linear decay to 0."""
        total = self.total_steps
        factor = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay_steps = int(total * self.decay_fraction)
        if decay_steps and step >= total - decay_steps:
            factor *= (total - step) / decay_steps
        return self.base_lr * factor

    def budget_problems(self) -> list[str]:
        """Why this run's budget cannot work as configured (empty when it can).

        * the LR warm-up is as long as the run or longer (the rate never reaches ``lr``);
        * the dead-latent window (``dead_tokens_threshold``) is longer than the run (no latent
          is ever counted dead: AuxK never acts and the dead fraction reads 0);
        * warm-up and final decay overlap (fewer steps than the schedule assumes), or the
          decay rounds to zero steps;
        * the metrics window (``log_every``) is longer than the run;
        * one buffer fill (``buffer_tokens``) is more than the whole run.
        """
        steps, out = self.total_steps, []
        if self.warmup_steps >= steps:
            out.append(f"the warm-up ({self.warmup_steps} steps) is not shorter than the run ({steps} steps = "
                       f"total_tokens {self.total_tokens} // batch_size {self.batch_size}): the learning rate "
                       f"never reaches {self.base_lr:.3g}; lower --warmup-steps or raise --total-tokens")
        if self.dead_tokens_threshold > self.total_tokens:
            out.append(f"the dead-latent window ({self.dead_tokens_threshold} tokens) is longer than the run "
                       f"({self.total_tokens} tokens): no latent is ever counted dead, so AuxK never revives "
                       f"any and the dead fraction reads 0; lower --dead-tokens-threshold")
        decay = int(steps * self.decay_fraction)
        if self.decay_fraction > 0 and decay == 0:
            out.append(f"decay_fraction={self.decay_fraction} of {steps} steps rounds to no decay steps; the "
                       f"schedule assumes at least {math.ceil(1 / self.decay_fraction)} steps")
        elif self.warmup_steps < steps and self.warmup_steps + decay > steps:
            out.append(f"the warm-up ({self.warmup_steps} steps) and the final decay ({decay} steps) overlap in a "
                       f"run of {steps} steps: fewer steps than the schedule assumes "
                       f"({self.warmup_steps + decay})")
        if self.log_every > steps:
            out.append(f"log_every={self.log_every} is longer than the run ({steps} steps): no metrics window "
                       f"closes before the end")
        if self.buffer_tokens > self.total_tokens:
            out.append(f"one buffer fill ({self.buffer_tokens} tokens) is more than the run ({self.total_tokens} "
                       f"tokens): most buffered activations are never trained on; lower --buffer-tokens")
        return out

    def check_budget(self) -> list[str]:
        """Warn (``UserWarning``) about each of :meth:`budget_problems`, or raise ``ValueError`` if ``strict``."""
        problems = self.budget_problems()
        if problems and self.strict:
            raise ValueError("training budget cannot work (strict): " + "; ".join(problems))
        for msg in problems:
            warnings.warn(f"training budget: {msg}", UserWarning, stacklevel=3)
        return problems

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown train config keys: {sorted(unknown)}")
        data = dict(data)
        if "layers" in data:
            data["layers"] = tuple(data["layers"])
        return cls(**data)
