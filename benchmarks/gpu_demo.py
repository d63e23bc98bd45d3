"""The demo's experiment on one GPU, at the smallest scale where learning shows.

The CPU demo (`clab demo`) runs the whole stack in minutes but its 64-wide
model learns little; this runs the same services (data generator, random-split
control, curriculum trainer, evaluator, plotter) with a 256-wide, 4-layer tiny
model trained from scratch, a longer warm-up on every group, more RL steps and
200 test problems per group, then prints `demo_numbers.py`'s table.

    python benchmarks/gpu_demo.py WORK_DIR [--algorithm ppo|grpo] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from clab.demo import DEMO_CONTROL_DATA, DEMO_DATA
from clab.runs.sweep import run
from clab.specs import load_spec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from demo_numbers import main as print_numbers  # noqa: E402

TEST_SIZE = 200
RANGES = ["ranges.count=[3,3]", "ranges.number=[1,20]", "ranges.target=[1,200]"]
TRAIN = [
    "model.preset=tiny",
    "model.name_or_path=null",
    "model.tiny_hidden_size=256",
    "model.tiny_layers=4",
    "model.dtype=float32",
    "resources.num_workers=1",
    "resources.use_gpu=true",
    "rollout.engine=hf",
    "rollout.tensor_parallel_size=1",
    "rollout.max_prompt_length=160",
    "rollout.max_response_length=20",
    f"batch.val={TEST_SIZE}",
    "rounds=1",
    "save_steps=0",
    "warmup.steps=1500",
    "warmup.lr=1e-3",
    "warmup.batch_size=64",
    "warmup.groups=[0,1,2,3]",
    "wandb=false",
]
ALGORITHMS = {
    "ppo": [
        "algorithm=ppo",
        "batch.train=64",
        "batch.mini=64",
        "batch.micro=64",
        "max_steps_per_stage=80",
        "ppo.actor_lr=5e-4",
        "ppo.critic_lr=1e-3",
    ],
    "grpo": [
        "algorithm=grpo",
        "rollout.responses_per_prompt=8",
        "batch.train=16",
        "batch.micro=64",
        "max_steps_per_stage=80",
        "grpo.lr=2e-4",
        "grpo.beta=0",
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="ppo")
    ap.add_argument("--set", action="append", default=[], help="extra trainer overrides")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "services").exists():
        (args.work / "services").symlink_to(REPO / "services")
    os.chdir(args.work)
    train = [*TRAIN, *ALGORITHMS[args.algorithm], *args.set]
    sizes = ["train_size=1200", f"test_size={TEST_SIZE}"]
    plan = [
        ("services/data-generator.yaml", [*sizes, f"output={DEMO_DATA}", *RANGES]),
        (
            "services/tinyzero-dummy-generator.yaml",
            [
                *sizes,
                "source=data/demo-tinyzero/train.parquet",
                f"output={DEMO_CONTROL_DATA}",
                *(f"pool.{r}" for r in RANGES),
            ],
        ),
        (
            "services/curriculum-trainer-1.5b.yaml",
            [*train, "name=demo-curriculum", f"data.dir={DEMO_DATA}"],
        ),
        (
            "services/curriculum-control-1.5b.yaml",
            [
                *train,
                "name=demo-control",
                f"data.dir={DEMO_CONTROL_DATA}",
                "model.preset=null",
                "model.name_or_path=checkpoints/demo-curriculum/initial",
                "warmup.steps=0",
            ],
        ),
        (
            "services/evaluator.yaml",
            [f"test_size={TEST_SIZE}", "use_gpu=true", "runs=[demo-curriculum,demo-control]"],
        ),
        ("services/plotter.yaml", ["runs=[demo-curriculum,demo-control]"]),
    ]
    start = time.perf_counter()
    for spec_path, overrides in plan:
        print(f"=== {spec_path} at {time.perf_counter() - start:.0f} s", flush=True)
        run(load_spec(spec_path, overrides))
    print(f"=== done in {time.perf_counter() - start:.0f} s\n", flush=True)
    print_numbers([])


if __name__ == "__main__":
    main()
