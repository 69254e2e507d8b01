"""Metrics against hand computations; model-level evaluation against direct recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from tc_circuits.evaluation.evaluate import (
    ReconstructionMetrics,
    SpliceMetrics,
    evaluate_reconstruction,
    evaluate_splice,
    token_batches,
)
from tc_circuits.evaluation.metrics import (
    ce_recovered,
    density_histogram,
    explained_variance,
    fvu,
    kl_per_token,
    l0,
    next_token_ce,
)
from tc_circuits.evaluation.splice import count_hooks, run_spliced
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig


def test_fvu_hand_example():
    y = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean (2, 1): variance sum = 1+1+1+1 = 4
    y_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0]])  # squared errors 0+1+1+0 = 2
    assert fvu(y_hat, y) == pytest.approx(0.5)
    assert explained_variance(y_hat, y) == pytest.approx(0.5)
    assert fvu(y.mean(0).expand_as(y), y) == pytest.approx(1.0)  # the mean explains nothing
    with pytest.raises(ValueError, match="shape"):
        fvu(y_hat[:1], y)


def test_l0_and_density_histogram():
    lat = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 3.0, 0.0, 0.0]])
    assert l0(lat) == pytest.approx(1.5)
    counts = torch.tensor([0, 10, 1, 100])
    h = density_histogram(counts, n_tokens=100, bins=2)  # log10 freq: -1, -2, 0; edges -2,-1,0
    assert h.n_dead == 1
    assert h.bin_edges == pytest.approx([-2.0, -1.0, 0.0])
    assert h.counts == [1, 2]  # -2 in [-2, -1); -1 and 0 in [-1, 0]
    assert h.frequencies == pytest.approx([0.0, 0.1, 0.01, 1.0])


def test_ce_and_kl_hand_example():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))
    tokens = torch.tensor([[0, 1]])
    assert next_token_ce(logits, tokens).item() == pytest.approx(-math.log(0.25))
    q = torch.log(torch.tensor([[[0.25, 0.5, 0.25], [0.1, 0.1, 0.8]]]))
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    torch.testing.assert_close(
        kl_per_token(logits, q), torch.tensor([[expected, 0.0]], dtype=torch.float64)
    )
    assert ce_recovered(2.0, 2.5, 4.0) == pytest.approx(0.75)
    assert math.isnan(ce_recovered(2.0, 2.5, 2.0))


def _tc(model, layer, kind="transcoder", seed=0, n=48):
    tc = Transcoder(TranscoderConfig.for_model(model, layer, n, kind=kind, k=6))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return tc


def test_evaluate_reconstruction_matches_direct(tiny_model, tiny_tokens):
    tcs = {0: _tc(tiny_model, 0), 1: _tc(tiny_model, 1, kind="sae", seed=3)}
    res = evaluate_reconstruction(tiny_model, tcs, [tiny_tokens[:2], tiny_tokens[2:]], start_pos=1)
    _, cache = tiny_model.run_with_cache(tiny_tokens)
    for layer, tc in tcs.items():
        x = cache[tc.cfg.input_site][:, 1:]
        y = cache[tc.cfg.output_site][:, 1:]
        out = tc(x)
        r = res[layer]
        assert r.fvu == pytest.approx(fvu(out.output, y), rel=1e-5)
        assert r.l0 == pytest.approx(l0(out.latents), rel=1e-6)
        fired = (out.latents != 0).reshape(-1, 48).any(0)
        assert r.dead_fraction == pytest.approx(1 - fired.double().mean().item())
        assert r.n_tokens == 4 * 15
        assert sum(r.density.counts) + r.density.n_dead == 48
    assert res[1].kind == "sae" and res[0].kind == "transcoder"
    assert ReconstructionMetrics.markdown_header().split("\n")[0].count("|") == res[0].markdown_row().count("|")
    assert res[0].to_dict()["fvu"] == res[0].fvu


def test_evaluate_splice_matches_direct(tiny_model, tiny_tokens):
    tcs = {0: _tc(tiny_model, 0), 1: _tc(tiny_model, 1, seed=1)}
    report = evaluate_splice(tiny_model, tcs, tiny_tokens)
    assert [r.layers for r in report.rows] == [(0,), (1,), (0, 1)]
    orig = tiny_model(tiny_tokens)
    ce_orig = next_token_ce(orig, tiny_tokens).mean().item()
    for config in [(0,), (1,), (0, 1)]:
        spliced = run_spliced(tiny_model, tiny_tokens, tcs, layers=config)
        zero_hooks = [(f"blocks.{i}.hook_mlp_out", lambda a, hook: a * 0) for i in config]
        ce_zero = next_token_ce(tiny_model.run_with_hooks(tiny_tokens, fwd_hooks=zero_hooks), tiny_tokens)
        row = report.get(config)
        ce_spl = next_token_ce(spliced, tiny_tokens).mean().item()
        assert row.ce_orig == pytest.approx(ce_orig, rel=1e-6)
        assert row.delta_ce == pytest.approx(ce_spl - ce_orig, rel=1e-5, abs=1e-7)
        assert row.kl == pytest.approx(kl_per_token(orig[:, :-1], spliced[:, :-1]).mean().item(), rel=1e-5)
        assert row.recovered_zero == pytest.approx(
            (ce_zero.mean().item() - ce_spl) / (ce_zero.mean().item() - ce_orig), rel=1e-5
        )
        assert row.n_tokens == 4 * 15
    # mean ablation: replace with the mean over all tokens and positions
    _, cache = tiny_model.run_with_cache(tiny_tokens)
    mean0 = cache["blocks.0.hook_mlp_out"].mean((0, 1))
    ce_mean = next_token_ce(
        tiny_model.run_with_hooks(
            tiny_tokens, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: mean0.expand_as(a))]
        ),
        tiny_tokens,
    ).mean().item()
    assert report.get(0).ce_mean_ablation == pytest.approx(ce_mean, rel=1e-5)
    # with the error term nothing is lost
    exact = evaluate_splice(tiny_model, tcs, tiny_tokens, error_term=True, per_layer=False)
    assert [r.layers for r in exact.rows] == [(0, 1)]
    assert abs(exact.rows[0].delta_ce) < 1e-5 and exact.rows[0].kl < 1e-8
    assert exact.rows[0].recovered_zero == pytest.approx(1.0, abs=1e-4)
    assert "delta_ce" in SpliceMetrics.markdown_header() and report.to_markdown().count("\n") == 4
    assert count_hooks(tiny_model) == 0


def test_bad_tokens_raise(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        token_batches([], tiny_model)
    with pytest.raises(ValueError, match="empty"):
        evaluate_splice(tiny_model, _tc(tiny_model, 0), torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="n_ctx"):
        evaluate_reconstruction(tiny_model, _tc(tiny_model, 0), torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        token_batches(torch.zeros(2, 3), tiny_model)
    with pytest.raises(ValueError, match="range"):
        token_batches(torch.full((1, 3), 50), tiny_model)
    with pytest.raises(ValueError, match="at least 2|< 2"):
        evaluate_splice(tiny_model, _tc(tiny_model, 0), torch.zeros(2, 1, dtype=torch.long))
