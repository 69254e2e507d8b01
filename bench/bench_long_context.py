"""Benchmark: attribution cost vs prompt length and vs latents, up to 2048 tokens at 24,576 latents.

GPT-2-shaped random model (12 layers, d_model 768, 12 heads, vocab 50257) with random TopK skip
transcoders (k 32) on every layer, random tokens, default logit targets, ``max_feature_nodes``
rows chosen by influence, 1 torch thread, exactness check on. Each point runs in a fresh
subprocess; before it runs, the engine's own memory estimate
(:func:`tc_circuits.attribution.memory.estimate_attribution_memory`) plus the model and
transcoder bytes is compared with ``--limit-gib``: a point over it is skipped (reported with
its estimate), and a watchdog thread ends a point whose resident memory passes the limit. Run:

    python bench/bench_long_context.py --points '[[2048, 24576, 1024], [2048, 24576, 768]]' --out bench/results/long_context_2048.md
    python bench/bench_long_context.py --curve [--rows 256]

Peak memory is the process's ``VmHWM`` (:func:`_mem.peak_rss_mb`); time is wall and CPU
seconds of the ``attribute`` call. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from _mem import peak_rss_mb  # noqa: E402

SPEC = dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, d_vocab=50257)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def watchdog(limit_mb: float) -> None:
    def run():
        while True:
            if rss_mb() > limit_mb:
                print(json.dumps({"killed": f"resident memory passed {limit_mb:.0f} MB"}), flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=run, daemon=True).start()


def estimate(length: int, n_latents: int, k: int, rows: int, batch: int, n_targets: int = 10) -> dict:
    """The engine's estimate for this shape (TopK: exactly k features per layer and position)."""
    import torch

    from tc_circuits.attribution.memory import estimate_attribution_memory

    L, P = SPEC["n_layers"], length
    layer = torch.arange(L).repeat_interleave(P * k)
    pos = torch.arange(P).repeat_interleave(k).repeat(L)
    lin = SimpleNamespace(
        features=SimpleNamespace(layer=layer, pos=pos), n_layers=L, n_pos=P, has_pos_embed=True,
        n_features=L * P * k, embed=torch.zeros(0), d_model=SPEC["d_model"],
        patterns=[torch.zeros(SPEC["n_heads"], 0, 0)],
    )
    est, _ = estimate_attribution_memory(lin, [P - 1] * n_targets, min(rows, L * P * k), batch)
    d, V = SPEC["d_model"], SPEC["d_vocab"]
    model_bytes = 4 * (2 * V * d + L * (12 * d * d + 13 * d) + P * d)  # W_E, W_U, blocks, W_pos
    tc_bytes = 4 * L * (2 * d * n_latents + d * d + n_latents + 2 * d)
    return {"edges_bound": est.edges, "estimate_bytes": est.total, "edge_bytes": est.edge_bytes,
            "batch_bytes": est.batch_bytes, "cache_bytes": est.cache_bytes, "weights_bytes": model_bytes + tc_bytes}


def build(length: int, n_latents: int, k: int):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

    cfg = HookedTransformerConfig(
        n_layers=SPEC["n_layers"], d_model=SPEC["d_model"], n_heads=SPEC["n_heads"],
        d_head=SPEC["d_model"] // SPEC["n_heads"], d_mlp=SPEC["d_mlp"], d_vocab=SPEC["d_vocab"],
        n_ctx=max(length, 16), act_fn="gelu", normalization_type="LN", model_name="bench", seed=0,
    )
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    d = SPEC["d_model"]
    tcs = {}
    for L in range(SPEC["n_layers"]):
        tc = Transcoder(TranscoderConfig.for_model(model, L, n_latents, kind="skip_transcoder", activation="topk", k=k))
        with torch.no_grad():
            tc.W_enc.normal_(generator=gen).div_(d**0.5)
            tc.W_dec.normal_(generator=gen).mul_(0.1)
            tc.b_dec.normal_(generator=gen).mul_(0.01)
            tc.W_skip.normal_(generator=gen).mul_(0.01)
        tcs[L] = tc
    tokens = torch.randint(0, SPEC["d_vocab"], (length,), generator=gen)
    return model, tcs, tokens


def run_one(job: dict) -> dict:
    import torch

    from tc_circuits.attribution import attribute

    torch.set_num_threads(1)
    watchdog(job["limit_gib"] * 1024**3 / 2**20)
    model, tcs, tokens = build(job["length"], job["n_latents"], job["k"])
    base = peak_rss_mb()
    t, c = time.perf_counter(), time.process_time()
    g = attribute(model, tcs, tokens, max_feature_nodes=job["rows"], batch_size=job["batch"], progress=False,
                  max_memory=job.get("max_memory"))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = peak_rss_mb()
    return {
        **job, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(peak), "base_rss_mb": round(base),
        "active_features": g.metadata["n_active_features"], "nodes": g.n_nodes, "edges": g.n_edges,
        "expanded": int(g.nodes.expanded[g.indices_of("feature")].sum()), "index_dtype": str(g.edge_target.dtype),
        "timings": g.metadata["timings_s"], "exact_rel_dev": g.metadata["exactness_max_rel_dev"],
        "exact_abs_dev": g.metadata["exactness_max_abs_dev"],
    }


def gb(x: float) -> str:
    return f"{x / 1e9:.2f}"


def table(rows: list[dict]) -> str:
    head = ("| tokens | latents | active feats | rows | edges (bound) | estimate + weights (GB) | peak RSS (GB) "
            "| wall / CPU (s) | fwd / targets / features / assemble (s) | max rel. exactness dev |")
    out = [head, "|" + "---|" * 10]
    for r in rows:
        e = r["est"]
        if "wall_s" not in r:
            out.append(f"| {r['length']} | {r['n_latents']:,} | {r['length'] * 12 * r['k']:,} | {r['rows']} | "
                       f"— ({e['edges_bound']:,}) | {gb(e['estimate_bytes'])} + {gb(e['weights_bytes'])} | "
                       f"{r['status']} | – | – | – |")
            continue
        t = r["timings"]
        out.append(
            f"| {r['length']} | {r['n_latents']:,} | {r['active_features']:,} | {r['expanded']} | "
            f"{r['edges']:,} ({e['edges_bound']:,}) | {gb(e['estimate_bytes'])} + {gb(e['weights_bytes'])} | "
            f"{r['peak_rss_mb'] / 1024 * 1.073741824:.2f} | {r['wall_s']:.0f} / {r['cpu_s']:.0f} | "
            f"{t['forward']:.1f} / {t['targets']:.1f} / {t['features']:.1f} / {t['assemble']:.1f} | {r['exact_rel_dev']:.1e} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", help="JSON list of [tokens, latents] or [tokens, latents, rows]")
    ap.add_argument("--curve", action="store_true", help="prompt length 16..2048 at 24,576 latents, latents 4k..64k at 256 tokens")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--limit-gib", type=float, default=14.0, help="skip points estimated above, end points resident above")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "long_context.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    if args.curve:
        points = [[n, 24576] for n in (16, 64, 256, 1024, 2048)] + [[256, n] for n in (4096, 16384, 65536)]
    else:
        points = json.loads(args.points)
    results = []
    for length, n_lat, *rows in points:
        rows = rows[0] if rows else args.rows
        job = dict(length=length, n_latents=n_lat, k=args.k, rows=rows, batch=args.batch, limit_gib=args.limit_gib)
        est = estimate(length, n_lat, args.k, rows, args.batch)
        need = est["estimate_bytes"] + est["weights_bytes"]
        rec = {**job, "est": est}
        if need > args.limit_gib * 2**30:
            rec["status"] = f"not run: estimate {gb(need)} GB > {args.limit_gib:g} GiB limit"
        else:
            job["max_memory"] = (args.limit_gib * 2**30 - est["weights_bytes"]) / 1e9
            try:
                res = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                     text=True, timeout=args.timeout)
                last = (res.stdout.strip().splitlines() or ["{}"])[-1]
                got = json.loads(last) if last.startswith("{") else {}
                if res.returncode == 0 and "wall_s" in got:
                    rec.update(got)
                else:
                    rec["status"] = got.get("killed") or f"failed: {(res.stderr.strip().splitlines() or ['?'])[-1][:160]}"
                    print(res.stderr[-3000:], file=sys.stderr)
            except subprocess.TimeoutExpired:
                rec["status"] = f"over the {args.timeout:.0f} s timeout"
        results.append(rec)
        print(json.dumps(rec), flush=True)
    load = os.getloadavg()
    text = (
        "# Attribution cost at long prompts and many latents\n\n"
        "GPT-2-shaped random model (12 layers, d_model 768, 12 heads, vocab 50257), random TopK skip "
        f"transcoders (k {args.k}) on every layer, random tokens, default logit targets (10), "
        f"`max_feature_nodes` {args.rows} (rows chosen by influence), batch {args.batch}, 1 torch thread, exactness "
        "check on (in the time). Each point is a fresh process; *estimate* = the engine's estimate before any row "
        "(`attribution/memory.py`, beyond the weights) + the model and transcoder weights; *peak RSS* = the "
        f"process's VmHWM (weights included). Points whose estimate is over {args.limit_gib:g} GiB are not run. "
        f"Machine: 2 shared cores, 24 GiB RAM shared with other sessions; load average at the end "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (wall times are upper bounds). "
        f"Generated by `python bench/bench_long_context.py {' '.join(sys.argv[1:])}`.\n\n"
        + table(results) + "\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
