"""Influence on sparse COO edges (tensors only; no graph type): row normalisation and the power series.

``propagate_influence`` computes ``seed A + seed A^2 + ...`` for ``A[target, source]`` given
as COO triples; :mod:`tc_circuits.graph.prune` and :mod:`tc_circuits.graph.table` build on it.
It iterates the power series (one pass over every edge per path length).
``propagate_influence_by_level`` gets the same sum in a single pass over the edges when every
node has a *level* and every edge goes from a lower to a higher level (attribution graphs:
embeddings and errors < layer-0 features < ... < targets): the influence of the top level is
final first, and each lower level's is final once every edge into a higher level is done.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor


def normalized_weights(
    edge_target: Int[Tensor, " e"], edge_weight: Float[Tensor, " e"], n_nodes: int
) -> Float[Tensor, " e"]:
    """``|w| / sum of |w| over the edge's row`` (rows with zero sum stay zero)."""
    absw = edge_weight.abs().double()
    rows = torch.zeros(n_nodes, dtype=torch.float64).index_add_(0, edge_target.long(), absw)
    return absw / rows.clamp_min(1e-10)[edge_target.long()]


def propagate_influence(
    edge_target: Int[Tensor, " e"],
    edge_source: Int[Tensor, " e"],
    norm_weight: Float[Tensor, " e"],
    seed: Float[Tensor, " n"],
    *,
    max_iter: int = 10_000,
) -> Float[Tensor, " n"]:
    """``seed A + seed A^2 + ...`` for the sparse matrix ``A[target, source] = norm_weight``."""
    t, s = edge_target.long(), edge_source.long()
    w = norm_weight.double()
    x = seed.double()
    total = torch.zeros_like(x)
    for _ in range(max_iter):
        x = torch.zeros_like(x).index_add_(0, s, x[t] * w)
        if not bool(x.any()):
            return total
        total += x
    raise RuntimeError(f"influence did not converge after {max_iter} steps (is the graph cyclic?)")


EdgeChunk = tuple[Tensor, Tensor, Tensor]
"""``(edge_target, edge_source, norm_weight)`` of some of a graph's edges."""


class LevelChunk(NamedTuple):
    """Edges prepared for :func:`propagate_prepared`: ``lt`` is each edge's target level (int16)."""

    t: Tensor
    s: Tensor
    w: Tensor
    lt: Tensor


def prepare_chunk(chunk: EdgeChunk, level: Int[Tensor, " n"], *, check: bool = True) -> LevelChunk:
    """Read each edge's target level; ``check`` refuses an edge whose source is not below its target."""
    t, s, w = chunk
    t, s, level = t.long(), s.long(), level.long()
    if level.numel() and not -(2**15) <= int(level.min()) <= int(level.max()) < 2**15:
        raise ValueError(f"levels must fit in int16, got range [{int(level.min())}, {int(level.max())}]")
    lt = level[t]
    if check and t.numel() and not bool((level[s] < lt).all()):
        raise ValueError("an edge does not go from a lower to a higher level: use propagate_influence")
    return LevelChunk(t, s, w.double(), lt.to(torch.int16))  # int16: a cheap compare per level


def propagate_prepared(chunks: list[LevelChunk], seed: Float[Tensor, " n"]) -> Float[Tensor, " n"]:
    """The one-pass sum of :func:`propagate_influence_by_level` over prepared chunks."""
    y = seed.double().clone()
    present = [c.lt for c in chunks if c.lt.numel()]
    if not present:
        return torch.zeros_like(y)
    top, bottom = max(int(lt.max()) for lt in present), min(int(lt.min()) for lt in present)
    for lv in range(top, bottom - 1, -1):  # the influence of level lv is final here
        for c in chunks:
            idx = torch.nonzero(c.lt == lv).squeeze(1)
            if idx.numel():
                y.index_add_(0, c.s[idx], y[c.t[idx]] * c.w[idx])
    return y - seed.double()


def propagate_influence_by_level(
    chunks: list[EdgeChunk] | EdgeChunk,
    seed: Float[Tensor, " n"],
    level: Int[Tensor, " n"],
    *,
    check: bool = True,
) -> Float[Tensor, " n"]:
    """:func:`propagate_influence` in one pass, for edges from lower to strictly higher ``level``.

    ``chunks``: the edges as one ``(target, source, norm_weight)`` triple or a list of them (the
    attribution engine keeps its edges in the batches it computed them in: no concatenation).
    ``check`` refuses (``ValueError``) an edge whose source level is not below its target's.
    Equal to :func:`propagate_influence` up to float rounding (``tests/test_influence_levels.py``).
    """
    if isinstance(chunks, tuple):
        chunks = [chunks]
    return propagate_prepared([prepare_chunk(c, level, check=check) for c in chunks], seed)


__all__ = [
    "EdgeChunk", "LevelChunk", "normalized_weights", "prepare_chunk", "propagate_influence",
    "propagate_influence_by_level", "propagate_prepared",
]
