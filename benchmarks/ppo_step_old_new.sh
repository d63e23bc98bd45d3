#!/usr/bin/env bash
# Issue 23's comparison in one command on one GPU: an older clab's PPO step by its own
# copy of bench_gpu_ppo.py, then this checkout's (micro 8; micro 16 with the fused head
# and compiled layers, then also the head's chunk math compiled), then the static
# engine's rollouts. Same seed and shape for all.
#   git archive 309441a shared benchmarks | (mkdir -p /tmp/old && tar -x -C /tmp/old)
#   bash benchmarks/ppo_step_old_new.sh /tmp/old
# Each run is bounded by `timeout`, so one that hangs cannot eat the others' time; the
# script exits with the first failing run's status (124: a run ran out of time).
set -uo pipefail
if [ $# -ne 1 ] || [ ! -f "$1/benchmarks/bench_gpu_ppo.py" ] || [ ! -d "$1/shared/clab" ]; then
  echo "error: give one folder holding an older clab's shared/clab and benchmarks/" >&2
  exit 2
fi
old=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd) || exit 2
rest=${PYTHONPATH:+:$PYTHONPATH}  # each run's own clab first: no other copy may shadow it
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
common="--losses --engine hf-static --no-gradient-checkpointing --score-micro 32 --steps 3"
rc=0
t() {  # t LIMIT DIR COMMAND...: COMMAND in DIR with DIR/shared first on the path
  local lim=$1 dir=$2; shift 2; echo "### $*"
  (cd "$dir" && PYTHONPATH="$dir/shared$rest" timeout -k 10 "$lim" "$@") 2>&1 \
    | tr '\r' '\n' | grep -a -v "it/s\]\|s/it\]"
  local status=${PIPESTATUS[0]}
  [ "$status" -ne 0 ] && echo "### exit $status" && [ "$rc" -eq 0 ] && rc=$status
  return 0
}
# the caps sum to 560 s, under a lent machine's 600 s a command (a run takes 70 to 90 s)
t 120 "$old" python3 benchmarks/bench_gpu_ppo.py $common --micro 8
t 100 "$here" python3 benchmarks/bench_gpu_ppo.py $common --micro 8
t 120 "$here" python3 benchmarks/bench_gpu_ppo.py $common --micro 16 --logprobs fused --compile-layers
t 120 "$here" python3 benchmarks/bench_gpu_ppo.py $common --micro 16 --logprobs fused --compile-layers \
  --compile-head
t 100 "$here" python3 benchmarks/bench_rollout.py --batches 64 --repeats 2 --engines hf-static \
  --static-variants unfused fused
exit $rc
