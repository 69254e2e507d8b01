"""Per-family imports against the real tools' own loaders and forwards (peers environment).

* sparsify's ``SparseCoder`` (random, ``save_to_disk``) on the ``layers.1.mlp`` of tiny
  Pythia- and Llama-3-shaped HF models: its forward on the HF MLP input equals our import on
  our processed model's ``ln2.hook_normalized``;
* GemmaScope ``params.npz``: circuit-tracer's ``load_gemma_scope_transcoder`` and SAELens'
  ``gemma_2_transcoder`` loader read the file; their hook names are ours and their forwards
  equal our import's;
* GemmaScope 2 ``params.safetensors``: circuit-tracer's ``load_gemma_scope_2_transcoder`` on
  the norm output (with the gain) equals our import (gain folded) on the bare normalised vector.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from families import VOCAB, build_folder, family
from safetensors.torch import save_file

from tc_circuits.formats import load_gemmascope, load_sparsify

L = 1
N = 48


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _jump(d, seed, skip=False):
    g = torch.Generator().manual_seed(seed)
    t = {"W_enc": torch.randn(d, N, generator=g) / d**0.5, "W_dec": 0.3 * torch.randn(N, d, generator=g),
         "b_enc": 0.1 * torch.randn(N, generator=g), "b_dec": 0.1 * torch.randn(d, generator=g),
         "threshold": 0.3 + 0.3 * torch.rand(N, generator=g)}
    if skip:
        t["W_skip"] = 0.1 * torch.randn(d, d, generator=g)
    return t


def _normed(d, seed, n=12):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x / x.pow(2).mean(-1, keepdim=True).sqrt()


@pytest.mark.parametrize("name", ["pythia", "llama3"])
def test_sparsify_sparse_coder_on_family_mlp(tmp_path, name):
    from sparsify import SparseCoder, SparseCoderConfig

    from tc_circuits.models.loading import load_model

    hf, folder = build_folder(family(name), tmp_path)
    model = load_model(folder)
    d = model.cfg.d_model
    sc = SparseCoder(d, SparseCoderConfig(num_latents=N, k=5, transcode=True, skip_connection=True), device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in sc.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    sc.save_to_disk(tmp_path / "sp" / f"layers.{L}.mlp")
    ours = load_sparsify(tmp_path / "sp" / f"layers.{L}.mlp", hf_model=folder, model=model)
    toks = torch.randint(0, VOCAB, (1, 10), generator=g)
    base = hf.gpt_neox if name == "pythia" else hf.model
    seen = {}
    hook = base.layers[L].mlp.register_forward_hook(lambda m, i, o: seen.update(x=i[0][0]))
    try:
        with torch.no_grad():
            hf(toks)
    finally:
        hook.remove()
    _, cache = model.run_with_cache(toks)
    with torch.no_grad():
        theirs = sc(seen["x"]).sae_out
        mine = ours(cache[f"blocks.{L}.ln2.hook_normalized"][0]).output
    if name == "pythia":  # TransformerLens centres the LayerNorm model's MLP output
        theirs = theirs - theirs.mean(-1, keepdim=True)
    assert rel(mine, theirs) < 1e-5
    # our export, loaded by sparsify at the same hookpoint, computes the same on HF's activations
    from tc_circuits.formats import save_sparsify

    save_sparsify(ours, tmp_path / "export", hf_model=folder)
    back = SparseCoder.load_from_disk(tmp_path / "export" / f"layers.{L}.mlp", device="cpu")
    with torch.no_grad():
        again = back(seen["x"]).sae_out
    assert rel(again, theirs) < 1e-5  # (Pythia: the centred decoder was written as is)


def test_gemmascope_npz_as_circuit_tracer_and_saelens_read_it(tmp_path, monkeypatch):
    import sae_lens.loading.pretrained_sae_loaders as loaders
    from circuit_tracer.transcoder.single_layer_transcoder import load_gemma_scope_transcoder
    from sae_lens import JumpReLUTranscoder

    d = 64
    t = _jump(d, 2)
    folder = tmp_path / f"layer_{L}" / "width_16k" / "average_l0_9"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in t.items()})
    ours = load_gemmascope(folder)
    x = _normed(d, 3)
    ct = load_gemma_scope_transcoder(str(folder / "params.npz"), L, device=torch.device("cpu"))
    monkeypatch.setattr(loaders, "hf_hub_download", lambda **kw: str(folder / "params.npz"))
    cfg, state, _ = loaders.gemma_2_transcoder_huggingface_loader(
        "google/gemma-scope-2b-pt-transcoders", f"layer_{L}/width_16k/average_l0_9")
    assert (cfg["hook_name"], cfg["hook_name_out"]) == (ours.cfg.input_site, ours.cfg.output_site)
    cfg.update(d_in=d, d_out=d, d_sae=N)  # the loader takes the widths from the repo and folder names
    sl = JumpReLUTranscoder.from_dict(cfg)
    sl.load_state_dict(state)
    with torch.no_grad():
        mine = ours(x)
        assert rel(mine.latents, ct.encode(x)) < 1e-6
        assert rel(mine.output, ct(x)) < 1e-6
        assert rel(mine.latents, sl.encode(x)) < 1e-6
        assert rel(mine.output, sl(x)) < 1e-6


def test_gemmascope2_as_circuit_tracer_reads_it(tmp_path):
    from circuit_tracer.transcoder.single_layer_transcoder import load_gemma_scope_2_transcoder

    d = 64
    t = _jump(d, 4, skip=True)
    folder = tmp_path / "transcoder" / f"layer_{L}_width_16k_l0_small"
    folder.mkdir(parents=True)
    names = {"W_enc": "w_enc", "W_dec": "w_dec", "W_skip": "affine_skip_connection"}
    save_file({names.get(k, k): v.contiguous() for k, v in t.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-1b-pt"}))
    gain = 1.0 + 0.2 * torch.randn(d, generator=torch.Generator().manual_seed(5))
    ours = load_gemmascope(folder, hf_model={f"blocks.{L}.ln2.w": gain})  # TL unprocessed: the gain as applied
    ct = load_gemma_scope_2_transcoder(str(folder / "params.safetensors"), L, device=torch.device("cpu"))
    n = _normed(d, 6)
    with torch.no_grad():
        mine = ours(n)
        assert rel(mine.latents, ct.encode(n * gain)) < 1e-5
        assert rel(mine.output, ct(n * gain)) < 1e-5
