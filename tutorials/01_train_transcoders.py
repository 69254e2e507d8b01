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
# # 1. Train transcoders and skip transcoders
#
# A **transcoder** replaces an MLP by a wide, sparse layer: it reads the MLP's input
# (`blocks.L.ln2.hook_normalized`) and predicts its output (`blocks.L.hook_mlp_out`),
#
#     f(x) = TopK(x @ W_enc + b_enc) @ W_dec + b_dec            (transcoder)
#     f(x) = TopK(x @ W_enc + b_enc) @ W_dec + x @ W_skip + b_dec (skip transcoder)
#
# Here we train both on the bundled model organism, with a deliberately tiny token budget
# so that the notebook runs in well under a minute on a laptop CPU. The shipped organism
# transcoders (tutorial 2) were trained the same way on far more tokens.

# %%
import tempfile
from pathlib import Path

import torch

from tc_circuits import Site, TranscoderSet
from tc_circuits.evaluation.evaluate import evaluate_reconstruction
from tc_circuits.organism import load_organism, organism_token_source
from tc_circuits.training.trainer import TrainConfig, train_transcoders

model = load_organism()
print(f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}, d_mlp {model.cfg.d_mlp}, "
      f"vocab {model.cfg.d_vocab}")
print("transcoder input hook: ", Site(1, "mlp_in").hook_name)
print("transcoder output hook:", Site(1, "mlp_out").hook_name)

# %% [markdown]
# ## Tokens
#
# The trainer takes a *token factory*: a zero-argument callable that returns a fresh
# iterator over the same stream of `LongTensor[batch, seq]` every time (so that a resumed
# run can replay it). `organism_token_source(seed, batch_size, seq_len)` is an endless,
# deterministic stream of corpus documents, each row starting with BOS.

# %%
def token_factory():
    return organism_token_source(0, 16, 64, tokenizer=model.tokenizer)


batch = next(token_factory())
print(batch.shape)
print(repr(model.to_string(batch[0, 1:20])))

# %% [markdown]
# ## Train
#
# One forward pass per token batch feeds every requested layer (here only layer 1, to keep
# the notebook fast). `out_dir=None` writes nothing to disk; set a folder to get atomic
# checkpoints and `resume=True`.

# %%
cfg = TrainConfig(
    layers=(1,),
    kind="skip_transcoder",
    n_latents=512,
    k=8,
    batch_size=1024,
    total_tokens=40_960,   # 40 optimiser steps: a toy budget (the shipped ones saw millions)
    buffer_tokens=8192,
    warmup_steps=5,
    dead_tokens_threshold=10_000,
    checkpoint_every=0,
    out_dir=None,
)
skip = train_transcoders(model, token_factory, cfg, progress=False)
plain = train_transcoders(model, token_factory, cfg.replace(kind="transcoder"), progress=False)
for name, res in [("skip_transcoder", skip), ("transcoder", plain)]:
    m = res.metrics[1]
    print(f"{name:16s} steps {res.steps}  train FVU {m.fvu:.3f}  L0 {m.l0:.1f}  dead {m.dead_fraction:.2f}")

# %% [markdown]
# ## Held-out reconstruction
#
# `evaluate_reconstruction` runs the *original* model on held-out tokens (a different seed)
# and scores each transcoder on its own layer's activations (`start_pos=1` skips BOS).
# With the same budget the skip transcoder usually reaches a lower FVU: its linear skip path
# captures the linear part of the MLP, and the sparse latents only need to model the rest.

# %%
held_out = next(organism_token_source(12345, 32, 64, tokenizer=model.tokenizer))
for name, res in [("skip_transcoder", skip), ("transcoder", plain)]:
    r = evaluate_reconstruction(model, res.transcoders, held_out, start_pos=1)[1]
    print(f"{name:16s} held-out FVU {r.fvu:.3f}  L0 {r.l0:.1f}  dead {r.dead_fraction:.2f}")

# %% [markdown]
# ## Save and load
#
# A `TranscoderSet` (a `{layer: Transcoder}` dict) saves one `cfg.json` +
# `weights.safetensors` per layer; loading with `model=` checks that the transcoders fit
# the model (name, sites, widths, weight processing).

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = skip.transcoders.save(Path(tmp) / "skip")
    print(sorted(p.name for p in Path(path).rglob("*") if p.is_file()))
    loaded = TranscoderSet.load(path, model=model)
    print(torch.equal(loaded[1].W_enc, skip.transcoders[1].W_enc))

# %% [markdown]
# ## Inspect features
#
# `tc_circuits.viz.compute_dashboards` scans a corpus once and collects, for each requested
# latent, its top-activating contexts, quantile examples and activation histogram, together
# with input-invariant views from the weights alone: the tokens it promotes
# (`W_dec[latent] @ W_U` through the final LayerNorm), its de-embeddings
# (`W_E @ W_enc[:, latent]` through `ln2`) and its strongest connections to other layers.
#
# We pick the skip transcoder's most frequently firing latents on the held-out batch.

# %%
from tc_circuits.viz import DashboardConfig, compute_dashboards

tc = skip.transcoders[1]
_, cache = model.run_with_cache(held_out, names_filter=Site(1, "mlp_in").hook_name)
acts = tc.encode(cache[Site(1, "mlp_in").hook_name][:, 1:])
frequency = (acts > 0).float().mean((0, 1))
latents = frequency.argsort(descending=True)[:3].tolist()
print("most frequent latents:", latents, [round(float(frequency[i]), 3) for i in latents])

boards = compute_dashboards(
    model, skip.transcoders, [(1, f) for f in latents],
    organism_token_source(777, 16, 64, tokenizer=model.tokenizer),
    DashboardConfig(max_batches=4, n_top=4), progress=False,
)
for (layer, latent), board in boards.items():
    print(f"L{layer} #{latent}: density {board.density:.3f}, max act {board.max_activation:.2f}")
    print("   promotes:", [t.string for t in board.promoted[:5]])
    print("   de-embeddings:", [t.string for t in board.de_embeddings[:5]])
    for ex in board.top_examples[:2]:
        text = "".join(f"[{t}]" if i == ex.highlight else t for i, t in enumerate(ex.tokens))
        print(f"   {ex.activation:5.2f}  {text!r}")

# %% [markdown]
# In Jupyter a `FeatureDashboard` renders itself as HTML (top contexts shaded by activation,
# histogram, token lists); `tc_circuits.viz.dashboard_figure(board)` gives a plotly figure.

# %%
boards[(1, latents[0])]
