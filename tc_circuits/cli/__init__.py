"""The ``tc-circuits`` command line: a thin layer over the library.

Each subcommand lives in its own module under ``tc_circuits.cli`` and exposes
``register(subparsers)``; its options are generated from the same config dataclasses as the
Python API (:mod:`tc_circuits.cli.dataclass_args`), so the defaults never drift. The model and
its dictionaries are named the same way everywhere (:mod:`tc_circuits.cli.resolve`).

Only the subcommand being run is imported: ``tc-circuits --help`` lists the commands from
:data:`HELP` without importing torch (it answers in well under a second).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

#: Subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = ["demo", "organism", "train", "evaluate", "convert", "compare", "attribute", "intervene", "view"]

#: One-line help of each subcommand (each module's ``register`` uses the same text).
HELP = {
    "demo": "end-to-end demo on the bundled organism",
    "organism": "train or evaluate the bundled model organism",
    "train": "train transcoders for several layers at once",
    "evaluate": "FVU, L0, dead, ΔCE, KL, CE recovered (+ a task) of any dictionaries",
    "convert": "convert circuit-tracer / sparsify / SAELens / Dunefsky checkpoints",
    "compare": "train an SAE, a transcoder and a skip transcoder and compare FVU, ΔCE, KL, L0, greater-than",
    "attribute": "build an attribution graph for a prompt",
    "intervene": "ablate / steer features of a saved graph; target change frozen and live",
    "view": "write an offline HTML page: graph view + feature dashboards",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser (``only=None``), or one with only subcommand ``only`` fully registered
    (the others listed by name and help, so ``--help`` stays fast)."""
    parser = argparse.ArgumentParser(
        prog="tc-circuits",
        description="Transcoders, splicing and feature attribution graphs on TransformerLens models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        if only is None or name == only:
            importlib.import_module(f"tc_circuits.cli.{name}").register(sub)
        else:
            sub.add_parser(name, help=HELP[name])
    return parser


def _command_of(argv: list[str]) -> str:
    """The subcommand named in ``argv`` ('' when none, e.g. ``--help``)."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in SUBCOMMANDS else ""
    return ""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tc-circuits: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning  # one readable line per warning, no source line
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"tc-circuits {args.command}: error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
