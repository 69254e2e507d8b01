"""``tc-circuits train``: train transcoders / skip transcoders / SAEs on a model's activations.

Options mirror :class:`tc_circuits.training.config.TrainConfig` (same defaults). Under
``torchrun --nproc_per_node N -m tc_circuits train ...`` training is data-parallel (gloo).
"""

from __future__ import annotations

import argparse
from functools import partial

from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from tc_circuits.training.config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train transcoders for several layers at once",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", default="organism",
        help="'organism' (the bundled model and its corpus) or a TransformerLens model name",
    )
    p.add_argument("--dataset", default=None, help="local Hugging Face dataset folder (datasets.load_from_disk) for non-organism models")
    p.add_argument("--text-column", default="text", help="text column of --dataset")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: min(n_ctx, 128))")
    p.add_argument("--source-batch-rows", type=int, default=32, help="rows per token batch fed to the model")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/checkpoint")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_dataclass_args(p, TrainConfig)
    p.set_defaults(func=run)


def _model_and_source(args: argparse.Namespace, cfg: TrainConfig):
    if args.model == "organism":
        from tc_circuits.organism import load_organism, organism_token_source

        model = load_organism()
        seq_len = args.seq_len or min(int(model.cfg.n_ctx), 128)
        return model, partial(organism_token_source, cfg.seed, args.source_batch_rows, seq_len)
    from tc_circuits.models.loading import load_model
    from tc_circuits.training.data import as_token_factory, tokens_from_hf_dataset

    if args.dataset is None:
        raise ValueError("--dataset (a local datasets folder) is required for models other than 'organism'")
    import datasets

    model = load_model(args.model)  # a local HF folder or a Hub name; a TransformerBridge on TL 4
    seq_len = args.seq_len or min(int(model.cfg.n_ctx), 128)
    tokens = tokens_from_hf_dataset(
        datasets.load_from_disk(args.dataset), model, seq_len, text_column=args.text_column
    )
    return model, as_token_factory(tokens, batch_size=args.source_batch_rows, shuffle_seed=cfg.seed)


def run(args: argparse.Namespace) -> int:
    from tc_circuits.training.distributed import dist_info, init_from_env
    from tc_circuits.training.trainer import train_transcoders

    cfg = dataclass_from_args(TrainConfig, args)
    if cfg.out_dir is None:
        raise ValueError("--out-dir is required (where checkpoints and transcoders are written)")
    started = init_from_env()
    try:
        model, source = _model_and_source(args, cfg)
        result = train_transcoders(model, source, cfg, resume=args.resume, progress=not args.no_progress)
        if dist_info().is_main:
            print("| layer | FVU | L0 | dead | tokens |\n|---|---|---|---|---|")
            for layer, m in sorted(result.metrics.items()):
                print(f"| {layer} | {m.fvu:.4f} | {m.l0:.2f} | {m.dead_fraction:.3f} | {m.tokens_seen} |")
            print(f"transcoders written to {cfg.out_dir}/transcoders")
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
