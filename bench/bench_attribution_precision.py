"""Benchmark: attribution of a bfloat16 model vs the same weights in float32 (speed and accuracy).

The GPT-2-shaped case of ``bench_vs_circuit_tracer.py`` (12 layers, d 768, TopK skip
transcoders, ``--n-latents`` latents, k 32, 10 logit targets, ``--rows`` expanded rows): one
HookedTransformer in float32, one built with ``cfg.dtype = bfloat16`` from the same state dict
(cast once), transcoders cast likewise. In one process, 1 thread by default, the calls alternate
(float32, bfloat16, ...), best warm call reported. Accuracy is measured on the edges both graphs
have, against the float32 graph, separately for edges from error nodes (where a half-precision
model's own rounding of its MLP output lands) and from everything else; plus the overlap of the
expanded feature sets (influence ranking computed in each precision).

circuit-tracer 0.5.0 is not in this table: it cannot attribute a bfloat16 HookedTransformer with
skip transcoders (its skip path multiplies TransformerLens's float32 ``hook_normalized`` by a
bfloat16 ``W_skip``: "expected m1 and m2 to have the same dtype"; the ``dtype`` field of
``bench_vs_circuit_tracer.py``'s cases reproduces it).

    python bench/bench_attribution_precision.py [--length 64] [--rows 1024] [--repeats 2]

writes ``bench/results/attribution_precision.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def _keys(g) -> torch.Tensor:
    """One int64 per node: (type, layer, pos, latent, token id)."""
    n = g.nodes
    return ((((n.type.long() * 64 + n.layer.long() + 1) * 8192 + n.pos.long() + 1) * 131072 + n.latent.long() + 1)
            * 262144 + n.token_id.long() + 1)


def compare(ref, g) -> dict:
    """Edge agreement of ``g`` with the reference graph ``ref`` on the edges both have."""
    from tc_circuits.graph.graph import type_code

    ka, kb = _keys(ref), _keys(g)
    allk, inv = torch.unique(torch.cat([ka, kb]), return_inverse=True)
    ia, ib, N = inv[: len(ka)], inv[len(ka):], len(allk)
    ea = ia[ref.edge_target.long()] * N + ia[ref.edge_source.long()]
    eb = ib[g.edge_target.long()] * N + ib[g.edge_source.long()]
    sa, oa = ea.sort()
    sb, ob = eb.sort()
    pos = torch.searchsorted(sb, sa).clamp_max(len(sb) - 1)
    hit = sb[pos] == sa
    wa, wb = ref.edge_weight[oa][hit].double(), g.edge_weight[ob][pos[hit]].double()
    from_err = ref.nodes.type[ref.edge_source[oa][hit].long()] == type_code("error")
    top = float(ref.edge_weight.abs().max())
    out = {"edges_ref": int(ref.n_edges), "edges_common": int(hit.sum()), "max_edge": top}
    for name, m in (("non-error", ~from_err), ("error", from_err)):
        a, b = wa[m], wb[m]
        d = (a - b).abs()
        big = a.abs() > 0.01 * top
        out[name] = {
            "max_abs_diff_over_max_edge": float(d.max()) / top,
            "median_rel_diff_big": float((d[big] / a[big].abs()).median()) if bool(big.any()) else float("nan"),
            "p99_rel_diff_big": float((d[big] / a[big].abs()).quantile(0.99)) if bool(big.any()) else float("nan"),
            "cosine": float(a @ b / (a.norm() * b.norm())),
        }
    fa = set(ka[ref.nodes.expanded & (ref.nodes.type == type_code("feature"))].tolist())
    fb = set(kb[g.nodes.expanded & (g.nodes.type == type_code("feature"))].tolist())
    out["expanded_overlap"] = len(fa & fb) / max(len(fa), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=64)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--n-latents", type=int, default=24576)
    ap.add_argument("--repeats", type=int, default=2, help="warm calls per precision (alternating)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attribution_precision.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import bench_vs_circuit_tracer as B
    from transformer_lens import HookedTransformer

    from tc_circuits.attribution import Target, attribute
    from tc_circuits.formats import load_circuit_tracer
    from tc_circuits.models.model_info import weight_processing

    case = {"name": "gpt2-shape", "model": "gpt2", "length": args.length, "k": 32, "n_latents": args.n_latents,
            "n_targets": 10, "max_feature_nodes": args.rows, "batch": 64}
    with tempfile.TemporaryDirectory() as tmp:
        wd = Path(tmp)
        B.prepare(case, wd)
        sd, inp = torch.load(wd / "model.pt"), torch.load(wd / "inputs.pt")
        models, coders = {}, {}
        for dt in ("float32", "bfloat16"):
            m = HookedTransformer(B._cfg(wd, dt))
            m.load_state_dict(sd)
            m.eval()
            tcs = load_circuit_tracer(wd / "tcs", processing=weight_processing(m))
            m.cfg.model_name = tcs[0].cfg.model_name
            models[dt], coders[dt] = m, {L: copy.deepcopy(tc).to(getattr(torch, dt)) for L, tc in tcs.items()}
    V = models["float32"].cfg.d_vocab
    tgts = []
    for t in inp["targets"].tolist():
        d = torch.full((V,), -1.0 / V)
        d[t] += 1.0
        tgts.append(Target(direction=d, label=str(t), token_id=t))

    def run(dt):
        t0, c0 = time.perf_counter(), time.process_time()
        g = attribute(models[dt], coders[dt], inp["tokens"], targets=tgts, max_feature_nodes=args.rows,
                      batch_size=64, progress=False, check_exactness=True)
        return g, time.perf_counter() - t0, time.process_time() - c0

    res: dict[str, dict] = {dt: {} for dt in models}
    graphs = {}
    for i in range(args.repeats + 1):
        for dt in models:
            g, wall, cpu = run(dt)
            graphs[dt] = g
            r = res[dt]
            if i == 0:
                r["first"], r["first_cpu"] = wall, cpu
            else:
                r["warm"], r["warm_cpu"] = min(r.get("warm", 1e30), wall), min(r.get("warm_cpu", 1e30), cpu)
            r["exact"] = g.metadata["exactness_max_rel_dev"]
            print(dt, i, round(wall, 2), flush=True)
    cmp = compare(graphs["float32"], graphs["bfloat16"])
    print(cmp)
    f, b = res["float32"], res["bfloat16"]
    ne, er = cmp["non-error"], cmp["error"]
    text = (
        "# Attribution in bfloat16 vs float32 (ours)\n\n"
        f"Machine: {platform.machine()}, CPU, {args.threads} torch thread(s); GPT-2-shaped random model "
        f"(12 layers, d 768), TopK skip transcoders {args.n_latents} latents k 32, {args.length} tokens, "
        f"10 logit targets, {args.rows} expanded rows, batch 64; one process, calls alternating, first call "
        f"and best of {args.repeats} warm calls. Generated by `python bench/bench_attribution_precision.py`.\n\n"
        "| precision | first call (s) | warm (s) | CPU s first / warm | exactness (max relative row-sum deviation) |\n"
        "|---|---|---|---|---|\n"
        f"| float32 | {f['first']:.2f} | {f['warm']:.2f} | {f['first_cpu']:.2f} / {f['warm_cpu']:.2f} | {f['exact']:.1e} |\n"
        f"| bfloat16 | {b['first']:.2f} | {b['warm']:.2f} | {b['first_cpu']:.2f} / {b['warm_cpu']:.2f} | {b['exact']:.1e} |\n"
        f"| ratio | {f['first'] / b['first']:.2f}x | {f['warm'] / b['warm']:.2f}x | | |\n\n"
        f"Accuracy against the float32 graph ({cmp['edges_common']:,} of its {cmp['edges_ref']:,} edges in both "
        f"graphs; largest |edge| {cmp['max_edge']:.2f}; expanded features in common "
        f"{100 * cmp['expanded_overlap']:.1f} %):\n\n"
        "| edges from | max abs diff / largest edge | median relative diff (edges > 1 % of the largest) | "
        "99th percentile relative diff (same) | cosine |\n|---|---|---|---|---|\n"
        f"| features, embeddings, positions, constant | {ne['max_abs_diff_over_max_edge']:.1e} | "
        f"{ne['median_rel_diff_big']:.1e} | {ne['p99_rel_diff_big']:.1e} | {ne['cosine']:.5f} |\n"
        f"| error nodes | {er['max_abs_diff_over_max_edge']:.1e} | {er['median_rel_diff_big']:.1e} | "
        f"{er['p99_rel_diff_big']:.1e} | {er['cosine']:.5f} |\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
