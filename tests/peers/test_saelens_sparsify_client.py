"""SAELens and sparsify (the real packages): trained with their own trainers, imported into
ours and matched against their own forward; our exports loaded by their loaders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
from tc_circuits.formats import load_saelens, load_sparsify_many, save_saelens

D = 16


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _data(seed=0, batch=32):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(batch, D, generator=g) * 3 + 1


def _train_saelens(sae, steps=20):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = SAETrainerConfig(total_training_samples=32 * steps, train_batch_size_samples=32,
                           n_batches_for_norm_estimate=4, lr_end=3e-4)
    return SAETrainer(cfg, sae, _data()).fit()


def test_saelens_topk_training_output_imports_exactly(tmp_path):
    """SAELens' defaults for TopK: rescale_acts_by_decoder_norm, expected_average_only_in."""
    from sae_lens import SAE
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = _train_saelens(TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=D, d_sae=64, k=4, normalize_activations="expected_average_only_in")))
    assert sae.cfg.rescale_acts_by_decoder_norm
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_post"
    sae.cfg.metadata.model_name = "tc-circuits/organism"
    sae.save_inference_model(tmp_path / "sl")
    theirs = SAE.load_from_disk(str(tmp_path / "sl"), device="cpu")
    ours = load_saelens(tmp_path / "sl")
    x = next(_data(5))
    with torch.no_grad():
        assert rel(ours(x).output, theirs(x)) < 1e-5
        assert torch.equal(ours(x).latents > 0, theirs.encode(x) > 0)
    assert ours.cfg.model_name == "tc-circuits/organism"


def test_saelens_gated_and_jumprelu_skip_transcoder_import(tmp_path):
    from sae_lens.saes.gated_sae import GatedSAE, GatedSAEConfig
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig

    g = torch.Generator().manual_seed(1)
    gated = GatedSAE(GatedSAEConfig(d_in=D, d_sae=48))
    jst = JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(d_in=D, d_sae=48, d_out=D, apply_b_dec_to_input=False))
    for sae, hooks in ((gated, ("blocks.1.hook_resid_post",)), (jst, ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"))):
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(torch.rand(p.shape, generator=g) * 0.3 if name == "threshold" else torch.randn(p.shape, generator=g) * 0.3)
        sae.cfg.metadata.hook_name = hooks[0]
        if len(hooks) > 1:
            sae.cfg.metadata.hook_name_out = hooks[1]
        name = sae.cfg.architecture()
        sae.save_model(tmp_path / name)
        cfg = json.loads((tmp_path / name / "cfg.json").read_text())
        if len(hooks) > 1:  # SAELens 6 keeps hook_name_out in metadata only when set there
            cfg.setdefault("hook_name_out", hooks[1])
            (tmp_path / name / "cfg.json").write_text(json.dumps(cfg))
        ours = load_saelens(tmp_path / name)
        x = next(_data(6))
        with torch.no_grad():
            assert rel(ours(x).output, sae(x)) < 1e-5, name
            assert torch.equal(ours(x).latents > 0, sae.encode(x) > 0), name


@pytest.mark.parametrize("activation,skip", [("jumprelu", True), ("relu", False), ("topk", None)])
def test_saelens_loads_our_export_and_round_trips(tmp_path, activation, skip):
    from sae_lens import SAE

    sae_kind = skip is None
    proc = {"fold_ln": True, "center_writing_weights": False, "center_unembed": True}
    cfg = TranscoderConfig(d_in=D, d_out=D, n_latents=40, input_site="blocks.1.hook_resid_post" if sae_kind
                           else "blocks.1.ln2.hook_normalized", output_site="blocks.1.hook_resid_post" if sae_kind
                           else "blocks.1.hook_mlp_out", activation=activation, k=5 if activation == "topk" else None,
                           skip=bool(skip), model_name="tc-circuits/organism", model_d_model=D, weight_processing=proc)
    tc = Transcoder(cfg)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    save_saelens(tc, tmp_path / "ours")
    theirs = SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    x = next(_data(7))
    with torch.no_grad():
        assert rel(theirs(x), tc(x).output) < 1e-5
    meta = theirs.cfg.metadata
    assert meta.model_name == "tc-circuits/organism" and meta.model_from_pretrained_kwargs == proc
    theirs.save_model(tmp_path / "resaved")  # SAELens writes it back
    back = load_saelens(tmp_path / "resaved")
    assert back.cfg.weight_processing == proc and back.cfg.model_name == "tc-circuits/organism"
    assert back.cfg.model_d_model == D
    with torch.no_grad():
        assert rel(back(x).output, tc(x).output) < 1e-5


def _tiny_gpt2(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=32))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1 + 0.3 * noise if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.2 * noise)
    hf.eval()
    hf.save_pretrained(tmp_path / "gpt2")
    return hf, torch.randint(0, 97, (64, 16), generator=gen)


def _mlp_input(hf, tokens, layer=1):
    seen = {}
    handle = hf.transformer.h[layer].mlp.register_forward_hook(lambda m, a, o: seen.update(x=a[0].detach()))
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    return seen["x"].flatten(0, 1)


def test_sparsify_trainer_output_imports_exactly(tmp_path):
    """sparsify's own Trainer on a tiny HF GPT-2; its h.1.mlp transcoder maps onto the
    TransformerLens model (LayerNorm folded, output centred) and matches sparsify's forward."""
    from datasets import Dataset
    from sparsify import SparseCoder, SparseCoderConfig, TrainConfig, Trainer

    from tc_circuits.models.loading import load_model

    hf, tokens = _tiny_gpt2(tmp_path)
    data = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    cfg = TrainConfig(SparseCoderConfig(num_latents=64, k=4, transcode=True, skip_connection=True),
                      batch_size=8, hookpoints=["h.1.mlp"], save_dir=str(tmp_path / "out"), run_name="run",
                      log_to_wandb=False, save_every=1000)
    Trainer(cfg, data, hf).fit()
    folder = tmp_path / "out" / "run"
    ours = load_sparsify_many(folder, hf_model=hf, model_name="gpt2")[1]
    sc = SparseCoder.load_from_disk(folder / "h.1.mlp", device="cpu")
    model = load_model(tmp_path / "gpt2")
    _, cache = model.run_with_cache(tokens[:2])
    with torch.no_grad():
        theirs = sc(_mlp_input(hf, tokens[:2])).sae_out
        mine = ours(cache["blocks.1.ln2.hook_normalized"].flatten(0, 1)).output
    centred = theirs - theirs.mean(-1, keepdim=True)  # TransformerLens centres the MLP output
    assert rel(mine, centred) < 1e-5


def test_saelens_release_reference_offline_matches_from_pretrained(tmp_path, monkeypatch):
    """A pretrained-release reference (``gpt2-small-res-jb``) through one offline hub cache:
    SAELens' ``SAE.from_pretrained`` and our ``load_saelens_release`` compute the same."""
    import huggingface_hub
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    from tc_circuits.formats import load_saelens_release

    entry = get_pretrained_saes_directory()["gpt2-small-res-jb"]
    sae_id = "blocks.2.hook_resid_pre"
    sae = StandardSAE(StandardSAEConfig(d_in=768, d_sae=64))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    sae.cfg.metadata.hook_name = sae_id
    sae.cfg.metadata.model_name = "gpt2-small"
    src = tmp_path / "src"
    sae.save_model(src)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{entry.repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    dst = repo / "snapshots" / commit / entry.saes_map[sae_id]
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    theirs = SAE.from_pretrained("gpt2-small-res-jb", sae_id, device="cpu")
    ours = load_saelens_release("gpt2-small-res-jb", sae_id, cache_dir=tmp_path / "hub")
    x = torch.randn(5, 768, generator=g)
    with torch.no_grad():
        assert rel(ours(x).output, theirs(x)) < 1e-5
    assert ours.cfg.model_name == "gpt2" and ours.cfg.weight_processing["center_writing_weights"] is True


def test_sparsify_loads_our_export(tmp_path):
    from sparsify import SparseCoder

    from tc_circuits.formats import save_sparsify
    from tc_circuits.models.loading import load_model

    hf, tokens = _tiny_gpt2(tmp_path)
    model = load_model(tmp_path / "gpt2")
    tc = Transcoder(TranscoderConfig.for_model(model, 1, 64, kind="skip_transcoder", activation="topk", k=6), seed=3)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in tc.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_sparsify(tc, tmp_path / "sp", hf_model=hf)
    sc = SparseCoder.load_from_disk(tmp_path / "sp" / "h.1.mlp", device="cpu")
    _, cache = model.run_with_cache(tokens[:2])
    with torch.no_grad():
        theirs = sc(_mlp_input(hf, tokens[:2])).sae_out
        mine = tc(cache["blocks.1.ln2.hook_normalized"].flatten(0, 1)).output
    assert rel(theirs, mine) < 1e-5
