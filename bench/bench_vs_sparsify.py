"""Benchmark: our TopK skip-transcoder training step vs EleutherAI sparsify's, on identical data.

Step level (not the full pipelines): both sides train on the same ``(mlp_in, mlp_out)``
activations of the organism's layer 1 (collected once with TransformerLens and saved), with
the same width, k, batch size, number of tokens, Adam and learning rate, AuxK on. Ours:
``tc_circuits.coders.losses.topk_forward`` + ``fvu`` + ``auxk_loss`` (the trainer's step, initialised as
``Trainer`` does: zero decoder and skip, ``b_dec`` = mean of the first batch's outputs); sparsify:
``SparseCoder(transcode=True, skip_connection=True)`` with its fused TopK encoder and
embedding-bag decoder (``sparsify.SparseCoder.forward``). Each side runs in its own fresh
process (ours in ``.venv``, sparsify in ``.venv-peers``), interleaved, best of ``--repeats``.
FVU is measured on a held-out batch after the same number of training tokens.

    python bench/bench_vs_sparsify.py [--steps 30] [--repeats 2] [--threads 1] [--with-reference]

writes ``bench/results/vs_sparsify.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS_PY = ROOT / ".venv" / "bin" / "python"
PEER_PY = ROOT / ".venv-peers" / "bin" / "python"


def prepare(path: Path, n_tokens: int, layer: int) -> None:
    import torch

    from tc_circuits.organism import load_organism
    from tc_circuits.models.sites import Site

    model = load_organism()
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(1, model.cfg.d_vocab, (n_tokens // 128 + 1, 128), generator=gen)
    xs, ys = [], []
    names = (Site(layer, "mlp_in").hook_name, Site(layer, "mlp_out").hook_name)
    with torch.no_grad():
        for i in range(0, len(toks), 32):
            _, cache = model.run_with_cache(toks[i:i + 32], names_filter=lambda n: n in names)
            xs.append(cache[names[0]].reshape(-1, model.cfg.d_model))
            ys.append(cache[names[1]].reshape(-1, model.cfg.d_model))
    torch.save({"x": torch.cat(xs)[:n_tokens].contiguous(), "y": torch.cat(ys)[:n_tokens].contiguous()}, path)


def run(side: str, data: Path, job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    d = torch.load(data)
    x, y = d["x"], d["y"]
    B, n, k, steps, lr = job["batch"], job["n_latents"], job["k"], job["steps"], job["lr"]
    xt, yt = x[-B:], y[-B:]  # held out
    dm = x.shape[1]
    if side in ("ours", "ours-reference"):
        import tc_circuits.coders.losses as losses
        from tc_circuits.coders.losses import auxk_loss, fvu, topk_forward
        from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig

        losses._FAST_TRAIN_STEP = side == "ours"  # "ours-reference": the plain reference kernels
        tc = Transcoder(TranscoderConfig(d_in=dm, d_out=dm, n_latents=n, k=k, skip=True))
        tc.reset_parameters(torch.Generator().manual_seed(0))
        if job.get("bdec_init", True):
            tc.init_from_data(y[:B])  # what Trainer does: b_dec = mean of the first batch's outputs
        params = tc.parameters()

        def step(xb, yb, dead):
            f = topk_forward(tc, xb)
            return fvu(f.output, yb) + auxk_loss(tc, xb, f.pre_acts, yb - f.output, dead) / 32, f.indices

        def eval_fvu():
            with torch.no_grad():
                return float(fvu(topk_forward(tc, xt).output, yt))
    else:
        from sparsify import SparseCoder, SparseCoderConfig

        sc = SparseCoder(dm, SparseCoderConfig(num_latents=n, k=k, transcode=True, skip_connection=True,
                                               normalize_decoder=False))
        params = sc.parameters()

        def step(xb, yb, dead):
            out = sc(xb, yb, dead_mask=dead)
            return out.fvu + out.auxk_loss / 32, out.latent_indices

        def eval_fvu():
            with torch.no_grad():
                return float(sc(xt, yt).fvu)
    opt = torch.optim.Adam(params, lr=lr)
    last_fired = torch.zeros(n, dtype=torch.long)
    t0 = time.perf_counter()
    c0 = time.process_time()
    for s in range(steps):
        xb, yb = x[s * B:(s + 1) * B], y[s * B:(s + 1) * B]
        dead = last_fired > job["dead_after"]
        loss, fired = step(xb, yb, dead)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            hit = torch.zeros(n, dtype=torch.bool)
            if fired.dtype == torch.long:
                hit[fired.reshape(-1)] = True
            else:
                hit = (fired != 0).any(0)
            last_fired += B
            last_fired[hit] = 0
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"tokens": steps * B, "seconds": wall, "tokens_per_s": steps * B / wall, "tokens_per_cpu_s": steps * B / cpu,
            "fvu": eval_fvu()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side")
    ap.add_argument("--data")
    ap.add_argument("--job")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--n-latents", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-bdec-init", action="store_true",
                    help="ours starts with b_dec = 0 (like sparsify) instead of the Trainer's mean-of-outputs init")
    ap.add_argument("--with-reference", action="store_true",
                    help="also time our plain reference kernels (losses._FAST_TRAIN_STEP = False)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_sparsify.md"))
    args = ap.parse_args()
    if args.side:
        print(json.dumps(run(args.side, Path(args.data), json.loads(args.job))))
        return
    job = {"batch": args.batch, "n_latents": args.n_latents, "k": args.k, "steps": args.steps, "lr": args.lr,
           "threads": args.threads, "dead_after": 10 * args.batch,
           "bdec_init": not args.no_bdec_init}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    best: dict[str, dict] = {}
    sides = [("ours", OURS_PY), ("sparsify", PEER_PY)]
    if args.with_reference:
        sides.append(("ours-reference", OURS_PY))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "acts.pt"
        prepare(data, (args.steps + 1) * args.batch, layer=1)
        for _ in range(args.repeats):
            for side, py in sides:
                res = subprocess.run([str(py), __file__, "--side", side, "--data", str(data), "--job", json.dumps(job)],
                                     capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    print(res.stderr[-1500:], file=sys.stderr)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                print(side, r, flush=True)
                if side not in best or r["tokens_per_s"] > best[side]["tokens_per_s"]:
                    best[side] = r
    o, s = best["ours"], best["sparsify"]
    load = os.getloadavg()
    text = (
        "# Training step: tc_circuits vs EleutherAI sparsify\n\n"
        f"Machine: {platform.machine()}, CPU, torch threads {args.threads}, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} on 2 shared cores. Organism layer 1 activations (d_model 128), TopK skip transcoder, "
        f"{args.n_latents} latents, k {args.k}, batch {args.batch}, {args.steps} steps ({o['tokens']:,} tokens), "
        f"Adam lr {args.lr:g}, AuxK/32. Ours starts with b_dec = "
        f"{'0 (as sparsify)' if args.no_bdec_init else 'mean of the first batch outputs (as our Trainer)'}. "
        f"Best of {args.repeats} fresh processes per side, interleaved. "
        "Generated by `python bench/bench_vs_sparsify.py`.\n\n"
        "| side | tokens/s (wall) | tokens per CPU-second | held-out FVU after equal tokens |\n|---|---|---|---|\n"
        f"| tc_circuits | {o['tokens_per_s']:,.0f} | {o['tokens_per_cpu_s']:,.0f} | {o['fvu']:.4f} |\n"
        f"| sparsify | {s['tokens_per_s']:,.0f} | {s['tokens_per_cpu_s']:,.0f} | {s['fvu']:.4f} |\n"
        f"| ratio (ours / sparsify) | {o['tokens_per_s'] / s['tokens_per_s']:.2f}x | "
        f"{o['tokens_per_cpu_s'] / s['tokens_per_cpu_s']:.2f}x | {o['fvu'] / s['fvu']:.3f} |\n"
    )
    if "ours-reference" in best:
        r = best["ours-reference"]
        text += (f"| tc_circuits, plain reference kernels | {r['tokens_per_s']:,.0f} | {r['tokens_per_cpu_s']:,.0f} | "
                 f"{r['fvu']:.4f} |\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
