"""``tc-circuits train``: train transcoders / skip transcoders / SAEs on a model's activations.

Options mirror :class:`tc_circuits.training.config.TrainConfig` (same defaults). The model
is named like everywhere else (``--model``: the organism, a TransformerLens name or a local
Hugging Face folder; ``--device`` is the config's); tokens come from the organism corpus or
``--dataset``. Budgets that cannot work (warm-up or dead-latent window longer than the run,
...) warn before training starts (``--strict``: an error). The run ends with a held-out
evaluation of what it trained (``OUT_DIR/evaluation.{json,md}``; ``--eval-sequences 0`` skips
it): organism corpus at another seed, or the last rows of ``--dataset``, kept out of training.
Under ``torchrun --nproc_per_node N -m tc_circuits train ...`` training is data-parallel (gloo).
``--cross-layer`` trains one cross-layer transcoder over every layer instead (``--n-latents``
and ``--k`` per layer; written to ``OUT_DIR/clt``, which ``--transcoders`` then names); it has
no resume or data parallel yet.
"""

from __future__ import annotations

import argparse
import sys
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
    overwrite: bool = False
    """Replace the run already in OUT_DIR (deletes its checkpoint, transcoders and metrics first)."""
    progress: bool = True
    """Show the progress bar."""
    eval_sequences: int = 32
    """Held-out sequences for the final evaluation (0 = none)."""
    eval_seed: int = 12345
    """Seed of the organism corpus stream for the final evaluation (must differ from --seed)."""
    cross_layer: bool = False
    """Train one cross-layer transcoder over every layer (writes OUT_DIR/clt; no --resume, no torchrun)."""

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
    if cfg.out_dir is not None:
        from tc_circuits.validate import check_writable

        check_writable(cfg.out_dir, what="training out folder")  # before loading anything
    if run_opts.cross_layer:
        _check_cross_layer(cfg, run_opts)
    model = load_model_from(replace(model_opts, device=cfg.device))
    source, held = _token_source(model, model_opts, data, cfg, run_opts.eval_sequences)
    if run_opts.cross_layer:
        from tc_circuits.evaluation.splice import as_transcoder_dict
        from tc_circuits.training.clt_trainer import train_clt

        result = train_clt(model, source, cfg, progress=run_opts.progress, overwrite=run_opts.overwrite)
        dictionaries = as_transcoder_dict(result.clt)
    else:
        result = train_transcoders(model, source, cfg, resume=run_opts.resume, progress=run_opts.progress,
                                   overwrite=run_opts.overwrite)
        dictionaries = result.transcoders
    report = None
    if run_opts.eval_sequences and dist_info().is_main:
        if held is None:
            held = eval_batches(model, data, is_organism=True, seed=run_opts.eval_seed,
                                sequences=run_opts.eval_sequences)
        report = evaluate_dictionaries(model, dictionaries, held)
        if cfg.out_dir is not None:
            report.info["files"] = {k: str(v) for k, v in report.save(cfg.out_dir).items()}
    return result, report


def _check_cross_layer(cfg: TrainConfig, run_opts: TrainRunOptions) -> None:
    """What ``--cross-layer`` cannot do yet, refused before anything is loaded."""
    from tc_circuits.training.distributed import dist_info

    if run_opts.resume:
        raise ValueError("--cross-layer has no checkpoints to --resume from yet; start a new run")
    if dist_info().world_size > 1:
        raise ValueError("--cross-layer does not train data-parallel yet; run it without torchrun")
    if cfg.kind == "sae":
        raise ValueError("--cross-layer reads each MLP's input and writes every later MLP output: --kind sae is not one")
    if cfg.layers:
        raise ValueError(f"--cross-layer spans every layer; drop --layers {' '.join(map(str, cfg.layers))}")


def run(args: argparse.Namespace) -> int:
    from tc_circuits.training.distributed import dist_info, init_from_env
    from tc_circuits.training.guard import TrainingInterrupted

    cfg = dataclass_from_args(TrainConfig, args)
    if cfg.out_dir is None:
        raise ValueError("--out-dir is required (where checkpoints and transcoders are written)")
    started = init_from_env()
    try:
        run_opts = dataclass_from_args(TrainRunOptions, args)
        try:
            result, report = train(cfg, dataclass_from_args(ModelOptions, args), dataclass_from_args(DataOptions, args),
                                   run_opts)
        except TrainingInterrupted as stop:  # Ctrl-C / SIGTERM: a final checkpoint was written
            print(f"tc-circuits train: {stop}", file=sys.stderr)
            return 130
        if dist_info().is_main:
            print("training (last metrics window):")
            print("| layer | FVU | L0 | dead | tokens |\n|---|---|---|---|---|")
            for layer, m in sorted(result.metrics.items()):
                print(f"| {layer} | {m.fvu:.4f} | {m.l0:.2f} | {m.dead_fraction:.3f} | {m.tokens_seen} |")
            if report is not None:
                print("\nheld-out evaluation:")
                print(report.to_markdown())
            if run_opts.cross_layer:
                print(f"cross-layer transcoder written to {cfg.out_dir}/clt")
            else:
                print(f"transcoders written to {cfg.out_dir}/transcoders")
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
