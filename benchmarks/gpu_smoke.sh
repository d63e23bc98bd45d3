#!/usr/bin/env bash
# The curriculum trainer's GPU path (CUDA device, bf16, checkpoints, resume,
# evaluator) at tiny scale, for a lent GPU machine whose Python has torch,
# transformers and pyarrow but not pydantic: carry its wheels in .whl/.
#   bash benchmarks/gpu_smoke.sh
set -euo pipefail
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | grep -v WARNING || true
export PYTHONPATH=$PWD/shared HF_HUB_OFFLINE=1
work=$(mktemp -d); cd "$work"; ln -s "$OLDPWD/services" services
clab() { python3 -m clab.cli "$@"; }
clab run services/data-generator.yaml --set train_size=64 --set test_size=8 2>&1 | tail -2
common=(--set model.preset=tiny --set model.name_or_path=null --set resources.num_workers=1
  --set resources.use_gpu=true --set rollout.engine=hf --set rollout.max_response_length=16
  --set rollout.max_prompt_length=192 --set batch.train=8 --set batch.val=8 --set batch.mini=8
  --set batch.micro=4 --set rounds=1 --set max_steps_per_stage=3 --set save_steps=1
  --set wandb=false --set data.max_train_rows=64)
clab run services/curriculum-trainer-1.5b.yaml "${common[@]}" --set name=gpu-ppo 2>&1 | grep -a "complete at\|validation\|error" || true
python3 - <<'PY'
import json, torch
from safetensors.torch import load_file
rows = [json.loads(l) for l in open("metrics/gpu-ppo/train.jsonl")]
print("steps", [r["global_step"] for r in rows])
sd = load_file("checkpoints/gpu-ppo/r0-g3/model.safetensors")
print("saved dtype", {str(t.dtype) for t in sd.values()})
print("complete", json.load(open("checkpoints/gpu-ppo/r0-g3/COMPLETE"))["global_step"])
PY
clab run services/evaluator.yaml --set test_size=8 --set use_gpu=true --set engine=hf 2>&1 | tail -1
python3 -c "import json; print('summary', json.load(open('metrics/gpu-ppo/summary.json'))['stages'])"
