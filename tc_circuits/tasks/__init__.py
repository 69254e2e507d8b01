"""Tasks: prompt sets with a scalar metric on the logits, for splicing and attribution.

A task is anything that satisfies the :class:`Task` protocol:

* ``name`` and ``tokens`` -- a ``LongTensor [n_prompts, seq]`` of equal-length prompts (BOS
  included when the task prepends it); the prediction is read at the last position;
* ``metric(logits) -> float`` -- the task's headline number (mean over prompts);
* ``per_prompt_metric(logits) -> [n_prompts]``;
* ``direction(d_vocab) -> [n_prompts, d_vocab]`` -- a *linear* readout of the final-position
  logits whose dot product with them is the task's logit-difference metric, the target for
  attribution (a gradient of a linear function of the logits is input-independent).

:func:`evaluate_task` runs a task on the original model and, optionally, with transcoders
spliced in (:mod:`tc_circuits.evaluation.splice`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from tc_circuits.evaluation.splice import TranscodersLike


@runtime_checkable
class Task(Protocol):
    """A prompt set with a metric on the logits (see the module docstring)."""

    name: str

    @property
    def tokens(self) -> Int[Tensor, "n_prompts seq"]: ...

    def metric(self, logits: Float[Tensor, "n_prompts seq d_vocab"]) -> float: ...

    def per_prompt_metric(
        self, logits: Float[Tensor, "n_prompts seq d_vocab"]
    ) -> Float[Tensor, " n_prompts"]: ...

    def direction(self, d_vocab: int | None = None) -> Float[Tensor, "n_prompts d_vocab"]: ...


def logit_diff(
    task: Task, logits: Float[Tensor, "n_prompts seq d_vocab"]
) -> Float[Tensor, " n_prompts"]:
    """Per-prompt linear metric: final-position logits dotted with ``task.direction``."""
    direction = task.direction(logits.shape[-1]).to(device=logits.device, dtype=logits.dtype)
    return (logits[:, -1] * direction).sum(-1)


@dataclass(frozen=True)
class TaskEvaluation:
    """A task's metric on the original model and with transcoders spliced in."""

    name: str
    n_prompts: int
    original: float
    """Mean metric on the original model."""
    spliced: float | None
    """Mean metric with the transcoders spliced in (None without transcoders)."""
    error_term: bool
    """Whether the splice added the reconstruction error back."""
    original_logit_diff: float
    spliced_logit_diff: float | None
    per_prompt_original: list[float]
    per_prompt_spliced: list[float] | None

    COLUMNS = ("name", "n_prompts", "error_term", "original", "spliced", "original_logit_diff", "spliced_logit_diff")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def markdown_header(cls) -> str:
        return "| " + " | ".join(cls.COLUMNS) + " |\n|" + "---|" * len(cls.COLUMNS)

    def markdown_row(self) -> str:
        cells = [getattr(self, c) for c in self.COLUMNS]
        return "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in cells) + " |"


@torch.no_grad()
def evaluate_task(
    model: HookedTransformer,
    task: Task,
    transcoders: TranscodersLike | None = None,
    error_term: bool = False,
    *,
    layers: list[int] | None = None,
) -> TaskEvaluation:
    """Run ``task`` on ``model``, and with ``transcoders`` spliced in when given."""
    from tc_circuits.evaluation.evaluate import token_batches
    from tc_circuits.evaluation.splice import splice

    (tokens,) = token_batches(task.tokens, model)
    logits = model(tokens)
    orig = task.per_prompt_metric(logits)
    orig_ld = logit_diff(task, logits)
    spliced = spliced_ld = None
    if transcoders is not None:
        with splice(model, transcoders, error_term=error_term, layers=layers):
            s_logits = model(tokens)
        spliced = task.per_prompt_metric(s_logits)
        spliced_ld = logit_diff(task, s_logits)
    return TaskEvaluation(
        name=task.name,
        n_prompts=int(tokens.shape[0]),
        original=float(orig.mean()),
        spliced=None if spliced is None else float(spliced.mean()),
        error_term=error_term,
        original_logit_diff=float(orig_ld.mean()),
        spliced_logit_diff=None if spliced_ld is None else float(spliced_ld.mean()),
        per_prompt_original=[float(v) for v in orig],
        per_prompt_spliced=None if spliced is None else [float(v) for v in spliced],
    )


__all__ = ["Task", "TaskEvaluation", "evaluate_task", "logit_diff"]
