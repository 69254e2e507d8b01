"""Feature dashboards: the data (this module) and its rendering (:mod:`.dashboard_html`).

A :class:`FeatureDashboard` for a transcoder latent holds

* top-activating contexts over a token corpus, the active token in the middle of a few tokens
  of context, with the activation of the latent on every context token;
* examples from several activation quantiles (from a uniform sample of nonzero activations);
* a histogram of the nonzero activations, the density and the maximum;
* the top promoted / suppressed output tokens, de-embeddings and the strongest virtual-weight
  connections to other layers' latents (:mod:`.feature_weights`, from the weights alone).

:func:`compute_dashboards` does all of this for many latents with one streaming pass over the
corpus (:func:`.feature_stats.stream_activation_stats`), then one extra model pass over only
the documents that hold a shown example, to read the activations across each context window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from tc_circuits.viz.feature_stats import (
    ActivationStats,
    StreamConfig,
    latent_activations,
    stream_activation_stats,
)
from tc_circuits.viz.dashboard_html import ContextExample, FeatureDashboard
from tc_circuits.viz.feature_weights import (
    Connection,
    TokenScore,
    connections,
    de_embeddings,
    decode_token,
    promoted_tokens,
)

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from tc_circuits.coders.transcoder import Transcoder


@dataclass(frozen=True)
class DashboardConfig:
    """What a dashboard shows."""

    n_top: int = 8
    """Top-activating contexts per latent."""
    n_quantiles: int = 4
    """Activation quantile bands with examples (0 disables them)."""
    n_per_quantile: int = 2
    """Examples per quantile band."""
    context_before: int = 8
    """Tokens of context shown before the active token."""
    context_after: int = 3
    """Tokens of context shown after the active token."""
    n_tokens: int = 8
    """Promoted / suppressed tokens and de-embeddings shown."""
    n_connections: int = 3
    """Strongest connections shown per other layer."""
    n_bins: int = 32
    """Histogram bins (even)."""
    n_reservoir: int = 256
    """Uniform sample size of nonzero activations used for the quantile examples."""
    max_batches: int | None = 16
    """Batches of the token source to scan (None: until it ends)."""
    skip_first_position: bool = True
    """Ignore position 0 (BOS)."""
    seed: int = 0
    """Seed of the reservoir sample."""

    def __post_init__(self) -> None:
        for name in ("n_top", "n_per_quantile", "n_tokens", "n_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_quantiles", "context_before", "context_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.stream_config()  # validates n_bins, n_reservoir, max_batches

    def stream_config(self) -> StreamConfig:
        return StreamConfig(
            n_top=self.n_top, n_reservoir=self.n_reservoir, n_bins=self.n_bins,
            max_batches=self.max_batches, skip_first_position=self.skip_first_position,
            seed=self.seed,
        )


def weight_dashboard(
    model: HookedTransformer,
    transcoders: dict[int, Transcoder],
    layer: int,
    latent: int,
    cfg: DashboardConfig = DashboardConfig(),
) -> FeatureDashboard:
    """The corpus-free part of a dashboard (output tokens, de-embeddings, connections)."""
    if layer not in transcoders:
        raise ValueError(f"no transcoder for layer {layer}; have {sorted(transcoders)}")
    tc = transcoders[layer]
    if not 0 <= latent < tc.cfg.n_latents:
        raise ValueError(f"latent {latent} out of range [0, {tc.cfg.n_latents}) for layer {layer}")
    promoted, suppressed = promoted_tokens(model, tc, latent, cfg.n_tokens)
    up, down = connections(model, transcoders, layer, latent, cfg.n_connections)
    return FeatureDashboard(
        layer=layer, latent=latent, promoted=promoted, suppressed=suppressed,
        de_embeddings=de_embeddings(model, tc, latent, cfg.n_tokens), upstream=up, downstream=down,
    )


def quantile_picks(
    values: Tensor, index: Tensor, n_quantiles: int, n_per: int
) -> list[tuple[str, list[tuple[float, int]]]]:
    """Split a sample of activations into ``n_quantiles`` equal-count bands (highest first).

    Returns ``(label, [(value, global index), ...])`` with up to ``n_per`` evenly spaced picks
    per band, highest first; NaN / -1 entries (padding) are ignored.
    """
    ok = ~torch.isnan(values) & (index >= 0)
    v, i = values[ok], index[ok]
    order = torch.argsort(v)
    v, i = v[order], i[order]
    n = int(v.shape[0])
    out = []
    for q in reversed(range(n_quantiles)):
        a, b = n * q // n_quantiles, n * (q + 1) // n_quantiles
        if b <= a:
            continue
        picks = torch.linspace(a, b - 1, min(n_per, b - a)).round().long().unique()
        lo, hi = 100 * q // n_quantiles, 100 * (q + 1) // n_quantiles
        out.append((f"{lo}-{hi}% quantile ({float(v[a]):.3g} - {float(v[b - 1]):.3g})",
                    [(float(v[p]), int(i[p])) for p in reversed(picks.tolist())]))
    return out


def compute_dashboards(
    model: HookedTransformer,
    transcoders: dict[int, Transcoder],
    latents: Sequence[tuple[int, int]],
    token_source: Iterable[Tensor] | None = None,
    cfg: DashboardConfig = DashboardConfig(),
    *,
    progress: bool = True,
) -> dict[tuple[int, int], FeatureDashboard]:
    """Dashboards of many latents; the corpus (if given) is scanned in one streaming pass."""
    latents = list(dict.fromkeys((int(a), int(b)) for a, b in latents))
    boards = {(L, f): weight_dashboard(model, transcoders, L, f, cfg) for L, f in latents}
    if token_source is None or not latents:
        return boards
    stats = stream_activation_stats(
        model, transcoders, latents, token_source, cfg.stream_config(), progress=progress
    )
    # Which (document, position) each dashboard shows.
    shown: list[list[tuple[float, int]]] = []
    bands: list[list[tuple[str, list[tuple[float, int]]]]] = []
    for row in range(len(latents)):
        top = [(float(v), int(i)) for v, i in zip(stats.top_values[row], stats.top_index[row])
               if i >= 0 and v > 0]
        shown.append(top)
        bands.append(quantile_picks(stats.sample_values[row], stats.sample_index[row],
                                    cfg.n_quantiles, cfg.n_per_quantile) if cfg.n_quantiles else [])
    doc_acts = _document_activations(model, transcoders, latents, stats, shown, bands)
    for row, key in enumerate(latents):
        board = boards[key]
        ex = lambda v, i: _example(model, stats, doc_acts, row, v, i, cfg)  # noqa: E731
        board.top_examples = [ex(v, i) for v, i in shown[row]]
        board.quantile_examples = [(lab, [ex(v, i) for v, i in picks]) for lab, picks in bands[row]]
        w = float(stats.hist_width[row])
        board.hist_edges = [w * k for k in range(cfg.n_bins + 1)]
        board.hist_counts = [int(c) for c in stats.hist_counts[row]]
        board.n_nonzero = int(stats.n_nonzero[row])
        board.n_tokens = stats.n_tokens
        board.max_activation = max(0.0, float(stats.top_values[row, 0]))
    return boards


def _document_activations(model, transcoders, latents, stats: ActivationStats, shown, bands):
    """``{document: [seq, m] activations}`` for every document holding a shown example."""
    needed: set[int] = set()
    for top, band in zip(shown, bands):
        for _, i in top + [p for _, picks in band for p in picks]:
            needed.add(stats.locate(i)[0])
    out: dict[int, Tensor] = {}
    by_len: dict[int, list[int]] = {}
    for d in sorted(needed):
        by_len.setdefault(int(stats.documents[d].shape[0]), []).append(d)
    for docs in by_len.values():
        for a in range(0, len(docs), 32):
            chunk = docs[a : a + 32]
            acts = latent_activations(model, transcoders, latents,
                                      torch.stack([stats.documents[d] for d in chunk]))
            out.update({d: acts[j] for j, d in enumerate(chunk)})
    return out


def _example(model, stats, doc_acts, row, value, index, cfg: DashboardConfig) -> ContextExample:
    d, p = stats.locate(index)
    doc = stats.documents[d]
    a, b = max(0, p - cfg.context_before), min(int(doc.shape[0]), p + cfg.context_after + 1)
    ids = [int(t) for t in doc[a:b]]
    return ContextExample(
        activation=value, document=d, position=p,
        tokens=[decode_token(model, t) for t in ids], token_ids=ids,
        acts=[float(x) for x in doc_acts[d][a:b, row]], highlight=p - a,
    )
