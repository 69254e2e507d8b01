"""Where the engine writes its edges: COO triples ``(target, source, weight)``, exact zeros dropped.

* :class:`EdgeSink` (fast): the triples go into buffers allocated once at the structural bound of
  :mod:`tc_circuits.attribution.memory` (untouched pages of a large allocation cost no memory on
  Linux, so a loose bound is free), with int32 node indices when the node count allows. Each
  node's incoming weights and their absolute values are summed in float64 as they arrive (the
  exactness check and the influence ranker read these sums: no float64 copy of the edges). With
  ``level`` it records the runs of edges whose target has one level (``segments``), so the
  ranker reads each level's edges as contiguous slices. 4 + 4 + 4 bytes per float32 edge.
* :class:`ListEdgeSink` (reference): one int64 / int64 / weight piece per call, concatenated at
  the end (2 x 20 bytes per float32 edge at that point).

The engine's graphs are edge for edge identical with either (same order, same weights:
``tests/test_fast_paths.py``).
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Compact the buffers to the edge count at the end (a copy, one column at a time) while they
#: hold at most this many bytes; larger graphs keep views of the buffers (no copy at the peak).
COMPACT_BYTES = 1 << 30


def index_dtype(n_nodes: int) -> torch.dtype:
    """int32 node indices when every index fits, else int64."""
    return torch.int32 if n_nodes < 2**31 else torch.int64


class EdgeSink:
    """COO edges in preallocated buffers, with per-node float64 row sums (see the module docstring)."""

    def __init__(
        self,
        n_nodes: int,
        capacity: int = 0,
        dtype: torch.dtype = torch.float32,
        *,
        level: Int[Tensor, " n"] | None = None,
        sums: bool = True,
    ) -> None:
        self.n_nodes, self.n = int(n_nodes), 0
        idx = index_dtype(self.n_nodes)
        self.t = torch.empty(max(0, int(capacity)), dtype=idx)
        self.s = torch.empty(max(0, int(capacity)), dtype=idx)
        self.w = torch.empty(max(0, int(capacity)), dtype=dtype)
        self.sums = sums
        self.row_sum = torch.zeros(self.n_nodes if sums else 0, dtype=torch.float64)
        """Sum of each node's incoming weights (float64, in arrival order)."""
        self.row_abs = torch.zeros(self.n_nodes if sums else 0, dtype=torch.float64)
        """Sum of the absolute values of each node's incoming weights."""
        self.level = None if level is None else level.long().cpu()
        self.segments: list[tuple[int, int, int]] = []
        """``(start, stop, level)``: edges ``[start, stop)`` all have targets of that level."""

    def __len__(self) -> int:
        return self.n

    def _reserve(self, m: int) -> None:
        need = self.n + m
        if need <= self.t.shape[0]:
            return
        cap = max(need, int(1.5 * self.t.shape[0]), 1 << 16)  # the bound was exceeded: grow (a copy)
        for name in ("t", "s", "w"):
            old = getattr(self, name)
            new = torch.empty(cap, dtype=old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def _append(self, t: Tensor, s: Tensor, w: Tensor) -> int:
        m = int(t.shape[0])
        if w.dtype != self.w.dtype and torch.promote_types(w.dtype, self.w.dtype) != self.w.dtype:
            self.w = self.w.to(torch.promote_types(w.dtype, self.w.dtype))  # as concatenation would
        self._reserve(m)
        a = self.n
        self.t[a : a + m] = t
        self.s[a : a + m] = s
        self.w[a : a + m] = w
        self.n = a + m
        if self.sums:
            wd = self.w[a : a + m].double()
            self.row_sum.index_add_(0, t, wd)
            self.row_abs.index_add_(0, t, wd.abs())  # not abs_: for float64 edges wd is the buffer
        return a

    def add(self, row_nodes: Int[Tensor, " b"], col_nodes: Int[Tensor, " c"], w: Float[Tensor, "b c"]) -> None:
        """The non-zero entries of ``w``: edge ``row_nodes[i] <- col_nodes[j]`` of weight ``w[i, j]``."""
        b, c = torch.nonzero(w, as_tuple=True)  # row-major: b is non-decreasing
        if not b.numel():
            return
        vals = w[b, c].cpu()
        b, c = b.cpu(), c.cpu()
        t = row_nodes[b]
        a = self._append(t, col_nodes[c], vals)
        if self.level is not None:  # runs of rows of one level -> contiguous edge runs (b is sorted)
            rl = self.level[row_nodes]
            starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(rl[1:] != rl[:-1]).flatten() + 1])
            self._segments(a, torch.searchsorted(b, starts).tolist(), rl[starts].tolist(), int(b.numel()))

    def add_edges(self, t: Int[Tensor, " m"], s: Int[Tensor, " m"], w: Float[Tensor, " m"]) -> None:
        """COO edges as they are (exact zeros included); for callers that have triples already."""
        if not t.numel():
            return
        a = self._append(t.cpu(), s.cpu(), w.cpu())
        if self.level is not None:
            lt = self.level[t.long().cpu()]
            starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(lt[1:] != lt[:-1]).flatten() + 1])
            self._segments(a, starts.tolist(), lt[starts].tolist(), int(t.numel()))

    def _segments(self, a: int, starts: list[int], levels: list[int], m: int) -> None:
        for i, (s0, lv) in enumerate(zip(starts, levels)):
            s1 = starts[i + 1] if i + 1 < len(starts) else m
            if s1 > s0:
                self.segments.append((a + s0, a + s1, int(lv)))

    def view(self, a: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
        """Edges ``[a, b)`` (views, no copy)."""
        return self.t[a:b], self.s[a:b], self.w[a:b]

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(target, source, weight)`` of every edge; the sink hands its buffers over (call once)."""
        n = self.n
        out = []
        small = n * (self.t.element_size() * 2 + self.w.element_size()) <= COMPACT_BYTES
        for name in ("t", "s", "w"):
            buf = getattr(self, name)
            setattr(self, name, torch.empty(0, dtype=buf.dtype))  # no view: the storage moves out
            out.append(buf[:n].clone() if small and buf.shape[0] > n else buf[:n])
            del buf
        return out[0], out[1], out[2]


class ListEdgeSink:
    """Reference: one int64 COO piece per :meth:`add`, concatenated by :meth:`tensors`."""

    def __init__(self) -> None:
        self.t: list[Tensor] = []
        self.s: list[Tensor] = []
        self.w: list[Tensor] = []

    def add(self, row_nodes: Tensor, col_nodes: Tensor, w: Tensor) -> None:
        b, c = torch.nonzero(w, as_tuple=True)
        if b.numel():
            self.t.append(row_nodes[b.cpu()])
            self.s.append(col_nodes[c.cpu()])
            self.w.append(w[b, c].cpu())

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        if not self.w:
            e = torch.zeros(0, dtype=torch.int64)
            return e, e.clone(), torch.zeros(0)
        return torch.cat(self.t), torch.cat(self.s), torch.cat(self.w)


__all__ = ["COMPACT_BYTES", "EdgeSink", "ListEdgeSink", "index_dtype"]
