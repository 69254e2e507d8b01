"""The factorised attribution engine: exact, sparse feature attribution graphs.

    edge(s -> t) = a_s * ( W_dec[s] . J(s -> t) . W_enc[t] )

where ``J`` is the Jacobian of the frozen (linearised) model between the two residual-stream
sites (:mod:`tc_circuits.attribution.linearise`). For a batch of targets the engine runs the
transpose of the frozen model once (``LinearisedModel.vjp``), injecting each target's read-out
vector (``W_enc[:, t]`` at ``mlp_in`` of its layer, or ``W_U d`` after the final LN) at its own
layer and position, and reads every source's edge off the gradient at the site it writes to:

* feature ``s`` at (L, p): ``a_s W_dec[s] . g_mlp_out_L[p]``;
* error (or ``mlp_const``) at (L, p): ``e[L, p] . g_mlp_out_L[p]``;
* token at p: ``W_E[tok_p] . g_embed[p]``; position p: ``W_pos[p] . g_embed[p]``;
* constant: the target's value in the frozen model with every source set to zero.

Phases (also logged):

1. forward + cache: one real forward pass; LN scales, attention patterns, transcoder
   inputs, active latents and errors are cached (:class:`LinearisedModel`);
2. target rows: the incoming edges of every target (logits / directions);
3. feature rows in batches: all active features, or the ``max_feature_nodes`` most
   influential ones, re-ranked by estimated influence every ``update_interval`` batches;
4. assemble: COO edges + node table -> :class:`AttributionGraph`
   (:mod:`tc_circuits.attribution.assemble`), then the exactness check
   (:mod:`tc_circuits.attribution.exactness`: sum of incoming edges == value from the real
   forward pass, for every expanded node; the sums are accumulated in float64 as the edges
   arrive, :mod:`tc_circuits.attribution.edge_sink`).

No node x node matrix is ever built: memory grows with the number of (non-zero) edges, 12 bytes
per float32 edge (int32 target and source indices), written once into buffers sized by the
structural bound of :mod:`tc_circuits.attribution.memory`, which also fits the run to its memory
budget before phase 2 (a smaller batch, or :class:`AttributionMemoryError`).

This module keeps the driver (:func:`attribute`, :class:`AttributionConfig`, :func:`to_tokens`,
the per-batch row computation) and re-exports the names that moved out of it
(:class:`AttributionExactnessError`, :func:`exactness_deviation`, :func:`default_exactness_tol`,
:class:`AttributionMemoryError`), so ``from tc_circuits.attribution.engine import ...`` still works.
"""

from __future__ import annotations

import functools
import gc
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from tc_circuits.attribution.assemble import _decode, _decode_all, _Layout, _metadata, _node_table
from tc_circuits.attribution.edge_sink import EdgeSink, ListEdgeSink
from tc_circuits.attribution.exactness import (
    EXACTNESS_TOL,
    AttributionExactnessError,
    default_exactness_tol,
    exactness_deviation,
)
from tc_circuits.attribution.feature_edges import (
    PositionLayout,
    feature_edges,
    feature_edges_reference,
    position_layout,
)
from tc_circuits.attribution.linearise import LinearisedModel
from tc_circuits.attribution.memory import AttributionMemoryError as AttributionMemoryError
from tc_circuits.attribution.memory import _fit_memory, edge_bound
from tc_circuits.attribution.ranking import InfluenceRanker, InfluenceRankerReference, node_levels
from tc_circuits.attribution.targets import Target, resolve_targets, warn_unknown_tokens
from tc_circuits.graph.graph import AttributionGraph
from tc_circuits.models import backend
from tc_circuits.models.safe_hooks import hooks_restored
from tc_circuits.validate import check_spliceable, check_token_ids, memory_budget_bytes

logger = logging.getLogger(__name__)

#: Use the position-batched feature-edge fast path (False: the plain reference; for tests/benchmarks).
_FAST_FEATURE_EDGES = True
#: Read the error edges in the feature-edge bmm (False: their own einsum; for tests/benchmarks).
_FUSED_ERROR_EDGES = True
#: Write edges into preallocated int32 buffers with running row sums (False: the reference
#: list-of-pieces sink, concatenated at the end, and its ranker; for tests/benchmarks).
_PREALLOCATED_EDGES = True


@dataclass(frozen=True)
class AttributionConfig:
    """The engine's options (same names and defaults as :func:`attribute`; the CLI is built from it)."""

    max_n_logits: int = 10
    """At most this many default logit targets."""
    desired_logit_prob: float = 0.95
    """Default logit targets are taken until their cumulative probability reaches this."""
    batch_size: int = 64
    """Target rows per transposed pass."""
    max_feature_nodes: int | None = None
    """Expand at most this many features (by estimated influence); None expands all."""
    update_interval: int = 4
    """Batches between influence re-rankings (with max_feature_nodes)."""
    check_exactness: bool = True
    """Check that every expanded node's incoming edges sum to its value."""
    exactness_tol: float | None = None
    """Allowed |row sum - value| relative to 1 + sum |edges| + |value|; None picks it from the
    model's dtype (:func:`default_exactness_tol`: 1e-5 for float32, 1e-12 for float64)."""
    max_memory: float | None = None
    """Memory budget of one graph in GB (edges + a batch's activations); None = 0.8 x the
    available RAM. A graph estimated above it runs with smaller batches or is refused before
    any work, with the estimate and the ``max_feature_nodes`` that fits."""
    progress: bool = True
    """Show a progress bar and log the phases."""

    def __post_init__(self) -> None:
        if self.max_n_logits < 1:
            raise ValueError(f"max_n_logits must be >= 1, got {self.max_n_logits}")
        if not 0 < self.desired_logit_prob <= 1:
            raise ValueError(f"desired_logit_prob must be in (0, 1], got {self.desired_logit_prob}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_feature_nodes is not None and self.max_feature_nodes < 0:
            raise ValueError(f"max_feature_nodes must be >= 0 or None, got {self.max_feature_nodes}")
        if self.update_interval < 1:
            raise ValueError(f"update_interval must be >= 1, got {self.update_interval}")
        if self.exactness_tol is not None and not self.exactness_tol > 0:
            raise ValueError(f"exactness_tol must be > 0 (or None), got {self.exactness_tol}")
        if self.max_memory is not None and not (self.max_memory > 0 and math.isfinite(self.max_memory)):
            raise ValueError(f"max_memory must be a positive number of GB (or None), got {self.max_memory}")


def to_tokens(model, prompt_or_tokens: str | Sequence[int] | Tensor) -> Int[Tensor, " pos"]:
    """Tokenise (strings use the model's tokenizer and BOS convention) and validate.

    Never truncates: a prompt longer than ``n_ctx`` is an error. Float token ids are refused
    (not rounded), and words the tokenizer maps to its unknown token are warned about.
    """
    n_ctx, d_vocab = int(model.cfg.n_ctx), int(model.cfg.d_vocab)
    if isinstance(prompt_or_tokens, str):
        if not prompt_or_tokens:
            raise ValueError("empty prompt")
        if model.tokenizer is None:
            raise ValueError("a string prompt needs a model with a tokenizer; pass token ids")
        tokens = model.to_tokens(prompt_or_tokens, truncate=False)[0].cpu()
        warn_unknown_tokens(model.tokenizer, tokens, prompt_or_tokens, "prompt")
    else:
        tokens = check_token_ids(prompt_or_tokens, d_vocab, "prompt")
        if tokens.ndim == 2 and tokens.shape[0] == 1:
            tokens = tokens[0]
        if tokens.ndim != 1:
            raise ValueError(f"expected one prompt of token ids, got shape {tuple(tokens.shape)}")
    n = int(tokens.shape[0])
    if n == 0:
        raise ValueError("empty prompt (no tokens)")
    if n > n_ctx:
        raise ValueError(
            f"prompt has {n} tokens, longer than the model's context n_ctx={n_ctx} "
            "(it is not truncated: shorten it)"
        )
    if int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab:
        raise ValueError(f"token ids must be in [0, {d_vocab}), got range [{int(tokens.min())}, {int(tokens.max())}]")
    return tokens


def _compute_rows(
    lin: LinearisedModel,
    lay: _Layout,
    sink: EdgeSink | ListEdgeSink,
    row_nodes: Int[Tensor, " b"],
    layers: Int[Tensor, " b"],
    positions: Int[Tensor, " b"],
    vectors: Float[Tensor, "b d_model"],
    const_edges: Float[Tensor, " b"],
    layouts: dict[int, PositionLayout] | None = None,
) -> None:
    """Incoming edges of ``len(row_nodes)`` nodes with one transposed frozen pass.

    With ``layouts`` (``{layer: position_layout(lin, layer)}``, filled lazily) feature
    edges use the position-batched fast path; ``None`` uses the plain reference. A
    cross-layer transcoder's layer-L features read the gradients of every output layer
    ``L' >= L``: the yielded gradients are kept until layer 0 (``grads``; only for a CLT).
    """
    keep = lin.is_cross_layer
    grads: dict[int, Tensor] = {}
    for L, g in lin.vjp(layers, positions, vectors):
        B, P, d = g.shape
        ar = torch.arange(P)
        if L < 0:
            sink.add(row_nodes, lay.emb0 + ar, torch.einsum("bpd,pd->bp", g, lin.embed[:P]))
            if lin.has_pos_embed:
                sink.add(row_nodes, lay.pos0 + ar, torch.einsum("bpd,pd->bp", g, lin.pos_embed[:P]))
            continue
        err_nodes = lay.err0 + L * lay.P + ar
        grads = {**grads, L: g} if keep else {L: g}
        sl = lin.features_in_layer(L) if L in lin.transcoders else slice(0, 0)
        if _FUSED_ERROR_EDGES and layouts is not None and not keep and sl.stop > sl.start:
            # per-layer transcoder with active features: the error edges ride in the feature bmm (g read once)
            if L not in layouts:
                layouts[L] = position_layout(lin, L)
            feature_edges(lin, L, grads, row_nodes, sink, layouts[L], extra=(err_nodes, lin.errors[L]))
            continue
        sink.add(row_nodes, err_nodes, torch.einsum("bpd,pd->bp", g, lin.errors[L][:P]))
        if L not in lin.transcoders:
            continue
        if layouts is None:
            feature_edges_reference(lin, L, grads, row_nodes, sink)
        else:
            if L not in layouts:
                layouts[L] = position_layout(lin, L)
            feature_edges(lin, L, grads, row_nodes, sink, layouts[L])
    sink.add(row_nodes, torch.tensor([lay.const]), const_edges[:, None])


def _pauses_gc(fn):
    """Run ``fn`` with Python's cyclic garbage collector paused (re-enabled afterwards).

    The engine makes no reference cycles, so reference counting frees everything it drops;
    without the pause a full (generation-2) collection over the hundreds of thousands of
    objects that importing ``transformer_lens`` leaves behind can land inside the run and take
    longer than the attribution itself (0.19 s of a 0.32 s graph, ``docs/performance.md``).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


@_pauses_gc
def attribute(
    model,
    transcoders,
    prompt_or_tokens: str | Sequence[int] | Tensor,
    *,
    targets: Sequence[Target | int | str] | Tensor | Target | None = None,
    max_n_logits: int = 10,
    desired_logit_prob: float = 0.95,
    batch_size: int = 64,
    max_feature_nodes: int | None = None,
    update_interval: int = 4,
    check_exactness: bool | str = True,
    exactness_tol: float | None = None,
    progress: bool = True,
    max_memory: float | None = None,
) -> AttributionGraph:
    """Build the exact attribution graph of ``prompt_or_tokens``.

    Args:
        model: a TransformerLens ``HookedTransformer`` of any family its block plan covers
            (:mod:`tc_circuits.models.block_plan`). With a final-logit soft-cap, target values
            are the pre-cap logits (``metadata["block_plan"]["target_values"]``).
        transcoders: ``{layer: Transcoder}`` mapping ``mlp_in`` -> ``mlp_out``, or a
            ``CrossLayerTranscoder`` (its features write every later layer too). Layers
            without one keep their MLP output as constant ``mlp_const`` nodes.
        prompt_or_tokens: text (tokenised by the model) or token ids.
        targets: None (top logits at the last position), token ids / strings, a direction
            over the vocabulary, or :class:`Target` objects (any position).
        max_n_logits, desired_logit_prob: how default logit targets are chosen.
        batch_size: rows per transposed pass.
        max_feature_nodes: expand (compute incoming edges of) at most this many features,
            chosen by estimated influence; None expands all active features.
        update_interval: batches between influence re-rankings (when max_feature_nodes is set).
        check_exactness: True / "raise" raises :class:`AttributionExactnessError`, "warn"
            warns, False skips the check.
        exactness_tol: allowed ``|row sum - value|`` relative to ``1 + sum |edges| + |value|``
            (None: :func:`default_exactness_tol` of the model's dtype).
        progress: show a progress bar and log the phases at INFO level.
        max_memory: memory budget in GB (None: 0.8 x the available RAM); see
            :func:`tc_circuits.attribution.memory.estimate_attribution_memory`.
    """
    AttributionConfig(  # validates the options (raises ValueError naming a bad one)
        max_n_logits=max_n_logits, desired_logit_prob=desired_logit_prob, batch_size=batch_size,
        max_feature_nodes=max_feature_nodes, update_interval=update_interval,
        check_exactness=bool(check_exactness), exactness_tol=exactness_tol, progress=progress,
        max_memory=max_memory,
    )
    if check_exactness not in (True, False, "raise", "warn"):
        raise ValueError(f"check_exactness must be True, False, 'raise' or 'warn', got {check_exactness!r}")
    log = logger.info if progress else logger.debug
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    tokens = to_tokens(model, prompt_or_tokens)
    check_spliceable(transcoders, model.cfg.model_name)
    budget = memory_budget_bytes(max_memory)  # measured before the cache is built

    log("phase 1: forward + cache")
    with hooks_restored(model):  # an interrupt inside run_with_cache never leaves a hook
        lin = LinearisedModel(model, transcoders, tokens)
    P, dev = lin.n_pos, lin.device
    tgts = resolve_targets(
        targets, lin.last_logits.float().cpu(), max_n_logits=max_n_logits,
        desired_logit_prob=desired_logit_prob, tokenizer=model.tokenizer,
        prompt=prompt_or_tokens if isinstance(prompt_or_tokens, str) else None,
    )
    tpos = []
    for t in tgts:
        p = t.position + P if t.position < 0 else t.position
        if not 0 <= p < P:
            raise ValueError(f"target {t.label!r} position {t.position} outside the prompt of {P} tokens")
        tpos.append(p)
    batch_size = _fit_memory(lin, tpos, max_feature_nodes, batch_size, budget, max_memory)
    zero = lin.forward(
        feature_acts=torch.zeros(lin.n_features), error_scale=torch.zeros(lin.n_layers, P),
        embed_scale=torch.zeros(P), pos_scale=torch.zeros(P),
    )
    lay = _Layout(lin.n_features, lin.n_layers, P, lin.has_pos_embed, len(tgts))
    times["forward"] = time.perf_counter() - t0
    log(f"  {lin.n_features} active features, {len(tgts)} targets, {lay.n} nodes")

    # ---------------------------------------------------------------- phase 2
    t1 = time.perf_counter()
    log("phase 2: target rows")
    W_U, b_U = backend.unembed_weights(model)
    D = torch.stack([t.direction for t in tgts]).to(dev, W_U.dtype)  # [T, vocab]
    tpos_t = torch.tensor(tpos)
    read = D @ W_U.T  # [T, d_model]: read-out vectors at the final LN output
    real_vals = ((lin.final_ln_out[tpos_t.to(dev)] * read).sum(-1) + D @ b_U).cpu()
    const_vals = ((zero.final_ln_out[tpos_t.to(dev)] * read).sum(-1) + D @ b_U).to(lin.embed.dtype).cpu()
    f = lin.features
    n_expand = lin.n_features if max_feature_nodes is None else min(max_feature_nodes, lin.n_features)
    ranking = n_expand < lin.n_features
    level = node_levels(lay.n, f.layer, lay.tgt0, lin.n_layers)
    if _PREALLOCATED_EDGES:
        sink = EdgeSink(
            lay.n, edge_bound(lin, tpos, n_expand), lin.embed.dtype,
            level=level if ranking else None, sums=bool(check_exactness) or ranking,
        )
    else:
        sink = ListEdgeSink()
    layouts: dict[int, PositionLayout] | None = {} if _FAST_FEATURE_EDGES else None
    T = len(tgts)
    for a in range(0, T, batch_size):
        b = min(T, a + batch_size)
        _compute_rows(
            lin, lay, sink, torch.arange(lay.tgt0 + a, lay.tgt0 + b),
            torch.full((b - a,), lin.n_layers), tpos_t[a:b], read[a:b], const_vals[a:b], layouts,
        )
    times["targets"] = time.perf_counter() - t1

    # ---------------------------------------------------------------- phase 3
    t2 = time.perf_counter()
    log(f"phase 3: feature rows ({n_expand} of {lin.n_features} features, batch {batch_size})")
    visited = torch.zeros(lin.n_features, dtype=torch.bool)
    seed = torch.zeros(lay.n, dtype=torch.float64)
    seed[lay.tgt0:] = torch.tensor([t.weight for t in tgts], dtype=torch.float64)
    if ranking:
        ranker = (InfluenceRanker if _PREALLOCATED_EDGES else InfluenceRankerReference)(sink, level, seed)
    bar = tqdm(total=n_expand, desc="feature rows", disable=not progress, leave=False)
    n_done = 0
    while n_done < n_expand:
        if not ranking:
            pending = torch.arange(lin.n_features)
        else:
            infl = ranker.influence()[: lin.n_features]
            infl[visited] = -1.0
            order = torch.argsort(infl, descending=True, stable=True)
            take = min(update_interval * batch_size, n_expand - n_done)
            pending = order[:take]
        pending = pending[torch.argsort(f.layer[pending] * P + f.pos[pending], stable=True)]
        for a in range(0, len(pending), batch_size):
            idx = pending[a : a + batch_size]
            layers, pos, lat = f.layer[idx], f.pos[idx], f.latent[idx]
            vecs, consts = [], []
            for L in layers.unique().tolist():
                m = layers == L
                tc = lin.transcoders[L]
                W_enc = tc.W_enc.detach()
                v = W_enc[:, lat[m].to(dev)].T
                vecs.append((m, v))
                c = (zero.mlp_in[L, pos[m].to(dev)].to(W_enc.dtype) * v).sum(-1) + tc.b_enc.detach()[lat[m].to(dev)]
                consts.append((m, c))
            vec = torch.zeros(len(idx), lin.d_model, device=dev, dtype=lin.embed.dtype)
            const = torch.zeros(len(idx), dtype=lin.embed.dtype)
            for (m, v), (_, c) in zip(vecs, consts):
                vec[m.to(dev)] = v.to(vec.dtype)
                const[m] = c.to(const.dtype).cpu()
            _compute_rows(lin, lay, sink, idx, layers, pos, vec, const, layouts)
            visited[idx] = True
            n_done += len(idx)
            bar.update(len(idx))
    bar.close()
    times["features"] = time.perf_counter() - t2

    # ---------------------------------------------------------------- phase 4
    t3 = time.perf_counter()
    log("phase 4: assemble")
    nodes = _node_table(lin, lay, tgts, tpos, real_vals, visited)
    et, es, ew = sink.tensors()  # the fast sink hands its buffers over (no copy when large)
    sums = (sink.row_sum, sink.row_abs) if isinstance(sink, EdgeSink) and sink.sums else None
    del sink  # frees the reference sink's pieces before the exactness check (memory.py counts on it)
    if ranking:
        del ranker
    graph = AttributionGraph(
        nodes=nodes,
        edge_target=et,
        edge_source=es,
        edge_weight=ew,
        target_weights=torch.tensor([t.weight for t in tgts], dtype=torch.float32),
        target_labels=[t.label for t in tgts],
        prompt_tokens=tokens.clone(),
        prompt_strings=[_decode(model, int(t)) for t in tokens],
        prompt=_decode_all(model, tokens),
        metadata=_metadata(model, lin, tgts, tpos, batch_size, max_feature_nodes),
    )
    times["assemble"] = time.perf_counter() - t3
    graph.metadata["timings_s"] = {k: round(v, 4) for k, v in times.items()}
    if check_exactness:
        if exactness_tol is None:
            exactness_tol = default_exactness_tol(lin.embed.dtype)
            if backend.is_bridge(model):  # Hugging Face norms compute in float32 whatever the dtype
                exactness_tol = max(exactness_tol, EXACTNESS_TOL[torch.float32])
        dev_abs, dev_rel = exactness_deviation(graph, sums)
        graph.metadata["exactness_max_abs_dev"] = dev_abs
        graph.metadata["exactness_max_rel_dev"] = dev_rel
        if not dev_rel <= exactness_tol:  # NaN deviations fail too
            msg = (
                f"attribution not exact: max |sum of incoming edges - value| = {dev_abs:.3g} "
                f"(relative {dev_rel:.3g} > tol {exactness_tol:g})"
            )
            if check_exactness == "warn":
                warnings.warn(msg, stacklevel=2)
            else:
                raise AttributionExactnessError(msg)
    log(f"done: {graph.n_nodes} nodes, {graph.n_edges} edges in {time.perf_counter() - t0:.2f}s")
    return graph

