"""Benchmark: the attribution memory estimate against the measured peak, on the organism.

Each graph runs in a fresh subprocess (1 torch thread); the estimate is the engine's own
(:func:`tc_circuits.attribution.memory.estimate_attribution_memory`, beyond the model), the
measured value the growth of the process's peak RSS (``VmHWM``) during ``attribute``. A graph
whose estimate is over ``--limit-gb`` is not run (its estimate is still reported). Run:

    python bench/bench_memory_estimate.py [--repeats 2]

Both edge sinks run, interleaved (``engine._PREALLOCATED_EDGES``: the default buffers and the
reference list of pieces), for the before/after memory and CPU time. Writes ``bench/results/memory_estimate.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _mem import peak_rss_mb  # noqa: E402

CASES = [(64, None), (256, None), (1024, 512), (1024, None)]


def run_one(job: dict) -> dict:
    import torch

    from tc_circuits.attribution import attribute, engine
    from tc_circuits.attribution.memory import estimate_attribution_memory
    from tc_circuits.organism import load_organism, load_organism_transcoders

    torch.set_num_threads(1)
    engine._PREALLOCATED_EDGES = job["sink"] == "buffers"
    model = load_organism()
    tcs = load_organism_transcoders("skip_transcoder")
    tokens = torch.randint(1, model.cfg.d_vocab, (job["length"],), generator=torch.Generator().manual_seed(1))
    seen: dict = {}
    orig = engine._fit_memory

    def spy(lin, tpos, mfn, batch_size, budget, max_memory):
        n = lin.n_features if mfn is None else min(mfn, lin.n_features)
        seen["est"] = estimate_attribution_memory(lin, tpos, n, batch_size)[0]
        if seen["est"].total > job["limit_gb"] * 1e9:
            raise SystemExit(json.dumps({**job, "est_total": seen["est"].total, "bound": seen["est"].edges}))
        return orig(lin, tpos, mfn, batch_size, budget, max_memory)

    engine._fit_memory = spy
    base = peak_rss_mb()
    t = time.process_time()
    g = attribute(model, tcs, tokens, max_feature_nodes=job["rows"], progress=False)
    cpu = time.process_time() - t
    growth = (peak_rss_mb() - base) * 2**20
    e = seen["est"]
    return {**job, "edges": g.n_edges, "bound": e.edges, "est_total": e.total, "growth": growth, "cpu_s": round(cpu, 2),
            "exact_rel_dev": g.metadata["exactness_max_rel_dev"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per graph and sink, interleaved; best CPU time")
    ap.add_argument("--limit-gb", type=float, default=4.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_estimate.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))), flush=True)
        return
    lines = ["| graph | edges | structural bound | estimate | peak RSS growth: buffers / list reference | "
             "CPU s (best of %d): buffers / list | max rel. exactness dev |" % args.repeats, "|---|---|---|---|---|---|---|"]
    for length, rows in CASES:
        best: dict = {}
        for _ in range(args.repeats):
            for sink in ("list", "buffers"):
                job = dict(length=length, rows=rows, sink=sink, limit_gb=args.limit_gb)
                res = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True)
                out = (res.stdout + res.stderr).strip().splitlines()
                r = json.loads(next(x for x in reversed(out) if x.startswith("{")))
                if sink not in best or r.get("cpu_s", 0) < best[sink].get("cpu_s", 0):
                    best[sink] = r
        name = f"{length} tokens, {'full' if rows is None else f'{rows} features'}"
        b, li = best["buffers"], best["list"]
        if "growth" in b:
            lines.append(f"| {name} | {b['edges']:,} | {b['bound']:,} ({b['bound'] / b['edges']:.2f}) | "
                         f"{b['est_total'] / 1e9:.3f} GB | {b['growth'] / 1e9:.3f} / {li['growth'] / 1e9:.3f} GB | "
                         f"{b['cpu_s']} / {li['cpu_s']} | {b['exact_rel_dev']:.1e} |")
        else:
            lines.append(f"| {name} | — | {b['bound']:,} | {b['est_total'] / 1e9:.2f} GB | not run (> {args.limit_gb:g} GB) | – | – |")
        print(lines[-1], flush=True)
    load = os.getloadavg()
    text = (
        "# Attribution memory: estimate vs measured\n\n"
        "The bundled organism (3 layers, d_model 128, skip transcoders 1024 latents k 16), random tokens, "
        "default targets, batch 64, 1 torch thread, each graph in a fresh process, the two edge sinks interleaved "
        "(`buffers`: `EdgeSink`, the default; `list`: the reference `ListEdgeSink`, int64 pieces concatenated at "
        "the end, i.e. the engine before this change). *estimate* = the engine's estimate for the default sink "
        "(beyond the model); *measured* = growth of the process's peak RSS (VmHWM) during `attribute`. "
        f"Machine shared with other sessions: load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on 2 cores (CPU times are comparable within a row, not across runs). "
        f"Generated by `python bench/bench_memory_estimate.py {' '.join(sys.argv[1:])}`.\n\n" + "\n".join(lines) + "\n"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
