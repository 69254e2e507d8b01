"""Benchmark: time and peak memory of the attribution engine vs prompt length and active features.

Models are random (TransformerLens init) with random TopK skip transcoders; each run happens
in a fresh subprocess so its peak RSS (``VmHWM``, :func:`_mem.peak_rss_mb`) is its own. Run:

    python bench/bench_attribution.py [--quick] [--device cpu|cuda]

and it writes ``bench/results/attribution.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _mem import peak_rss_mb  # noqa: E402

SMALL = dict(n_layers=3, d_model=128, n_heads=4, d_mlp=512, d_vocab=2000, n_latents=1024)
GPT2 = dict(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, d_vocab=50257, n_latents=1024)


def build(spec: dict, n_ctx: int, k: int, device: str):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

    cfg = HookedTransformerConfig(
        n_layers=spec["n_layers"], d_model=spec["d_model"], n_heads=spec["n_heads"],
        d_head=spec["d_model"] // spec["n_heads"], d_mlp=spec["d_mlp"], d_vocab=spec["d_vocab"],
        n_ctx=n_ctx, act_fn="gelu", normalization_type="LN", model_name="bench", seed=0,
    )
    model = HookedTransformer(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    d, n = spec["d_model"], spec["n_latents"]
    tcs = {}
    for L in range(spec["n_layers"]):
        tc = Transcoder(TranscoderConfig.for_model(model, L, n, kind="skip_transcoder", activation="topk", k=k))
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(d, n, generator=gen) / d**0.5)
            tc.W_dec.copy_(0.1 * torch.randn(n, d, generator=gen))
            tc.b_dec.copy_(0.01 * torch.randn(d, generator=gen))
            tc.W_skip.copy_(0.01 * torch.randn(d, d, generator=gen))
        tcs[L] = tc.to(device)
    tokens = torch.randint(0, spec["d_vocab"], (n_ctx,), generator=gen)
    return model, tcs, tokens


def run_one(job: dict) -> dict:
    import torch

    from tc_circuits.attribution import attribute

    torch.set_num_threads(job.get("threads", 1))
    if job.get("mem_gib"):
        lim = int(job["mem_gib"] * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    if job["spec"] == "organism":
        from tc_circuits.organism import load_organism, load_organism_transcoders

        model = load_organism().to(job["device"])
        tcs = {L: tc.to(job["device"]) for L, tc in load_organism_transcoders("skip_transcoder").items()}
        gen = torch.Generator().manual_seed(1)
        tokens = torch.randint(1, model.cfg.d_vocab, (job["length"],), generator=gen)
    else:
        model, tcs, tokens = build(job["spec"], job["length"], job["k"], job["device"])
    base = peak_rss_mb()
    if job["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    g = attribute(model, tcs, tokens, max_feature_nodes=job["max_feature_nodes"], batch_size=job["batch"], progress=False)
    if job["device"] == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    peak = peak_rss_mb()
    out = {
        **{k: v for k, v in job.items() if k != "spec"},
        "seconds": round(dt, 3),
        "peak_rss_mb": round(peak, 1),
        "rss_growth_mb": round(peak - base, 1),
        "active_features": g.metadata["n_active_features"],
        "expanded_features": int(g.nodes.expanded[g.indices_of("feature")].sum()),
        "nodes": g.n_nodes,
        "edges": g.n_edges,
        "timings": g.metadata["timings_s"],
        "exact_rel_dev": g.metadata["exactness_max_rel_dev"],
    }
    if job["device"] == "cuda":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def jobs(quick: bool, device: str, mem_gib: float = 10.0) -> list[dict]:
    O = dict(name="organism", spec="organism", k=16, batch=64)
    out = [dict(length=n, max_feature_nodes=None, **O) for n in ([16, 64] if quick else [16, 64])]
    out += [dict(length=n, max_feature_nodes=512, **O) for n in ([256] if quick else [256, 1024])]
    out += [dict(name="small-k", spec=SMALL, length=32, k=k, max_feature_nodes=None, batch=64) for k in (4, 16, 64)]
    G = dict(name="gpt2-shape", spec=GPT2, k=16, batch=32)
    out += [dict(length=n, max_feature_nodes=64, **G) for n in ([16, 64] if quick else [16, 64, 256, 1024, 2048])]
    for j in out:
        j["device"] = device
        j["mem_gib"] = mem_gib
    return out


def table(rows: list[dict]) -> str:
    head = "| model | tokens | k | active feats | expanded | edges | time (s) | fwd / targets / features (s) | peak RSS (MB) | RSS growth (MB) | max rel. exactness dev |"
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        t = r["timings"]
        lines.append(
            f"| {r['name']} | {r['length']} | {r['k']} | {r['active_features']} | {r['expanded_features']} | "
            f"{r['edges']:,} | {r['seconds']:.2f} | {t['forward']:.2f} / {t['targets']:.2f} / {t['features']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.0f} | {r['exact_rel_dev']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--mem-gib", type=float, default=10.0, help="address-space cap per point (clean MemoryError)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per point; slower points are skipped")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attribution.md"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    rows, skipped = [], []
    for job in jobs(args.quick, args.device, args.mem_gib):
        try:
            res = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True,
                                 timeout=args.timeout)
        except subprocess.TimeoutExpired:
            skipped.append(f"{job['name']} {job['length']} tokens k {job['k']}: over the {args.timeout:.0f} s timeout, skipped")
            print(skipped[-1], flush=True)
            continue
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["?"])[-1][:200]
            skipped.append(f"{job['name']} {job['length']} tokens k {job['k']}: failed (`{tail}`)")
            print(res.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    text = (
        "# Attribution engine benchmark\n\n"
        f"Machine: {platform.processor() or platform.machine()}, device {args.device}, torch threads 1, 2 shared cores, "
        f"load average at the end {os.getloadavg()[0]:.1f} / {os.getloadavg()[1]:.1f} / {os.getloadavg()[2]:.1f} "
        "(timings are upper bounds). `organism` = the bundled organism (3 layers, d_model 128, n_ctx 1024, "
        "trained skip transcoders, 1024 latents, k 16), random tokens; `small-k` = random 3-layer d_model 128 model "
        "with random TopK skip transcoders (1024 latents); `gpt2-shape` = random 12 layers, d_model 768, d_vocab 50257, "
        "random TopK skip transcoders (1024 latents). "
        "Full graphs (all active features expanded) where `expanded` = `active feats`, otherwise "
        "`max_feature_nodes` rows chosen by influence. Each run is a fresh process; RSS growth = peak RSS "
        f"during `attribute` minus RSS before it; address space capped at {args.mem_gib:g} GiB per point. "
        f"Timeout {args.timeout:.0f} s per point. Generated by `python bench/bench_attribution.py`.\n\n"
        + table(rows) + "\n" + "".join(f"\n* {x}" for x in skipped) + ("\n" if skipped else "")
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
