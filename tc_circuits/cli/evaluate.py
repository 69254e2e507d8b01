"""``tc-circuits evaluate``: how good are these dictionaries on this model?

FVU, explained variance, L0 and dead fraction per layer; ΔCE, KL and CE recovered (vs zero-
and mean-ablation) with each layer spliced alone and all layers at once; optionally a task
metric (``--task greater-than``) original / spliced / spliced + error term. Prints the table
and writes ``OUT_DIR/evaluation.json`` and ``OUT_DIR/evaluation.md``
(:func:`tc_circuits.evaluation.report.evaluate_dictionaries`).

Held-out tokens: the organism corpus at ``--seed`` (organism), or the last ``--sequences``
rows of ``--dataset``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Literal

from tc_circuits.cli.data import DataOptions
from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from tc_circuits.cli.resolve import ModelOptions


@dataclass(frozen=True)
class EvaluateOptions:
    """Options of ``tc-circuits evaluate`` beyond the model and the token source."""

    out_dir: str = "eval_out"
    """Folder for evaluation.json and evaluation.md."""
    sequences: int = 64
    """Held-out sequences to evaluate on."""
    seed: int = 12345
    """Seed of the organism corpus stream (held out from the shipped dictionaries' training stream)."""
    task: Literal["greater-than"] | None = None
    """Also report this task's metric with the dictionaries spliced in."""
    progress: bool = True
    """Print the phases as they run (on stderr)."""

    def __post_init__(self) -> None:
        if self.sequences < 1:
            raise ValueError(f"--sequences must be >= 1, got {self.sequences}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help=HELP["evaluate"],
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, ModelOptions)
    add_dataclass_args(p, DataOptions)
    add_dataclass_args(p, EvaluateOptions)
    p.set_defaults(func=run)


def evaluate(
    opts: EvaluateOptions = EvaluateOptions(),
    model_opts: ModelOptions = ModelOptions(),
    data: DataOptions = DataOptions(),
    *,
    loaded: Any = None,
) -> Any:
    """Load (unless ``loaded``), evaluate and save as ``tc-circuits evaluate`` does; returns the report."""
    from tc_circuits.cli.data import eval_batches
    from tc_circuits.cli.resolve import resolve
    from tc_circuits.evaluation.report import evaluate_dictionaries

    def say(msg: str) -> None:
        if opts.progress:
            print(msg, file=sys.stderr, flush=True)

    say("== load model and dictionaries")
    model, tcs, sources = loaded or resolve(model_opts)
    say("== held-out tokens")
    batches = eval_batches(model, data, is_organism=model_opts.is_organism, seed=opts.seed, sequences=opts.sequences)
    say(f"== evaluate ({sum(b.shape[0] for b in batches)} sequences x {batches[0].shape[1]} tokens)")
    report = evaluate_dictionaries(model, tcs, batches, task=opts.task)
    report.info["sources"] = sources
    report.info["files"] = {k: str(v) for k, v in report.save(opts.out_dir).items()}
    return report


def run(args: argparse.Namespace) -> int:
    report = evaluate(
        dataclass_from_args(EvaluateOptions, args), dataclass_from_args(ModelOptions, args),
        dataclass_from_args(DataOptions, args),
    )
    print(report.to_markdown())
    for name, path in report.info["files"].items():
        print(f"{name}: {path}")
    return 0
