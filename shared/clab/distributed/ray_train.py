"""Training on Ray Train: one worker per GPU (or CPU), DDP over NCCL (or gloo).

Ray starts the workers and their process group; each worker runs the same
:class:`~clab.training.countdown_rl.CurriculumRun` with its rank, and only rank
0 writes checkpoints and metrics. With ``resources.ray_address`` the job joins
an existing cluster, whose workers must see the same volumes (the same
``checkpoints/``, ``data/`` paths) as this process.
"""

from __future__ import annotations

import os
from pathlib import Path

from clab.errors import ClabError


def _worker_loop(config: dict) -> None:
    import ray.train

    from clab.training.countdown_rl import CurriculumRun
    from clab.training.countdown_rl_spec import CountdownRLSpec

    os.chdir(config["cwd"])
    ctx = ray.train.get_context()
    spec = CountdownRLSpec.model_validate(config["spec"])
    if spec.resources.use_gpu:
        import torch
        from ray.train.torch import get_device

        torch.cuda.set_device(get_device())
    CurriculumRun(spec, rank=ctx.get_world_rank(), world=ctx.get_world_size()).train()


def run_on_ray(spec) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = spec.resources
    started_here = False
    if not ray.is_initialized():
        if res.ray_address:
            ray.init(address=res.ray_address)
        else:
            ray.init(
                num_cpus=max(res.num_workers, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=True,
            )
            started_here = True
    storage = (Path("logs") / spec.name / "ray").resolve()
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": spec.model_dump(mode="json"), "cwd": os.getcwd()},
        torch_config=TorchConfig(backend="nccl" if res.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=res.num_workers,
            use_gpu=res.use_gpu,
            resources_per_worker=None if res.use_gpu else {"CPU": 1},
        ),
        run_config=RunConfig(name=spec.name, storage_path=str(storage)),
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
