"""Data-parallel workers on Ray Train: one process per GPU (or CPU), DDP over NCCL (or gloo).

It takes a ``"module:function"`` entry and a plain JSON-able config and
imports nothing of clab's training code, so ``distributed/`` sits below
every trainer and no import circle can form. Each worker calls
``function(config, rank, world)`` inside the process group Ray set up; with
``ray_address`` the job joins an existing cluster, whose workers must see the
same volumes (``checkpoints/``, ``data/``) at the same paths.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from clab.errors import ClabError


def _worker(payload: dict) -> None:
    import ray.train

    ctx = ray.train.get_context()
    if payload["use_gpu"]:
        import torch
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
    module, _, name = payload["entry"].partition(":")
    fn = getattr(importlib.import_module(module), name)
    fn(payload["config"], ctx.get_world_rank(), ctx.get_world_size())


def run_workers(
    entry: str,
    config: dict,
    *,
    num_workers: int,
    use_gpu: bool,
    ray_address: str | None,
    storage: Path,
    name: str,
) -> None:
    """Run ``entry`` on ``num_workers`` Ray Train workers and wait for them."""
    # Under `uv run`, Ray would start each worker through the same uv command line
    # in a copy of the working folder (its uv hook), which breaks with a relative uv
    # path and costs a resolve per worker; the workers need this very interpreter.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started_here = False
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:
            ray.init(
                num_cpus=max(num_workers, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=True,
            )
            started_here = True
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"entry": entry, "config": config, "use_gpu": use_gpu},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=None if use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(name=name, storage_path=str(storage)),
    )
    try:
        trainer.fit()
    except Exception as e:  # Ray wraps the worker's error; show the user's part plainly
        msg = str(e)
        if "ClabError" in msg:
            raise ClabError(msg.split("ClabError:")[-1].strip().splitlines()[0]) from None
        raise
    finally:
        if started_here:
            ray.shutdown()
