#!/usr/bin/env bash
# One prepared GPU run of the attribution and training benchmarks (issue 18), sized to finish
# in under 8 minutes on one H200-class GPU.
#
# The device machine reaches no registry and its image has its own python3 + torch (CUDA) but
# not TransformerLens and a few of its dependencies, so the run is in two steps:
#
#   bash bench/device.sh prepare     # here: download the missing wheels into .device-wheels/
#   # then on the device machine (the `device` tool; carry .device-wheels):
#   bash bench/device.sh run         # installs the wheels into a private folder, runs, writes $OUT
#
# `run` writes bench_attribution.md, training.md and device.log under $OUT (default
# bench/results/device). DEVICE=cpu runs the same path on a CPU machine (a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.device-wheels
# The versions of the locked CI set (constraints.txt) and of .venv; the image brings torch,
# numpy, pandas, safetensors, networkx, einops, jaxtyping, tqdm, pyyaml, pyarrow, xxhash.
PKGS=(transformer-lens==3.2.1 transformers==4.57.3 tokenizers==0.22.2 huggingface_hub==0.36.2
      datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19 better-abc==0.0.3 fancy-einsum==0.0.3
      typeguard==4.6.1 beartype==0.23.1 plotly==7.1.0)

case "${1:-}" in
prepare)
  mkdir -p "$WHEELS"
  grep -qx "/$WHEELS/" .git/info/exclude 2>/dev/null || echo "/$WHEELS/" >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d "$WHEELS" "${PKGS[@]}"
  du -sh "$WHEELS"
  echo "now: run(command='bash bench/device.sh run', carry=['$WHEELS'])"
  ;;
run)
  OUT=${OUT:-bench/results/device}
  DEVICE=${DEVICE:-cuda}
  PY=${PY:-python3}
  mkdir -p "$OUT"
  SITE=$(mktemp -d)/site
  $PY -m pip install -q --no-deps --no-index --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    $PY -c "import torch, transformer_lens, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'TL', transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '?', 'transformers', transformers.__version__)"
    # attribution: organism and GPT-2 shape, 16 -> 2048 tokens (the scaling table), 4 min cap
    timeout 240 $PY bench/bench_attribution.py --device "$DEVICE" --timeout 60 --mem-gib 0 --out "$OUT/bench_attribution.md" || echo "attribution benchmark stopped: $?"
    # training: step vs dense encoder matmul at organism and GPT-2-small shape, end to end
    timeout 180 $PY bench/bench_training.py --quick --device "$DEVICE" --out "$OUT/training.md" || echo "training benchmark stopped: $?"
  } 2>&1 | tee "$OUT/device.log"
  ;;
*)
  echo "usage: bash bench/device.sh prepare|run" >&2
  exit 2
  ;;
esac
