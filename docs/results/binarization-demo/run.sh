#!/bin/bash
# The binarization test on make demo's models, the first 8 test images, eps 0.1, the demo's cut budgets:
# PGD and BPDA against each image's modified network on all three models, AutoAttack too on k-WTA 0.2.
# RUNS = make demo's results/demo/runs (default: this checkout's).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$here/../../.." && pwd)
runs=${RUNS:-$ROOT/results/demo/runs}
py=${PY:-$ROOT/.venv/bin/python}
cd "$ROOT"
run() {  # model, attacks, output name
  /usr/bin/time -f "$1: %e s wall" $py attack.py --checkpoint "$runs/$1/checkpoint.pt" --n-images 8 \
    --restarts 2 --aa-iterations 20 --bpda-iterations 20 --square-queries 500 --eps-curve none --device cpu \
    --attacks "$2" --binarization 8 --binarization-attacks "$2" --out "$here/$3.json" 2>&1 | tee "$here/$3.log"
}
case ${1:-all} in
  all)
    run kwta-0.2 pgd,bpda kwta-0.2
    run relu pgd,bpda relu
    run kwta-0.1 pgd,bpda kwta-0.1
    run kwta-0.2 autoattack kwta-0.2-autoattack ;;
  *) run "$@" ;;
esac
