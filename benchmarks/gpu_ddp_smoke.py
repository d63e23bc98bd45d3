"""The curriculum trainer's data-parallel path on several GPUs (NCCL), without Ray.

Ray Train is what the services use to start the workers; a lent GPU machine
has no Ray, so torchrun starts them here and each runs the same
`StageRunner(spec, rank, world)` that a Ray worker runs. Checks that every
stage completes with the workers' weights equal (the run's own all-gather
check) and that each step is logged once.

    torchrun --nproc-per-node 2 benchmarks/gpu_ddp_smoke.py   (PYTHONPATH=shared)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from clab.runs.runner import StageRunner
from clab.specs import load_spec


def main() -> None:
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    sets = [
        "name=gpu-ddp",
        "model.preset=tiny",
        "model.name_or_path=null",
        f"resources.num_workers={world}",
        "resources.use_gpu=true",
        "rollout.engine=hf",
        "rollout.max_response_length=16",
        "rollout.max_prompt_length=192",
        "batch.train=8",
        "batch.val=8",
        f"batch.mini={2 * world}",
        "batch.micro=2",
        "rounds=1",
        "max_steps_per_stage=3",
        "save_steps=1",
        "wandb=false",
        "data.max_train_rows=64",
    ]
    spec = load_spec("services/curriculum-trainer-1.5b.yaml", sets)
    StageRunner(spec, rank=rank, world=world).run()
    dist.barrier()
    if rank == 0:
        steps = [
            json.loads(line)["global_step"]
            for line in Path("metrics/gpu-ddp/train.jsonl").read_text().splitlines()
        ]
        marker = json.loads(Path("checkpoints/gpu-ddp/r0-g3/COMPLETE").read_text())
        print(
            f"world {world}: steps {steps}; last stage workers={marker['workers']} "
            f"global_step={marker['global_step']}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
