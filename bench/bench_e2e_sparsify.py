"""Benchmark: end-to-end training, tc_circuits ``Trainer`` vs EleutherAI sparsify's ``Trainer``.

A GPT-2-shaped random Hugging Face model (``GPT2Config``: d_model 768, 12 heads, ``--n-layers``
layers, GPT-2 vocabulary) is built once, saved with ``save_pretrained`` and loaded by both
sides: ours with ``tc_circuits.models.loading.load_model(folder)`` (a HookedTransformer) and
``Trainer`` (activation store with ``stop_at_layer``, fused TopK step, fused Adam), sparsify
with ``AutoModelForCausalLM.from_pretrained(folder)`` and ``sparsify.Trainer`` (hooks on the
full model forward). Same layer, a skip transcoder ``mlp_in -> mlp_out`` with ``--n-latents``
latents and ``k``, the same token batches (random ids, ``seq`` 128), batch size, number of
tokens, peak learning rate and AuxK weight. Each run is a fresh process (ours in ``.venv``,
sparsify in ``.venv-peers``), interleaved, best of ``--repeats``; time runs from before each
side's ``Trainer`` is built (model already loaded) to its last optimiser step. Reported:
tokens/s (wall), tokens per CPU-second, tokens/s in each window of steps (steady state and
the steps with a buffer refill), and the held-out FVU of each side's transcoder on its own
model's activations of the same held-out tokens.

    python bench/bench_e2e_sparsify.py [--steps 24] [--repeats 2] [--threads 1] [--layer 5]

writes the "End to end" section of ``bench/results/vs_sparsify.md``. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS_PY = Path(os.environ.get("TC_OURS_PY", ROOT / ".venv" / "bin" / "python"))
PEER_PY = Path(os.environ.get("TC_PEER_PY", ROOT / ".venv-peers" / "bin" / "python"))
SEQ = 128
HELD_ROWS = 8


def prepare(folder: Path, n_layers: int, rows: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=n_layers, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    toks = torch.randint(0, 50257, (rows + HELD_ROWS, SEQ), generator=torch.Generator().manual_seed(1))
    torch.save(toks, folder / "tokens.pt")


def run_ours(job: dict) -> dict:
    import torch

    import tc_circuits.coders.losses as losses
    import tc_circuits.training.trainer as trainer_mod
    from tc_circuits.coders.losses import fvu, topk_forward
    from tc_circuits.models.loading import load_model
    from tc_circuits.models.sites import Site
    from tc_circuits.training.config import TrainConfig
    from tc_circuits.training.trainer import Trainer

    if job["side"] == "ours-reference":
        losses._FAST_TRAIN_STEP = trainer_mod._FUSED_ADAM = False
    folder, L, B = Path(job["folder"]), job["layer"], job["batch"]
    toks = torch.load(folder / "tokens.pt")
    train, held = toks[:-HELD_ROWS], toks[-HELD_ROWS:]
    model = load_model(str(folder), dtype=model_dtype(job["side"]))
    cfg = TrainConfig(layers=(L,), kind="skip_transcoder", n_latents=job["n_latents"], k=job["k"], batch_size=B,
                      buffer_tokens=job["buffer_tokens"], total_tokens=job["steps"] * B, lr=job["lr"],
                      warmup_steps=job["warmup"], dead_tokens_threshold=job["dead_after"], auxk_alpha=job["auxk_alpha"],
                      exclude_bos=False, prefetch=job["prefetch"], log_every=job["steps"])
    stamps: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(model, train, cfg, progress=False)
    original = trainer.train_step

    def timed(batch):
        original(batch)
        stamps.append(time.perf_counter() - t0)

    trainer.train_step = timed  # type: ignore[method-assign]
    result = trainer.run()
    wall, cpu = stamps[-1], time.process_time() - c0
    names = (Site(L, "mlp_in").hook_name, Site(L, "mlp_out").hook_name)
    reference = load_model(str(folder))  # held-out FVU on the float32 model's activations, for every side
    with torch.no_grad():
        _, cache = reference.run_with_cache(held, names_filter=lambda n: n in names, stop_at_layer=L + 1)
        x, y = (cache[n].reshape(-1, model.cfg.d_model) for n in names)
        held_fvu = float(fvu(topk_forward(result.transcoders[L], x).output, y))
    return {"tokens": result.tokens_seen, "seconds": wall, "cpu_seconds": cpu, "stamps": stamps, "fvu": held_fvu}


def model_dtype(side: str) -> str:
    """The precision a side runs its model forward in: ``*-bf16`` sides bfloat16, others float32."""
    return "bfloat16" if side.endswith("-bf16") else "float32"


def run_sparsify(job: dict) -> dict:
    import torch
    from sparsify import SparseCoder, SparseCoderConfig, Trainer, TrainConfig
    from transformers import AutoModelForCausalLM

    folder, L, B = Path(job["folder"]), job["layer"], job["batch"]
    toks = torch.load(folder / "tokens.pt")
    train, held = toks[:-HELD_ROWS], toks[-HELD_ROWS:]
    rows = B // SEQ
    dataset = [{"input_ids": r} for r in train[: job["steps"] * rows]]
    dtype = getattr(torch, model_dtype(job["side"]))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if dtype != torch.float32:
        # sparsify keeps its coder in float32 and, on CUDA, runs it under bf16 autocast; on CPU
        # (autocast off) a bf16 model's activations reach the float32 encoder and F.linear refuses
        # the mix. Upcast them at the coder's door: the float32 coder step sparsify runs on CPU.
        forward = SparseCoder.forward

        def upcast(self, x, y=None, **kw):
            return forward(self, x.float(), None if y is None else y.float(), **kw)

        SparseCoder.forward = upcast  # type: ignore[method-assign]
    hook = f"h.{L}.mlp"
    cfg = TrainConfig(
        SparseCoderConfig(num_latents=job["n_latents"], k=job["k"], transcode=True, skip_connection=True),
        batch_size=rows, loss_fn="fvu", optimizer="adam", lr=job["lr"], lr_warmup_steps=job["warmup"],
        auxk_alpha=job["auxk_alpha"], dead_feature_threshold=job["dead_after"], hookpoints=[hook],
        init_seeds=[0], log_to_wandb=False, save_every=10**9, save_dir=job["save_dir"],
    )
    stamps: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    trainer = Trainer(cfg, dataset, model)  # type: ignore[arg-type]
    trainer.optimizers[0].register_step_post_hook(lambda *_: stamps.append(time.perf_counter() - t0))
    cpu_at_last = []
    trainer.optimizers[0].register_step_post_hook(lambda *_: cpu_at_last.append(time.process_time() - c0))
    trainer.fit()
    sae = trainer.saes[hook]
    got = {}

    def grab(module, inputs, outputs):
        got["x"], got["y"] = inputs[0].flatten(0, 1), outputs.flatten(0, 1)

    reference = AutoModelForCausalLM.from_pretrained(folder)  # float32: the same held-out truth for every side
    handle = reference.base_model.get_submodule(hook).register_forward_hook(grab)
    with torch.no_grad():
        reference(held)
        handle.remove()
        held_fvu = float(sae(got["x"], got["y"]).fvu)
    return {"tokens": len(stamps) * B, "seconds": stamps[-1], "cpu_seconds": cpu_at_last[-1], "stamps": stamps,
            "fvu": held_fvu}


def windows(stamps: list[float], batch: int, size: int) -> list[float]:
    """tokens/s in consecutive windows of ``size`` steps (the first window starts at t=0)."""
    edges = [0.0] + stamps
    return [size * batch / (edges[i + size] - edges[i]) for i in range(0, len(stamps) - size + 1, size)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side")
    ap.add_argument("--job")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--n-layers", type=int, default=12)
    ap.add_argument("--layer", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--n-latents", type=int, default=24576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--buffer-tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sides", default="ours,ours-prefetch,sparsify")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "vs_sparsify.md"))
    args = ap.parse_args()
    if args.side:
        import torch

        job = json.loads(args.job)
        torch.set_num_threads(job["threads"])
        job = {**job, "side": args.side}
        res = run_sparsify(job) if args.side.startswith("sparsify") else run_ours(job)
        print(json.dumps(res))
        return
    best: dict[str, dict] = {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    sides = args.sides.split(",")
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gpt2-random"
        prepare(folder, args.n_layers, args.steps * args.batch // SEQ)
        job = {"folder": str(folder), "layer": args.layer, "batch": args.batch, "n_latents": args.n_latents,
               "k": args.k, "steps": args.steps, "lr": args.lr, "warmup": 4, "dead_after": 8 * args.batch,
               "auxk_alpha": 1 / 32, "buffer_tokens": args.buffer_tokens, "threads": args.threads,
               "save_dir": str(Path(tmp) / "sparsify-out")}
        for _ in range(args.repeats):
            for side in sides:
                j = {**job, "prefetch": side == "ours-prefetch"}
                py = PEER_PY if side.startswith("sparsify") else OURS_PY
                loads.append(os.getloadavg()[0])
                res = subprocess.run([str(py), __file__, "--side", side, "--job", json.dumps(j)],
                                     capture_output=True, text=True, env=env)
                if res.returncode != 0:
                    print(side, res.stderr[-3000:], file=sys.stderr)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                r["tokens_per_s"] = r["tokens"] / r["seconds"]
                print(side, {k: v for k, v in r.items() if k != "stamps"}, flush=True)
                if side not in best or r["tokens_per_s"] > best[side]["tokens_per_s"]:
                    best[side] = r
    write(args, best, loads)


def write(args, best: dict[str, dict], loads: list[float]) -> None:
    per_fill = args.buffer_tokens // args.batch
    names = {"ours": "tc_circuits `Trainer` (prefetch off)", "ours-prefetch": "tc_circuits `Trainer`, `prefetch=True`",
             "ours-reference": "tc_circuits, plain reference kernels + plain Adam", "sparsify": "sparsify 1.3.3 `Trainer`",
             "ours-bf16": "tc_circuits `Trainer`, bf16 model forward", "sparsify-bf16": "sparsify 1.3.3 `Trainer`, bf16 model forward"}
    head = f"## End to end: GPT-2-shaped model, {args.threads} thread(s)"
    text = (
        f"{head}\n\n"
        f"Random GPT-2-shaped HF model (`GPT2Config`, {args.n_layers} layers, d_model 768, vocab 50257, saved with "
        f"`save_pretrained`), skip transcoder on layer {args.layer} (`mlp_in -> mlp_out`; sparsify hook `h.{args.layer}.mlp`, "
        f"transcode + skip), {args.n_latents:,} latents, k {args.k}, batch {args.batch} tokens (8 x 128-token rows), "
        f"{args.steps} steps ({args.steps * args.batch:,} tokens), Adam peak lr {args.lr:g}, 4 warm-up steps, AuxK 1/32, "
        f"dead after {8 * args.batch:,} tokens. Ours: activation buffer {args.buffer_tokens:,} tokens (a refill every "
        f"{per_fill} steps), forward stops after block {args.layer}; sparsify runs the full model forward every step. "
        f"torch threads {args.threads} (`OMP_NUM_THREADS` too), best of {args.repeats} fresh processes per side, "
        f"interleaved; {platform.machine()} CPU, 2 cores shared with other jobs, load average at the starts "
        f"{min(loads):.1f}-{max(loads):.1f}. Time from before each `Trainer` is built to its last optimiser step. "
        f"Command: `python bench/bench_e2e_sparsify.py --steps {args.steps} --repeats {args.repeats} --threads {args.threads} "
        f"--layer {args.layer} --n-layers {args.n_layers} --sides {args.sides}`.\n\n"
        + ("`-bf16` sides load the model in bfloat16 on both sides (ours: `load_model(..., dtype=\"bfloat16\")`, "
           "processed in float32 then cast; sparsify: `from_pretrained(..., dtype=torch.bfloat16)`, as its CLI loads "
           "models on bf16-capable GPUs, with the activations upcast at its float32 coder's door since CPU autocast is "
           "off); the coder and its step stay float32 on both sides. Their `x sparsify` columns compare with "
           "sparsify at the same model precision. The held-out FVU of every side is measured on the float32 "
           "model's activations, so it includes the cost of training on bf16 activations.\n\n"
           if any(x.endswith("-bf16") for x in best) else "") +
        "| side | tokens/s (wall) | tokens per CPU-second | steady tokens/s (after the first window) | x sparsify (wall) "
        "| x sparsify (CPU) | x sparsify (steady) | held-out FVU (float32 activations) |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    def steady(r: dict) -> float:
        st = r["stamps"]
        return (len(st) - per_fill) * args.batch / (st[-1] - st[per_fill - 1])

    for side, r in best.items():
        s = best.get("sparsify-bf16" if side.endswith("-bf16") else "sparsify")  # same model precision
        tps, tpc, sty = r["tokens_per_s"], r["tokens"] / r["cpu_seconds"], steady(r)
        ratio = f"{tps / s['tokens_per_s']:.2f}x" if s else "-"
        cratio = f"{tpc / (s['tokens'] / s['cpu_seconds']):.2f}x" if s else "-"
        sratio = f"{sty / steady(s):.2f}x" if s else "-"
        text += (f"| {names.get(side, side)} | {tps:,.0f} | {tpc:,.0f} | {sty:,.0f} | {ratio} | {cratio} | {sratio} "
                 f"| {r['fvu']:.4f} |\n")
    text += f"\ntokens/s over time, windows of {per_fill} steps (the first window includes building the trainer and, for ours, the first fill):\n\n"
    for side, r in best.items():
        w = windows(r["stamps"], args.batch, per_fill)
        text += f"- {names.get(side, side)}: " + ", ".join(f"{v:,.0f}" for v in w) + "\n"
    text += "\nper-step seconds (steady state vs refill steps):\n\n"
    for side, r in best.items():
        st = [b - a for a, b in zip([0.0] + r["stamps"][:-1], r["stamps"])]
        text += f"- {names.get(side, side)}: " + " ".join(f"{v:.2f}" for v in st) + "\n"
    out = Path(args.out)
    old = out.read_text() if out.exists() else ""
    pattern = re.compile(rf"^{re.escape(head)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(text + "\n", old) if pattern.search(old) else old.rstrip() + "\n\n" + text
    out.write_text(new)
    print(text)


if __name__ == "__main__":
    main()
