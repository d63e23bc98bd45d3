#!/usr/bin/env bash
# The GPU mini-experiment over five training seeds in under ten minutes of one
# GPU: gpu_demo.py's curriculum and control for each algorithm, with the seeds
# split over processes that share the GPU (its tiny model leaves most of an
# H200 idle). Every process draws the shared data, tokenizer and warmed-up
# model from data_seed 0, so seeds 3 and 4 start where seeds 0 to 2 start.
#   benchmarks/gpu_demo_parallel.sh OUT_DIR [ALGORITHM ...]   (default: ppo grpo)
# Prints seed_numbers.py's tables for each algorithm; metrics land in
# OUT_DIR/<algorithm>/metrics, each process's log in OUT_DIR/logs.
set -uo pipefail
out=${1:?usage: gpu_demo_parallel.sh OUT_DIR [ALGORITHM ...]}
shift
algorithms=${*:-ppo grpo}
limit=${LIMIT_S:-540}
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK_DIR:-/tmp/gpu-demo-parallel}
mkdir -p "$out/logs"
start=$SECONDS
for algo in $algorithms; do
  for only in curriculum control; do
    for seeds in 0,1,2 3,4; do
      tag=$algo-$only-${seeds//,/}
      timeout "$limit" python "$here/gpu_demo.py" "$work/$tag" --algorithm "$algo" \
        --only "$only" --seeds "$seeds" --set data_seed=0 ${EXTRA:-} \
        >"$out/logs/$tag.log" 2>&1 &
    done
  done
done
wait
echo "all processes done in $((SECONDS - start)) s"
for algo in $algorithms; do
  mkdir -p "$out/$algo/metrics"
  for d in "$work/$algo"-*/metrics; do cp -r "$d"/. "$out/$algo/metrics/"; done
  echo "### $algo"
  python "$here/seed_numbers.py" --metrics "$out/$algo/metrics"
done
