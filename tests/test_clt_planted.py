"""A planted cross-layer feature: one computation whose output every MLP writes.

The hand-built 3-layer model (attention off, LayerNorm on) has a single ReLU neuron per MLP,
all reading the same embedding direction ``u`` and each writing its own direction ``v_L``:

    mlp_out_L = relu(s * x_L . u - beta) * v_L,      v_L orthogonal to u and to each other

so the same feature's effect reaches layers 0, 1 and 2. Per-layer transcoders need one latent in
every layer (three active features per token where it fires); a CLT represents it as **one**
layer-0 feature with decoders ``[v_0, v_1, v_2]``. The test builds both by hand, checks that both
reconstruct the MLPs (FVU ~ 0), that the CLT has a third of the active features, that both
attribution graphs are exact, and that the CLT feature's direct edge to the target equals the
sum of the three per-layer features' edges. It then trains a ReLU + L1 CLT and per-layer
transcoders on the model with the toolkit's trainers and checks that the CLT uses fewer active
features for the same job.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from tc_circuits.attribution import attribute, logit_target
from tc_circuits.coders.clt import CLTConfig, CrossLayerTranscoder
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig, TranscoderSet
from tc_circuits.evaluation.evaluate import evaluate_reconstruction

D, V, S, BETA = 16, 24, 2.0, 0.5


def _planted():
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=D, n_heads=1, d_head=4, d_mlp=4, d_vocab=V, n_ctx=8, act_fn="relu",
        normalization_type="LN", positional_embedding_type="standard", model_name="planted", seed=0,
    )
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(D, D, generator=gen))
    basis = basis - basis.mean(0, keepdim=True)  # zero-mean directions (LayerNorm centring keeps them)
    basis, _ = torch.linalg.qr(basis[:, :8])
    u, vs, noise = basis[:, 0], [basis[:, 1 + L] * 0.15 for L in range(3)], basis[:, 4:8]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in [model.ln_final] + [m for b in model.blocks for m in (b.ln1, b.ln2)]:
            ln.w.fill_(1.0)
        c = torch.linspace(-1.5, 1.5, V)[torch.randperm(V, generator=gen)]
        model.W_E.copy_(c[:, None] * u * 3 + torch.randn(V, 4, generator=gen) @ noise.T * 2)
        model.W_U.copy_(torch.randn(D, V, generator=gen))
        for L, block in enumerate(model.blocks):
            block.mlp.W_in[:, 0] = S * u
            block.mlp.b_in[0] = -BETA
            block.mlp.W_out[0] = vs[L]
    return model, u, vs


def _tokens(n_seq=64, seq=8, seed=1):
    return torch.randint(0, V, (n_seq, seq), generator=torch.Generator().manual_seed(seed))


def _hand_coders(model, u, vs):
    per_layer = TranscoderSet()
    for L in range(3):
        tc = Transcoder(TranscoderConfig.for_model(model, L, 4, activation="relu"))
        with torch.no_grad():
            tc.W_enc.zero_()
            tc.W_enc[:, 0] = S * u
            tc.b_enc.fill_(-1.0)
            tc.b_enc[0] = -BETA
            tc.W_dec.zero_()
            tc.W_dec[0] = vs[L]
        per_layer[L] = tc
    clt = CrossLayerTranscoder(CLTConfig.for_model(model, 4, skip=False, activation="relu"))
    with torch.no_grad():
        clt.W_enc.zero_()
        clt.W_enc[0, :, 0] = S * u
        clt.b_enc.fill_(-1.0)
        clt.b_enc[0, 0] = -BETA
        for L in range(3):
            clt.W_dec[0][0, L] = vs[L]
    return per_layer, clt


def test_clt_needs_one_feature_where_per_layer_transcoders_need_three():
    model, u, vs = _planted()
    toks = _tokens()
    per_layer, clt = _hand_coders(model, u, vs)
    rec_pl = evaluate_reconstruction(model, per_layer, toks)
    rec_clt = evaluate_reconstruction(model, clt, toks)
    for L in range(3):
        assert rec_pl[L].fvu < 1e-10  # each per-layer transcoder reads its own layer: exact
        assert rec_clt[L].fvu < 2e-3  # the layer-0 feature predicts every layer (LN scale drift only)
    l0_pl = sum(rec_pl[L].l0 for L in range(3))
    l0_clt = sum(rec_clt[L].l0 for L in range(3))
    assert l0_pl > 0.2 and abs(l0_clt * 3 - l0_pl) < 1e-9  # one feature instead of three
    assert rec_clt[1].l0 == 0 and rec_clt[2].l0 == 0  # nothing needed in the later encoders
    # attribution: exact graphs; the CLT feature carries the three per-layer features' effect
    prompt = toks[0]
    pos = int(torch.nonzero((model.W_E[prompt] @ u) * S > BETA + 0.2)[0])
    target = [logit_target(3, V, position=pos)]
    g_pl = attribute(model, per_layer, prompt, targets=target, progress=False)
    g_clt = attribute(model, clt, prompt, targets=target, progress=False)
    assert g_pl.metadata["exactness_max_rel_dev"] < 1e-5 and g_clt.metadata["exactness_max_rel_dev"] < 1e-5
    f_pl, f_clt = g_pl.indices_of("feature"), g_clt.indices_of("feature")
    assert len(f_pl) == 3 * len(f_clt) and set(g_clt.nodes.layer[f_clt].tolist()) == {0}

    def edge(g, src):
        t = int(g.target_indices[0])
        m = (g.edge_target == t) & (g.edge_source == src)
        return float(g.edge_weight[m].sum())

    at = lambda g, f: [int(j) for j in f if int(g.nodes.pos[j]) == pos]  # noqa: E731
    sum_pl = sum(edge(g_pl, j) for j in at(g_pl, f_pl))
    (j_clt,) = at(g_clt, f_clt)
    assert abs(sum_pl) > 1e-3
    assert abs(edge(g_clt, j_clt) - sum_pl) < 0.02 * abs(sum_pl)


def test_trained_clt_uses_fewer_features_than_per_layer_transcoders():
    from tc_circuits.training.clt_trainer import train_clt
    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.trainer import train_transcoders

    model, _, _ = _planted()
    batches = [_tokens(64, 8, seed=s) for s in range(8)]
    cfg = TrainConfig(
        kind="transcoder", n_latents=8, activation="relu", l1_coefficient=0.05, lr=1e-2, warmup_steps=5,
        batch_size=256, total_tokens=256 * 120, buffer_tokens=2048, checkpoint_every=0, log_every=50,
        dead_tokens_threshold=4096,
    )
    clt = train_clt(model, batches, cfg, progress=False).clt
    pl = train_transcoders(model, batches, cfg, progress=False).transcoders
    ev = _tokens(32, 8, seed=99)
    r_clt, r_pl = evaluate_reconstruction(model, clt, ev), evaluate_reconstruction(model, pl, ev)
    for L in range(3):
        assert r_clt[L].fvu < 0.1 and r_pl[L].fvu < 0.1
    l0_clt = sum(r_clt[L].l0 for L in range(3))
    l0_pl = sum(r_pl[L].l0 for L in range(3))
    print(f"planted: L0 per token CLT {l0_clt:.3f} vs per-layer {l0_pl:.3f}; FVU CLT {[round(r_clt[L].fvu, 4) for L in range(3)]} per-layer {[round(r_pl[L].fvu, 4) for L in range(3)]}")
    assert l0_clt < 0.75 * l0_pl, (l0_clt, l0_pl)
