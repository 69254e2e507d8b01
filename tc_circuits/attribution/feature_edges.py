"""Reading feature edges off the transposed pass's gradient (into an edge sink, :mod:`~tc_circuits.attribution.edge_sink`).

For a batch of ``B`` rows the transposed pass yields ``g = d row / d mlp_out_L``, shape
``[B, P, d]``; the edge from feature ``s`` at ``(L, p)`` is ``a_s W_dec[s] . g[:, p]``. A
cross-layer transcoder's feature writes every later layer ``L'`` too, so its edge is
``a_s sum_{L' >= L} W_dec[L -> L'][s] . g_{L'}[:, p]``: both functions take ``grads``, the
gradients ``{L': g_{L'}}`` the transposed pass yielded so far (``{L: g}`` for a per-layer
transcoder), and sum over the layers the features write (``lin.decoders(L)``).

* :func:`feature_edges_reference` (plain): gathers ``g[:, pos_s]`` for every feature, chunk
  by chunk (a ``[B, chunk, d]`` copy per chunk: k times the size of ``g`` in all);
* :func:`feature_edges` (fast): features grouped by position in a padded ``[P, kmax]``
  layout (:func:`position_layout`), one batched matmul ``g[:, p] @ (a W_dec)[p]^T`` per
  chunk of positions, reading ``g`` in place. Equal to the reference
  (``tests/test_fast_paths.py``); padding slots carry weight 0 and are dropped by the sink.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tc_circuits.attribution.edge_sink import EdgeSink, ListEdgeSink  # EdgeSink re-exported: its old home
from tc_circuits.attribution.linearise import LinearisedModel


class PositionLayout(NamedTuple):
    """One layer's active features laid out ``[pos, slot]`` (padded with ``valid == False``)."""

    node: Tensor
    """[P, kmax] feature node index (padding repeats the layer's first feature)."""
    valid: Tensor
    """[P, kmax] whether the slot holds a real feature."""
    vectors: dict
    """The scaled decoder rows ``(a W_dec)[p]`` (with the extra column), made on first use and
    kept for the graph when they fit :data:`_VECTOR_CACHE_BYTES` (one per layout: per graph)."""


#: Largest ``[P, kmax (+ 1), d]`` block of scaled decoder rows a layout keeps across batches
#: (above it, e.g. long prompts, the rows are gathered per batch as before).
_VECTOR_CACHE_BYTES = 64 * 2**20


def position_layout(lin: LinearisedModel, L: int) -> PositionLayout:
    """Group layer ``L``'s features by position (they are sorted by layer, then pos)."""
    f, sl, P = lin.features, lin.features_in_layer(L), lin.n_pos
    pos = f.pos[sl]
    n = int(pos.shape[0])
    counts = torch.bincount(pos, minlength=P)
    kmax = max(1, int(counts.max())) if n else 1
    first = torch.cumsum(counts, 0) - counts  # start of each position's run
    slot = torch.arange(n) - first[pos]
    node = torch.full((P, kmax), sl.start, dtype=torch.long)
    valid = torch.zeros(P, kmax, dtype=torch.bool)
    node[pos, slot] = torch.arange(sl.start, sl.stop)
    valid[pos, slot] = True
    return PositionLayout(node, valid, {})


def _reads(lin: LinearisedModel, L: int, grads: Tensor | dict[int, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """``[(g_{L'}, W_dec[L -> L'])]`` for the output layers of layer ``L``'s features that have a gradient."""
    if isinstance(grads, Tensor):
        grads = {L: grads}
    return [(grads[o], W.detach()) for o, W in sorted(lin.decoders(L).items()) if o in grads]


def feature_edges_reference(
    lin: LinearisedModel, L: int, grads: Tensor | dict[int, Tensor], row_nodes: Tensor, sink: EdgeSink | ListEdgeSink
) -> None:
    """Plain reference: gather ``g`` at every feature's position, chunk by chunk."""
    f, dev = lin.features, lin.device
    reads = _reads(lin, L, grads)
    sl = lin.features_in_layer(L)
    if sl.start == sl.stop or not reads:
        return
    B, P, d = reads[0][0].shape
    start = sl.start
    stop = start + int(torch.searchsorted(f.pos[sl], P))  # only sources at positions < P
    chunk = max(1, (1 << 22) // max(1, B * d))
    for a in range(start, stop, chunk):
        b = min(stop, a + chunk)
        w = None
        for g, W_dec in reads:
            vec = W_dec[f.latent[a:b].to(dev)] * f.activation[a:b].to(dev, W_dec.dtype)[:, None]
            term = torch.einsum("bcd,cd->bc", g[:, f.pos[a:b].to(dev), :], vec.to(g.dtype))
            w = term if w is None else w + term
        sink.add(row_nodes, torch.arange(a, b), w)


def feature_edges(
    lin: LinearisedModel,
    L: int,
    grads: Tensor | dict[int, Tensor],
    row_nodes: Tensor,
    sink: EdgeSink | ListEdgeSink,
    layout: PositionLayout,
    extra: tuple[Tensor, Tensor] | None = None,
) -> None:
    """Fast path: one batched matmul over positions, ``w[:, p, :] = g[:, p, :] @ (a W_dec)[p]^T``.

    Reads ``g`` in place (no per-feature gather of ``[B, d]`` rows), so the work is one
    ``[P, B, d] x [P, d, kmax]`` bmm per chunk of positions. Equal to
    :func:`feature_edges_reference` (``tests/test_fast_paths.py``).

    ``extra = (nodes [P], vectors [P, d])``: one more source per position read off the same
    gradient (the engine passes the error nodes ``e[L, p]``): its column joins the bmm, so
    ``g`` is read once for the features and the errors (per-layer transcoders only).
    """
    dev = lin.device
    reads = _reads(lin, L, grads)
    sl = lin.features_in_layer(L)
    if sl.start == sl.stop or not reads:  # no active feature in this layer (padding would index past the end)
        return
    B, P, d = reads[0][0].shape
    if extra is not None and len(reads) != 1:
        raise ValueError("extra sources need a per-layer transcoder (one decoder block)")
    kmax = int(layout.node.shape[1])
    step = max(1, (1 << 22) // max(1, kmax * max(B, d)))
    full = _cached_vectors(lin, L, layout, reads, extra) if len(reads) == 1 else None
    for p0 in range(0, P, step):
        p1 = min(P, p0 + step)
        node, valid = layout.node[p0:p1], layout.valid[p0:p1]
        w = None
        for g, W_dec in reads:  # one decoder block per output layer (one for a per-layer transcoder)
            if full is not None:
                vec = full[p0:p1]
            else:
                vec = _vectors(lin, node, valid, W_dec, g.dtype, None if extra is None else extra[1][p0:p1])
            term = torch.bmm(g[:, p0:p1, :].transpose(0, 1), vec.transpose(1, 2))  # [p, B, kmax (+ 1)]
            w = term if w is None else w.add_(term)
        if extra is not None:
            sink.add(row_nodes, extra[0][p0:p1], w[:, :, kmax].t())
            w = w[:, :, :kmax]
        w = torch.where(valid.to(dev)[:, None, :], w, 0).permute(1, 0, 2).reshape(B, -1)
        sink.add(row_nodes, node.reshape(-1), w)


def _vectors(lin: LinearisedModel, node: Tensor, valid: Tensor, W_dec: Tensor, dtype, extra: Tensor | None) -> Tensor:
    """``(a W_dec)`` of the slots ``node`` ``[p, kmax]`` (0 in padding), ``[p, kmax (+ 1), d]``
    with ``extra`` ``[p, d]`` as one more column."""
    f, dev = lin.features, lin.device
    scale = torch.where(valid, f.activation[node], 0).to(dev, W_dec.dtype)
    p, kmax = node.shape
    # written in place into one [p, kmax (+ 1), d] block: no concatenation copy
    vec = torch.empty(p, kmax + (extra is not None), W_dec.shape[1], device=dev, dtype=dtype)
    rows = W_dec.index_select(0, f.latent[node].reshape(-1).to(dev)).view(p, kmax, -1)
    torch.mul(rows, scale[..., None], out=vec[:, :kmax])
    if extra is not None:
        vec[:, kmax] = extra
    return vec


def _cached_vectors(lin, L, layout: PositionLayout, reads, extra) -> Tensor | None:
    """Layer ``L``'s scaled decoder rows over every position, made once per graph (every batch
    of rows reads the same ones); ``None`` when the block is over :data:`_VECTOR_CACHE_BYTES`."""
    g, W_dec = reads[0]
    key = (g.dtype, extra is not None)
    if key not in layout.vectors:
        P, kmax = layout.node.shape
        size = P * (kmax + (extra is not None)) * W_dec.shape[1] * g.element_size()
        layout.vectors[key] = (
            _vectors(lin, layout.node, layout.valid, W_dec, g.dtype, None if extra is None else extra[1])
            if size <= _VECTOR_CACHE_BYTES else None
        )
    return layout.vectors[key]
