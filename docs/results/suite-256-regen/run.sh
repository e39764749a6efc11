#!/bin/bash
# ROOT: this checkout; OLD: a worktree of commit 7a9a7e9 (git worktree add $OLD 7a9a7e9).
ROOT=${ROOT:-$(pwd)}; OLD=${OLD:?set OLD to a worktree of 7a9a7e9}
# The demo's three models on the first 256 test images at the demo's cut budgets: the current suite (new)
# and the suite at 7a9a7e9 (old, a worktree at $OLD). Resumable: a finished JSON is skipped.
# usage: suite256.sh new|old   (run both at once with OMP_NUM_THREADS=1 each)
set -u
which=$1
runs=$ROOT/results/demo/runs
out=$ROOT/results/suite-256-$which
mkdir -p $out
if [ $which = new ]; then
  cd $ROOT
  cut=(--n-images 256 --batch-size 128 --restarts 2 --aa-iterations 20 --bpda-iterations 20 --square-queries 500
       --es-schedule 10x20 --eot-samples 4 --eps-curve none --device cpu)
else
  cd $OLD
  cut=(--n-images 256 --batch-size 128 --restarts 2 --aa-iterations 20 --square-queries 500
       --es-steps 10 --es-samples 20 --eot-samples 4 --eps-curve none --device cpu)
fi
py=$ROOT/.venv/bin/python
for model in relu kwta-0.2 kwta-0.1; do
  [ -f $out/$model.json ] && continue
  twin=()
  [ $model != relu ] && twin=(--source-checkpoint $runs/relu/checkpoint.pt --twin-results $out/relu.json)
  start=$(date +%s)
  $py attack.py --checkpoint $runs/$model/checkpoint.pt "${cut[@]}" "${twin[@]}" \
      --out $out/$model.json --table $out/table.md > $out/$model.log 2>&1
  rc=$?
  echo "$model $(( $(date +%s) - start )) s rc=$rc" >> $out/times.txt
done
