#!/bin/bash
# The measurements of this folder, on the demo's three models as `make demo` trained them on this machine
# (results/demo/runs/, sha256 in checkpoints.sha256). ROOT: this checkout; OLD: a worktree of 7a9a7e9
# (git worktree add $OLD 7a9a7e9); CASCADE: crosscheck/cascade.py. One thread per job, two jobs side by side.
# usage: run.sh old|new|cascade|binarization|bpda
ROOT=${ROOT:-$(pwd)}; OLD=${OLD:-/tmp/old}; here=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 GIT_PYTHON_REFRESH=quiet
py=$ROOT/.venv/bin/python; runs=$ROOT/results/demo/runs; twin=(--source-checkpoint $runs/relu/checkpoint.pt)
case $1 in
old)  # the suite at 7a9a7e9, the demo's cut budgets, 256 images
  cd $OLD
  for model in kwta-0.2 kwta-0.1; do
    $py attack.py --checkpoint $runs/$model/checkpoint.pt --n-images 256 --batch-size 128 --restarts 2 \
      --aa-iterations 20 --square-queries 500 --es-steps 10 --es-samples 20 --eot-samples 4 --eps-curve none \
      --device cpu "${twin[@]}" --out $here/old/$model.json --table $here/old/table.md
  done ;;
new)  # the current suite at the same budgets, every attack but deepfool and es (the worst case over fewer
      # attacks can only be higher, so it bounds the full suite's)
  cd $ROOT
  for model in kwta-0.2 kwta-0.1; do
    $py attack.py --checkpoint $runs/$model/checkpoint.pt --n-images 256 --batch-size 128 --restarts 2 \
      --aa-iterations 20 --bpda-iterations 20 --square-queries 500 --eot-samples 4 --eps-curve none --device cpu \
      --attacks pgd,autoattack,square,bpda,eot,transfer "${twin[@]}" --out $here/new/$model.json --table $here/new/table.md
  done ;;
cascade)  # the independent cascade at full budgets, first 64 images of k-WTA 0.2
  $py $here/crosscheck/cascade.py --checkpoint $runs/kwta-0.2/checkpoint.pt --n-images 64 --eps 0.1 --threads 1 \
    --out $here/crosscheck/cascade-kwta-0.2.json ;;
binarization)  # the binarization test of PGD, AutoAttack, Square, BPDA and eot on 32 images
  cd $ROOT
  for model in kwta-0.2 relu; do
    $py attack.py --checkpoint $runs/$model/checkpoint.pt --n-images 32 --restarts 2 --aa-iterations 20 \
      --bpda-iterations 20 --square-queries 500 --eot-samples 4 --eps-curve none --device cpu \
      --attacks pgd,autoattack,bpda --binarization 32 --binarization-attacks pgd,autoattack,square,bpda,eot \
      --out $here/binarization/$model.json
  done ;;
bpda)  # BPDA alone at one temperature each, 256 images
  cd $ROOT
  for model in kwta-0.2 kwta-0.1; do
    for T in 0.03 0.1 0.3 1 3 10; do
      $py attack.py --checkpoint $runs/$model/checkpoint.pt --n-images 256 --batch-size 128 --attacks bpda \
        --bpda-temperatures $T --bpda-iterations 20 --eps-curve none --device cpu \
        --out $here/bpda-temperatures/$model-T$T.json
    done
  done ;;
*) echo "usage: run.sh old|new|cascade|binarization|bpda" >&2; exit 2 ;;
esac
