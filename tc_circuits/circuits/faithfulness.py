"""Faithfulness of attribution graphs: ablate a graph's top nodes and watch the task metric.

Phases of :func:`faithfulness`:

1. **graphs** -- for each prompt of the task, the attribution graph of the task's linear
   metric (``task.direction()[i] . logits[-1]``, a direction target) with every active
   feature expanded; feature nodes ranked by their influence on the target
   (:func:`tc_circuits.graph.prune.node_influence`);
2. **ablations** -- for every fraction ``f`` of :data:`FRACTIONS`, the top
   ``n = ceil(f N)`` of the prompt's ``N`` active features are set to zero
   (:func:`tc_circuits.interventions.intervene`; other latents recomputed from their changed
   inputs, so latents silent in the clean run may switch on -- ``recompute_features=False``
   holds them at their clean values instead; the clean run's reconstruction error held
   constant), in ``frozen`` mode (attention patterns and LN scales of
   the clean run: the graph's own linearised model) and ``live`` mode (the real model);
   the same with ``n_random`` random orders of the same features as the baseline;
3. **summary** -- per prompt the *explained drop* ``d(f) = (m(0) - m(f)) / (m(0) - m(1))``
   (1 = the ablated nodes carry all of the metric the features carry), averaged over prompts;
   its area over ``f`` in [0, 1] (trapezoid) for the graph ranking and for random orders. A
   random ranking gives an area near 0.5 when effects add up; an area near 1 means a few
   top nodes explain the behaviour. Error nodes, token embeddings and biases are not
   ablated (they are not features), so ``m(1)`` is the metric carried by them alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from tc_circuits.attribution.engine import attribute
from tc_circuits.attribution.targets import direction_target
from tc_circuits.graph.graph import AttributionGraph
from tc_circuits.graph.prune import node_influence
from tc_circuits.interventions import FeatureIntervention, intervene

#: Fractions of a graph's feature nodes ablated (0 = clean, 1 = every active feature).
FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass
class FaithfulnessCurve:
    """Mean explained drop against the fraction of feature nodes ablated, one mode."""

    mode: str
    fractions: list[float]
    graph: list[float]
    """Mean explained drop when ablating the graph's top nodes."""
    random: list[float]
    """Mean explained drop when ablating random nodes (mean over orders)."""
    metric_graph: list[float] = field(default_factory=list)
    """Mean raw metric (logit difference) at each fraction, graph order."""
    metric_random: list[float] = field(default_factory=list)

    @property
    def auc(self) -> float:
        return _trapezoid(self.fractions, self.graph)

    @property
    def auc_random(self) -> float:
        return _trapezoid(self.fractions, self.random)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "fractions": self.fractions, "graph": self.graph, "random": self.random,
                "metric_graph": self.metric_graph, "metric_random": self.metric_random,
                "auc": self.auc, "auc_random": self.auc_random}


@dataclass
class FaithfulnessResult:
    curves: dict[str, FaithfulnessCurve]
    n_prompts: int
    mean_features: float
    """Mean number of active features per prompt graph."""

    def to_dict(self) -> dict[str, Any]:
        return {"n_prompts": self.n_prompts, "mean_features": self.mean_features,
                "curves": {m: c.to_dict() for m, c in self.curves.items()}}


def _trapezoid(x: list[float], y: list[float]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


def ranked_features(graph: AttributionGraph) -> list[tuple[int, int, int]]:
    """``(layer, pos, latent)`` of the graph's feature nodes, most influential first."""
    infl = node_influence(graph)
    idx = graph.indices_of("feature")
    order = idx[torch.argsort(infl[idx], descending=True, stable=True)]
    n = graph.nodes
    return [(int(n.layer[i]), int(n.pos[i]), int(n.latent[i])) for i in order]


def ablation_metric(model, transcoders, tokens, direction, feats, mode: str, *, recompute_features: bool = True) -> float:
    """The linear metric after setting features ``feats`` to zero."""
    ivs = [FeatureIntervention(L, p, z, 0.0) for L, p, z in feats]
    res = intervene(model, transcoders, tokens, ivs, mode=mode, recompute_features=recompute_features)
    return float(res.logits[-1].double() @ direction.double().to(res.logits.device))


def faithfulness(
    model,
    transcoders: dict,
    task,
    *,
    prompts: list[int] | None = None,
    fractions: tuple[float, ...] = FRACTIONS,
    modes: tuple[str, ...] = ("frozen", "live"),
    n_random: int = 3,
    seed: int = 0,
    recompute_features: bool = True,
) -> FaithfulnessResult:
    """Ablation curves of the task's graphs (see the module docstring)."""
    if fractions[0] != 0.0 or fractions[-1] != 1.0 or list(fractions) != sorted(fractions):
        raise ValueError(f"fractions must rise from 0.0 to 1.0, got {fractions}")
    tokens_all = task.tokens
    prompts = list(range(tokens_all.shape[0])) if prompts is None else prompts
    if not prompts:
        raise ValueError("no prompts")
    directions = task.direction(model.cfg.d_vocab)
    g = torch.Generator().manual_seed(seed)
    drops = {m: {"graph": [], "random": []} for m in modes}
    raw = {m: {"graph": [], "random": []} for m in modes}
    n_feats = []
    for i in prompts:
        toks, d = tokens_all[i], directions[i]
        graph = attribute(model, transcoders, toks, targets=[direction_target(d)], progress=False)
        ranked = ranked_features(graph)
        N = len(ranked)
        n_feats.append(N)
        orders = {"graph": [ranked]}
        orders["random"] = [[ranked[j] for j in torch.randperm(N, generator=g).tolist()] for _ in range(n_random)]
        for mode in modes:
            for name, order_list in orders.items():
                curves = []
                for order in order_list:
                    ms = [ablation_metric(model, transcoders, toks, d, order[: math.ceil(f * N)], mode,
                                          recompute_features=recompute_features) for f in fractions]
                    curves.append(ms)
                ms = [sum(c[j] for c in curves) / len(curves) for j in range(len(fractions))]
                span = ms[0] - ms[-1]
                drops[mode][name].append([(ms[0] - m) / span if abs(span) > 1e-9 else 0.0 for m in ms])
                raw[mode][name].append(ms)

    def mean(rows):
        return [sum(r[j] for r in rows) / len(rows) for j in range(len(fractions))]

    curves = {
        m: FaithfulnessCurve(m, list(fractions), mean(drops[m]["graph"]), mean(drops[m]["random"]),
                             mean(raw[m]["graph"]), mean(raw[m]["random"]))
        for m in modes
    }
    return FaithfulnessResult(curves, len(prompts), sum(n_feats) / len(n_feats))


__all__ = ["COMPARE_FRACTIONS", "FRACTIONS", "FaithfulnessCurve", "compare_faithfulness", "FaithfulnessResult", "ablation_metric", "faithfulness", "ranked_features"]


#: The coarser grid ``tc-circuits compare`` uses (fewer forward passes per prompt).
COMPARE_FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def compare_faithfulness(model, transcoders: dict, task, *, n_prompts: int = 4, n_random: int = 2, seed: int = 0) -> dict[str, Any]:
    """Faithfulness of ``n_prompts`` evenly spaced prompts of ``task`` (the compare hook)."""
    if any(tc.cfg.is_sae for tc in transcoders.values()):
        # An SAE reconstructs hook_mlp_out from itself: there is no MLP input -> output map to
        # linearise, so the engine builds no graph for it (and there is nothing to ablate).
        return {"skipped": "SAE dictionaries have no attribution graph (the engine needs mlp_in -> mlp_out)"}
    n = task.tokens.shape[0]
    if n_prompts < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
    idx = sorted({round(i * (n - 1) / max(1, n_prompts - 1)) for i in range(min(n_prompts, n))})
    return faithfulness(model, transcoders, task, prompts=idx, fractions=COMPARE_FRACTIONS,
                        n_random=n_random, seed=seed).to_dict()
