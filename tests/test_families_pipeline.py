"""The rest of the pipeline on every family: training, splicing, interventions, OV virtual weights.

Each check compares with an independent computation: FVU against the untrained (mean)
predictor, the spliced forward against a hand-written hook replacement, a frozen ablation
against the graph's direct edge, and OV virtual weights against the attention module's own
per-head output (``hook_result``) on a one-token input.
"""

from __future__ import annotations

import pytest
import torch
from attribution_helpers import make_transcoders
from families import FAMILIES, FAMILY_NAMES, VOCAB, build_folder

from tc_circuits.attribution import attribute, logit_target
from tc_circuits.attribution.virtual_weights import ov_virtual_weights
from tc_circuits.evaluation.splice import run_spliced, splice
from tc_circuits.interventions import FeatureIntervention, intervene
from tc_circuits.models.loading import load_model
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import train_transcoders

P = 10


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families_pipeline")
    return {f.name: build_folder(f, root)[1] for f in FAMILIES}


def _tokens(rows=1, n=P, seed=3):
    return torch.randint(0, VOCAB, (rows, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_training_through_hooks_drives_fvu_down(folders, name, tmp_path):
    model = load_model(folders[name])
    cfg = TrainConfig(layers=(0, 1), kind="skip_transcoder", n_latents=128, k=12, batch_size=128,
                      buffer_tokens=1024, total_tokens=128 * 150, lr=1e-2, warmup_steps=5,
                      dead_tokens_threshold=1000, log_every=20, out_dir=str(tmp_path))
    result = train_transcoders(model, _tokens(256, 16, seed=0), cfg, progress=False)
    # step 0 predicts the mean (FVU 1); a few dozen steps must explain most of the variance
    for L in (0, 1):
        assert result.metrics[L].fvu < 0.5, (L, result.metrics[L].fvu)
    assert all(len(h.fwd_hooks) == 0 for h in model.hook_dict.values())


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_splice_equals_hand_written_replacement(folders, name):
    model = load_model(folders[name], dtype="float64")
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens(2)
    with torch.no_grad():
        real = model(toks)
        with splice(model, tcs, error_term=True):
            same = model(toks)
        spliced = run_spliced(model, toks, tcs)
        seen = {}

        def read(x, hook):
            seen[hook.layer()] = x
            return x

        hooks = []
        for L, tc in tcs.items():
            hooks += [(f"blocks.{L}.ln2.hook_normalized", read),
                      (f"blocks.{L}.hook_mlp_out", lambda y, hook, tc=tc: tc(seen[hook.layer()]).output)]
        by_hand = model.run_with_hooks(toks, fwd_hooks=hooks)
    torch.testing.assert_close(same, real, atol=1e-10, rtol=0)
    torch.testing.assert_close(spliced, by_hand, atol=1e-10, rtol=0)
    assert (spliced - real).abs().max() > 1e-3  # the replacement really changed something


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_frozen_ablation_equals_direct_edge(folders, name):
    model = load_model(folders[name], dtype="float64")
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens()[0]
    tgt = logit_target(5, VOCAB)
    g = attribute(model, tcs, toks, targets=[tgt], progress=False)
    t = int(g.target_indices[0])
    A = g.adjacency().to_dense()
    # no intervention: exactly the real model, frozen or live
    for mode in ("frozen", "live"):
        res = intervene(model, tcs, toks, mode=mode)
        torch.testing.assert_close(res.logits, model(toks[None])[0].detach(), atol=1e-10, rtol=0)
    base = intervene(model, tcs, toks, mode="frozen", recompute_features=False).logits[-1]
    feats = g.indices_of("feature")
    pre_cap = _pre_cap(model, g)
    for j in feats[A[t, feats].abs().argsort(descending=True)[:4]].tolist():
        iv = FeatureIntervention(int(g.nodes.layer[j]), int(g.nodes.pos[j]), int(g.nodes.latent[j]), 0.0)
        new = intervene(model, tcs, toks, [iv], mode="frozen", recompute_features=False).logits[-1]
        delta = float(tgt.direction.double() @ (pre_cap(new) - pre_cap(base)))
        assert delta == pytest.approx(-float(A[t, j]), abs=1e-8)


def _pre_cap(model, graph):
    """Undo a final-logit soft-cap (graph targets are pre-cap logits)."""
    c = graph.metadata["block_plan"]["logit_softcap"]
    return (lambda z: z) if c is None else (lambda z: c * torch.atanh(z / c))


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_ov_virtual_weights_through_gqa(folders, name):
    model = load_model(folders[name], dtype="float64", fold_ln=False)  # keep ln1.w: it is on the path
    src = make_transcoders(model, layers=[0], n_latents=16, seed=1)[0]
    dst = make_transcoders(model, layers=[1], n_latents=16, seed=2)[1]
    if model.cfg.parallel_attn_mlp:  # head 1 does not feed the MLP of its own layer
        with pytest.raises(ValueError, match="parallel"):
            ov_virtual_weights(model, src, dst, layer=1, head=0)
        return
    H = model.cfg.n_heads
    block = model.blocks[1]
    model.set_use_attn_result(True)
    try:
        for head in (0, H - 1):
            vw = ov_virtual_weights(model, src, dst, layer=1, head=head)
            # independent: the attention module itself on one token (pattern = 1), per-head result
            results = {}

            def head_out(u):
                handle = block.attn.hook_result.register_forward_hook(
                    lambda mod, inp, out: results.__setitem__("r", out)
                )
                try:
                    block.attn(query_input=u, key_input=u, value_input=u)
                finally:
                    handle.remove()
                return results["r"][0, 0, head]

            w = block.ln1.w if hasattr(block.ln1, "w") else 1.0
            zero = head_out(torch.zeros(1, 1, model.cfg.d_model, dtype=torch.float64))
            ref = torch.stack([head_out((src.W_dec[i] * w)[None, None]) - zero for i in range(16)])
            if hasattr(block, "ln1_post"):
                ref = ref * block.ln1_post.w
            ref = ref @ dst.W_enc
            torch.testing.assert_close(vw, ref.detach(), atol=1e-10, rtol=1e-8)
    finally:
        model.set_use_attn_result(False)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_dashboards_on_every_family(folders, name):
    """Dashboard activations equal a full forward's; the direct logit effect is a frozen-scale
    intervention on the (pre-cap) logits: RMSNorm families are not centred."""
    from tc_circuits.viz.dashboards import DashboardConfig, compute_dashboards
    from tc_circuits.viz.feature_weights import direct_logit_effects

    model = load_model(folders[name], dtype="float64", fold_ln=False)  # ln_final.w on the path
    tcs = make_transcoders(model, activation="topk", skip=True)
    toks = _tokens(4, 12, seed=5)
    boards = compute_dashboards(model, tcs, [(1, 3), (0, 7)], [toks], DashboardConfig(), progress=False)
    with torch.no_grad():
        _, cache = model.run_with_cache(toks)
    ref = tcs[1](cache["blocks.1.ln2.hook_normalized"]).latents[:, 1:, 3]  # first position skipped
    assert boards[(1, 3)].max_activation == pytest.approx(float(ref.max()), rel=1e-6, abs=1e-9)
    assert boards[(1, 3)].n_nonzero == int((ref > 0).sum())
    v = tcs[1].W_dec[4].detach()
    x = torch.randn(1, 1, model.cfg.d_model, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        _, c = model.run_with_cache(x, start_at_layer=model.cfg.n_layers, names_filter="ln_final.hook_scale")
        scale = c["ln_final.hook_scale"]
        with model.hooks(fwd_hooks=[("ln_final.hook_scale", lambda t, hook: scale)]):
            delta = model.unembed(model.ln_final(x + v)) - model.unembed(model.ln_final(x))
    eff = direct_logit_effects(model, tcs[1], [4])[0].double()
    torch.testing.assert_close(eff / scale.flatten(), delta.flatten(), atol=1e-6, rtol=1e-5)
