"""One report of how good a set of dictionaries is: ``tc-circuits evaluate`` and its Python twin.

:func:`evaluate_dictionaries` runs, on held-out tokens,

1. :func:`~tc_circuits.evaluation.evaluate.evaluate_reconstruction` (FVU, explained variance,
   L0, dead fraction per layer);
2. :func:`~tc_circuits.evaluation.evaluate.evaluate_splice` (ΔCE, KL and CE recovered, each
   layer alone and all layers spliced at once);
3. optionally a task (``"greater-than"``) with the dictionaries spliced in, with and without
   the error term (:func:`tc_circuits.tasks.evaluate_task`);

and returns an :class:`EvaluationReport` that prints as one table (one row per layer plus an
``all`` row) and saves as JSON and markdown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tc_circuits.evaluation.evaluate import TokensLike, evaluate_reconstruction, evaluate_splice
from tc_circuits.fileio import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

TASKS = ("greater-than",)
COLUMNS = ("layers", "kind", "fvu", "explained_variance", "l0", "dead_fraction", "delta_ce", "kl",
           "ce_recovered_zero", "ce_recovered_mean")  # fmt: skip


@dataclass(frozen=True)
class EvaluationReport:
    """Per-layer and all-layers metrics of one model + dictionaries."""

    rows: list[dict[str, Any]]
    """One dict per layer, then one for all layers spliced (keys: :data:`COLUMNS` and more)."""
    task: dict[str, Any] | None = None
    """Task metric original / spliced / spliced with the error term (None: no task)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Model, dictionaries and token counts."""

    def row(self, layers: str | int) -> dict[str, Any]:
        """The row of ``layers`` (a layer number, or ``"all"``)."""
        for r in self.rows:
            if r["layers"] == str(layers):
                return r
        raise KeyError(f"no row for layers {layers!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "task": self.task, "info": self.info}

    def to_markdown(self) -> str:
        def cell(v: Any) -> str:
            return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in self.rows]
        if self.task is not None:
            t = self.task
            lines += ["", "| task | original | spliced | spliced + error |", "|---|---|---|---|",
                      f"| {t['name']} | {t['original']:.4g} | {t['spliced']:.4g} | {t['spliced_with_error']:.4g} |"]
        return "\n".join(lines)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``evaluation.json`` and ``evaluation.md`` into ``out_dir``; returns their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "evaluation.json", "markdown": out / "evaluation.md"}
        text_json = json.dumps(self.to_dict(), indent=2, default=float)
        text_md = self.to_markdown() + "\n"
        atomic_write(paths["json"], lambda p: Path(p).write_text(text_json))
        atomic_write(paths["markdown"], lambda p: Path(p).write_text(text_md))
        return paths


def task_by_name(name: str, model: HookedTransformer) -> Any:
    """The task ``name`` (one of :data:`TASKS`) built for ``model``'s tokenizer."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")
    if model.tokenizer is None:
        raise ValueError(f"task {name!r} needs a model with a tokenizer")
    from tc_circuits.tasks.greater_than import GreaterThanTask

    return GreaterThanTask.from_tokenizer(model.tokenizer)


def evaluate_dictionaries(
    model: HookedTransformer,
    transcoders: Any,
    tokens: TokensLike,
    *,
    task: str | None = None,
    start_pos: int = 1,
) -> EvaluationReport:
    """Reconstruction, splice and (optionally) task metrics of ``transcoders`` on ``tokens``.

    ``start_pos`` drops the first positions of every sequence from the reconstruction metrics
    (1 skips BOS, whose activations are outliers); ΔCE / KL use every next-token prediction.
    """
    from tc_circuits.tasks import evaluate_task

    batches = [tokens] if not isinstance(tokens, (list, tuple)) and hasattr(tokens, "ndim") else list(tokens)
    recon = evaluate_reconstruction(model, transcoders, batches, start_pos=start_pos)
    splice = evaluate_splice(model, transcoders, batches)
    rows = []
    for layer, r in sorted(recon.items()):
        s = splice.get(layer)
        rows.append({
            "layers": str(layer), "kind": r.kind, "fvu": r.fvu, "explained_variance": r.explained_variance,
            "mse": r.mse, "l0": r.l0, "dead_fraction": r.dead_fraction, "n_latents": r.n_latents,
            "delta_ce": s.delta_ce, "kl": s.kl, "ce_recovered_zero": s.recovered_zero,
            "ce_recovered_mean": s.recovered_mean, "ce_orig": s.ce_orig, "ce_spliced": s.ce_spliced,
        })
    layers = tuple(sorted(recon))
    if len(layers) > 1:
        s = splice.get(layers)
        kinds = sorted({r.kind for r in recon.values()})
        rows.append({
            "layers": "all", "kind": ",".join(kinds), "fvu": None, "explained_variance": None,
            "mse": None, "l0": sum(r.l0 for r in recon.values()), "dead_fraction": None,
            "n_latents": sum(r.n_latents for r in recon.values()),
            "delta_ce": s.delta_ce, "kl": s.kl, "ce_recovered_zero": s.recovered_zero,
            "ce_recovered_mean": s.recovered_mean, "ce_orig": s.ce_orig, "ce_spliced": s.ce_spliced,
        })
    task_row = None
    if task is not None:
        t = task_by_name(task, model)
        plain, with_err = evaluate_task(model, t, transcoders), evaluate_task(model, t, transcoders, error_term=True)
        task_row = {"name": task, "n_prompts": plain.n_prompts, "original": plain.original,
                    "spliced": plain.spliced, "spliced_with_error": with_err.spliced}
    info = {
        "model": str(model.cfg.model_name),
        "layers": list(layers),
        "n_tokens_reconstruction": next(iter(recon.values())).n_tokens,
        "n_tokens_splice": splice.rows[0].n_tokens,
    }
    return EvaluationReport(rows, task_row, info)


__all__ = ["COLUMNS", "TASKS", "EvaluationReport", "evaluate_dictionaries", "task_by_name"]
