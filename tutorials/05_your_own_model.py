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
# # 5. Your own model: Pythia, Llama/Qwen, Gemma
#
# The pipeline is not tied to GPT-2. `load_model` reads a Hugging Face folder of any
# supported family (GPT-NeoX/Pythia, Llama, Qwen2, Qwen3, Gemma-2, Gemma-3 text; see
# [Architectures](../architectures.md)), and the attribution engine asks the model's
# *block plan* (`tc_circuits.models.block_plan`) what to freeze: parallel attention + MLP,
# RMSNorm, rotary positions, grouped-query attention, gated MLPs, q/k norms, Gemma's
# post-norms and soft-caps.
#
# This notebook runs the whole path on two models:
#
# * a **Pythia-shaped** model: `GPTNeoXConfig(use_parallel_residual=True, rotary_pct=0.25)`,
#   LayerNorm, untied unembedding;
# * a **Gemma-2-shaped** model: RMSNorm with post-attention and post-MLP norms, GQA, gated
#   GELU MLP, sliding-window / global layers, attention soft-cap 50 and final-logit soft-cap 30.
#
# Both are random and tiny (no weights can be downloaded here), built from the `transformers`
# config classes with the real models' structural flags and saved with `save_pretrained`:
# the same `load_model(folder)` call loads the real checkpoints. The numbers printed below are
# therefore a random model's (losses near log(vocabulary), few active latents where the
# random MLP outputs are tiny); the exactness checks hold as they do on real weights. The
# commands for the real models are shown in comments.

# %%
import tempfile
from pathlib import Path

import torch
import transformers

from tc_circuits.models.block_plan import block_plan
from tc_circuits.models.loading import load_model

workdir = Path(tempfile.mkdtemp(prefix="tc_tutorial05_"))
VOCAB = 256
small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=VOCAB,
             max_position_embeddings=128)
configs = {
    "pythia-shaped": transformers.GPTNeoXConfig(
        **small, num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu",
        tie_word_embeddings=False),
    "gemma2-shaped": transformers.Gemma2Config(
        **small, num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"]),
}
models = {}
for name, config in configs.items():
    with torch.random.fork_rng():  # random init without touching the caller's RNG state
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(config)
    hf.save_pretrained(workdir / name)
    models[name] = load_model(workdir / name)  # offline, processed as from_pretrained would
    tokens = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (torch.log_softmax(models[name](tokens), -1) - torch.log_softmax(hf(tokens).logits, -1)).abs().max()
    print(f"{name}: log-probs vs Hugging Face, max |diff| = {float(diff):.1e}")
    print("  block plan:", block_plan(models[name]).describe())

# Real models (weights from the Hub, or a local folder with the same files):
#   model = load_model("EleutherAI/pythia-160m")              # TransformerLens name
#   model = load_model("/data/gemma-2-2b")                   # local HF folder, fully offline
#   model = load_model("google/gemma-2-2b", local_dir="/data/gemma-2-2b")  # keep TL's name

# %% [markdown]
# ## Train transcoders
#
# One forward pass per batch feeds every layer's `(mlp_in, mlp_out)` pair: `mlp_in` is
# `blocks.L.ln2.hook_normalized` (in Pythia's parallel blocks that is `ln2` of the *block
# input*), `mlp_out` is `blocks.L.hook_mlp_out` (in Gemma, *after* the post-MLP norm, the
# site GemmaScope's transcoders use). A skip transcoder replaces the whole MLP, gated or not.

# %%
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import train_transcoders

corpus = torch.randint(0, VOCAB, (256, 32), generator=torch.Generator().manual_seed(1))
transcoders = {}
for name, model in models.items():
    cfg = TrainConfig(layers=(0, 1), kind="skip_transcoder", n_latents=256, k=16, batch_size=256,
                      total_tokens=256 * 80, buffer_tokens=2048, lr=1e-2, warmup_steps=5,
                      dead_tokens_threshold=4096, checkpoint_every=0, out_dir=None)
    result = train_transcoders(model, corpus, cfg, progress=False)
    transcoders[name] = result.transcoders
    print(name, {L: f"FVU {m.fvu:.3f}, L0 {m.l0:.0f}" for L, m in result.metrics.items()})

# The seed paper's Pythia-160M setting (from the command line; `--model` takes a TL name or a
# local folder once the CLI gains it):
#   tc-circuits train --model EleutherAI/pythia-160m --kind skip_transcoder \
#       --n-latents 32768 --k 32 --total-tokens 100000000 --out-dir out/pythia160m
# GemmaScope's Gemma-2-2B transcoders read ln2.hook_normalized and write hook_mlp_out (after the
# post-MLP norm): the sites above. Import them instead of training (docs/ecosystem.md, per family):
#   from tc_circuits.formats import load_any, load_gemmascope, load_saelens_release
#   model = load_model("/models/gemma-2-2b")                       # processed, offline
#   tcs = load_any("/data/gemma-scope-transcoders", model=model)   # circuit-tracer layout (params.npz)
#   tc3 = load_gemmascope("/data/gemma-scope-2b-pt-transcoders/layer_3/width_16k/average_l0_54", model=model)
#   tc3 = load_saelens_release("gemma-scope-2b-pt-transcoders", "layer_3/width_16k/average_l0_54", model=model)
# Files read after the norm's gain (circuit-tracer mlp.hook_in, sparsify layers.L.mlp, GemmaScope 2)
# also take hf_model="/models/gemma-2-2b": the gain (1 + w) is folded into the encoder exactly.

# %% [markdown]
# ## Splice, attribute, check
#
# Splicing replaces the MLP outputs by the transcoders'. The attribution graph is exact:
# every node's incoming edges sum to its value (`exactness_max_rel_dev`). On the Gemma-2
# model the targets are the **pre-soft-cap** logits `z` (the model outputs
# `30 * tanh(z / 30)`): the linear replacement model can sum to `z` exactly, and the graph
# metadata says so (`block_plan.target_values`). Rotary models have no position nodes: the
# positions act inside the attention patterns, which are frozen.

# %%
from tc_circuits.attribution import attribute
from tc_circuits.evaluation.evaluate import evaluate_splice
from tc_circuits.graph import prune_graph
from tc_circuits.interventions import FeatureIntervention, intervene

prompt = torch.randint(0, VOCAB, (16,), generator=torch.Generator().manual_seed(2))
for name, model in models.items():
    tcs = transcoders[name]
    report = evaluate_splice(model, tcs, corpus[:32], per_layer=False)
    row = report.rows[-1]
    print(f"{name}: CE {row.ce_orig:.3f} -> spliced {row.ce_spliced:.3f} (KL {row.kl:.3f})")
    graph = attribute(model, tcs, prompt, max_n_logits=3, progress=False)
    meta = graph.metadata
    print(f"  graph: {graph.n_nodes} nodes, {graph.n_edges} edges, exactness rel. dev "
          f"{meta['exactness_max_rel_dev']:.1e}, position nodes: {meta['has_position_nodes']}, "
          f"targets: {meta['block_plan']['target_values']}")
    pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
    print(f"  pruned to {int(pruned.node_mask.sum())} nodes")
    # the strongest direct feature edge into the first target equals a frozen ablation
    t = int(graph.target_indices[0])
    A = graph.adjacency().to_dense()
    feats = graph.indices_of("feature")
    j = int(feats[A[t, feats].abs().argmax()])
    iv = FeatureIntervention(int(graph.nodes.layer[j]), int(graph.nodes.pos[j]), int(graph.nodes.latent[j]), 0.0)
    cap = meta["block_plan"]["logit_softcap"]
    uncap = (lambda z: z) if cap is None else (lambda z: cap * torch.atanh(z / cap))
    base = intervene(model, tcs, prompt, mode="frozen", recompute_features=False).logits[-1]
    new = intervene(model, tcs, prompt, [iv], mode="frozen", recompute_features=False).logits[-1]
    tok = int(graph.nodes.token_id[t])
    d = uncap(new.double()) - uncap(base.double())
    change = float(d[tok] - d.mean())
    print(f"  edge {float(A[t, j]):+.4f} vs frozen ablation effect {-change:+.4f}")

# The real Gemma-2-2B graph, in Python (GemmaScope transcoders as above):
#   model = load_model("google/gemma-2-2b")
#   graph = attribute(model, tcs, "The capital of the state containing Dallas is", max_feature_nodes=4096)
