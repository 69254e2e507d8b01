"""Benchmark: transcoder training throughput (a benchmark, not a test).

(a) organism-sized: 3-layer d_model 128 random GPT-2-style model, skip transcoders with 1024
    latents and k 16 on all 3 layers at once, end to end through ``train_transcoders``
    (model forward + store + 3 transcoder steps);
(b) GPT-2-small-shaped: d_model 768, 24576 latents, k 32, one layer, random inputs, a few steps.

For each shape it also times one training step of a single transcoder (TopK fast path, FVU +
AuxK loss, backward, Adam) against the dense encoder matmul ``x @ W_enc`` alone (forward only).
Prints a markdown table and writes ``bench/results/training.md``.

    python bench/bench_training.py [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import tc_circuits.coders.losses as losses
from tc_circuits.coders.losses import auxk_loss, centered_sum_sq, fvu, topk_forward
from tc_circuits.coders.topk_step import TopKWorkspace, topk_loss_and_grads
from tc_circuits.training.config import TrainConfig
from tc_circuits.training.trainer import train_transcoders
from tc_circuits.coders.transcoder import Transcoder, TranscoderConfig


def random_model(n_layers=3, d_model=128, n_ctx=128, d_vocab=512) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=4, d_head=d_model // 4, d_mlp=4 * d_model,
        d_vocab=d_vocab, n_ctx=n_ctx, act_fn="gelu", normalization_type="LN", seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(d: int, n: int, k: int, batch: int, device: str = "cpu"):
    """``(train_step, matmul)`` closures for one skip transcoder of the given shape.

    ``train_step`` is a full TopK + FVU + AuxK step with Adam (AuxK active on 10% of the
    latents, a pessimistic case), done as ``Trainer`` does it: with ``losses._FAST_TRAIN_STEP``
    (read at each call) the fused kernel :func:`topk_loss_and_grads` and ``Adam(fused=True)``,
    else the autograd reference (``topk_forward`` + ``auxk_loss`` + backward) and plain Adam.
    ``matmul`` is the dense encoder ``x @ W_enc`` alone.
    """
    g = torch.Generator().manual_seed(0)
    tc = Transcoder(TranscoderConfig(d_in=d, d_out=d, n_latents=n, k=k, skip=True))
    tc.reset_parameters(g)
    with torch.no_grad():
        tc.W_dec.normal_(0, 0.01, generator=g)
    tc = tc.to(device)
    fused_opt = torch.optim.Adam(tc.parameters(), lr=1e-4, fused=True)
    plain_opt = torch.optim.Adam(tc.parameters(), lr=1e-4)
    x = torch.randn(batch, d, generator=g).to(device)
    y = torch.randn(batch, d, generator=g).to(device)
    den = centered_sum_sq(y)
    dead = torch.zeros(n, dtype=torch.bool, device=device)
    dead[: n // 10] = True
    workspace = TopKWorkspace()

    def train_step():
        if losses._FAST_TRAIN_STEP:
            topk_loss_and_grads(tc, x, y, den, dead=dead, auxk_alpha=1 / 32, workspace=workspace)
            fused_opt.step()
            return
        tc.zero_grad(set_to_none=True)
        fwd = topk_forward(tc, x)
        loss = fvu(fwd.output, y) + auxk_loss(tc, x, fwd.pre_acts, y - fwd.output, dead) / 32
        loss.backward()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    def matmul():
        with torch.no_grad():
            return x @ tc.W_enc

    return train_step, matmul


def step_vs_matmul(d: int, n: int, k: int, batch: int, steps: int, device: str = "cpu") -> dict[str, float]:
    """Seconds per training step of one transcoder and per dense ``x @ W_enc`` forward."""
    train_step, matmul = make_step(d, n, k, batch, device)
    out = {}
    for name, fn in (("step", train_step), ("matmul", matmul)):
        fn()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        out[name] = (time.perf_counter() - t0) / steps
    return out


def end_to_end(total_tokens: int, device: str = "cpu") -> dict[str, float]:
    model = random_model().to(device)
    seq, rows = 64, 32

    def source():
        g = torch.Generator().manual_seed(1)
        while True:
            yield torch.randint(0, model.cfg.d_vocab, (rows, seq), generator=g)

    cfg = TrainConfig(layers=(0, 1, 2), kind="skip_transcoder", n_latents=1024, k=16,
                      batch_size=4096, total_tokens=total_tokens, dead_tokens_threshold=50_000)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train_transcoders(model, source, cfg, progress=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "tokens_per_s": result.tokens_seen / seconds,
            "tokens_per_cpu_s": result.tokens_seen / cpu,
            "fvu": max(m.fvu for m in result.metrics.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens / steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.md"))
    args = parser.parse_args()
    e2e_tokens = 4096 * (20 if args.quick else 60)
    rows = []
    e2e = end_to_end(e2e_tokens, args.device)
    a = step_vs_matmul(128, 1024, 16, 4096, 5 if args.quick else 20, args.device)
    b = step_vs_matmul(768, 24576, 32, 1024, 2 if args.quick else 3, args.device)
    rows.append(("(a) organism: d 128, 1024 latents, k 16, batch 4096", a))
    rows.append(("(b) GPT-2-small: d 768, 24576 latents, k 32, batch 1024", b))
    lines = [
        "# Training throughput",
        "",
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}",
        "",
        "| shape | train step (ms) | tokens/s (one layer) | dense `x @ W_enc` fwd (ms) | step / matmul |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        batch = 4096 if name.startswith("(a)") else 1024
        lines.append(
            f"| {name} | {r['step'] * 1e3:.1f} | {batch / r['step']:,.0f} | {r['matmul'] * 1e3:.1f} | {r['step'] / r['matmul']:.1f} |"
        )
    lines += [
        "",
        f"End to end, organism-sized (3 layers at once, random 3-layer d_model 128 model, skip "
        f"transcoders, model forward included): {e2e['tokens_per_s']:,.0f} tokens/s "
        f"({e2e_tokens:,} tokens in {e2e['seconds']:.1f} s wall; {e2e['tokens_per_cpu_s']:,.0f} tokens "
        f"per CPU-second; worst-layer FVU {e2e['fvu']:.3f}). Wall times on a shared machine are "
        "inflated by other load; tokens per CPU-second is the single-thread rate.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
