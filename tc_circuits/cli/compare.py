"""``tc-circuits compare``: SAE vs transcoder vs skip transcoder on the bundled organism.

Options are generated from :class:`tc_circuits.evaluation.compare.CompareConfig`, so they default to the
API's values. Writes ``compare.md``, ``compare.json`` and ``compare.html`` into ``--out-dir``
and prints the markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args


def register(sub: argparse._SubParsersAction) -> None:
    from tc_circuits.evaluation.compare import CompareConfig

    parser = sub.add_parser(
        "compare",
        help="train an SAE, a transcoder and a skip transcoder and compare FVU, ΔCE, KL, L0, greater-than",
    )
    add_dataclass_args(parser, CompareConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tc_circuits.evaluation.compare import CompareConfig, run_compare

    cfg = dataclass_from_args(CompareConfig, args)
    from tc_circuits.viz.compare_report import write_outputs

    from tc_circuits.circuits.faithfulness import compare_faithfulness

    result = run_compare(cfg, graph_metrics=compare_faithfulness)
    write_outputs(result, Path(cfg.out_dir))
    print(result.to_markdown())
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0
