#!/bin/bash
# The binarization test on make demo's models: PGD and BPDA against each image's modified network,
# 8 images, the demo's cut budgets. RUNS = make demo's results/demo/runs (default: this checkout's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$here/../../.." && pwd)
runs=${RUNS:-$ROOT/results/demo/runs}
py=${PY:-$ROOT/.venv/bin/python}
cd "$ROOT"
for model in kwta-0.2 relu; do
  /usr/bin/time -f "$model: %e s wall" $py attack.py --checkpoint "$runs/$model/checkpoint.pt" --n-images 8 \
    --restarts 2 --aa-iterations 20 --bpda-iterations 20 --eps-curve none --device cpu \
    --attacks pgd,bpda --binarization 8 --binarization-attacks pgd,bpda \
    --out "$here/$model.json" 2>&1 | tee "$here/$model.log"
done
