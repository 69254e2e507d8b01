"""Per-layer skip transcoders vs a cross-layer transcoder on the organism, at equal total latents and k.

Both: n_latents per layer (3 x 1024 in all), TopK k per layer, the same training tokens, seed and
held-out tokens. Reports (``bench/results/clt_compare.{json,md}``):

1. ``tc-circuits compare --kinds skip_transcoder clt``'s rows: FVU per layer, L0, dead fraction,
   ΔCE / KL / CE recovered spliced (each layer alone and all at once, no error term),
   greater-than probability difference spliced;
2. the greater-than attribution graph of the demo prompt with each: size, exactness, and after
   pruning (node 0.8 / edge 0.98) nodes / features / edges, replacement and completeness scores.

Run: ``PYTHONPATH=. python bench/bench_clt_compare.py --tokens 300000 --eval-tokens 16384`` (29 min wall
on the shared 2-core machine under load 8-11; results in docs/clt.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tc_circuits.attribution import attribute, direction_target
from tc_circuits.coders.clt import CrossLayerTranscoder
from tc_circuits.coders.transcoder import TranscoderSet
from tc_circuits.evaluation.compare import CompareConfig, run_compare
from tc_circuits.graph.prune import prune_graph
from tc_circuits.graph.scores import compute_graph_scores
from tc_circuits.organism import load_organism
from tc_circuits.tasks.greater_than import prompt_task

PROMPT = "The war lasted from the year 1732 to the year 17"


def graph_stats(model, coders) -> dict:
    one = prompt_task(model.tokenizer, PROMPT, d_vocab=model.cfg.d_vocab)
    yy = int(one.yy[0])
    target = direction_target(one.direction()[0], label=f"P(YY>{yy:02d}) - P(YY<={yy:02d})")
    t = time.perf_counter()
    g = attribute(model, coders, PROMPT, targets=[target], progress=False)
    secs = time.perf_counter() - t
    pr = prune_graph(g, 0.8, 0.98)
    full, kept = compute_graph_scores(g), compute_graph_scores(g, pr.node_mask)
    feats = g.mask_of("feature")
    return {
        "seconds": round(secs, 3), "nodes": g.n_nodes, "features": int(feats.sum()), "edges": g.n_edges,
        "exactness_max_abs_dev": g.metadata["exactness_max_abs_dev"],
        "pruned_nodes": int(pr.node_mask.sum()), "pruned_features": int((pr.node_mask & feats).sum()),
        "pruned_edges": int(pr.edge_mask.sum()),
        "pruned_features_per_layer": [int((pr.node_mask & feats & (g.nodes.layer == L)).sum()) for L in range(model.cfg.n_layers)],
        "replacement_full": full.replacement, "completeness_full": full.completeness,
        "replacement_pruned": kept.replacement, "completeness_pruned": kept.completeness,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=600_000, help="training tokens per dictionary")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--n-latents", type=int, default=1024)
    ap.add_argument("--eval-tokens", type=int, default=32_768, help="held-out tokens")
    ap.add_argument("--out", default="bench/results/clt_compare")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    t0 = time.perf_counter()
    cfg = CompareConfig(
        kinds=("skip_transcoder", "clt"), n_latents=args.n_latents, k=args.k, k_sweep=(),
        total_tokens=args.tokens, eval_tokens=args.eval_tokens, out_dir=str(out), progress=False,
    )
    res = run_compare(cfg)
    t_compare = time.perf_counter() - t0
    model = load_organism()
    skip = TranscoderSet.load(out / "runs" / f"skip_transcoder_k{args.k}" / "transcoders", model=model)
    clt = CrossLayerTranscoder.load(out / "runs" / f"clt_k{args.k}" / "clt", model=model)
    graphs = {"skip_transcoder": graph_stats(model, skip), "clt": graph_stats(model, clt)}
    payload = {
        "config": cfg.to_dict(), "ce_orig": res.ce_orig, "gt_original": res.gt_original,
        "rows": [r.to_dict() for r in res.rows], "graphs": graphs,
        "seconds": {"compare": round(t_compare, 1), "total": round(time.perf_counter() - t0, 1)},
    }
    (out / "clt_compare.json").write_text(json.dumps(payload, indent=2))
    lines = [res.to_markdown(), "## Greater-than graph", "", "| | " + " | ".join(graphs) + " |", "|---|---|---|"]
    for key in graphs["clt"]:
        lines.append(f"| {key} | " + " | ".join(str(graphs[k][key]) for k in graphs) + " |")
    (out / "clt_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
