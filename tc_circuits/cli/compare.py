"""``tc-circuits compare``: SAE vs transcoder vs skip transcoder on one model.

Options are generated from :class:`tc_circuits.evaluation.compare.CompareConfig`, so they
default to the API's values. ``--model`` is the bundled organism (its corpus, held-out seed
and the greater-than task) or any model :mod:`tc_circuits.cli.resolve` loads (a
TransformerLens name or a local Hugging Face folder), trained on ``--dataset`` with its last
rows held out (greater-than only when the tokenizer supports it). Writes ``compare.md``,
``compare.json`` and ``compare.html`` into ``--out-dir`` and prints the markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_config_args, dataclass_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("compare", help=HELP["compare"], description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, "tc_circuits.evaluation.compare:CompareConfig")
    parser.add_argument("--dataset", default=None,
                        help="local Hugging Face dataset folder for models other than the organism (default: None)")
    parser.add_argument("--text-column", default="text", help="text column of --dataset (default: 'text')")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tc_circuits.evaluation.compare import CompareConfig, run_compare

    cfg = dataclass_from_args(CompareConfig, args)
    from tc_circuits.viz.compare_report import write_outputs

    from tc_circuits.circuits.faithfulness import compare_faithfulness

    if cfg.model in (None, "organism"):
        result = run_compare(cfg, graph_metrics=compare_faithfulness)
    else:
        from tc_circuits.cli.data import DataOptions, dataset_tokens, split_dataset_tokens
        from tc_circuits.cli.resolve import ModelOptions, load_model_from
        from tc_circuits.training.data import as_token_factory

        model = load_model_from(ModelOptions(model=cfg.model, device=cfg.device))
        data = DataOptions(dataset=args.dataset, text_column=args.text_column, seq_len=cfg.seq_len,
                           source_batch_rows=cfg.rows_per_batch)
        rows = max(1, cfg.eval_tokens // cfg.seq_len)
        train_rows, held = split_dataset_tokens(dataset_tokens(model, data), rows)
        task = None
        try:
            from tc_circuits.tasks.greater_than import GreaterThanTask

            task = GreaterThanTask.from_tokenizer(model.tokenizer)
        except (ValueError, KeyError, TypeError, AttributeError):
            task = None  # the tokenizer cannot express the task's prompts
        result = run_compare(
            cfg, model=model, token_factory=as_token_factory(train_rows, batch_size=cfg.rows_per_batch,
                                                             shuffle_seed=cfg.seed),
            eval_tokens=[held[i : i + cfg.rows_per_batch] for i in range(0, held.shape[0], cfg.rows_per_batch)],
            task=task,
            graph_metrics=compare_faithfulness,
        )
    write_outputs(result, Path(cfg.out_dir))
    print(result.to_markdown())
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0
