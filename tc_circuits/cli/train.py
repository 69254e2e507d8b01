"""``tc-circuits train``: train transcoders / skip transcoders / SAEs on a model's activations.

Options mirror :class:`tc_circuits.training.config.TrainConfig` (same defaults). The model
is named like everywhere else (``--model``: the organism, a TransformerLens name or a local
Hugging Face folder; ``--device`` is the config's); tokens come from the organism corpus or
``--dataset``. Budgets that cannot work (warm-up or dead-latent window longer than the run,
...) warn before training starts (``--strict``: an error). The run ends with a held-out
evaluation of what it trained (``OUT_DIR/evaluation.{json,md}``; ``--eval-sequences 0`` skips
it): organism corpus at another seed, or the last rows of ``--dataset``, kept out of training.
Under ``torchrun --nproc_per_node N -m tc_circuits train ...`` training is data-parallel (gloo).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import partial
from typing import Any

from tc_circuits.cli.data import DataOptions
from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from tc_circuits.cli.resolve import ModelOptions
from tc_circuits.training.config import TrainConfig


@dataclass(frozen=True)
class TrainRunOptions:
    """Options of ``tc-circuits train`` beyond the model, data and training config."""

    resume: bool = False
    """Continue from OUT_DIR/checkpoint."""
    progress: bool = True
    """Show the progress bar."""
    eval_sequences: int = 32
    """Held-out sequences for the final evaluation (0 = none)."""
    eval_seed: int = 12345
    """Seed of the organism corpus stream for the final evaluation (must differ from --seed)."""

    def __post_init__(self) -> None:
        if self.eval_sequences < 0:
            raise ValueError(f"--eval-sequences must be >= 0, got {self.eval_sequences}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help=HELP["train"], description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, ModelOptions, exclude=("transcoders", "device"))
    add_dataclass_args(p, DataOptions)
    add_dataclass_args(p, TrainRunOptions)
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=run)


def _token_source(model: Any, model_opts: ModelOptions, data: DataOptions, cfg: TrainConfig, eval_rows: int):
    """``(training token factory, held-out batches or None)``."""
    from tc_circuits.cli.data import dataset_tokens, seq_len_for, split_dataset_tokens

    if model_opts.is_organism and data.dataset is None:
        from tc_circuits.organism import organism_token_source

        factory = partial(organism_token_source, cfg.seed, data.source_batch_rows, seq_len_for(model, data))
        return factory, None
    from tc_circuits.training.data import as_token_factory

    tokens = dataset_tokens(model, data)
    held = None
    if eval_rows:
        tokens, held = split_dataset_tokens(tokens, eval_rows)
        held = [held[i : i + data.source_batch_rows] for i in range(0, held.shape[0], data.source_batch_rows)]
    return as_token_factory(tokens, batch_size=data.source_batch_rows, shuffle_seed=cfg.seed), held


def train(
    cfg: TrainConfig,
    model_opts: ModelOptions = ModelOptions(),
    data: DataOptions = DataOptions(),
    run_opts: TrainRunOptions = TrainRunOptions(),
) -> tuple[Any, Any]:
    """Train as ``tc-circuits train`` does; returns ``(TrainResult, EvaluationReport or None)``."""
    from dataclasses import replace

    from tc_circuits.cli.data import eval_batches
    from tc_circuits.cli.resolve import load_model_from
    from tc_circuits.evaluation.report import evaluate_dictionaries
    from tc_circuits.training.distributed import dist_info
    from tc_circuits.training.trainer import train_transcoders

    if model_opts.is_organism and data.dataset is None and run_opts.eval_sequences and run_opts.eval_seed == cfg.seed:
        raise ValueError(f"--eval-seed {run_opts.eval_seed} equals --seed: the final evaluation must be held out")
    if cfg.strict:
        cfg.check_budget()  # fail before loading anything
    model = load_model_from(replace(model_opts, device=cfg.device))
    source, held = _token_source(model, model_opts, data, cfg, run_opts.eval_sequences)
    result = train_transcoders(model, source, cfg, resume=run_opts.resume, progress=run_opts.progress)
    report = None
    if run_opts.eval_sequences and dist_info().is_main:
        if held is None:
            held = eval_batches(model, data, is_organism=True, seed=run_opts.eval_seed,
                                sequences=run_opts.eval_sequences)
        report = evaluate_dictionaries(model, result.transcoders, held)
        if cfg.out_dir is not None:
            report.info["files"] = {k: str(v) for k, v in report.save(cfg.out_dir).items()}
    return result, report


def run(args: argparse.Namespace) -> int:
    from tc_circuits.training.distributed import dist_info, init_from_env

    cfg = dataclass_from_args(TrainConfig, args)
    if cfg.out_dir is None:
        raise ValueError("--out-dir is required (where checkpoints and transcoders are written)")
    started = init_from_env()
    try:
        result, report = train(cfg, dataclass_from_args(ModelOptions, args), dataclass_from_args(DataOptions, args),
                               dataclass_from_args(TrainRunOptions, args))
        if dist_info().is_main:
            print("training (last metrics window):")
            print("| layer | FVU | L0 | dead | tokens |\n|---|---|---|---|---|")
            for layer, m in sorted(result.metrics.items()):
                print(f"| {layer} | {m.fvu:.4f} | {m.l0:.2f} | {m.dead_fraction:.3f} | {m.tokens_seen} |")
            if report is not None:
                print("\nheld-out evaluation:")
                print(report.to_markdown())
            print(f"transcoders written to {cfg.out_dir}/transcoders")
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
