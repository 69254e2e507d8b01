"""CLI options generated from config dataclasses, and the top-level ``tc-circuits`` parser."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

import tc_circuits.cli as cli
from tc_circuits.cli.dataclass_args import add_dataclass_args, dataclass_from_args, field_docs


@dataclass(frozen=True)
class SampleConfig:
    """A config for the tests."""

    name: str
    """Run name (required)."""
    steps: int = 10
    """Optimiser steps
    (docstring over two lines)."""
    lr: float = 1e-3
    """Learning rate."""
    shuffle: bool = True
    """Shuffle the data."""
    limit: int | None = None
    """Optional cap on the examples."""
    layers: tuple[int, ...] = (0, 1)
    """Layers to train."""
    mode: Literal["fast", "slow"] = "fast"
    """Speed mode."""
    meta: dict = field(default_factory=dict)
    """API-only mapping."""

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sample")
    add_dataclass_args(parser, SampleConfig)
    return parser


def _build(argv: list[str]) -> SampleConfig:
    return dataclass_from_args(SampleConfig, _parser().parse_args(argv))


def test_field_docs() -> None:
    docs = field_docs(SampleConfig)
    assert docs["steps"] == "Optimiser steps (docstring over two lines)."
    assert docs["name"] == "Run name (required)."
    assert set(docs) == {"name", "steps", "lr", "shuffle", "limit", "layers", "mode", "meta"}


def test_help_text_has_docstrings_and_defaults() -> None:
    text = " ".join(_parser().format_help().split())
    assert "--steps STEPS Optimiser steps (docstring over two lines). (default: 10)" in text
    assert "Learning rate. (default: 0.001)" in text
    assert "--shuffle, --no-shuffle" in text
    assert "--layers LAYERS [LAYERS ...]" in text
    assert "{fast,slow}" in text
    assert "--meta" not in text  # dicts are API-only


def test_defaults_come_from_the_dataclass() -> None:
    args = _parser().parse_args(["--name", "r"])
    assert vars(args) == {"name": "r"}  # only the given option is on the namespace
    assert dataclass_from_args(SampleConfig, args) == SampleConfig(name="r")


def test_every_kind_of_option() -> None:
    cfg = _build(
        ["--name", "r", "--steps", "5", "--lr", "0.5", "--no-shuffle", "--limit", "7",
         "--layers", "2", "3", "4", "--mode", "slow"]
    )
    assert cfg == SampleConfig(name="r", steps=5, lr=0.5, shuffle=False, limit=7, layers=(2, 3, 4), mode="slow")
    assert isinstance(cfg.layers, tuple)
    assert _build(["--name", "r", "--shuffle"]).shuffle is True
    assert _build(["--name", "r", "--limit", "none"]).limit is None
    assert _build(["--name", "r", "--limit", "None"]).limit is None
    assert dataclass_from_args(SampleConfig, _parser().parse_args(["--name", "r"]), steps=3).steps == 3


@pytest.mark.parametrize(
    "argv",
    [[], ["--name", "r", "--steps", "x"], ["--name", "r", "--mode", "medium"], ["--name", "r", "--layers"],
     ["--name", "r", "--lr", "none"]],
)
def test_bad_options_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as err:
        _parser().parse_args(argv)
    assert err.value.code == 2


def test_validation_errors_come_from_the_dataclass() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        _build(["--name", "r", "--steps", "0"])


def test_build_parser_lists_every_subcommand(capsys) -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == cli.SUBCOMMANDS
    with pytest.raises(SystemExit) as err:
        cli.main(["--help"])
    assert err.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tc-circuits")
    for name in cli.SUBCOMMANDS:
        assert name in out
    # Each subcommand's own --help works (its options were generated without error).
    for name in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as err:
            cli.main([name, "--help"])
        assert err.value.code == 0, name


def test_console_script_points_at_main() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        pytest.skip("tomllib needs Python 3.11")
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["tc-circuits"] == "tc_circuits.cli:main"


def test_main_returns_2_on_value_error(capsys) -> None:
    # A real subcommand whose config rejects the value.
    assert cli.main(["organism", "train", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "tc-circuits organism: error: steps must be >= 1, got 0"


def test_main_returns_2_on_errors_raised_by_the_command(monkeypatch, capsys) -> None:
    def fake_parser(only=None) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog="tc-circuits")
        sub = parser.add_subparsers(dest="command")
        for name, exc in (("bad", ValueError("bad value 3")), ("missing", FileNotFoundError("no file x"))):
            p = sub.add_parser(name)
            p.set_defaults(func=lambda args, exc=exc: (_ for _ in ()).throw(exc))
        ok = sub.add_parser("ok")
        ok.set_defaults(func=lambda args: None)
        return parser

    monkeypatch.setattr(cli, "build_parser", fake_parser)
    assert cli.main(["bad"]) == 2
    assert "tc-circuits bad: error: bad value 3" in capsys.readouterr().err
    assert cli.main(["missing"]) == 2
    assert "tc-circuits missing: error: no file x" in capsys.readouterr().err
    assert cli.main(["ok"]) == 0
