"""``tc-circuits demo``: the end-to-end demo (the bundled organism by default; ``--model`` / ``--transcoders`` for others)."""

from __future__ import annotations

import argparse

from tc_circuits.cli import HELP
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from tc_circuits.cli.resolve import ModelOptions
from tc_circuits.demo import DemoConfig


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help=HELP["demo"])
    add_dataclass_args(parser, ModelOptions)
    add_dataclass_args(parser, DemoConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from tc_circuits.demo import run_demo

    run_demo(dataclass_from_args(DemoConfig, args), dataclass_from_args(ModelOptions, args))
    return 0
