"""Rank 0 of an N-worker FSDP run, emulated in one process on one device.

``clab plan --measure`` times a sharded run's step on the one GPU at hand:
every shard, buffer and activation is allocated as on rank 0 of ``world``
workers, but the collectives are local. On a fake process group
(``torch.testing._internal.distributed.fake_pg``) FSDP's all-gathers fill
every rank's slot with rank 0's shard and its reduce-scatters keep rank 0's
part of the sum (FSDP's custom collective hooks); the other collectives do
nothing. So the arithmetic and memory of each step are rank 0's, the numbers
trained are not a real run's, and no time is spent communicating.
(``benchmarks/bench_fsdp_ppo.py --emulate-world`` measures the same way.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


@contextmanager
def fake_process_group(world: int) -> Iterator[None]:
    """A process group of ``world`` ranks in which this process is rank 0, for the
    duration of the block."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group exists already: cannot emulate another")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
        _forget_dtensor_specs()


def _forget_dtensor_specs() -> None:
    """Empty DTensor's sharding caches, which outlive the group.

    They are keyed by meshes that compare equal whatever this process's rank in
    them, and their cached specs carry the mesh they were made on. A worker forked
    later from this process (as the tests' FSDP workers are) would get rank 0's
    mesh back on every rank: its parameters' ``device_mesh`` said coordinate 0 on
    rank 1, and reading a checkpoint's shard through it gave rank 1 rank 0's part
    (the weight change from the run's start read 0.31 where it was 0.015).
    """
    from torch.distributed.tensor import DTensor

    clear = getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", None)
    if clear is not None:  # the C++ fast path's cache (torch >= 2.10)
        clear()
    propagator = DTensor._op_dispatcher.sharding_propagator
    propagator.propagate_op_sharding.cache_clear()
    type(propagator)._propagate_tensor_meta_cached.cache_clear()


def emulate_comms(model: torch.nn.Module, world: int) -> None:
    """FSDP's collectives on a fake group: rank 0's shard in every slot (all-gather),
    rank 0's part of the sum (reduce-scatter); buffers allocated as FSDP's own."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter

    class Alloc:
        def allocate(self, size, *, dtype, device):
            return torch.empty(*size, dtype=dtype, device=device)

    class LocalAllGather(Alloc, AllGather):
        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            output_tensor.view(world, -1).copy_(input_tensor.view(1, -1).expand(world, -1))

    class LocalReduceScatter(Alloc, ReduceScatter):
        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            output_tensor.copy_(input_tensor[: output_tensor.numel()])

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_custom_all_gather(LocalAllGather())
            m.set_custom_reduce_scatter(LocalReduceScatter())


def emulate_rollout_gather(trainer) -> None:
    """The PPO trainer's once-a-step gather into its rollout copy, emulated: each full
    tensor is allocated as the real gather allocates it, then dropped; the copy keeps
    its first weights (a fake all-gather returns no real values, and sampling from
    them would fail)."""

    def sync() -> None:
        if not trainer._rollout_stale:
            return
        for p in trainer.actor.parameters():
            p.detach().to(trainer.rollout_model.dtype).full_tensor()
        trainer._rollout_stale = False

    trainer.sync_rollout = sync
