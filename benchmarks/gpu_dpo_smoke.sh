#!/usr/bin/env bash
# The continual DPO trainer's GPU path on a lent machine (no network, no uv: the
# image's python with torch, transformers, TRL, PEFT): a tiny two-task run with
# EWC, bf16 autocast over fp32 weights, then the evaluator on the GPU, then
# benchmarks/bench_dpo.py on the GPU. Writes into a temporary folder.
set -euo pipefail
export PYTHONPATH="$PWD/shared${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=offline
REPO="$PWD"
WORK=$(mktemp -d) && cd "$WORK" && ln -s "$REPO/services" services
clab() { python3 -c "import sys; from clab.cli import main; sys.exit(main(sys.argv[1:]))" "$@"; }
clab run services/dpo-trainer.yaml --set name=gpu --set model.preset=tiny \
  --set model.name_or_path=null --set "data.tasks=[upper,lower]" \
  --set data.builtin_train_size=256 --set warmup.steps=100 --set dpo.lr=2e-3 \
  --set dpo.batch_size=16 --set dpo.micro_batch_size=16 --set dpo.max_length=64 \
  --set reward.max_length=64 --set score.max_new_tokens=12 --set save_steps=8 \
  --set wandb=false --set ewc.lambda=1000 --set reset_optimizer=true 2>&1 | grep -E "validation|reward model|complete|Error"
printf 'kind: evaluate\nruns: [gpu]\nuse_gpu: true\n' > e.yaml
clab run e.yaml > /dev/null 2>&1
python3 - <<'PY'
import json
from safetensors.torch import load_file
w = load_file("checkpoints/gpu/r0-g1/adapter_model.safetensors")
print("adapter dtypes:", sorted({str(t.dtype) for t in w.values()}))
s = json.load(open("metrics/gpu/summary.json"))
for k, v in s["scores"].items():
    print(k, [[round(x, 2) for x in r] for r in v["matrix"]])
print("settings:", s["settings"]["dtype"], s["settings"]["engine"])
PY
cd "$REPO" && python3 benchmarks/bench_dpo.py --device cuda --repeats 3 2>&1 | grep -vE "Warning|warn|LOAD REPORT|^Key|^---|^score|^Notes|MISSING|^$"
