"""Influence on sparse COO edges (tensors only; no graph type): row normalisation and the power series.

``propagate_influence`` computes ``seed A + seed A^2 + ...`` for ``A[target, source]`` given
as COO triples; :mod:`tc_circuits.graph.prune` and :mod:`tc_circuits.graph.table` build on it.
"""

from __future__ import annotations

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


__all__ = ["normalized_weights", "propagate_influence"]
