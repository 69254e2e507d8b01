"""The ``tc-circuits`` command line: a thin layer over the library.

Each subcommand lives in its own module under ``tc_circuits.cli`` and exposes
``register(subparsers)``; its options are generated from the same config dataclasses as the
Python API (:mod:`tc_circuits.cli.dataclass_args`), so the defaults never drift.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ["demo", "organism", "train", "convert", "compare", "view", "attribute"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tc-circuits",
        description="Transcoders, splicing and feature attribution graphs on TransformerLens models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"tc_circuits.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, OSError, FloatingPointError, MemoryError) as err:  # clear one-line errors
        print(f"tc-circuits {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if not type(err).__module__.startswith("tc_circuits."):  # a library's: keep the traceback
            raise
        print(f"tc-circuits {args.command}: error: {err}", file=sys.stderr)  # e.g. AttributionExactnessError
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
