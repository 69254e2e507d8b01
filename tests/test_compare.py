"""compare: end to end on a tiny random model with a tiny budget; rows agree with direct evaluation."""

from __future__ import annotations

import json

import pytest
import torch

import argparse

from tc_circuits.cli import SUBCOMMANDS
from tc_circuits.cli.compare import register
from tc_circuits.cli.dataclass_args import dataclass_from_args
from tc_circuits.evaluation.compare import CompareConfig, evaluate_dictionaries, run_compare
from tc_circuits.viz.compare_report import write_outputs
from tc_circuits.evaluation.evaluate import evaluate_splice
from tc_circuits.evaluation.splice import count_hooks
from tc_circuits.tasks import evaluate_task
from tc_circuits.tasks.greater_than import GreaterThanConfig, GreaterThanTask
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
from tests.conftest import make_tiny_model
from tests.test_greater_than import tiny_tokenizer


def _setup():
    tok = tiny_tokenizer()
    model = make_tiny_model(d_vocab=len(tok), n_ctx=16)
    gen = torch.Generator().manual_seed(0)
    train = torch.randint(0, len(tok), (64, 16), generator=gen)
    held_out = torch.randint(0, len(tok), (8, 16), generator=gen)
    task = GreaterThanTask.from_tokenizer(tok, GreaterThanConfig(nouns=("war",), yy_min=20, yy_max=40))
    return model, train, held_out, task


def test_compare_end_to_end(tmp_path):
    model, train, held_out, task = _setup()
    cfg = CompareConfig(
        model="tiny", layers=(0, 1), n_latents=32, k=4, k_sweep=(2, 4), total_tokens=2048,
        batch_size=128, buffer_tokens=512, lr=1e-2, warmup_steps=0, out_dir=str(tmp_path / "cmp"), progress=False,
    )
    batches = [train[i : i + 8] for i in range(0, 64, 8)]
    res = run_compare(cfg, model=model, token_factory=lambda: iter(batches), eval_tokens=held_out, task=task)
    # 3 kinds x 2 ks x (2 layers + all)
    assert len(res.rows) == 3 * 2 * 3
    assert {(r.kind, r.k) for r in res.sweep_rows()} == {(kd, k) for kd in ("sae", "transcoder", "skip_transcoder") for k in (2, 4)}
    for r in res.rows:
        assert r.l0 <= r.k + 1e-9 and 0 <= r.dead_fraction <= 1 and r.kl >= 0 and r.gt_prob_diff is not None
    # training helped: every dictionary beats the constant (mean) predictor on held-out data
    assert max(r.fvu for r in res.rows) < 1.0
    # the "all" row's ΔCE is the all-at-once splice of the trained dictionaries
    trained = {layer: Transcoder.load(tmp_path / "cmp" / "runs" / "skip_transcoder_k4" / "transcoders" / f"layer_{layer}")
               for layer in (0, 1)}
    direct = evaluate_splice(model, trained, held_out).get((0, 1))
    row = next(r for r in res.rows if r.kind == "skip_transcoder" and r.k == 4 and r.layer == "all")
    assert row.delta_ce == pytest.approx(direct.delta_ce, rel=1e-5, abs=1e-7)
    assert row.gt_prob_diff == pytest.approx(evaluate_task(model, task, trained).spliced, rel=1e-5)
    assert res.gt_original == pytest.approx(task.metric(model(task.tokens)), rel=1e-6)
    write_outputs(res, tmp_path / "cmp")
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## k sweep" in md and md.count("| skip_transcoder |") == 3 + 2
    page = (tmp_path / "cmp" / "compare.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "plotly" in page and len(page) > 1_000_000  # js inlined
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert len(data["rows"]) == 18 and data["config"]["k"] == 4
    assert count_hooks(model) == 0


def test_evaluate_dictionaries_single_layer():
    model, _, held_out, task = _setup()
    tc = Transcoder(TranscoderConfig.for_model(model, 1, 16, k=3))
    rows, density, ce = evaluate_dictionaries(model, {1: tc}, [held_out], task, kind="transcoder", k=3)
    assert [r.layer for r in rows] == ["all"] and list(density) == ["transcoder_k3_L1"]
    # a freshly initialised transcoder is the zero map: FVU = 1 + |mean|^2 / var, ΔCE = zero ablation
    assert rows[0].recovered_zero == pytest.approx(0.0, abs=1e-9)


def test_config_and_cli():
    with pytest.raises(ValueError, match="kinds"):
        CompareConfig(kinds=("mlp",))
    with pytest.raises(ValueError, match="held-out"):
        CompareConfig(eval_seed=0)
    with pytest.raises(ValueError, match="k=64"):
        CompareConfig(n_latents=32, k_sweep=(64,))
    assert "compare" in SUBCOMMANDS
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["compare", "--k", "8", "--k-sweep", "4", "8", "--layers", "1"])
    cfg = dataclass_from_args(CompareConfig, args)
    assert cfg == CompareConfig(k=8, k_sweep=(4, 8), layers=(1,)) and cfg.ks == [4, 8]
    assert dataclass_from_args(CompareConfig, parser.parse_args(["compare"])) == CompareConfig()
    with pytest.raises(ValueError, match="organism"):
        run_compare(CompareConfig(model="gpt2"))
