"""Cross-layer transcoders: the module, checkpoints, splicing, attribution and interventions."""

from __future__ import annotations

import pytest
import torch
import yaml
from attribution_helpers import make_model64, make_transcoders
from clt_helpers import HookedFrozenCLT, make_clt
from conftest import make_tiny_model

from tc_circuits.attribution import LinearisedModel, attribute, direction_target, logit_target
from tc_circuits.coders.clt import CLTConfig, CrossLayerTranscoder, clt_from_transcoder
from tc_circuits.evaluation.evaluate import evaluate_reconstruction, evaluate_splice
from tc_circuits.evaluation.splice import count_hooks, splice
from tc_circuits.interventions import intervene
from tc_circuits.models.sites import Site

P = 8


def _tokens(seed=3, n=P, d_vocab=50):
    return torch.randint(0, d_vocab, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("activation,skip", [("topk", True), ("relu", False), ("jumprelu", True)])
def test_one_layer_clt_equals_transcoder_exactly(activation, skip):
    model = make_model64(n_layers=1)
    tc = make_transcoders(model, activation=activation, skip=skip, layers=[0])[0]
    clt = clt_from_transcoder(tc)
    x = torch.randn(2, 7, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b = tc(x), clt([x])
    assert torch.equal(a.output, b.outputs[0]) and torch.equal(a.latents, b.latents[0])
    assert torch.equal(a.pre_acts, b.pre_acts[0])
    toks = _tokens()
    # spliced logits, and the attribution graph, are bit-identical too
    with splice(model, {0: tc}):
        la = model(toks[None])
    with splice(model, clt):
        lb = model(toks[None])
    assert torch.equal(la, lb)
    ga = attribute(model, {0: tc}, toks, progress=False)
    gb = attribute(model, clt, toks, progress=False)
    assert torch.equal(ga.edge_weight, gb.edge_weight) and torch.equal(ga.edge_source, gb.edge_source)


def test_forward_matches_hand_written_sum():
    model = make_model64(n_layers=3)
    clt = make_clt(model)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(5, 32, dtype=torch.float64, generator=gen) for _ in range(3)]
    out = clt(xs)
    for Lp in range(3):
        lat = [torch.zeros(5, 48, dtype=torch.float64) for _ in range(3)]
        for L in range(3):
            pre = xs[L] @ clt.W_enc[L] + clt.b_enc[L]
            v, i = pre.topk(4, dim=-1)
            lat[L].scatter_(-1, i, v.relu())
        ref = clt.b_dec[Lp] + xs[Lp] @ clt.W_skip[Lp]
        for L in range(Lp + 1):
            ref = ref + lat[L] @ clt.W_dec[L][:, Lp - L]
        torch.testing.assert_close(out.outputs[Lp], ref, atol=1e-12, rtol=0)
        assert int((out.latents[Lp] != 0).sum(-1).max()) <= 4  # TopK is per layer


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_save_load_bit_exact_and_checks(tmp_path, activation):
    model = make_tiny_model(n_layers=2)
    clt = make_clt(model, activation=activation)
    clt.save(tmp_path / "clt")
    back = CrossLayerTranscoder.load(tmp_path / "clt", model=model)
    assert back.cfg == clt.cfg
    for name, t in clt.state_tensors().items():
        assert torch.equal(back.state_tensors()[name], t), name
    other = make_tiny_model(n_layers=2, model_name="other")
    with pytest.raises(ValueError, match="other"):
        CrossLayerTranscoder.load(tmp_path / "clt", model=other)
    bad = clt.cfg.replace(weight_processing={"fold_ln": True})
    with pytest.raises(ValueError, match="weight processing"):
        CrossLayerTranscoder(bad).check_compatible(model)
    (tmp_path / "clt" / "clt.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupted"):
        CrossLayerTranscoder.load(tmp_path / "clt")


def test_config_validation():
    with pytest.raises(ValueError, match="k must be"):
        CLTConfig(n_layers=2, d_in=4, d_out=4, n_latents=8, k=9)
    with pytest.raises(ValueError, match="n_layers"):
        CLTConfig(n_layers=0, d_in=4, d_out=4, n_latents=8)
    with pytest.raises(ValueError, match="activation"):
        CLTConfig(n_layers=1, d_in=4, d_out=4, n_latents=8, activation="gelu")


def test_splice_matches_hand_computed_cross_layer_replacement():
    model = make_model64(n_layers=3)
    clt = make_clt(model)
    toks = _tokens()[None]
    # with the error term the model is unchanged
    with splice(model, clt, error_term=True) as state:
        logits = model(toks)
    torch.testing.assert_close(logits, model(toks), atol=1e-10, rtol=0)
    assert state.n_forward == 3 and count_hooks(model) == 0
    # without: every MLP output = decoded contributions of this and earlier layers, from the spliced inputs
    with splice(model, clt) as state:
        _, cache = model.run_with_cache(toks)
    xs = [cache[Site(L, "mlp_in").hook_name] for L in range(3)]
    ref = clt(xs)
    for L in range(3):
        torch.testing.assert_close(cache[Site(L, "mlp_out").hook_name], ref.outputs[L], atol=1e-12, rtol=0)
    # splicing only layer 2 still feeds it the layer-0/1 latents of the (unspliced) pass
    with splice(model, clt, layers=[2]):
        _, cache = model.run_with_cache(toks)
    _, clean = model.run_with_cache(toks)
    torch.testing.assert_close(cache[Site(1, "mlp_out").hook_name], clean[Site(1, "mlp_out").hook_name])
    xs = [clean[Site(L, "mlp_in").hook_name] for L in range(3)]
    torch.testing.assert_close(cache[Site(2, "mlp_out").hook_name], clt(xs).outputs[2], atol=1e-12, rtol=0)


def test_evaluation_metrics_for_clt():
    model = make_tiny_model(n_layers=2)
    clt = make_clt(model, n_latents=32)
    toks = torch.randint(0, 50, (3, 10), generator=torch.Generator().manual_seed(0))
    rec = evaluate_reconstruction(model, clt, toks)
    _, cache = model.run_with_cache(toks)
    out = clt([cache[Site(L, "mlp_in").hook_name] for L in range(2)])
    for L in range(2):
        y = cache[Site(L, "mlp_out").hook_name].reshape(-1, 32).double()
        fvu = float(((out.outputs[L].detach().reshape(-1, 32).double() - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum())
        assert rec[L].fvu == pytest.approx(fvu, rel=1e-6)
        assert rec[L].l0 == pytest.approx(4.0)
    rep = evaluate_splice(model, clt, toks)
    assert [r.layers for r in rep.rows] == [(0,), (1,), (0, 1)]
    assert count_hooks(model) == 0


@pytest.mark.parametrize("activation,skip", [("topk", True), ("relu", False), ("jumprelu", True)])
def test_every_clt_edge_equals_intervention(activation, skip):
    model = make_model64(n_layers=3)
    clt = make_clt(model, activation=activation, skip=skip)
    toks = _tokens()
    gen = torch.Generator().manual_seed(7)
    targets = [logit_target(5, 50), direction_target(torch.randn(50, generator=gen, dtype=torch.float64), position=5)]
    graph = attribute(model, clt, toks, targets=targets, progress=False, batch_size=16)
    assert graph.metadata["exactness_max_abs_dev"] < 1e-9
    A = graph.adjacency().to_dense().double()
    ref = HookedFrozenCLT(model, clt, toks)
    logits0, pre0 = ref.run()
    torch.testing.assert_close(logits0, ref.real_logits[0], atol=1e-10, rtol=0)
    tgt_idx = graph.target_indices.tolist()

    def values(logits, pre):
        out = {}
        for i in torch.nonzero(graph.nodes.expanded).flatten().tolist():
            if graph.node_type(i) == "feature":
                out[i] = pre[int(graph.nodes.layer[i])][int(graph.nodes.pos[i]), int(graph.nodes.latent[i])]
            else:
                t = targets[tgt_idx.index(i)]
                out[i] = t.direction.to(logits.dtype) @ logits[int(graph.nodes.pos[i])]
        return out

    base = values(logits0, pre0)
    rows = sorted(base)
    base_v = torch.stack([base[i] for i in rows])
    torch.testing.assert_close(base_v, graph.nodes.value[rows].double(), atol=1e-9, rtol=1e-9)
    feats = graph.indices_of("feature")
    # all features of layer 0 (they write layers 0, 1 and 2) plus a sample of the others
    sample = [j for j in feats.tolist() if int(graph.nodes.layer[j]) == 0][:25] + feats[-15:].tolist()
    n_cross = 0
    for j in sample:
        L, p, lat = int(graph.nodes.layer[j]), int(graph.nodes.pos[j]), int(graph.nodes.latent[j])
        lats = {k: v.clone() for k, v in ref.latents.items()}
        lats[L][p, lat] = 0.0
        new = values(*ref.run(latents=lats))
        delta = torch.stack([new[i] for i in rows]) - base_v
        torch.testing.assert_close(delta, -A[rows, j], atol=1e-9, rtol=1e-7)
        n_cross += L == 0
    assert n_cross >= 10
    for j in graph.indices_of("error").tolist()[::3]:
        L, p = int(graph.nodes.layer[j]), int(graph.nodes.pos[j])
        err = {k: v.clone() for k, v in ref.errors.items()}
        err[L][p] = 0.0
        new = values(*ref.run(errors=err))
        torch.testing.assert_close(torch.stack([new[i] for i in rows]) - base_v, -A[rows, j], atol=1e-9, rtol=1e-7)
    lin = LinearisedModel(model, clt, toks)
    assert lin.is_cross_layer and set(lin.decoders(0)) == {0, 1, 2} and graph.metadata["cross_layer"]


def test_interventions_with_clt_match_frozen_reference():
    model = make_model64(n_layers=3)
    clt = make_clt(model)
    toks = _tokens()
    ref = HookedFrozenCLT(model, clt, toks)
    clean = intervene(model, clt, toks, mode="frozen", recompute_features=False)
    torch.testing.assert_close(clean.logits, ref.real_logits[0], atol=1e-10, rtol=0)
    L, p = 0, 4
    lat = int(ref.latents[0][p].nonzero()[0])
    res = intervene(model, clt, toks, [(L, p, lat, 0.0)], mode="frozen", recompute_features=False)
    lats = {k: v.clone() for k, v in ref.latents.items()}
    lats[L][p, lat] = 0.0
    torch.testing.assert_close(res.logits, ref.run(latents=lats)[0], atol=1e-10, rtol=0)


@pytest.mark.parametrize("activation,skip", [("topk", True), ("relu", False), ("jumprelu", True)])
def test_circuit_tracer_clt_roundtrip_bit_exact(tmp_path, activation, skip):
    from safetensors import safe_open

    from tc_circuits.formats import load_any
    from tc_circuits.formats.circuit_tracer_clt import CircuitTracerCLTFiles, save_circuit_tracer_clt

    model = make_tiny_model(n_layers=3)
    clt = make_clt(model, activation=activation, skip=skip)
    if activation == "topk":
        with pytest.raises(ValueError, match="allow_topk"):
            save_circuit_tracer_clt(clt, tmp_path / "refused")
    save_circuit_tracer_clt(clt, tmp_path / "ct", allow_topk=True)
    cfg = yaml.safe_load((tmp_path / "ct" / "config.yaml").read_text())
    assert cfg["model_kind"] == "cross_layer_transcoder"
    assert (cfg["feature_input_hook"], cfg["feature_output_hook"]) == ("ln2.hook_normalized", "mlp.hook_out")
    # circuit-tracer's layout: per-layer encoder and decoder files with its key names and shapes
    with safe_open(str(tmp_path / "ct" / "W_dec_1.safetensors"), framework="pt") as f:
        assert list(f.keys()) == ["W_dec_1"] and f.get_slice("W_dec_1").get_shape() == [48, 2, 32]
    with safe_open(str(tmp_path / "ct" / "W_enc_2.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert {"W_enc_2", "b_enc_2", "b_dec_2"} <= keys and f.get_slice("W_enc_2").get_shape() == [48, 32]
        assert ("threshold_2" in keys) == (activation == "jumprelu") and ("W_skip_2" in keys) == skip
    back = load_any(tmp_path / "ct", processing=clt.cfg.weight_processing)
    assert isinstance(back, CrossLayerTranscoder)
    assert back.cfg.activation == activation and back.cfg.skip == skip
    assert back.cfg.k == (clt.cfg.k if activation == "topk" else None)
    for name, t in clt.state_tensors().items():
        got = back.state_tensors()[name]
        if name == "log_threshold":
            torch.testing.assert_close(got, t, atol=1e-15, rtol=1e-12)
        else:
            assert torch.equal(got, t), name
    back.check_compatible(model)
    # lazy: a few decoder rows without reading the file whole
    files = CircuitTracerCLTFiles(tmp_path / "ct")
    assert torch.equal(files.decoder_rows(0, [3, 7]), clt.W_dec[0].detach()[[3, 7]])
    # our own format is detected too
    clt.save(tmp_path / "ours")
    assert isinstance(load_any(tmp_path / "ours"), CrossLayerTranscoder)


def test_circuit_tracer_clt_bad_files(tmp_path):
    from tc_circuits.formats.circuit_tracer_clt import load_circuit_tracer_clt, save_circuit_tracer_clt

    model = make_tiny_model(n_layers=2)
    save_circuit_tracer_clt(make_clt(model, activation="relu"), tmp_path / "ct")
    cfg_file = tmp_path / "ct" / "config.yaml"
    text = cfg_file.read_text()
    cfg_file.write_text(text.replace("ln2.hook_normalized", "mlp.hook_in"))
    with pytest.raises(ValueError, match="gain and bias"):
        load_circuit_tracer_clt(tmp_path / "ct")
    cfg_file.write_text(text)
    (tmp_path / "ct" / "W_dec_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="W_dec_1"):
        load_circuit_tracer_clt(tmp_path / "ct")
    save_circuit_tracer_clt(make_clt(model), tmp_path / "ct", allow_topk=True)
    (tmp_path / "ct" / "W_enc_1.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupted"):
        load_circuit_tracer_clt(tmp_path / "ct")


def test_compare_clt_kind(tmp_path):
    from tc_circuits.evaluation.compare import CompareConfig, run_compare
    from tc_circuits.tasks import evaluate_task
    from tests.test_compare import _setup

    model, train, held_out, task = _setup()
    cfg = CompareConfig(
        model="tiny", kinds=("skip_transcoder", "clt"), n_latents=32, k=4, k_sweep=(), total_tokens=2048,
        batch_size=128, buffer_tokens=512, lr=1e-2, warmup_steps=0, out_dir=str(tmp_path / "cmp"), progress=False,
    )
    batches = [train[i : i + 8] for i in range(0, 64, 8)]
    res = run_compare(cfg, model=model, token_factory=lambda: iter(batches), eval_tokens=held_out, task=task)
    rows = [r for r in res.rows if r.kind == "clt"]
    assert [r.layer for r in rows] == ["0", "1", "all"]
    clt = CrossLayerTranscoder.load(tmp_path / "cmp" / "runs" / "clt_k4" / "clt")
    all_row = rows[-1]
    assert all_row.gt_prob_diff == pytest.approx(evaluate_task(model, task, clt).spliced, rel=1e-5)
    assert all_row.delta_ce == pytest.approx(evaluate_splice(model, clt, held_out).get((0, 1)).delta_ce, rel=1e-5, abs=1e-7)
    assert max(r.fvu for r in rows) < 1.0 and all(r.l0 <= 4 + 1e-9 for r in rows)
    with pytest.raises(ValueError, match="spans every layer"):
        run_compare(cfg.__class__(**{**cfg.to_dict(), "layers": (1,), "kinds": ("clt",)}), model=model,
                    token_factory=lambda: iter(batches), eval_tokens=held_out, task=task, write=False)


def test_clt_attribution_on_every_family(tmp_path):
    """Every block plan (parallel, RMS, post-norms, GQA, soft-caps): exact CLT graphs, frozen ablation == edge."""
    from families import FAMILIES, VOCAB, build_folder

    from tc_circuits.interventions import FeatureIntervention
    from tc_circuits.models.loading import load_model

    for fam in FAMILIES:
        model = load_model(build_folder(fam, tmp_path)[1], dtype="float64")
        clt = make_clt(model, n_latents=32)
        toks = torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(3))
        tgt = logit_target(5, VOCAB)
        g = attribute(model, clt, toks, targets=[tgt], progress=False)
        assert g.metadata["exactness_max_rel_dev"] < 1e-9, fam.name
        c = g.metadata["block_plan"]["logit_softcap"]
        pre = (lambda z: z) if c is None else (lambda z, c=c: c * torch.atanh(z / c))
        base = intervene(model, clt, toks, mode="frozen", recompute_features=False).logits[-1]
        torch.testing.assert_close(intervene(model, clt, toks, mode="live").logits, model(toks[None])[0].detach(),
                                   atol=1e-10, rtol=0)
        t, A = int(g.target_indices[0]), g.adjacency().to_dense()
        layer0 = [j for j in g.indices_of("feature").tolist() if int(g.nodes.layer[j]) == 0]
        for j in sorted(layer0, key=lambda j: -abs(float(A[t, j])))[:3]:
            iv = FeatureIntervention(0, int(g.nodes.pos[j]), int(g.nodes.latent[j]), 0.0)
            new = intervene(model, clt, toks, [iv], mode="frozen", recompute_features=False).logits[-1]
            delta = float(tgt.direction.double() @ (pre(new) - pre(base)))
            assert delta == pytest.approx(-float(A[t, j]), abs=1e-8), fam.name


def test_load_checks_content_hash_and_finite_weights(tmp_path):
    """A CLT file with one flipped weight fails its recorded content hash; a file whose
    weights hold NaN (written without a hash) is refused naming the tensor."""
    from safetensors.torch import load_file, save_file

    from tc_circuits.validate import ChecksumError, NonFiniteError

    model = make_tiny_model(n_layers=2)
    clt = make_clt(model)
    path = clt.save(tmp_path / "clt")
    f = path / "clt.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0x10  # a bit of the last tensor's data
    f.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="content check"):
        CrossLayerTranscoder.load(path)
    tensors = load_file(str(f))
    tensors["W_enc"][0, 0] = float("nan")
    save_file(tensors, str(f))  # no hash recorded: the finiteness check still runs
    with pytest.raises(NonFiniteError, match="W_enc"):
        CrossLayerTranscoder.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"n_layers": 3.0}, "n_layers"), ({"skip": "no"}, "skip"), ({"k": 2.5}, "k"), ({"input_kind": 3}, "input_kind"),
     ({"bogus": 1}, "unknown CLT config keys"), ({"k": 10_000}, "k must be in")],
)
def test_clt_config_from_dict_is_strict_like_the_transcoders(change: dict, message: str) -> None:
    good = CLTConfig(n_layers=3, d_in=8, d_out=8, n_latents=16, k=4).to_dict()
    assert CLTConfig.from_dict(dict(good)) == CLTConfig(n_layers=3, d_in=8, d_out=8, n_latents=16, k=4)
    with pytest.raises(ValueError, match=message):
        CLTConfig.from_dict({**good, **change})
