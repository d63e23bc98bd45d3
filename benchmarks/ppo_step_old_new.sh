#!/usr/bin/env bash
# Issue 23's comparison in one command on one GPU: an older clab's PPO step by its own
# copy of bench_gpu_ppo.py, then this checkout's (micro 8; micro 16 with the fused head
# and compiled layers), then the static engine's rollouts. Same seed and shape for all.
#   git archive 309441a shared benchmarks | (mkdir -p /tmp/old && tar -x -C /tmp/old)
#   bash benchmarks/ppo_step_old_new.sh /tmp/old
# Each run is bounded by `timeout`, so one that hangs cannot eat the others' time.
set -uo pipefail
old=${1:?give the folder holding the older clab (shared/ and benchmarks/)}
[ -f "$old/benchmarks/bench_gpu_ppo.py" ] || { echo "error: $old has no benchmarks/bench_gpu_ppo.py" >&2; exit 2; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
here=$(cd "$(dirname "$0")/.." && pwd)
base=${PYTHONPATH:+$PYTHONPATH:}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common="--losses --engine hf-static --no-gradient-checkpointing --score-micro 32 --steps 3"
t() { local lim=$1; shift; echo "### $*"; timeout "$lim" "$@" 2>&1 | grep -a -v "it/s\]\|s/it\]"; }
(cd "$old" && PYTHONPATH="${base}shared" t 150 python3 benchmarks/bench_gpu_ppo.py $common --micro 8)
cd "$here" && export PYTHONPATH="${base}$here/shared"
t 130 python3 benchmarks/bench_gpu_ppo.py $common --micro 8
t 150 python3 benchmarks/bench_gpu_ppo.py $common --micro 16 --logprobs fused --compile-layers
t 140 python3 benchmarks/bench_rollout.py --batches 64 --repeats 2 --engines hf-static \
  --static-variants unfused fused
