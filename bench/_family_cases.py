"""Gemma-2-2B- and Llama-3.2-1B-shaped cases of ``bench_vs_circuit_tracer.py``.

Each case writes a random model of the real architecture (real d_model, heads, KV heads, d_mlp,
vocabulary, soft-caps, rope; ``n_layers`` layers) as the official name's snapshot in a fake
offline Hugging Face cache (``_fake_hub.py``). circuit-tracer loads it the way its users do,
``ReplacementModel.from_pretrained_and_transcoders(official_name, transcoders,
first_n_layers=n)``, in a process whose environment points ``HF_HUB_CACHE`` at that cache with
``HF_HUB_OFFLINE=1``; we load the same snapshot folder with ``load_model`` (processed). Both
read the same JumpReLU transcoders of the real width (``n_latents``: GemmaScope's 16k for
Gemma; a stated width for Llama), written by our exporter and read by circuit-tracer's own
``load_transcoders``. The thresholds are set per layer so that ``l0`` latents fire per token on
the bench prompt (random transcoders have no natural sparsity).
"""

from __future__ import annotations

import json
from pathlib import Path

import _fake_hub

CASE_MODELS = tuple(_fake_hub.REAL)  # "gemma2", "llama3"
KIND = {"gemma2": "transcoder", "llama3": "skip_transcoder"}  # GemmaScope: no skip; circuit-tracer's Llama sets: skip
MARKER = "fake_hub.json"

#: the vocabulary of the presets: the real ones (256,000 / 128,256) need > 13 GB per process to
#: load (our loader holds several copies of the embedding while folding), more than two sides
#: fit on the 23 GB machine these ran on; ``vocab_size: None`` in a JSON case gives the real
#: one (circuit-tracer then takes the plain ``from_pretrained_and_transcoders`` route).
VOCAB = 32768

#: named presets for ``--cases`` (real dims, 2 layers; rows as the GPT-2 cases of issue 18)
NAMED = {
    "gemma2-shape": [
        dict(name="gemma2-shape (2 layers, 16k JumpReLU, L0 64, vocab 32k)", model="gemma2", n_layers=2,
             length=n_tok, n_latents=16384, l0=64, n_targets=10, max_feature_nodes=1024, batch=64,
             vocab_size=VOCAB)
        for n_tok in (64, 256)
    ],
    "llama3-shape": [
        dict(name="llama3-shape (2 layers, 32k JumpReLU skip, L0 32, vocab 32k)", model="llama3", n_layers=2,
             length=n_tok, n_latents=32768, l0=32, n_targets=10, max_feature_nodes=1024, batch=64,
             vocab_size=VOCAB)
        for n_tok in (64, 256)
    ],
}


def is_family(workdir: Path) -> bool:
    return (Path(workdir) / MARKER).is_file()


def hub_env(workdir: Path) -> dict[str, str]:
    """Extra environment for circuit-tracer's process (empty for the other cases)."""
    return _fake_hub.offline_env(Path(workdir) / "hub") if is_family(workdir) else {}


def prepare(case: dict, workdir: Path) -> None:
    """Fake Hub snapshot, calibrated JumpReLU transcoders (circuit-tracer format), tokens, targets."""
    import torch

    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
    from tc_circuits.formats import save_circuit_tracer
    from tc_circuits.models.loading import load_model

    fam, n_layers = case["model"], case["n_layers"]
    snap = _fake_hub.write_fake_hub(workdir / "hub", fam, n_layers, seed=0, vocab_size=case.get("vocab_size"))
    model = load_model(_fake_hub.official_name(fam), local_dir=snap)
    gen = torch.Generator().manual_seed(1)
    bos = int(model.tokenizer.bos_token_id)
    body = torch.randint(3, min(model.cfg.d_vocab, len(model.tokenizer)), (case["length"] - 1,), generator=gen)
    tokens = torch.cat([torch.tensor([bos]), body])
    n, l0 = case["n_latents"], case["l0"]
    tcs = {}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[None], names_filter=lambda h: h.endswith("ln2.hook_normalized"))
        for layer in range(n_layers):
            cfg = TranscoderConfig.for_model(model, layer, n, kind=KIND[fam], activation="jumprelu", k=None)
            tc = Transcoder(cfg, seed=layer)
            d = cfg.d_in
            tc.W_dec.copy_(torch.randn(n, d, generator=gen) * 0.05)
            if tc.W_skip is not None:
                tc.W_skip.copy_(torch.randn(d, d, generator=gen) * 0.01)
            pre = tc.pre_acts(cache[f"blocks.{layer}.ln2.hook_normalized"][0, 1:])
            thr = torch.quantile(pre.flatten()[:2**24], 1 - l0 / n).clamp_min(1e-3)
            jitter = torch.exp(0.05 * torch.randn(n, generator=gen))
            tc.log_threshold.copy_((thr * jitter).log())
            tcs[layer] = tc
    targets = torch.topk(logits[0, -1], case["n_targets"]).indices  # capped or not: the same order
    save_circuit_tracer(tcs, workdir / "tcs", model=model)
    torch.save({"tokens": tokens, "targets": targets, "k": None}, workdir / "inputs.pt")
    (workdir / MARKER).write_text(json.dumps({"family": fam, "n_layers": n_layers, "snapshot": str(snap),
                                                "vocab_size": int(model.cfg.d_vocab)}))


def load_ours(workdir: Path):
    """Our processed model of the snapshot and the transcoders, as the bench's ours-side uses."""
    from tc_circuits.formats import load_circuit_tracer
    from tc_circuits.models.loading import load_model
    from tc_circuits.models.model_info import weight_processing

    meta = json.loads((Path(workdir) / MARKER).read_text())
    model = load_model(_fake_hub.official_name(meta["family"]), local_dir=meta["snapshot"])
    return model, load_circuit_tracer(Path(workdir) / "tcs", processing=weight_processing(model))


def load_ct(workdir: Path):
    """circuit-tracer's model, as its users get it: the official name, from the (fake) Hub cache."""
    import torch
    import yaml
    from circuit_tracer import ReplacementModel
    from circuit_tracer.utils.hf_utils import load_transcoders

    meta = json.loads((Path(workdir) / MARKER).read_text())
    config = yaml.safe_load((Path(workdir) / "tcs" / "config.yaml").read_text())
    tset = load_transcoders(config, device=torch.device("cpu"), dtype=torch.float32,
                            lazy_encoder=False, lazy_decoder=False)
    name = _fake_hub.official_name(meta["family"])
    extra = {}
    if meta.get("vocab_size") not in (None, _fake_hub.REAL[meta["family"]][2]["vocab_size"]):
        # TransformerLens hard-codes the official vocabulary unless it is handed the HF model:
        # load it from the fake cache by name, as TransformerLens itself would
        from transformers import AutoModelForCausalLM

        extra["hf_model"] = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    model = ReplacementModel.from_pretrained_and_transcoders(
        name, tset, device=torch.device("cpu"), dtype=torch.float32, first_n_layers=meta["n_layers"], **extra,
    )
    return model.eval()
