"""SynthSAEBench with our trainer, next to sae-lens's trainer on the same samples.

Builds the benchmark's synthetic model locally (``--size 16k`` is the published
SynthSAEBench-16k configuration; ``reduced`` keeps its proportions at 4096 features / 192 dims;
``tiny`` is 512 / 48 for a smoke run), draws the training samples once, trains our TopK, ReLU
and JumpReLU SAEs (:class:`tc_circuits.training.trainer.Trainer`; ReLU / JumpReLU driven to the
TopK ``k`` by :class:`tc_circuits.training.l0_control.L0Controller`) and the sae-lens
reference SAEs (``--reference``, its ``SAETrainer``) on those same samples, scores every SAE
with ``sae_lens.synthetic.eval_sae_on_synthetic_data`` and prints MCC, F1, precision,
recall, explained variance and L0 next to the published 16k table. Writes
``bench/results/synthsaebench_<size>.md`` and ``.json``. Needs the ``bench`` extra
(``pip install -e .[bench]``: sae-lens).

    python bench/synthsaebench.py              # the reduced run (defaults), CPU, ~18 min
    python bench/synthsaebench.py --size 16k --train-samples 200000000 --batch-size 4096 \\
        --lr 3e-4 --eval-samples 500000 --device cuda      # full size: a GPU, not run here
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from tc_circuits.evaluation.synth_bench import markdown_table, ratio_table, run_synth_bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="reduced", choices=("tiny", "reduced", "16k"))
    p.add_argument("--activations", nargs="*", default=["topk", "relu", "jumprelu"],
                   help="our SAEs to train (topk relu jumprelu)")
    p.add_argument("--reference", nargs="*", default=["topk", "relu", "jumprelu"],
                   help="sae-lens SAEs to train on the same samples (topk batchtopk relu jumprelu; none: empty)")
    p.add_argument("--k", type=int, default=None,
                   help="TopK k = the L0 target of ReLU/JumpReLU (default: 25 at 16k, else 25/34 of the true L0)")
    p.add_argument("--train-samples", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--eval-samples", type=int, default=50_000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--jumprelu-lr", type=float, default=None,
                   help="JumpReLU learning rate, ours and sae-lens (default: --lr)")
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared-machine benchmark rule)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows, setup = run_synth_bench(size=a.size, activations=a.activations, reference=a.reference, k=a.k,
                                  train_samples=a.train_samples, batch_size=a.batch_size,
                                  eval_samples=a.eval_samples, lr=a.lr, jumprelu_lr=a.jumprelu_lr, warmup_steps=a.warmup_steps,
                                  device=a.device, progress=sys.stderr.isatty())
    wall, load1 = time.perf_counter() - t0, os.getloadavg()
    table, ratios = markdown_table(rows, a.size), ratio_table(rows)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = "python " + " ".join(["bench/synthsaebench.py", *sys.argv[1:]])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {a.threads}"
    header = (f"# SynthSAEBench ({a.size})\n\n`{cmd}` on {machine} (device {a.device}); shared machine, load average "
              f"{load0[0]:.2f} at start, {load1[0]:.2f} at end. Whole command: {wall / 60:.1f} min wall "
              f"(synthetic model built in {setup['build_seconds']:.0f} s, training samples drawn in "
              f"{setup['draw_seconds']:.0f} s; per-run training CPU seconds below, one run each, not best-of-N).\n\n")
    (out / f"synthsaebench_{a.size}.md").write_text(header + table + ("\n" + ratios if ratios else ""))
    meta = {"command": cmd, "machine": machine, "loadavg_start": load0, "loadavg_end": load1,
            "wall_seconds": wall, **setup}
    (out / f"synthsaebench_{a.size}.json").write_text(json.dumps(
        {"meta": meta, "rows": [r.flat() | {"metrics": r.metrics} for r in rows]}, indent=1))
    print(header + table + ("\n" + ratios if ratios else ""))


if __name__ == "__main__":
    main()
