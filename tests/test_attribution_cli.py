"""``tc-circuits attribute`` on a tiny model (the organism loader is replaced)."""

from __future__ import annotations

import dataclasses
import inspect
import json

import pytest
import torch
from attribution_helpers import make_transcoders
from conftest import make_tiny_model

import tc_circuits.cli.attribute as cli_attr
from tc_circuits.attribution import AttributionConfig, attribute

import argparse


def build_parser():
    """Only our subcommand (other subcommands may be unfinished while this runs)."""
    parser = argparse.ArgumentParser(prog="tc-circuits")
    cli_attr.register(parser.add_subparsers(dest="command"))
    return parser


def main(argv):
    """Mirror ``tc_circuits.cli.main``'s error handling."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        import sys

        print(f"error: {err}", file=sys.stderr)
        return 2


def test_registered_in_cli():
    from tc_circuits.cli import SUBCOMMANDS

    assert "attribute" in SUBCOMMANDS
from tc_circuits.graph import AttributionGraph, load_json


class _Tok:
    """A minimal tokenizer: characters a..z are ids 1..26 (spaces dropped)."""

    padding_side = "right"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) - 96 for c in text.replace(" ", "")]

    def decode(self, ids):
        return "".join(chr(96 + i) if 0 < i < 27 else "?" for i in ids)


@pytest.fixture
def tiny(monkeypatch):
    model = make_tiny_model()
    model.tokenizer = None
    tcs = make_transcoders(model)
    import tc_circuits.cli.resolve as resolve

    monkeypatch.setattr(resolve, "resolve", lambda opts: resolve.Resolved(model, tcs, {"model": "tiny", "transcoders": "t"}))

    def to_tokens(prompt, *a, **k):
        return torch.tensor([_Tok().encode(prompt)])

    monkeypatch.setattr(model, "to_tokens", to_tokens)
    return model, tcs


def test_config_defaults_match_api():
    sig = inspect.signature(attribute)
    for f in dataclasses.fields(AttributionConfig):
        assert sig.parameters[f.name].default == f.default, f.name


def test_cli_writes_graph_and_json(tiny, tmp_path, capsys, monkeypatch):
    model, tcs = tiny
    model.tokenizer = _Tok()
    out = tmp_path / "g"
    rc = main(["attribute", "--prompt", "abcdef", "--out", str(out), "--no-progress", "--max-n-logits", "3",
               "--target-direction", "logit-diff", "--diff-tokens", "c", "d"])
    assert rc == 0
    out_text = capsys.readouterr().out
    summary = json.loads(out_text[: out_text.index("\n}") + 2])
    g = AttributionGraph.load(out)
    assert g.n_nodes == summary["nodes"] and g.target_labels == ["logit 'c' - 'd'"]
    opts = cli_attr.AttributeOptions(prompt="x", out="y", target_direction="logit-diff", diff_tokens=("c", "d"))
    ref = attribute(model, tcs, torch.tensor([1, 2, 3, 4, 5, 6]), targets=cli_attr.build_targets(model, opts),
                    progress=False)
    assert torch.equal(ref.edge_weight, g.edge_weight)
    pruned = load_json(out / "graph.neuronpedia.json")
    assert pruned.n_nodes == summary["pruned_nodes"] and pruned.n_edges == summary["pruned_edges"]
    assert pruned.target_labels == g.target_labels


def test_cli_errors(tiny, tmp_path, capsys):
    rc = main(["attribute", "--prompt", "abc", "--out", str(tmp_path), "--target-direction", "logit-diff"])
    assert rc == 2 and "--diff-tokens" in capsys.readouterr().err
    rc = main(["attribute", "--prompt", "abc", "--out", str(tmp_path), "--batch-size", "0"])
    assert rc == 2 and "batch_size" in capsys.readouterr().err
