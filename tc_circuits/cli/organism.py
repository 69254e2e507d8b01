"""``tc-circuits organism``: train or evaluate the bundled model organism."""

from __future__ import annotations

import argparse
import json

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("organism", help=HELP["organism"])
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    from tc_circuits.organism.train import OrganismTrainConfig

    train = actions.add_parser("train", help="train the organism and its transcoders (reproducible)")
    add_dataclass_args(train, OrganismTrainConfig)
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="show progress bars (default: True)")
    train.set_defaults(func=_train)

    info = actions.add_parser("eval", help="print the shipped organism's greater-than score")
    info.set_defaults(func=_eval)


def _train(args: argparse.Namespace) -> int:
    from tc_circuits.organism.train import OrganismTrainConfig, train_organism

    cfg = dataclass_from_args(OrganismTrainConfig, args)
    report = train_organism(cfg, progress=args.progress)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2, default=float))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from tc_circuits.organism import load_organism
    from tc_circuits.organism.train import greater_than_score

    model = load_organism()
    print(f"greater-than probability difference: {greater_than_score(model):.4f}")
    return 0
