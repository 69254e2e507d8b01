"""The exactness check of an attribution graph: incoming edges sum to each node's value.

For every expanded node (the targets and the features whose rows were computed) the sum of its
incoming edges must equal its value in the real forward pass. :func:`exactness_deviation`
measures the largest deviation, absolute and relative to ``1 + sum |edges| + |value|``;
:func:`default_exactness_tol` is the tolerance the engine
(:func:`tc_circuits.attribution.engine.attribute`) holds it to, per dtype, and
:class:`AttributionExactnessError` what it raises beyond it.
"""

from __future__ import annotations

import torch
from jaxtyping import Float64
from torch import Tensor

from tc_circuits.graph.graph import AttributionGraph


class AttributionExactnessError(RuntimeError):
    """The sum of a node's incoming edges differs from its value in the real forward pass."""


#: Default relative exactness tolerance per dtype. Measured (docs/guarantees.md): the largest
#: relative deviation over 324 random float32 graphs (1-3 layers, d 16-64, TopK/ReLU/JumpReLU,
#: LN/LNPre), the organism's graphs (16-1024 tokens) and GPT-2-shaped ones was below 5e-7
#: in float32 and 7.5e-16 in float64; the tolerances leave a ~20x / ~1000x margin, while a
#: skip path scaled by 1.001 in the backward pass deviates by ~1e-4. Half precision: bfloat16
#: graphs deviated by 3.5e-3 - 6.8e-3 (small models, bridges, GPT-2 shape at 24,576 latents),
#: float16 by 8.2e-4 (``tests/test_attribution_half.py``): ~7x / ~12x under their tolerances.
EXACTNESS_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}


def default_exactness_tol(dtype: torch.dtype) -> float:
    """The relative exactness tolerance for a model computing in ``dtype``."""
    return EXACTNESS_TOL.get(dtype, 1e-5)


def exactness_deviation(
    graph: AttributionGraph,
    sums: tuple[Float64[Tensor, " n_nodes"], Float64[Tensor, " n_nodes"]] | None = None,
) -> tuple[float, float]:
    """``(max abs, max relative)`` deviation of row sums from node values over expanded nodes.

    The relative deviation divides by ``1 + sum_j |edge_ij| + |value_i|``. ``sums``: the
    float64 ``(row sums, absolute row sums)`` per node when already known (the engine's sink
    accumulates them, in edge order: the same numbers); None computes them from the edges.
    """
    exp = graph.nodes.expanded
    if not bool(exp.any()):
        return 0.0, 0.0
    if sums is None:
        sums = graph.row_sums()
        abs_sums = torch.zeros(graph.n_nodes, dtype=torch.float64).index_add_(
            0, graph.edge_target, graph.edge_weight.double().abs()
        )
    else:
        sums, abs_sums = sums
    val = graph.nodes.value.double()
    dev = (sums - val).abs()[exp]
    rel = dev / (1 + abs_sums[exp] + val.abs()[exp])
    return float(dev.max()), float(rel.max())
