"""Benchmark: how far training and attribution are from their floors (a benchmark, not a test).

(a) **training**: one TopK skip-transcoder training step (``topk_forward`` + FVU + AuxK,
    backward, Adam; 10% of latents dead so AuxK runs) divided by the dense encoder matmul
    ``x @ W_enc`` of the same shape (forward only) — the one dense product no TopK trainer can
    skip, because the top ``k`` needs every pre-activation. Organism shape (d 128, 1024 latents,
    k 16, batch 4096) and GPT-2-small shape (d 768, 24576 latents, k 32, batch 1024). Both the
    fast kernels and the plain references (``losses._FAST_TRAIN_STEP = False``) are timed.
(b) **attribution**: ``attribute`` on the organism (its skip transcoders, all active features
    expanded, batch 64) at 32 and 128 tokens, divided by ``n_passes x t_pass``: ``n_passes`` =
    transposed passes made (target batches + feature batches), ``t_pass`` = one
    ``LinearisedModel.vjp`` of a full batch of rows from the top (final-LN read-outs at the
    last position, the most expensive pass), and also divided by the time of the very passes
    ``attribute`` makes (same row layers / positions / batches, ``vjp`` alone, no edge
    extraction). A ratio near 1 means attribution costs little more than its transposed passes.

    python bench/bench_floor.py [--threads 1] [--repeats 5]

Writes ``bench/results/floor.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import torch

import tc_circuits.coders.losses as losses
from bench_training import make_step  # bench/ is on sys.path when run as a script


def best_time(fn, repeats: int) -> float:
    """Minimum wall seconds of ``fn()`` over ``repeats`` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def training_floor(d: int, n: int, k: int, batch: int, repeats: int) -> dict[str, float]:
    """Best CPU seconds of the fast step, the reference step and the matmul, measured interleaved
    (fast, reference, matmul, fast, ...) after one warm-up of each."""
    step, matmul = make_step(d, n, k, batch)

    def fast():
        losses._FAST_TRAIN_STEP = True
        step()

    def reference():
        losses._FAST_TRAIN_STEP = False
        try:
            step()
        finally:
            losses._FAST_TRAIN_STEP = True

    fns = {"fast": fast, "reference": reference, "matmul": matmul}
    out = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            c0 = time.process_time()
            fn()
            out[name] = min(out[name], time.process_time() - c0)
    return out


def attribution_floor(n_tokens: int, repeats: int, batch: int = 64) -> dict[str, float]:
    from tc_circuits.attribution import attribute
    from tc_circuits.attribution.linearise import LinearisedModel
    from tc_circuits.organism import load_organism, load_organism_transcoders

    model = load_organism()
    tcs = load_organism_transcoders("skip_transcoder", model=model)
    tokens = torch.randint(1, model.cfg.d_vocab, (n_tokens,), generator=torch.Generator().manual_seed(0))
    graph = None

    def run():
        nonlocal graph
        graph = attribute(model, tcs, tokens, batch_size=batch, progress=False)

    t_attr = best_time(run, repeats)
    n_feat = int(graph.metadata["n_active_features"])
    n_tgt = len(graph.target_labels)
    n_passes = math.ceil(n_tgt / batch) + math.ceil(n_feat / batch)
    lin = LinearisedModel(model, tcs, tokens)
    g = torch.Generator().manual_seed(1)
    layers = torch.full((batch,), lin.n_layers)
    positions = torch.full((batch,), n_tokens - 1)
    vectors = torch.randn(batch, lin.d_model, generator=g)
    t_pass = best_time(lambda: list(lin.vjp(layers, positions, vectors)), repeats)
    # the passes attribute() actually makes: target rows, then features sorted by (layer, pos)
    f = lin.features
    order = torch.argsort(f.layer * n_tokens + f.pos, stable=True)
    batches = [(torch.full((n_tgt,), lin.n_layers), torch.full((n_tgt,), n_tokens - 1))]
    batches += [(f.layer[order[a:a + batch]], f.pos[order[a:a + batch]]) for a in range(0, n_feat, batch)]
    vecs = [torch.randn(len(lay), lin.d_model, generator=g) for lay, _ in batches]

    def all_passes():
        for (lay, pos), v in zip(batches, vecs):
            for _ in lin.vjp(lay, pos, v):
                pass

    t_all = best_time(all_passes, repeats)
    timings = graph.metadata.get("timings_s", {})
    return {"tokens": n_tokens, "attribute": t_attr, "features_phase": timings.get("features", float("nan")),
            "n_features": n_feat, "n_passes": n_passes, "t_pass": t_pass, "t_all_passes": t_all}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "floor.md"))
    ap.add_argument("--training-only", action="store_true",
                    help="rerun part (a) only and replace that section of the existing --out file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [("organism: d 128, 1024 latents, k 16, batch 4096", (128, 1024, 16, 4096), args.repeats),
              ("GPT-2-small: d 768, 24576 latents, k 32, batch 1024", (768, 24576, 32, 1024), max(3, args.repeats // 2))]
    load = os.getloadavg()
    lines = ["# Floors: training step vs dense matmul, attribution vs transposed passes", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()} CPU, load average "
             f"{load[0]:.1f} on 2 shared cores. "
             "Generated by `python bench/bench_floor.py`.", "",
             "## (a) Training step / dense encoder matmul", "",
             f"CPU seconds (`time.process_time`), fast step / reference step / matmul measured interleaved in one "
             f"process, best of {args.repeats} (GPT-2 shape: best of {max(3, args.repeats // 2)}), load average "
             f"{load[0]:.1f} at the start. Fast = what `Trainer` runs (fused TopK step `topk_loss_and_grads` + "
             "`Adam(fused=True)`); reference = `topk_forward` + `auxk_loss` + autograd + plain Adam "
             "(`losses._FAST_TRAIN_STEP = False`). 10% of latents dead, so AuxK runs.", "",
             "| shape | step, fast (ms) | step, reference (ms) | `x @ W_enc` fwd (ms) | fast / matmul | reference / matmul |",
             "|---|---|---|---|---|---|"]
    for name, shape, reps in shapes:
        r = training_floor(*shape, repeats=reps)
        lines.append(f"| {name} | {r['fast'] * 1e3:.1f} | {r['reference'] * 1e3:.1f} | {r['matmul'] * 1e3:.1f} | "
                     f"{r['fast'] / r['matmul']:.1f} | {r['reference'] / r['matmul']:.1f} |")
        print(lines[-1], flush=True)
    if args.training_only:
        out = Path(args.out)
        old = out.read_text()
        start, end = old.index("## (a)"), old.index("## (b)")
        section = "\n".join(lines[lines.index("## (a) Training step / dense encoder matmul"):]) + "\n\n"
        out.write_text(old[:start] + section + old[end:])
        print(section)
        return
    lines += ["", "## (b) Attribution / (transposed passes x one pass)", "",
              "Organism (3 layers, d 128), its skip transcoders, every active feature expanded, batch 64.", "",
              "| tokens | active features | passes | one full-depth pass (ms) | the actual passes alone (s) | attribute (s) | "
              "feature phase (s) | attribute / (passes x full pass) | attribute / actual passes |",
              "|---|---|---|---|---|---|---|---|---|"]
    for n_tok in (32, 128):
        r = attribution_floor(n_tok, args.repeats)
        floor = r["n_passes"] * r["t_pass"]
        lines.append(f"| {n_tok} | {r['n_features']} | {r['n_passes']} | {r['t_pass'] * 1e3:.1f} | {r['t_all_passes']:.2f} | "
                     f"{r['attribute']:.2f} | {r['features_phase']:.2f} | {r['attribute'] / floor:.2f} | "
                     f"{r['attribute'] / r['t_all_passes']:.2f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
