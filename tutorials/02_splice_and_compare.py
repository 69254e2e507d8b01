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
# # 2. Splice them in: SAE vs transcoder vs skip transcoder
#
# The organism ships three dictionaries per layer, trained with the same recipe (1024
# latents, TopK k = 16, 1M tokens): an **SAE** on the MLP output (`hook_mlp_out` → itself),
# a **transcoder** (`ln2.hook_normalized` → `hook_mlp_out`) and a **skip transcoder** (the
# same plus a linear skip `x @ W_skip`). Splicing one in replaces the MLP's output by the
# dictionary's reconstruction; what the model loses is the price of reading the
# computation through sparse features.

# %%
import torch

from tc_circuits.evaluation.compare import evaluate_dictionaries
from tc_circuits.evaluation.evaluate import evaluate_splice
from tc_circuits.organism import load_organism, load_organism_transcoders, organism_token_source
from tc_circuits.evaluation.splice import count_hooks, splice
from tc_circuits.tasks import evaluate_task
from tc_circuits.tasks.greater_than import GreaterThanConfig, GreaterThanTask

model = load_organism()
kinds = ("sae", "transcoder", "skip_transcoder")
dictionaries = {kind: load_organism_transcoders(kind, model=model) for kind in kinds}
for kind, tcs in dictionaries.items():
    tc = tcs[1]
    print(f"{kind:16s} layer 1: {tc.cfg.in_site.hook_name} -> {tc.cfg.out_site.hook_name}, "
          f"{tc.cfg.n_latents} latents, skip={tc.W_skip is not None}")

# %% [markdown]
# ## The `splice` context manager
#
# Inside `with splice(model, transcoders)`, every forward pass goes through the
# dictionaries; the hooks are removed on exit (also on an exception). The returned state
# holds the latents of the last pass. With `error_term=True` the reconstruction error is
# added back as a constant, so the output is unchanged but the latents are exposed: the
# *replacement model* that attribution graphs explain.

# %%
prompt = "The war lasted from the year 1732 to the year 17"
tokens = model.to_tokens(prompt)
skip_tcs = dictionaries["skip_transcoder"]
with torch.no_grad():
    clean = model(tokens)
    with splice(model, skip_tcs) as state:
        spliced = model(tokens)
        active = (state.latents[1][0, -1] > 0).sum()
    with splice(model, skip_tcs, error_term=True):
        with_error = model(tokens)
print("active layer-1 latents at the last position:", int(active))
print("max |logit change| spliced:           ", float((spliced - clean).abs().max()))
print("max |logit change| spliced + error:   ", float((with_error - clean).abs().max()))
print("hooks left on the model:", count_hooks(model))

# %% [markdown]
# ## The greater-than task
#
# Prompts *"The {noun} lasted from the year 17YY to the year 17"*; the metric is the
# probability mass (over the 100 two-digit tokens) on years above YY minus at or below YY.
# The organism learnt the task almost perfectly. To keep the notebook fast we use one noun
# (97 prompts, YY = 02..98); the default task has six nouns.

# %%
task = GreaterThanTask.from_tokenizer(model.tokenizer, GreaterThanConfig(nouns=("war",)))
print(f"{task.tokens.shape[0]} prompts, e.g. {model.to_string(task.tokens[0, 1:])!r}")
for kind, tcs in dictionaries.items():
    ev = evaluate_task(model, task, tcs)
    print(f"{kind:16s} prob. diff original {ev.original:.3f}  spliced (all layers) {ev.spliced:.3f}")

# %% [markdown]
# ## The comparison table
#
# `tc_circuits.evaluation.compare.evaluate_dictionaries` is the evaluation half of `tc-circuits
# compare` (which also trains the three kinds from scratch): on held-out corpus tokens it
# reports, per layer and for all layers spliced at once, the FVU, L0, dead fraction, ΔCE
# (nats of next-token loss added by splicing), KL to the original next-token distribution,
# CE recovered against zero- and mean-ablation of the same MLPs, and the greater-than
# probability difference with the dictionary spliced in.

# %%
held_out = [next(organism_token_source(12345, 16, 64, tokenizer=model.tokenizer))]  # 1024 tokens
rows = []
for kind, tcs in dictionaries.items():
    kind_rows, _, ce_orig = evaluate_dictionaries(model, tcs, held_out, task, kind=kind, k=16)
    rows += kind_rows
print(f"original next-token CE: {ce_orig:.4f} nats")
header = ("kind", "layer", "fvu", "l0", "delta_ce", "kl", "recovered_zero", "gt_prob_diff")
print(" ".join(f"{h:>15s}" for h in header))
for r in rows:
    print(" ".join(f"{getattr(r, h):>15.4f}" if isinstance(getattr(r, h), float) else f"{getattr(r, h)!s:>15s}"
                   for h in header))

# %% [markdown]
# How to read it:
#
# * **FVU** measures different things: an SAE reconstructs `hook_mlp_out` *from itself*; a
#   transcoder has to *predict* it from the MLP input, a harder problem. Between the two
#   transcoder kinds, the skip transcoder's linear path takes the linear part of the MLP for
#   free, so at the same k its latents spend their capacity on the non-linear rest: with all
#   layers spliced its FVU and ΔCE are lower than the plain transcoder's.
# * **ΔCE / KL** compare all three on the same footing: how much of the model's behaviour
#   survives the replacement. On this small organism the SAE loses the least; the price of a
#   transcoder is that it must *explain* the MLP, not just compress its output.
# * An SAE is not a replacement *for the MLP*: it says what the output is, not how it is
#   computed from the input, which is what attribution through MLPs needs (tutorial 3).
#
# The numbers below are computed, not hard-coded.

# %%
all_rows = {r.kind: r for r in rows if r.layer == "all"}
for kind in kinds:
    r = all_rows[kind]
    print(f"{kind:16s} all layers: FVU {r.fvu:.4f}  dCE {r.delta_ce:+.4f}  prob. diff {r.gt_prob_diff:.3f}")
ratio = all_rows["transcoder"].delta_ce / max(all_rows["skip_transcoder"].delta_ce, 1e-9)
print(f"transcoder dCE / skip-transcoder dCE: {ratio:.2f}")

# %% [markdown]
# ## Splicing one layer at a time
#
# `evaluate_splice` reports each layer alone and all layers together, optionally with the
# error term added back (then ΔCE is zero up to float rounding: a useful sanity check).

# %%
report = evaluate_splice(model, skip_tcs, held_out, error_term=True)
for row in report.rows:
    print(f"layers {row.layers}: dCE with error term {row.delta_ce:+.2e}")
