"""Benchmark: end-to-end training with and without the background activation prefetch.

As ``tc-circuits train`` runs it on the organism (its real corpus and tokenizer, skip
transcoders on all 3 layers, 1024 latents, k 16, batch 4096, 32k-token buffer): tokens/s end to
end and the time of every step, so refill stalls show as outliers (a step that waits for a
fill). Each setting runs in its own fresh subprocess, interleaved, best of N.

    python bench/bench_prefetch.py [--tokens 491520] [--threads 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def one(prefetch: bool, tokens: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from functools import partial

    from tc_circuits.organism import load_organism, organism_token_source
    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.trainer import Trainer

    model = load_organism()
    cfg = TrainConfig(layers=(0, 1, 2), kind="skip_transcoder", n_latents=1024, k=16, batch_size=4096,
                      total_tokens=tokens, buffer_tokens=32_768, prefetch=prefetch, checkpoint_every=0)
    t0 = time.perf_counter()
    trainer = Trainer(model, partial(organism_token_source, 0, 32, 128), cfg, progress=False)
    stamps = []
    step = trainer.train_step

    def timed(batch):
        step(batch)
        stamps.append(time.perf_counter())

    trainer.train_step = timed
    t1 = time.perf_counter()
    res = trainer.run()
    t2 = time.perf_counter()
    gaps = [b - a for a, b in zip([t1] + stamps[:-1], stamps)]
    gaps_sorted = sorted(gaps)
    return {
        "prefetch": prefetch, "setup_s": t1 - t0, "train_s": t2 - t1, "tokens": res.tokens_seen,
        "tokens_per_s": res.tokens_seen / (t2 - t1), "median_step_ms": 1e3 * gaps_sorted[len(gaps) // 2],
        "max_step_ms": 1e3 * max(gaps), "fvu": max(m.fvu for m in res.metrics.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096 * 120)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prefetch.md"))
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one == "1", args.tokens, args.threads)))
        return
    best: dict[bool, dict] = {}
    for _ in range(args.repeats):
        for pf in (False, True):
            out = subprocess.run([sys.executable, __file__, "--one", "1" if pf else "0", "--tokens", str(args.tokens),
                                  "--threads", str(args.threads)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if pf not in best or r["tokens_per_s"] > best[pf]["tokens_per_s"]:
                best[pf] = r
    lines = [
        "# End-to-end training: background prefetch of activation fills",
        "",
        f"Organism, skip transcoders on 3 layers, 1024 latents, k 16, batch 4096, buffer 32,768 tokens, "
        f"{args.tokens:,} tokens, {args.threads} torch threads, best of {args.repeats} fresh processes each.",
        "",
        "| prefetch | tokens/s | train s | median step (ms) | slowest step (ms) | worst-layer FVU |",
        "|---|---|---|---|---|---|",
    ]
    for pf in (False, True):
        r = best[pf]
        lines.append(f"| {'on' if pf else 'off'} | {r['tokens_per_s']:,.0f} | {r['train_s']:.1f} | "
                     f"{r['median_step_ms']:.0f} | {r['max_step_ms']:.0f} | {r['fvu']:.4f} |")
    lines += ["", f"Speed-up: {best[True]['tokens_per_s'] / best[False]['tokens_per_s']:.2f}x "
              "(the FVU columns agree: prefetching changes no batch)."]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
