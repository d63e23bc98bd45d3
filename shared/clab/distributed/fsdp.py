"""FSDP2 (``fully_shard``) for trainers of Hugging Face models: sharding, the
rollout copy, and full state for checkpoints.

Sharded the way veRL shards its actor and critic: every decoder layer is a
unit of its own and the root holds the rest (embeddings, final norm, head),
parameters are stored fp32 and sharded over every worker, with their
gradients and AdamW moments; each forward all-gathers one layer at a time in
the compute dtype (bf16 on GPU) and gradients are reduce-scattered in fp32.
A model that only scores (the reference) is sharded too, stored in its own
dtype.

Generation does not go through the sharded model (each decode step would
all-gather every layer again): :func:`gather_into` copies the full weights,
one tensor at a time, into a persistent unsharded copy on each worker, once
per step, in place, so a generator compiled around that copy stays valid.

Checkpoints stay what they are without FSDP: :func:`full_model_state` and
:func:`full_optimizer_state` gather full tensors onto rank 0's CPU (the
``torch.distributed.checkpoint.state_dict`` helpers), and
:func:`load_full_optimizer_state` broadcasts rank 0's copy back into shards.
Imports nothing of clab's trainers.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from clab.models.loading import empty_copy

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_FROM_RANK0 = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def mesh_device() -> torch.device:
    """The device FSDP shards onto: the CPU under gloo, else this worker's GPU."""
    if dist.get_backend() != "gloo" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def data_parallel_mesh() -> DeviceMesh:
    """One flat mesh over every worker of the default process group."""
    return init_device_mesh(mesh_device().type, (dist.get_world_size(),))


def shard_model(
    model: torch.nn.Module,
    compute_dtype: torch.dtype | None = None,
    mesh: DeviceMesh | None = None,
    reshard_after_forward: bool = True,
) -> torch.nn.Module:
    """``fully_shard`` every block the model names unsplittable (its decoder layers),
    then the root; parameters move to the mesh's device as they are sharded.

    ``compute_dtype`` is the dtype layers are gathered and computed in (None: the
    parameters' own); gradients are reduced in fp32 whatever it is, so that the
    fp32 master weights see the same sum as they would without sharding.
    """
    mesh = mesh or data_parallel_mesh()
    stored = next(model.parameters()).dtype
    policy = MixedPrecisionPolicy(
        param_dtype=compute_dtype or stored,
        reduce_dtype=torch.float32 if stored == torch.float32 else stored,
    )
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(
                module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward
            )
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return model


@torch.no_grad()
def unsharded_copy(
    model: torch.nn.Module, dtype: torch.dtype, device: torch.device
) -> torch.nn.Module:
    """A frozen copy of a not yet sharded model with its parameters in ``dtype``
    (buffers such as rotary frequencies keep theirs), for :func:`gather_into`.

    Built afresh from the model's config (``empty_copy``) and filled with its tensors
    rather than deep-copied: a deep copy would carry the training model's state with it, such as
    the forward hook transformers' ``gradient_checkpointing_enable`` puts on the
    input embeddings (``requires_grad_`` on their output), which the static engine's
    compiled forward cannot trace. A module that is not a transformers model is
    deep-copied.
    """
    if not hasattr(type(model), "_from_config"):
        out = copy.deepcopy(model)
        for p in out.parameters():
            p.data = p.data.to(dtype)
        return out.to(device).eval().requires_grad_(False)

    out = empty_copy(model, dtype, device)
    out.generation_config = copy.deepcopy(model.generation_config)
    targets = {**dict(out.named_parameters()), **dict(out.named_buffers())}
    source = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if targets.keys() != source.keys():
        raise ValueError(
            f"unsharded_copy: names differ: {sorted(targets.keys() ^ source.keys())[:3]}"
        )
    for name, t in targets.items():
        t.copy_(source[name])
    return out.eval().requires_grad_(False)


@torch.no_grad()
def gather_into(sharded: torch.nn.Module, full: torch.nn.Module) -> None:
    """Copy the sharded model's weights into ``full``, an unsharded model of the same
    architecture, in place (the tensors ``full`` holds stay the same objects).

    One parameter at a time: cast to ``full``'s dtype on the shard, all-gather,
    copy, free; the extra memory is one full tensor, never the whole model. Every
    worker must call it (it is a collective).
    """
    target = dict(full.named_parameters())
    names = [n for n, _ in sharded.named_parameters()]
    if sorted(names) != sorted(target):
        raise ValueError("gather_into: the two models' parameter names differ")
    for name, p in sharded.named_parameters():
        dst = target[name]
        t = p.detach().to(dst.dtype)
        if isinstance(t, DTensor):
            t = t.full_tensor()
        dst.copy_(t)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0's CPU (empty on the other ranks); a collective."""
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's full state on rank 0's CPU, keyed by parameter name (empty on
    the other ranks); a collective."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Load a state from :func:`full_optimizer_state`: rank 0 passes it, the other
    ranks may pass ``{}``; rank 0 broadcasts each tensor and every worker keeps
    its shard. A collective."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=_FROM_RANK0)


def scalar(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor from what a DTensor computation returned (e.g. a gradient norm)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_shard(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This worker's part of ``full``, cut as ``param`` (a DTensor) is sharded, without
    communication; ``full`` itself when ``param`` is a plain tensor."""
    if not isinstance(param, DTensor):
        return full
    return distribute_tensor(
        full.detach(), param.device_mesh, param.placements, src_data_rank=None
    ).to_local()


def keep_accelerate_fsdp_on_cpu() -> None:
    """For CPU checks of the GPU path (tests, a benchmark's ``--cpu``), never for runs.

    accelerate 1.15 applies an FSDP plugin only to runs on accelerators: on CPU
    workers (MULTI_CPU) it drops it and would wrap the model in DDP. After this call
    it keeps it, as it does on GPUs, so that transformers and accelerate take their
    FSDP paths; the only difference from a GPU run is then the gloo backend and the
    device. Trainers refuse GRPO with FSDP on CPU workers instead (``check_inputs``).
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_keeps_fsdp_on_cpu", False):
        return

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP  # as accelerate sets it on GPUs
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type

    init._keeps_fsdp_on_cpu = True
    AcceleratorState.__init__ = init
