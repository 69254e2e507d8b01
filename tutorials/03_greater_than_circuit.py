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
# # 3. The greater-than circuit, end to end
#
# Prompt: *"The war lasted from the year 1732 to the year 17"*. A model that understands
# the task puts its probability on years **after** 32. We ask which skip-transcoder features
# carry that decision, by building the attribution graph of the greater-than direction,
# pruning it, looking at the features (dashboards and input-invariant weights), and then
# checking the story with interventions.

# %%
import torch

from tc_circuits.attribution import attribute, direction_target
from tc_circuits.graph import compute_graph_scores, prune_graph
from tc_circuits.organism import load_organism, load_organism_transcoders
from tc_circuits.tasks.greater_than import GreaterThanConfig, GreaterThanTask

model = load_organism()
tcs = load_organism_transcoders("skip_transcoder", model=model)
prompt = "The war lasted from the year 1732 to the year 17"
str_tokens = model.to_str_tokens(prompt)
print(list(enumerate(str_tokens)))

# %% [markdown]
# ## The target: the probability-difference direction
#
# The task's metric (probability on years > 32 minus years ≤ 32) is not linear in the
# logits, so we attribute its linear counterpart: `d · logits[-1]` with `d` = +1/67 on the
# tokens "33".."99" and −1/33 on "00".."32" (the mean logit of later years minus the mean
# logit of earlier ones). `GreaterThanTask.direction` builds `d`.

# %%
task = GreaterThanTask.from_tokenizer(
    model.tokenizer, GreaterThanConfig(nouns=("war",), yy_min=32, yy_max=32)
)
assert torch.equal(task.tokens[0], model.to_tokens(prompt)[0])
direction = task.direction(model.cfg.d_vocab)[0]
with torch.no_grad():
    logits = model(task.tokens)
print(f"probability difference: {task.metric(logits):.3f}")
print(f"logit difference d . logits[-1]: {float(direction @ logits[0, -1]):.3f}")
target = direction_target(direction, label="P(YY>32) - P(YY<=32)")

# %% [markdown]
# ## The attribution graph
#
# `attribute` linearises the model around this prompt (attention patterns and LayerNorm
# scales frozen, the skip path linear, the transcoder errors constant) and computes every
# direct edge between active features, error nodes, token / position embeddings, the bias
# node and the target. The graph is exact: every expanded node's incoming edges sum to its
# value (feature pre-activation or target value).

# %%
graph = attribute(model, tcs, prompt, targets=[target], progress=False)
n_features = int(graph.mask_of("feature").sum())
print(f"{graph.n_nodes} nodes ({n_features} active features), {graph.n_edges} edges")
print(f"exactness: max |sum(edges) - value| = {graph.exactness_error():.2e}")
assert graph.exactness_error() < 1e-3
t = int(graph.target_indices[0])
print(f"target value {float(graph.nodes.value[t]):.4f} "
      f"= sum of its incoming edges {float(graph.row_sums()[t]):.4f}")

# %% [markdown]
# ## Pruning and scores
#
# Pruning keeps the nodes carrying 80% of the (indirect) influence on the target and the
# edges carrying 98%. The **replacement score** is the share of influence that reaches the
# target from the inputs (embeddings, positions, bias) rather than from error nodes; the
# **completeness score** is the influence-weighted share of node inputs that are not errors.
# On the pruned graph, dropped nodes count as errors, so both scores fall.

# %%
pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
feature_mask = graph.mask_of("feature")
print(f"pruned: {int(pruned.node_mask.sum())} nodes "
      f"({int((pruned.node_mask & feature_mask).sum())} features), {int(pruned.edge_mask.sum())} edges")
full_scores = compute_graph_scores(graph)
pruned_scores = compute_graph_scores(graph, pruned.node_mask)
print(f"full graph:   replacement {full_scores.replacement:.3f}  completeness {full_scores.completeness:.3f}")
print(f"pruned graph: replacement {pruned_scores.replacement:.3f}  completeness {pruned_scores.completeness:.3f}")

# %%
from collections import Counter

feats = graph.indices_of("feature")
kept = feats[pruned.node_mask[feats]]
order = kept[pruned.node_influence[kept].argsort(descending=True)]
print("kept features per (layer, position):",
      dict(Counter((int(graph.nodes.layer[i]), str_tokens[int(graph.nodes.pos[i])]) for i in order)))
top = order[:8]
edge_to_target = {int(s): float(w) for s, w, tt in
                  zip(graph.edge_source, graph.edge_weight, graph.edge_target) if int(tt) == t}
print("strongest features (influence on the target, direct edge to the target):")
for i in top.tolist():
    layer, pos, latent = int(graph.nodes.layer[i]), int(graph.nodes.pos[i]), int(graph.nodes.latent[i])
    print(f"  {graph.node_id(i):>10s}  L{layer} #{latent:<5d} at {pos:>2d} {str_tokens[pos]!r:7s} "
          f"act {float(graph.nodes.activation[i]):5.2f}  influence {float(pruned.node_influence[i]):.3f}  "
          f"direct {edge_to_target.get(i, 0.0):+.3f}")

# %% [markdown]
# What the graph shows (on this prompt, with the shipped skip transcoders): every kept
# feature sits at the **last position**, the century token " 17" where the answer is read
# out, spread over all three layers; many of them also have a direct edge to the target.
# The earlier positions enter through attention, which the frozen model turns into edges
# from the embeddings (and early features) into the last position's features. The next cell
# lists the most influential embeddings: the start year "32" (position 8) should lead,
# since it is the one token the answer depends on.

# %%
emb = graph.indices_of("embedding")
emb_infl = sorted(((float(pruned.node_influence[i]), str_tokens[int(graph.nodes.pos[i])]) for i in emb),
                  reverse=True)[:4]
print("most influential token embeddings:", [(tok, round(v, 3)) for v, tok in emb_infl])
assert emb_infl[0][1] == "32"
err = graph.indices_of("error")
print(f"total influence of error nodes: {float(pruned.node_influence[err].sum()):.3f} "
      f"(features: {float(pruned.node_influence[feats].sum()):.3f})")

# %% [markdown]
# ## The interactive view
#
# `graph_view` draws the pruned graph with plotly. Rows are layers (inputs at the bottom,
# the target at the top); each token position is a column whose width grows with the
# number of features there, so the 37 features at the last position sit side by side
# while positions without features stay narrow. Node size is influence; each node shows its
# strongest incoming and outgoing edges (blue excite, red inhibit) and the target its
# strongest inputs; the most influential features carry a short label (your label, else
# the token they promote most), and no two labels overlap. Hover the target for the value
# it explains, its definition and the metric (the probability difference).
#
# In Jupyter the view is interactive: click a node to highlight its upstream and
# downstream paths (the panel beside it lists its top inputs and outputs), pin nodes to see
# their subgraph, change the edges per node, move the node-threshold slider. Where scripts
# do not run (a rendered notebook on GitHub) a static PNG stands in. Labels you give
# (`graph.label(...)`, or a JSON file with `graph.load_labels`) are saved with the graph
# and exported as Neuronpedia `clerp`s. `write_graph_page` writes a standalone offline page
# with a dashboard per feature (here without the corpus scan, to stay fast; pass
# `token_source=` to include top-activating contexts); `view.write_image("g.png")` or
# `tc-circuits view DIR --out page.html --png g.png` write static images.

# %%
from pathlib import Path

from tc_circuits.viz import GraphViewConfig, graph_view, write_graph_page

graph.label(int(top[0]), "top feature")  # your own names, kept with the graph
view = graph_view(graph, model=model, transcoders=tcs, metric={"P(YY>32) - P(YY<=32)": task.metric(logits)},
                  cfg=GraphViewConfig(node_thresholds=(0.6, 0.8), default_threshold=0.8))
shown = next(d for d in view.drawn if d.mode == "features" and d.threshold == 0.8)
n_linked = len({e.source for e in shown.drawn} | {e.target for e in shown.drawn})
print(f"{len(shown.view.nodes)} nodes drawn, {n_linked} of them with a drawn edge, "
      f"{len(shown.drawn)} edges, {sum(p is not None for p in shown.label_pos)} labels")
page = write_graph_page(Path("out") / "tutorial03" / "greater_than.html", graph,
                        model=model, transcoders=tcs, view_cfg=GraphViewConfig(node_thresholds=(0.8,), default_threshold=0.8),
                        title=f"Greater-than: {prompt!r}", progress=False)
print("page:", page, f"({Path(page).stat().st_size // 1024} KiB)")
view

# %% [markdown]
# ## Feature dashboards
#
# For the three most influential features: the contexts where they fire most on the
# organism corpus (the active token in brackets), and the tokens they promote. Compare the
# contexts with our prompt: do they fire on the second century token of a year range?

# %%
from tc_circuits.organism import organism_token_source
from tc_circuits.viz import DashboardConfig, compute_dashboards

keys = list(dict.fromkeys((int(graph.nodes.layer[i]), int(graph.nodes.latent[i])) for i in top[:3]))
boards = compute_dashboards(model, tcs, keys, organism_token_source(777, 16, 64, tokenizer=model.tokenizer),
                            DashboardConfig(max_batches=4, n_top=3), progress=False)
for (layer, latent), board in boards.items():
    print(f"L{layer} #{latent}: fires on {100 * board.density:.1f}% of tokens; "
          f"promotes {[t.string for t in board.promoted[:6]]}")
    for ex in board.top_examples:
        text = "".join(f"[{tok}]" if j == ex.highlight else tok for j, tok in enumerate(ex.tokens))
        print(f"     {ex.activation:5.2f}  {text!r}")

# %% [markdown]
# ## Input-invariant connections
#
# The weights alone, without any prompt (Dunefsky et al. 2024): the **logit effect**
# `W_dec[s] · diag(ln_final.w) · W_U` says which tokens a feature promotes; the
# **de-embedding** `W_E · W_enc[:, t]` which input tokens drive it through the direct path;
# the **virtual weight** `W_dec[s] · W_enc[:, t]` how strongly one feature writes into
# another's encoder through the residual stream. Here: does each top feature's logit effect
# point along the greater-than direction (later years up, earlier years down)?

# %%
from tc_circuits.attribution import de_embeddings, logit_effects, top_tokens, virtual_weights

for i in top[:5].tolist():
    layer, latent = int(graph.nodes.layer[i]), int(graph.nodes.latent[i])
    eff = logit_effects(model, tcs[layer], [latent])[0]
    along = float(eff @ direction)
    ins = top_tokens(de_embeddings(model, tcs[layer], [latent])[0], k=4, tokenizer=model.tokenizer)
    outs = top_tokens(eff, k=4, tokenizer=model.tokenizer)
    print(f"L{layer} #{latent:<5d} logit effect . d = {along:+.3f}; promotes {outs.promoted}, "
          f"suppresses {outs.suppressed}; de-embeddings {ins.promoted}")

# %% [markdown]
# Virtual weights between the top features of consecutive layers at the last position,
# next to the graph's edge between the same two nodes. The edge also includes the frozen
# LayerNorm scale of the reading layer (the virtual weight ignores it, so the edge is
# usually smaller) and paths through attention; a large virtual weight with the same sign
# as the edge is a prompt-independent reason for the edge.

# %%
last = graph.n_pos - 1
at_last = [i for i in order.tolist() if int(graph.nodes.pos[i]) == last]
by_layer = {L: [i for i in at_last if int(graph.nodes.layer[i]) == L][:2] for L in range(model.cfg.n_layers)}
edges = {(int(tt), int(s)): float(w) for tt, s, w in zip(graph.edge_target, graph.edge_source, graph.edge_weight)}
for L in range(model.cfg.n_layers - 1):
    for s in by_layer[L]:
        for d in by_layer[L + 1]:
            ls, ld = int(graph.nodes.latent[s]), int(graph.nodes.latent[d])
            vw = float(virtual_weights(tcs[L], tcs[L + 1], [ls], [ld])[0, 0])
            a = float(graph.nodes.activation[s])
            print(f"L{L} #{ls} -> L{L + 1} #{ld}: activation x virtual weight {a * vw:+.3f}, "
                  f"graph edge {edges.get((d, s), 0.0):+.3f}")

# %% [markdown]
# ## Which attention heads move the year?
#
# All the influential features sit at the last position, yet the graph's biggest source is
# the "32" token several positions earlier: only attention moves information between
# positions. For every head we print its attention from the last position to "32", and the
# probability difference of the original model (no transcoders) when exactly that one
# attention weight is set to zero (the rest of the pattern unchanged).

# %%
from tc_circuits.models.sites import Site

tokens = model.to_tokens(prompt)
str_tokens = model.to_str_tokens(prompt)
yy_pos, last = str_tokens.index("32"), tokens.shape[1] - 1
_, pattern_cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
base_pd = task.metric(model(tokens))
head_rows = []
for L in range(model.cfg.n_layers):
    hook = Site(L, "attn_pattern").hook_name
    for h in range(model.cfg.n_heads):
        def cut(pattern, hook, h=h):
            pattern = pattern.clone()
            pattern[:, h, last, yy_pos] = 0.0
            return pattern

        pd = task.metric(model.run_with_hooks(tokens, fwd_hooks=[(hook, cut)]))
        head_rows.append((L, h, float(pattern_cache[hook][0, h, last, yy_pos]), pd - base_pd))
head_rows.sort(key=lambda r: r[3])
print(f"prob. diff of the original model: {base_pd:.3f}")
for L, h, att, delta in head_rows[:6]:
    print(f"head {L}.{h}: attention last->'32' {att:.3f}, cutting it changes the prob. diff by {delta:+.3f}")
mover = head_rows[0][:2]

# %% [markdown]
# The head whose cut costs the most is the one that carries the year to the last position.
# Input-invariantly, its OV circuit maps each two-digit year token to the features that read
# it. Below: for the top layer-0 features at the last position, the virtual weight from the
# embedding of each year token (plus the position embedding of the "32" slot, normalised as
# LayerNorm would) through that head's OV circuit into the feature's encoder. If the mover
# head is in layer 0, a "later years" feature should read small start years positively and
# large ones negatively: the comparison is already computed in these weights.

# %%
L_mover, h_mover = mover
l0_last = [i for i in order.tolist() if int(graph.nodes.layer[i]) == 0 and int(graph.nodes.pos[i]) == last][:3]
if L_mover == 0 and l0_last:
    year_ids = torch.tensor([model.tokenizer.convert_tokens_to_ids(f"{y:02d}") for y in range(100)])
    emb = model.W_E[year_ids] + model.W_pos[yy_pos]
    emb = emb - emb.mean(-1, keepdim=True)
    emb = emb / emb.norm(dim=-1, keepdim=True) * model.cfg.d_model**0.5
    ov = model.blocks[0].attn.W_V[h_mover] @ model.blocks[0].attn.W_O[h_mover]
    for i in l0_last:
        latent = int(graph.nodes.latent[i])
        vw = (emb @ ov @ tcs[0].W_enc[:, latent]).detach()
        samples = ", ".join(f"{y:02d}:{float(vw[y]):+.2f}" for y in (5, 20, 32, 50, 70, 95))
        corr = float(torch.corrcoef(torch.stack([vw, torch.arange(100.0)]))[0, 1])
        print(f"L0 #{latent}: year -> feature through head 0.{h_mover}: {samples}; "
              f"correlation with the year {corr:+.2f}")
else:
    print(f"the main mover head is {L_mover}.{h_mover}; see ov_virtual_weights for feature-to-feature paths")

# %% [markdown]
# On the shipped organism, one run gave: head 0.1 attends 0.98 from the last position to
# "32", and cutting that single attention weight lowers the probability difference by about
# 0.15, while cutting any other head's weight changes it by less than 0.01. Through head
# 0.1's OV circuit the top layer-0 features at the last position are tuned to a band of start
# years (largest around 20-50, the band that contains 32) and read late years negatively:
# a layer-0 attention head copies the start year, and MLP-0 features that respond to a range
# of years promote the two-digit tokens above that range (their logit effects above).

# %% [markdown]
# ## Interventions: does the story hold?
#
# `tc_circuits.interventions.intervene` runs the model with the transcoders spliced in (and
# the clean run's error added back, so with no intervention the output is exact) and sets
# chosen features to chosen values. Two checks:
#
# 1. **Exactness**: in the frozen model (attention and LayerNorm frozen) with downstream
#    features held fixed, ablating one feature changes the target by exactly minus its
#    direct edge.
# 2. **The story**: ablating the top features in the real (live) model should lower the
#    probability difference much more than ablating as many random active features.

# %%
from tc_circuits.interventions import intervene

def metric(logits):
    return float(direction @ logits[-1]), task.metric(logits[None])


clean = intervene(model, tcs, prompt)
print(f"spliced + error, no intervention: logit diff {metric(clean.logits)[0]:.4f}, "
      f"prob. diff {metric(clean.logits)[1]:.3f}")
i = int(top[0])
L, p, f = int(graph.nodes.layer[i]), int(graph.nodes.pos[i]), int(graph.nodes.latent[i])
frozen = intervene(model, tcs, prompt, [(L, p, f, 0.0)], mode="frozen", recompute_features=False)
change = metric(frozen.logits)[0] - metric(clean.logits)[0]
print(f"ablate {graph.node_id(i)} (frozen, fixed features): target change {change:+.5f}, "
      f"minus its direct edge {-edge_to_target.get(i, 0.0):+.5f}")
assert abs(change + edge_to_target.get(i, 0.0)) < 1e-3

# %%
def ablate(indices, mode="live"):
    ivs = [(int(graph.nodes.layer[j]), int(graph.nodes.pos[j]), int(graph.nodes.latent[j]), 0.0)
           for j in indices]
    return metric(intervene(model, tcs, prompt, ivs, mode=mode).logits)


gen = torch.Generator().manual_seed(0)
for n in (5, 10, 20):
    top_n = order[:n].tolist()
    rand_n = feats[torch.randperm(len(feats), generator=gen)[:n]].tolist()
    ld_top, pd_top = ablate(top_n)
    ld_rand, pd_rand = ablate(rand_n)
    print(f"ablate {n:2d}: top features -> prob. diff {pd_top:6.3f} (logit diff {ld_top:+.3f}); "
          f"random active features -> {pd_rand:6.3f} ({ld_rand:+.3f})")
    assert pd_top < pd_rand

# %% [markdown]
# Ablating the features the graph ranks highest removes much more of the greater-than
# behaviour than ablating random active features; the printed numbers say by how much on
# this prompt. Because the organism computes the answer redundantly (many features at the
# last position push the same way), a handful of ablations lowers the score without
# erasing it. Try `mode="frozen"` (attention patterns fixed) to separate the MLP path from
# the attention path, or ablate the features at position 8 ("32") instead.
