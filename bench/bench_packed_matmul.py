"""float32 ``x @ W`` on one thread: PyTorch's default (MKL sgemm) vs oneDNN with a prepacked weight.

The shapes of the transposed pass (GPT-2 shape: ``[rows * positions, 768] @ [768, 768]``) and of
the linearised model's encoder (``[64, 768] @ [768, 24576]``). Errors are against float64.
Writes ``bench/results/packed_matmul.md``.  Usage: ``python bench/bench_packed_matmul.py``
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from tc_circuits.attribution.packed_matmul import PackedMatmul, onednn_available

SHAPES = [(512, 768, 768), (2048, 768, 768), (4096, 768, 768), (64, 768, 24576), (1024, 768, 24576)]


def _best(f, reps: int = 10) -> float:
    for _ in range(3):
        f()
    best = 1e30
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    torch.set_num_threads(1)
    if not onednn_available():
        raise SystemExit("this PyTorch build has no oneDNN linear")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    lines = [f"# float32 matmul, 1 thread: MKL (torch default) vs oneDNN prepacked\n\nCPU: {cpu}; torch {torch.__version__}. "
             "Best of 10 calls after 3 warm-up calls; relative error = max |out - float64| / max |float64|.\n",
             "| x @ W shape (n, d, e) | MKL GFLOP/s | oneDNN GFLOP/s | speed-up | rel. error MKL | rel. error oneDNN |",
             "|---|---|---|---|---|---|"]
    g = torch.Generator().manual_seed(0)
    for n, d, e in SHAPES:
        x, W = torch.randn(n, d, generator=g), torch.randn(d, e, generator=g)
        mm = PackedMatmul()
        ref = x.double() @ W.double()
        t_mkl = _best(lambda: x @ W)
        t_dnn = _best(lambda: mm(x, W))
        err = [float((o.double() - ref).abs().max() / ref.abs().max()) for o in (x @ W, mm(x, W))]
        fl = 2 * n * d * e / 1e9
        lines.append(f"| {n} x {d} x {e} | {fl / t_mkl:.0f} | {fl / t_dnn:.0f} | {t_mkl / t_dnn:.2f}x | {err[0]:.1e} | {err[1]:.1e} |")
    out = Path(__file__).parent / "results" / "packed_matmul.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
