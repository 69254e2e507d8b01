"""Feature dashboards: streaming statistics vs brute force, weight-based views vs hand computation."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from tc_circuits.viz.dashboard_html import dashboard_figure, dashboard_html, histogram_svg
from tc_circuits.viz.dashboards import DashboardConfig, compute_dashboards, quantile_picks, weight_dashboard
from tc_circuits.viz.feature_stats import StreamConfig, latent_activations, stream_activation_stats
from tc_circuits.viz.feature_weights import (
    connections,
    de_embeddings,
    direct_logit_effects,
    promoted_tokens,
    reader_weights,
)


def make_tcs(model, n_latents=24, activation="relu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = TranscoderSet()
    for L in range(model.cfg.n_layers):
        cfg = TranscoderConfig.for_model(model, L, n_latents, kind="skip_transcoder", activation=activation, k=4)
        tc = Transcoder(cfg)
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n_latents, generator=gen) / d**0.5)
            tc.b_enc.copy_(0.3 * torch.randn(n_latents, generator=gen) - 0.2)
            tc.W_dec.copy_(0.3 * torch.randn(n_latents, d, generator=gen))
        out[L] = tc
    return out


def corpus(n_batches=3, batch=4, seq=12, seed=5):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 50, (batch, seq), generator=gen) for _ in range(n_batches)]


def brute_force(model, tcs, latents, batches, skip_first=True):
    """Independent: a full forward pass per batch, encode, flatten in (doc, pos) order."""
    vals = []
    for tokens in batches:
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens)
            cols = [tcs[L].encode(cache[tcs[L].cfg.input_site])[..., f] for L, f in latents]
        a = torch.stack(cols, -1)  # [B, S, m]
        if skip_first:
            a[:, 0] = float("nan")
        vals.append(a.reshape(-1, len(latents)))
    return torch.cat(vals).T  # [m, N] in global index order (NaN = skipped)


def test_streaming_stats_equal_brute_force():
    model = make_tiny_model()
    tcs = make_tcs(model)
    latents = [(0, 3), (1, 7), (0, 11), (1, 0)]
    batches = corpus()
    cfg = StreamConfig(n_top=5, n_reservoir=16, n_bins=8)
    stats = stream_activation_stats(model, tcs, latents, iter(batches), cfg, progress=False)
    ref = brute_force(model, tcs, latents, batches)
    assert stats.n_tokens == 3 * 4 * 11
    for row in range(len(latents)):
        r = torch.nan_to_num(ref[row], nan=-1.0)
        top = torch.topk(r, 5)
        torch.testing.assert_close(stats.top_values[row], top.values, atol=1e-5, rtol=1e-5)
        assert stats.top_index[row].tolist() == top.indices.tolist()
        nz = r[r > 0]
        assert int(stats.n_nonzero[row]) == nz.numel()
        assert int(stats.hist_counts[row].sum()) == nz.numel()
        w = float(stats.hist_width[row])
        ref_hist = torch.histogram(nz, bins=torch.linspace(0, w * 8, 9)).hist.long()
        assert stats.hist_counts[row].tolist() == ref_hist.tolist()
        assert float(nz.max()) <= w * 8 + 1e-6 and float(nz.max()) > w * 4  # range not oversized
        ok = stats.sample_index[row] >= 0
        assert int(ok.sum()) == min(16, nz.numel())
        idx = stats.sample_index[row][ok]
        assert len(set(idx.tolist())) == idx.numel()  # without replacement
        torch.testing.assert_close(stats.sample_values[row][ok], r[idx], atol=1e-5, rtol=1e-5)
    d, p = stats.locate(int(stats.top_index[0, 0]))
    assert torch.equal(stats.documents[d], batches[d // 4][d % 4])


def test_histogram_doubling_is_exact_across_batches():
    """Small first batch then a large value: bins merge pairwise, counts stay exact."""
    model = make_tiny_model()
    tcs = make_tcs(model, seed=2)
    latents = [(1, f) for f in range(6)]
    batches = corpus(n_batches=4, seed=9)
    stats = stream_activation_stats(model, tcs, latents, batches, StreamConfig(n_bins=6), progress=False)
    ref = torch.nan_to_num(brute_force(model, tcs, latents, batches), nan=-1.0)
    for row in range(6):
        nz = ref[row][ref[row] > 0]
        w = float(stats.hist_width[row])
        if nz.numel() == 0:
            continue
        expect = torch.histogram(nz, bins=torch.linspace(0, w * 6, 7)).hist.long()
        assert stats.hist_counts[row].tolist() == expect.tolist()


def test_latent_activations_match_full_forward(tiny_tokens):
    model = make_tiny_model()
    tcs = make_tcs(model)
    acts = latent_activations(model, tcs, [(1, 2), (0, 5)], tiny_tokens)
    ref = brute_force(model, tcs, [(1, 2), (0, 5)], [tiny_tokens], skip_first=False)
    torch.testing.assert_close(acts.reshape(-1, 2).T, ref, atol=1e-5, rtol=1e-5)


def test_direct_logit_effect_is_frozen_scale_intervention():
    """effect / s == change of logits when W_dec[latent] is added before ln_final (scale s frozen)."""
    model = make_tiny_model()
    tcs = make_tcs(model)
    v = tcs[1].W_dec[4].detach()
    x = torch.randn(1, 1, model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        scale = x.var(-1, keepdim=True, unbiased=False).add(model.cfg.eps).sqrt()
        with model.hooks(fwd_hooks=[("ln_final.hook_scale", lambda t, hook: scale)]):
            delta = model.unembed(model.ln_final(x + v)) - model.unembed(model.ln_final(x))
    eff = direct_logit_effects(model, tcs[1], [4])[0]
    torch.testing.assert_close(eff / scale.flatten(), delta.flatten(), atol=1e-4, rtol=1e-4)


def test_promoted_tokens_are_topk_of_wdec_wu_with_fold_ln():
    model = make_tiny_model()
    model.process_weights_(fold_ln=True, center_writing_weights=True, center_unembed=True)
    tcs = make_tcs(model)
    tc = tcs[0]
    with torch.no_grad():  # a transcoder trained on a centred stream writes centred vectors
        tc.W_dec.sub_(tc.W_dec.mean(-1, keepdim=True))
    promoted, suppressed = promoted_tokens(model, tc, 9, k=5)
    logit = tc.W_dec[9].detach() @ model.W_U.detach()
    assert [t.token_id for t in promoted] == torch.topk(logit, 5).indices.tolist()
    assert [t.token_id for t in suppressed] == torch.topk(-logit, 5).indices.tolist()
    torch.testing.assert_close(torch.tensor([t.score for t in promoted]), torch.topk(logit, 5).values)


def test_de_embeddings_and_connections_match_hand_computation():
    model = make_tiny_model(n_layers=3)
    tcs = make_tcs(model)
    # ln2 hook_normalized (unfolded LN) = centred / scale * w + b: linear part (x - mean) * w.
    w2 = model.blocks[1].ln2.w.detach()
    WE = model.W_E.detach()
    scores = ((WE - WE.mean(-1, keepdim=True)) * w2) @ tcs[1].W_enc[:, 6].detach()
    got = de_embeddings(model, tcs[1], 6, k=4)
    assert [t.token_id for t in got] == torch.topk(scores, 4).indices.tolist()
    # reader_weights equals the ln2 linear map applied to a vector before W_enc
    y = torch.randn(model.cfg.d_model)
    torch.testing.assert_close(y @ reader_weights(model, tcs[1]), ((y - y.mean()) * w2) @ tcs[1].W_enc.detach(),
                               atol=1e-5, rtol=1e-5)
    up, down = connections(model, tcs, 1, 6, k=2)
    assert {c.layer for c in up} == {0} and {c.layer for c in down} == {2}
    W0 = tcs[0].W_dec.detach()
    ref_up = ((W0 - W0.mean(-1, keepdim=True)) * w2) @ tcs[1].W_enc[:, 6].detach()
    assert [c.latent for c in up] == torch.topk(ref_up.abs(), 2).indices.tolist()
    torch.testing.assert_close(torch.tensor([c.weight for c in up]), ref_up[[c.latent for c in up]])
    v = tcs[1].W_dec[6].detach()
    w3 = model.blocks[2].ln2.w.detach()
    ref_down = ((v - v.mean()) * w3) @ tcs[2].W_enc.detach()
    assert [c.latent for c in down] == torch.topk(ref_down.abs(), 2).indices.tolist()


def test_compute_dashboards_contexts_and_quantiles():
    model = make_tiny_model()
    tcs = make_tcs(model)
    batches = corpus()
    cfg = DashboardConfig(n_top=4, n_quantiles=3, n_per_quantile=2, context_before=3, context_after=2, n_bins=8)
    boards = compute_dashboards(model, tcs, [(0, 3), (1, 7), (0, 3)], iter(batches), cfg, progress=False)
    assert list(boards) == [(0, 3), (1, 7)]
    ref = torch.nan_to_num(brute_force(model, tcs, [(0, 3), (1, 7)], batches), nan=-1.0)
    flat_tokens = torch.cat([b.reshape(-1) for b in batches])
    for row, key in enumerate([(0, 3), (1, 7)]):
        b = boards[key]
        nz = ref[row][ref[row] > 0]
        assert b.n_nonzero == nz.numel() == sum(b.hist_counts)
        assert abs(b.max_activation - float(nz.max())) < 1e-5
        top = torch.topk(ref[row], 4)
        assert [round(e.activation, 4) for e in b.top_examples] == [round(v, 4) for v in top.values.tolist()]
        for e, gi in zip(b.top_examples, top.indices.tolist()):
            assert e.token_ids[e.highlight] == int(flat_tokens[gi])
            assert abs(e.acts[e.highlight] - e.activation) < 1e-4  # re-read activation matches
            assert len(e.tokens) <= 3 + 1 + 2 and e.highlight <= 3
        assert 1 <= len(b.quantile_examples) <= 3
        lows = [min(x.activation for x in exs) for _, exs in b.quantile_examples]
        assert lows == sorted(lows, reverse=True)  # highest band first
        html = dashboard_html(b, standalone=True)
        assert f"id='feature-{key[0]}-{key[1]}'" in html and "<svg" in html
    fig = dashboard_figure(boards[(0, 3)])
    assert sum(fig.data[0].y) == boards[(0, 3)].n_nonzero


def test_quantile_picks_bands():
    vals = torch.tensor([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, float("nan")])
    idx = torch.tensor([50, 10, 30, 20, 40, 60, -1])
    bands = quantile_picks(vals, idx, 3, 1)
    assert [[i for _, i in picks] for _, picks in bands] == [[50], [30], [10]]


def test_weight_dashboard_rejects_bad_latent():
    model = make_tiny_model()
    tcs = make_tcs(model)
    import pytest

    with pytest.raises(ValueError, match="latent 99"):
        weight_dashboard(model, tcs, 0, 99)
    with pytest.raises(ValueError, match="n_bins"):
        DashboardConfig(n_bins=7)
    assert "no nonzero" in histogram_svg([0.0, 1.0], [0])


def test_histogram_svg_trims_empty_tail():
    svg = histogram_svg([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], [1, 0, 2, 0, 0])
    assert svg.count("<rect") == 3 and ">3<" in svg  # axis ends at the last nonempty bin's edge
