"""Benchmark: attribution time and peak memory on Gemma-2-2B- and Llama-3.2-1B-shaped models.

Real dimensions (d_model, heads, GQA groups, d_mlp, vocabulary, soft-caps, post-norms,
rotary settings) with 2 layers, random weights (TransformerLens init), and random TopK skip
transcoders of the real public widths: 16384 latents for Gemma-2-2B (GemmaScope's 16k
transcoders), 131072 for Llama-3.2-1B (the 131k skip-transcoders circuit-tracer uses). The
TransformerLens config comes from ``tc_circuits.models.hf_config.tl_config_dict`` applied to the
real model's Hugging Face config with ``num_hidden_layers=2``, processed as ``load_model`` does
(``fold_ln``), so the block plan is the real one. Each point runs in a fresh subprocess; peak
RSS is its own ``VmHWM``. Run:

    python bench/bench_architectures.py [--lengths 64 256] [--max-feature-nodes 256]

and it writes ``bench/results/architectures.md``. A benchmark, not a test; on a shared
machine the timings are indicative (upper bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _mem import peak_rss_mb  # noqa: E402

SHAPES = {
    "gemma-2-2b-shape": dict(
        cls="Gemma2Config", n_latents=16384,
        kw=dict(hidden_size=2304, intermediate_size=9216, num_attention_heads=8, num_key_value_heads=4,
                head_dim=256, vocab_size=256000, query_pre_attn_scalar=256, sliding_window=4096,
                attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=8192),
        arch="Gemma2ForCausalLM"),
    "llama-3.2-1b-shape": dict(
        cls="LlamaConfig", n_latents=131072,
        kw=dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0, hidden_act="silu",
                max_position_embeddings=131072, tie_word_embeddings=True,
                rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        arch="LlamaForCausalLM"),
}


def build(shape: str, n_layers: int, n_ctx: int, k: int):
    import torch
    import transformers
    from transformer_lens import HookedTransformer

    from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig
    from tc_circuits.models.hf_config import tl_config_dict
    from tc_circuits.models.loading import _config_from_dict

    spec = SHAPES[shape]
    hf_cfg = getattr(transformers, spec["cls"])(num_hidden_layers=n_layers, **spec["kw"])
    hf_cfg.architectures = [spec["arch"]]
    d = dict(tl_config_dict(hf_cfg), n_ctx=n_ctx, seed=0)
    cfg = _config_from_dict(d, fold_ln=True, device="cpu", dtype=torch.float32)
    cfg.init_weights = True
    cfg.model_name = shape
    model = HookedTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    dm, n = cfg.d_model, spec["n_latents"]
    tcs = {}
    for L in range(n_layers):
        tc = Transcoder(TranscoderConfig.for_model(model, L, n, kind="skip_transcoder", activation="topk", k=k))
        with torch.no_grad():
            tc.W_enc.copy_(torch.randn(dm, n, generator=gen) / dm**0.5)
            tc.W_dec.copy_(0.1 * torch.randn(n, dm, generator=gen))
            tc.b_dec.copy_(0.01 * torch.randn(dm, generator=gen))
            tc.W_skip.copy_(0.01 * torch.randn(dm, dm, generator=gen))
        tcs[L] = tc
    tokens = torch.randint(0, cfg.d_vocab, (n_ctx,), generator=gen)
    return model, tcs, tokens


def run_one(job: dict) -> dict:
    import torch

    from tc_circuits.attribution import attribute

    torch.set_num_threads(job["threads"])
    t0 = time.perf_counter()
    model, tcs, tokens = build(job["shape"], job["n_layers"], job["length"], job["k"])
    build_s = time.perf_counter() - t0
    base = peak_rss_mb()
    t = time.perf_counter()
    g = attribute(model, tcs, tokens, max_feature_nodes=job["max_feature_nodes"], batch_size=job["batch"],
                  progress=False)
    dt = time.perf_counter() - t
    peak = peak_rss_mb()
    return {
        **job,
        "build_s": round(build_s, 1),
        "seconds": round(dt, 3),
        "peak_rss_mb": round(peak, 1),
        "rss_growth_mb": round(peak - base, 1),
        "active_features": g.metadata["n_active_features"],
        "expanded_features": int(g.nodes.expanded[g.indices_of("feature")].sum()),
        "edges": g.n_edges,
        "timings": g.metadata["timings_s"],
        "exact_rel_dev": g.metadata["exactness_max_rel_dev"],
        "plan": g.metadata["block_plan"],
    }


def table(rows: list[dict]) -> str:
    head = ("| model | tokens | latents | k | active feats | expanded | edges | time (s) | "
            "fwd / targets / features (s) | peak RSS (MB) | RSS growth (MB) | max rel. exactness dev |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        t = r["timings"]
        lines.append(
            f"| {r['shape']} | {r['length']} | {SHAPES[r['shape']]['n_latents']} | {r['k']} | {r['active_features']} | "
            f"{r['expanded_features']} | {r['edges']:,} | {r['seconds']:.2f} | "
            f"{t['forward']:.2f} / {t['targets']:.2f} / {t['features']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['rss_growth_mb']:.0f} | {r['exact_rel_dev']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--n-layers", type=int, default=2)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--max-feature-nodes", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "architectures.md"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    rows, skipped = [], []
    for shape in args.shapes:
        for n in args.lengths:
            job = dict(shape=shape, length=n, n_layers=args.n_layers, k=args.k,
                       max_feature_nodes=args.max_feature_nodes, batch=args.batch, threads=args.threads)
            try:
                res = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                     text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                skipped.append(f"{shape} {n} tokens: over the {args.timeout:.0f} s timeout, skipped")
                print(skipped[-1], flush=True)
                continue
            if res.returncode != 0:
                tail = (res.stderr.strip().splitlines() or ["?"])[-1][:200]
                skipped.append(f"{shape} {n} tokens: failed (`{tail}`)")
                print(res.stderr[-2000:], file=sys.stderr)
                continue
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    load = os.getloadavg()
    plans = {r["shape"]: r["plan"] for r in rows}
    text = (
        "# Attribution on Gemma-2-2B- and Llama-3.2-1B-shaped models\n\n"
        f"Machine: {platform.processor() or platform.machine()}, CPU, torch threads {args.threads}, a shared "
        f"machine (load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}): timings are indicative "
        f"upper bounds. Real dimensions with {args.n_layers} layers, random weights, random TopK skip transcoders of "
        f"the real public widths (k {args.k}), float32; `max_feature_nodes` {args.max_feature_nodes} feature rows "
        f"chosen by influence, batch {args.batch}. Each point is a fresh process. "
        "Generated by `python bench/bench_architectures.py`.\n\n"
        + table(rows) + "\n" + "".join(f"\n* {x}" for x in skipped) + ("\n" if skipped else "")
        + "\nBlock plans:\n\n" + "".join(f"* {k}: `{json.dumps(v)}`\n" for k, v in plans.items())
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
