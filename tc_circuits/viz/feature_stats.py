"""One streaming pass over a token corpus collecting activation statistics of many latents.

For every requested ``(layer, latent)`` and with memory independent of the corpus size
(except the corpus tokens themselves, kept to cut contexts out at the end):

* **top-k**: the ``n_top`` largest activations and where they occurred, a running top-k merged
  batch by batch with ``torch.topk`` over ``[kept | this batch]`` (one call for all latents);
* **reservoir**: a uniform random sample (without replacement) of ``n_reservoir`` nonzero
  activations: each nonzero activation draws a random key from a ``torch.Generator`` and the
  ``n_reservoir`` smallest keys are kept with the same running top-k merge. At the end the
  sample is sorted to pick examples at activation quantiles;
* **histogram** of the nonzero activations with ``n_bins`` equal bins on ``[0, width*n_bins)``:
  when a larger value arrives the bin width doubles and adjacent bins are merged pairwise
  (exact, since the new edges are a subset of the old ones). Counts always sum to the number
  of nonzero activations seen.

Per batch the model runs once (``run_with_cache`` with only the transcoders' input hooks, and
stopping after the last needed layer), each needed transcoder encodes its layer once, and
the requested latents' columns are gathered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from tc_circuits.coders.transcoder import Transcoder


@dataclass(frozen=True)
class StreamConfig:
    """How much to collect in the streaming pass."""

    n_top: int = 10
    """Top-activating examples kept per latent."""
    n_reservoir: int = 256
    """Size of the uniform sample of nonzero activations (for quantile examples)."""
    n_bins: int = 32
    """Histogram bins (an even number: bins merge pairwise when the range doubles)."""
    max_batches: int | None = 16
    """Stop after this many batches of the token source (None: exhaust it; it must be finite)."""
    skip_first_position: bool = True
    """Ignore position 0 (BOS, whose activations are outliers in most models)."""
    seed: int = 0
    """Seed of the reservoir's random keys (a private ``torch.Generator``)."""

    def __post_init__(self) -> None:
        for name in ("n_top", "n_reservoir"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_bins < 2 or self.n_bins % 2:
            raise ValueError(f"n_bins must be an even number >= 2, got {self.n_bins}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or None, got {self.max_batches}")


@dataclass
class ActivationStats:
    """What the pass collected; row ``i`` of every tensor belongs to ``latents[i]``."""

    latents: list[tuple[int, int]]
    """The ``(layer, latent)`` pairs, in request order."""
    top_values: Float[Tensor, "m n_top"]
    """Largest activations, descending (``-inf`` pads unused slots)."""
    top_index: Int[Tensor, "m n_top"]
    """Global token index of each top activation (-1 for padding)."""
    sample_values: Float[Tensor, "m n_res"]
    """Reservoir sample of nonzero activations (NaN pads unused slots)."""
    sample_index: Int[Tensor, "m n_res"]
    """Global token index of each sampled activation (-1 for padding)."""
    hist_counts: Int[Tensor, "m n_bins"]
    """Histogram counts of nonzero activations."""
    hist_width: Float[Tensor, " m"]
    """Bin width of each latent's histogram (bins start at 0)."""
    n_nonzero: Int[Tensor, " m"]
    """Number of nonzero activations seen."""
    n_tokens: int
    """Number of tokens scanned (excluding skipped positions)."""
    documents: list[Int[Tensor, " seq"]]
    """Every scanned row of tokens; global token index = ``doc_offsets[d] + pos``."""
    doc_offsets: Int[Tensor, " n_docs"]
    """Global index of the first token of each document."""

    def locate(self, index: int) -> tuple[int, int]:
        """``(document, position)`` of a global token index."""
        d = int(torch.searchsorted(self.doc_offsets, torch.tensor(index), right=True)) - 1
        return d, index - int(self.doc_offsets[d])


def _merge_topk(
    keys: Tensor, vals: Tensor, idx: Tensor, new_keys: Tensor, new_vals: Tensor, new_idx: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Keep the ``k`` largest keys per row of ``[kept | new]``."""
    all_k = torch.cat([keys, new_keys], 1)
    all_v = torch.cat([vals, new_vals], 1)
    all_i = torch.cat([idx, new_idx], 1)
    top = torch.topk(all_k, min(k, all_k.shape[1]), dim=1)
    return top.values, all_v.gather(1, top.indices), all_i.gather(1, top.indices)


def _update_hist(counts: Tensor, width: Tensor, acts: Tensor) -> None:
    """Add the nonzero entries of ``acts [m, n]`` to the doubling histograms (in place)."""
    n_bins = counts.shape[1]
    nz = acts > 0
    amax = torch.where(nz, acts, torch.zeros((), dtype=acts.dtype)).amax(1)
    for i in torch.nonzero(amax > 0).flatten().tolist():
        if width[i] <= 0:
            width[i] = float(amax[i]) * (1 + 1e-4) / n_bins
        while float(amax[i]) >= float(width[i]) * n_bins:  # keep every value strictly inside
            merged = counts[i].view(n_bins // 2, 2).sum(1)
            counts[i] = torch.cat([merged, torch.zeros_like(merged)])
            width[i] *= 2
    rows, cols = torch.nonzero(nz, as_tuple=True)
    if rows.numel() == 0:
        return
    v = acts[rows, cols].double()
    b = torch.floor(v / width[rows].double()).long().clamp(0, n_bins - 1)
    counts.view(-1).index_add_(0, rows * n_bins + b, torch.ones_like(b))


def latent_activations(
    model: HookedTransformer,
    transcoders: dict[int, Transcoder],
    latents: Sequence[tuple[int, int]],
    tokens: Int[Tensor, "batch seq"],
) -> Float[Tensor, "batch seq m"]:
    """Activations of the requested latents on ``tokens`` (one model pass, needed hooks only)."""
    layers = sorted({layer for layer, _ in latents})
    for layer in layers:
        if layer not in transcoders:
            raise ValueError(f"no transcoder for layer {layer}; have {sorted(transcoders)}")
    names = {transcoders[L].cfg.in_site.hook_for(model) for L in layers}
    stop = max(transcoders[L].cfg.in_site.layer for L in layers) + 1
    with torch.no_grad():
        _, cache = model.run_with_cache(
            tokens.to(model.cfg.device), names_filter=lambda n: n in names, stop_at_layer=stop
        )
        out = torch.empty(*tokens.shape, len(latents), dtype=torch.float32)
        for L in layers:
            tc = transcoders[L]
            acts = tc.encode(cache[tc.cfg.in_site.hook_for(model)].to(tc.W_enc.dtype)).float().cpu()
            cols = [i for i, (lay, _) in enumerate(latents) if lay == L]
            lat = torch.tensor([latents[i][1] for i in cols])
            out[..., cols] = acts[..., lat]
    return out


def stream_activation_stats(
    model: HookedTransformer,
    transcoders: dict[int, Transcoder],
    latents: Sequence[tuple[int, int]],
    token_source: Iterable[Tensor],
    cfg: StreamConfig = StreamConfig(),
    *,
    progress: bool = True,
) -> ActivationStats:
    """Scan ``token_source`` (``[batch, seq]`` LongTensors) once; see the module doc."""
    latents = [(int(a), int(b)) for a, b in latents]
    if not latents:
        raise ValueError("no latents requested")
    for layer, lat in latents:
        if layer in transcoders and not 0 <= lat < transcoders[layer].cfg.n_latents:
            raise ValueError(f"latent {lat} out of range for layer {layer}")
    m = len(latents)
    gen = torch.Generator().manual_seed(cfg.seed)
    top_k = torch.full((m, 0), -math.inf)
    top_v, top_i = top_k.clone(), torch.zeros((m, 0), dtype=torch.long)
    res_k, res_v, res_i = top_k.clone(), top_k.clone(), top_i.clone()
    counts = torch.zeros((m, cfg.n_bins), dtype=torch.long)
    width = torch.zeros(m, dtype=torch.float64)
    n_nonzero = torch.zeros(m, dtype=torch.long)
    docs: list[Tensor] = []
    offsets: list[int] = []
    offset = n_tokens = 0
    first = 1 if cfg.skip_first_position else 0
    bar = tqdm(total=cfg.max_batches, desc="feature dashboards", unit="batch", disable=not progress)
    for b, tokens in enumerate(token_source):
        if cfg.max_batches is not None and b >= cfg.max_batches:
            break
        tokens = torch.as_tensor(tokens).long().cpu()
        if tokens.ndim != 2:
            raise ValueError(f"token batches must be [batch, seq], got shape {tuple(tokens.shape)}")
        B, S = tokens.shape
        if S > model.cfg.n_ctx:
            raise ValueError(f"token batches of length {S} exceed the model's context n_ctx={model.cfg.n_ctx}")
        acts = latent_activations(model, transcoders, latents, tokens)[:, first:]  # [B, S', m]
        flat = acts.reshape(-1, m).T.contiguous()  # [m, B*S']
        pos = torch.arange(first, S).repeat(B)
        gidx = (offset + torch.arange(B).repeat_interleave(S - first) * S + pos).expand(m, -1)
        top_k, top_v, top_i = _merge_topk(top_k, top_v, top_i, flat, flat, gidx, cfg.n_top)
        nz = flat > 0
        keys = torch.where(nz, -torch.rand(flat.shape, generator=gen), torch.full((), -math.inf))
        res_k, res_v, res_i = _merge_topk(res_k, res_v, res_i, keys, flat, gidx, cfg.n_reservoir)
        _update_hist(counts, width, flat)
        n_nonzero += nz.sum(1)
        n_tokens += flat.shape[1]
        for row in tokens:
            docs.append(row)
            offsets.append(offset)
            offset += S
        bar.update(1)
    bar.close()
    if not docs:
        raise ValueError("the token source yielded no batches")
    top_i = torch.where(torch.isfinite(top_k), top_i, torch.full((), -1))
    valid = torch.isfinite(res_k)
    return ActivationStats(
        latents=latents,
        top_values=top_v,
        top_index=top_i,
        sample_values=torch.where(valid, res_v, torch.full((), math.nan)),
        sample_index=torch.where(valid, res_i, torch.full((), -1)),
        hist_counts=counts,
        hist_width=width.float(),
        n_nonzero=n_nonzero,
        n_tokens=n_tokens,
        documents=docs,
        doc_offsets=torch.tensor(offsets, dtype=torch.long),
    )
