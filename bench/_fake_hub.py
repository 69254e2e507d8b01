"""Offline stand-ins for Hub models, so circuit-tracer can load them *by their official name*.

circuit-tracer loads a model only by its Hugging Face name
(``ReplacementModel.from_pretrained_and_transcoders(name, transcoders)`` ->
TransformerLens ``HookedTransformer.from_pretrained(name, fold_ln=False, ...)``), and
TransformerLens 3.2.1 hard-codes the architecture of official names (``google/gemma-2-2b``:
d_model 2304, 8 heads of 256, 4 KV heads, d_mlp 9216, soft-caps 50 / 30, vocabulary 256,000;
``meta-llama/Llama-3.2-1B``: d_model 2048, 32 heads of 64, 8 KV heads, d_mlp 8192, llama3 rope,
vocabulary 128,256) and reads only the weights from the Hub. Nothing can be downloaded here, so:

* :func:`real_config` is the real model's ``transformers`` config (from the model cards' values)
  with fewer layers; :func:`random_model` a random model of it (HF init, norm gains perturbed
  so that folding them is tested);
* :func:`write_fake_hub` saves such a model and a word-level tokenizer (up to 100,000 tokens,
  see :data:`MAX_TOKENIZER_VOCAB`) in the Hugging Face cache layout (``models--org--name/{refs/main, snapshots/<rev>/...}``);
  with ``HF_HUB_CACHE`` pointing there and ``HF_HUB_OFFLINE=1`` (both read when
  ``huggingface_hub`` is imported: set them before, e.g. in a subprocess's environment, see
  :func:`offline_env`) the plain circuit-tracer call loads it, with TransformerLens'
  ``first_n_layers`` for the layer count;
* in a process that has already imported ``transformers``, pass the model itself instead:
  ``from_pretrained_and_transcoders(name, tset, hf_model=..., tokenizer=..., first_n_layers=n)``
  (documented TransformerLens ``from_pretrained`` arguments that circuit-tracer forwards;
  TransformerLens then takes the vocabulary size from ``hf_model``, so it may be small).

TransformerLens keeps the official architecture whatever the weights, so the dimensions must
be the real ones; only the number of layers (``first_n_layers``) and, with ``hf_model=``, the
vocabulary may shrink. ``python bench/_fake_hub.py gemma2`` checks the plain route on a
real-vocabulary snapshot (about 13 GB peak RSS for circuit-tracer's process with 1 layer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

#: family -> (official Hub name, ``transformers`` config class, the real model's config values)
REAL: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gemma2": ("google/gemma-2-2b", "Gemma2Config", dict(
        vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
        rope_theta=10000.0, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        sliding_window=4096, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )),
    "llama3": ("meta-llama/Llama-3.2-1B", "LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001,
    )),
}


def official_name(family: str) -> str:
    if family not in REAL:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(REAL)}")
    return REAL[family][0]


def real_config(family: str, n_layers: int, vocab_size: int | None = None):
    """The real model's HF config with ``n_layers`` layers (and optionally a smaller vocabulary)."""
    import transformers

    official_name(family)
    _, cls, kw = REAL[family]
    kw = dict(kw, num_hidden_layers=n_layers)
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
        if family == "llama3":  # the real special ids (128000, 128001) lie past a small vocabulary
            kw.update(bos_token_id=1, eos_token_id=2)
    return getattr(transformers, cls)(**kw)


def random_model(family: str, n_layers: int, *, vocab_size: int | None = None, seed: int = 0):
    """A random HF causal LM of the real config (HF init, std 0.02; norm gains perturbed)."""
    from transformers import AutoModelForCausalLM

    cfg = real_config(family, n_layers, vocab_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                # Gemma's RMSNorm multiplies by (1 + w), Llama's by w
                base = 0.0 if family == "gemma2" else 1.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def word_tokenizer(vocab_size: int, bos_id: int, eos_id: int | None = None, pad_id: int | None = None):
    """A word-level ``PreTrainedTokenizerFast``: words ``w{i}`` for ids below ``vocab_size`` and
    ``<bos>`` / ``<eos>`` / ``<pad>`` at the given ids, so ``"w5 w7"`` encodes to ``[5, 7]``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = {bos_id: "<bos>"}
    if eos_id is not None:
        special[eos_id] = "<eos>"
    if pad_id is not None:
        special[pad_id] = "<pad>"
    vocab = {f"w{i}": i for i in range(vocab_size) if i not in special}
    vocab.update({text: i for i, text in special.items()})  # special ids may lie past vocab_size
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<bos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = {"bos_token": "<bos>"}
    if eos_id is not None:
        kw["eos_token"] = "<eos>"
    if pad_id is not None:
        kw["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


#: transformers 4.57.3 asks the Hub (``huggingface_hub.model_info``, its Mistral-regex check) about
#: any tokenizer of more than 100,000 tokens loaded by Hub name, and fails with
#: ``OfflineModeIsEnabled`` under ``HF_HUB_OFFLINE=1``; so the fake tokenizer stops there (ids
#: past it are valid model inputs, they just have no text).
MAX_TOKENIZER_VOCAB = 100_000


def tokenizer_for(model) -> Any:
    cfg = model.config
    ids = [cfg.bos_token_id, cfg.eos_token_id, getattr(cfg, "pad_token_id", None)]
    n = min(cfg.vocab_size, MAX_TOKENIZER_VOCAB)
    n -= len({i for i in ids if i is not None and i >= n})  # room for specials past the words
    return word_tokenizer(n, *ids)


def load_tokenizer(folder: str | os.PathLike) -> Any:
    """The tokenizer saved in ``folder``, read back (TransformerLens re-opens a tokenizer from
    its ``name_or_path``, so it must come from a folder, not be built in memory)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def snapshot_dir(cache: str | os.PathLike, name: str, revision: str = "0" * 40) -> Path:
    return Path(cache) / f"models--{name.replace('/', '--')}" / "snapshots" / revision


def write_fake_hub(cache: str | os.PathLike, family: str, n_layers: int, *, seed: int = 0,
                   vocab_size: int | None = None, model=None) -> Path:
    """Save a random ``family`` model (real dimensions, ``n_layers``) and its tokenizer as the
    official name's snapshot in the Hugging Face cache ``cache``; returns the snapshot folder
    (also a plain local HF folder, which ``tc_circuits.models.loading.load_model`` reads)."""
    name = official_name(family)
    revision = "0" * 40
    snap = snapshot_dir(cache, name, revision)
    snap.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else random_model(family, n_layers, vocab_size=vocab_size, seed=seed)
    model.save_pretrained(snap)
    tokenizer_for(model).save_pretrained(snap)
    refs = snap.parent.parent / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(revision)
    return snap


def offline_env(cache: str | os.PathLike) -> dict[str, str]:
    """Environment variables for a *fresh* process that reads the fake cache and nothing else."""
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


def _check_plain_route(family: str, n_layers: int) -> None:
    """Write a real-vocabulary snapshot and load it with the plain circuit-tracer call in a fresh
    offline process (peers venv); prints the log-prob difference to the HF model."""
    import subprocess
    import sys
    import tempfile

    script = f"""
import torch, resource
from circuit_tracer import ReplacementModel
from circuit_tracer.transcoder import TranscoderSet
from circuit_tracer.transcoder.activation_functions import JumpReLU
from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder
from transformers import AutoModelForCausalLM
name, d, n = {official_name(family)!r}, {REAL[family][2]["hidden_size"]}, {n_layers}
cpu = torch.device("cpu")
tcs = {{i: SingleLayerTranscoder(d, 64, JumpReLU(torch.zeros(64), 0.1), i, skip_connection=False,
                               device=cpu, dtype=torch.float32) for i in range(n)}}
tset = TranscoderSet(tcs, feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out", scan="x")
m = ReplacementModel.from_pretrained_and_transcoders(name, tset, device=cpu, dtype=torch.float32, first_n_layers=n)
ids = m.ensure_tokenized("w5 w9 w22 w7")
hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
with torch.no_grad():
    diff = (m(ids[None])[0].log_softmax(-1) - hf(ids[None]).logits[0].log_softmax(-1)).abs().max()
print("circuit-tracer loaded", name, "d_vocab", m.cfg.d_vocab, "n_layers", m.cfg.n_layers, "tokens", ids.tolist(),
      "max |log-prob diff| vs HF", float(diff), "peak RSS GB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
"""
    with tempfile.TemporaryDirectory() as cache:
        write_fake_hub(cache, family, n_layers)
        env = dict(os.environ, **offline_env(cache))
        peers = Path(__file__).resolve().parents[1] / ".venv-peers" / "bin" / "python"
        subprocess.run([str(peers if peers.exists() else sys.executable), "-c", script], env=env, check=True)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="check: circuit-tracer loads a fake offline snapshot by official name")
    ap.add_argument("family", choices=sorted(REAL))
    ap.add_argument("--layers", type=int, default=1)
    args = ap.parse_args()
    _check_plain_route(args.family, args.layers)
