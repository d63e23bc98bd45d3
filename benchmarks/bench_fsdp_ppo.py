"""clab's PPO step under FSDP2 (or DDP) at Qwen2.5-1.5B's shape: tokens/s and the
per-GPU memory of each part.

The model is Qwen2.5-1.5B's architecture with random weights (as in
``bench_gpu_ppo.py``): actor and critic with fp32 weights, gradients and AdamW
state, the reference in bf16, compute in bf16; under FSDP all three are
sharded over the GPUs and rollouts come from a full bf16 copy of the actor,
gathered once per step. The memory parts are read from the tensors
themselves (this GPU's shards) and the phases' peaks from the CUDA
allocator, on rank 0 (the numbers of every rank are alike).

    # one GPU (a process group of one: FSDP shards nothing, but runs its own code path)
    PYTHONPATH=shared python benchmarks/bench_fsdp_ppo.py --strategy fsdp
    PYTHONPATH=shared python benchmarks/bench_fsdp_ppo.py --strategy ddp
    # N GPUs of one host, each capped at 24 GiB as the 1.5B service's GPUs are
    PYTHONPATH=shared torchrun --nproc-per-node 8 benchmarks/bench_fsdp_ppo.py \\
        --strategy fsdp --memory-cap-gib 24 --prompts-per-gpu 16 --micro 8
    # one GPU holding rank 0's share of an N-GPU run: memory only (below)
    PYTHONPATH=shared python benchmarks/bench_fsdp_ppo.py --strategy fsdp --emulate-world 8 \\
        --memory-cap-gib 24 --prompts-per-gpu 16 --micro 8

``--emulate-world N`` runs one process as rank 0 of N on a fake process group
(``torch.testing._internal.distributed.fake_pg``): every sharded tensor,
buffer and activation is allocated exactly as on rank 0 of N GPUs, but
FSDP's all-gathers fill every rank's slot with rank 0's shard and its
reduce-scatters keep rank 0's part (through ``set_custom_all_gather`` /
``set_custom_reduce_scatter``), other collectives do nothing, and the
rollout copy keeps its first weights (the gather still allocates each full
tensor). The memory is rank 0's; the numbers trained are not those of a real
run, and neither is the time (no communication). NCCL's own buffers are
not counted. ``--tiny`` runs everything on the CPU with a tiny model (gloo):
a check of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from clab.data.countdown.prompts import render_prompt
from clab.data.countdown.reading import Problem
from clab.distributed.emulate import emulate_comms
from clab.models.tiny import train_tokenizer
from clab.rewards.countdown import Reason, RewardResult
from clab.training.measure import graphs_compiled as graphs
from clab.training.ppo import PPOConfig, PPOTrainer
from model_shapes import QWEN25_15B, TINY

GIB = 2**30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_group(args) -> tuple[int, int, torch.device]:
    """torchrun's group, a fake one (emulation), or a group of one process."""
    cuda = not args.tiny
    if args.emulate_world:
        from torch.testing._internal.distributed.fake_pg import FakeStore

        dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=args.emulate_world)
    elif "RANK" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo")
    else:
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            init_method=f"tcp://127.0.0.1:{_free_port()}",
            rank=0,
            world_size=1,
        )
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return dist.get_rank(), dist.get_world_size(), torch.device("cuda")
    return dist.get_rank(), dist.get_world_size(), torch.device("cpu")


def nbytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    return sum(
        (t.to_local() if isinstance(t, DTensor) else t).numel() * t.element_size() for t in tensors
    )


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    return nbytes(
        v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0
    )


class Phases:
    """Peak allocated memory of each phase of a step, above what was allocated when the
    phase began (CUDA allocator statistics; nothing on the CPU)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.peaks: dict[str, list[float]] = {}
        self.extra: dict[str, list[float]] = {}
        self.current = "setup"

    @contextmanager
    def phase(self, name: str):
        self.current = name
        start = self._begin()
        yield
        self._end(name, start)

    def _begin(self) -> int:
        if not self.cuda:
            return 0
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def _end(self, name: str, start: int) -> None:
        if not self.cuda:
            return
        peak = torch.cuda.max_memory_allocated()
        self.peaks.setdefault(name, []).append(peak / GIB)
        self.extra.setdefault(name, []).append((peak - start) / GIB)

    def wrap(self, trainer: PPOTrainer) -> None:
        """Phases inside ``trainer.step``: gather, rollout, scoring; the rest is the update."""
        for attr, name in (
            ("sync_rollout", "gather"),
            ("_rollout", "generation"),
            ("_score_old", "scoring"),
        ):
            fn = getattr(trainer, attr)

            def wrapped(*a, _fn=fn, _name=name, **k):
                with self.phase(_name):
                    out = _fn(*a, **k)
                if _name == "scoring":  # the updates follow until the step returns
                    self.current = "update"
                    self._update_start = self._begin()
                return out

            setattr(trainer, attr, wrapped)

    def end_step(self) -> None:
        if self.current == "update":
            self._end("update", self._update_start)
        self.current = "between steps"


def build(args, device: torch.device, world: int):
    texts = [render_prompt([i % 97 + 1, 7, 13], i + 20, ["+", "-"]) for i in range(400)]
    tok = train_tokenizer(texts, 512 if not args.tiny else 300)
    n = len(tok)
    decode = tok.batch_decode
    tok.batch_decode = lambda ids, **kw: decode((ids % n).tolist(), **kw)
    shape = TINY if args.tiny else QWEN25_15B
    cfg = Qwen2Config(**shape, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)  # every rank builds the same weights
    with torch.device(device):
        actor = Qwen2ForCausalLM(cfg)
        ref = Qwen2ForCausalLM(cfg).to(torch.bfloat16 if not args.tiny else torch.float32)
        ref.load_state_dict(actor.state_dict())
        critic = Qwen2ForTokenClassification(
            Qwen2Config(**shape, num_labels=1, pad_token_id=tok.pad_token_id)
        )
    if not args.no_checkpointing:
        actor.gradient_checkpointing_enable()
        critic.gradient_checkpointing_enable()
    if args.compile_layers:  # before sharding, as torchtitan compiles its blocks
        for model in (actor, critic):
            for layer in model.model.layers:
                layer.compile(dynamic=True)
    params = sum(p.numel() for p in actor.parameters())
    mini = args.mini_per_gpu or args.prompts_per_gpu // 2
    ppo = PPOConfig(
        mini_batch_size=mini,
        micro_batch_size=min(args.micro, mini),
        max_response_length=args.response,
        max_prompt_length=256,
        actor_lr=1e-6,
        compute_dtype=None if args.tiny else "bfloat16",
        strategy=args.strategy,
        rollout_engine=args.engine,
        score_micro_batch_size=args.score_micro or None,
        fused_logprobs=args.logprobs == "fused",
        compile_head=args.compile_head,
    )

    def score(completions, problems):  # varied, so that advantages are not zero
        return [
            RewardResult(0.1 * (i % 3), False, Reason.WRONG_VALUE) for i in range(len(completions))
        ]

    trainer = PPOTrainer(actor, critic, ref, tok, ppo, score)
    problems = [Problem(t, 0, [], [], None) for t in texts[: args.prompts_per_gpu]]
    return trainer, problems, params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", choices=["fsdp", "ddp"], default="fsdp")
    ap.add_argument("--prompts-per-gpu", type=int, default=64)
    ap.add_argument("--mini-per-gpu", type=int, default=0, help="0: half the prompts")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--score-micro", type=int, default=0, help="0: --micro")
    ap.add_argument(
        "--engine",
        choices=["hf", "hf-static"],
        default="hf",
        help="rollout engine (the services use hf-static; the figures in docs: hf)",
    )
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="measured, after one warm-up step")
    ap.add_argument("--memory-cap-gib", type=float, default=0.0, help="0: the whole GPU")
    ap.add_argument("--emulate-world", type=int, default=0)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument(
        "--no-checkpoint-timing",
        action="store_true",
        help="skip timing the full-state gather (about 30 s at 1.5B) after the steps",
    )
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model: checks the script")
    ap.add_argument(
        "--compile-layers",
        action="store_true",
        help="torch.compile each decoder layer of actor and critic before sharding",
    )
    ap.add_argument(
        "--compile-head",
        action="store_true",
        help="the fused head's chunk math through torch.compile (ppo.compile_head); "
        "needs --logprobs fused",
    )
    ap.add_argument("--label", default="")
    ap.add_argument(
        "--logprobs",
        choices=["fused", "plain"],
        default="plain",
        help="fused: from the hidden states, no logits tensor (fused_logprobs.py); plain: logits",
    )
    args = ap.parse_args()
    if args.emulate_world and args.strategy != "fsdp":
        ap.error("--emulate-world needs --strategy fsdp")
    if args.compile_head and args.logprobs != "fused":
        ap.error("--compile-head compiles the fused head: give --logprobs fused too")
    rank, world, device = init_group(args)
    cuda = device.type == "cuda"
    label = args.label or (
        f"{args.strategy} world {world}{' (emulated)' if args.emulate_world else ''}"
        f"{f', cap {args.memory_cap_gib:g} GiB' if args.memory_cap_gib else ''}"
    )
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"== {label}")
    t0 = time.perf_counter()
    trainer, problems, params = build(args, device, world)
    if args.emulate_world:
        for m in (trainer.actor, trainer.critic, trainer.ref):
            emulate_comms(m, world)

        def emulated_sync():  # each full tensor allocated as in the real gather, then dropped
            for p in trainer.actor.parameters():
                p.detach().to(torch.bfloat16).full_tensor()
            trainer._rollout_stale = False

        trainer.sync_rollout = emulated_sync
    say(f"built and sharded in {time.perf_counter() - t0:.0f} s")
    phases = Phases(cuda)
    phases.wrap(trainer)
    parts: dict[str, float] = {}
    if cuda:
        torch.cuda.empty_cache()
        if args.memory_cap_gib:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * GIB / total))
        parts["weights_actor"] = nbytes(trainer.actor.parameters()) / GIB
        parts["weights_critic"] = nbytes(trainer.critic.parameters()) / GIB
        parts["weights_ref"] = nbytes(trainer.ref.parameters()) / GIB
        parts["weights_rollout_copy"] = (
            nbytes(trainer.rollout_model.parameters()) / GIB if trainer.rollout_model else 0.0
        )
        parts["allocated_before_first_step"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
    rows, compiled = [], []
    try:
        for i in range(args.steps + 1):
            phases.current = "step"
            g = graphs()
            row = trainer.step(problems)
            phases.end_step()
            new_graphs = graphs() - g
            if i == 0 and cuda:  # optimizer state exists after the first step
                parts["gradients"] = (
                    nbytes(trainer.actor.parameters()) + nbytes(trainer.critic.parameters())
                ) / GIB
                parts["optimizer"] = (
                    optimizer_bytes(trainer.actor_opt) + optimizer_bytes(trainer.critic_opt)
                ) / GIB
                parts["allocated_between_steps"] = torch.cuda.memory_allocated() / GIB
            if i == 0:  # the warm-up step also allocated the optimizer state: not counted
                phases.peaks.clear()
                phases.extra.clear()
            else:
                rows.append(row)
                compiled.append(new_graphs > 0)
            if cuda:  # as it goes, for a run cut off before its summary
                say(
                    f"step {i} ({'warm-up' if i == 0 else 'measured'}) {row['step_time']:.1f} s"
                    f"{f' ({new_graphs} graphs compiled)' if new_graphs else ''}; "
                    f"peak allocated so far {torch.cuda.max_memory_allocated() / GIB:.2f} GiB"
                )
    except torch.OutOfMemoryError as e:
        used = torch.cuda.memory_allocated() / GIB if cuda else 0.0
        say(
            f"OUT OF MEMORY in phase '{phases.current}' of step {len(rows) + 1} "
            f"(cap {args.memory_cap_gib or 'none'} GiB, {used:.1f} GiB allocated then): "
            f"{str(e).splitlines()[0][:200]}"
        )
        say("parts so far (GiB): " + json.dumps({k: round(v, 2) for k, v in parts.items()}))
        say("RESULT " + json.dumps({"label": label, "oom": phases.current, "parts": parts}))
        return 3
    ckpt = {}
    # what a checkpoint costs: full state onto rank 0's CPU, and back
    if args.strategy == "fsdp" and not args.no_checkpoint_timing:
        from clab.distributed.fsdp import full_model_state

        t = time.perf_counter()
        state = trainer.state_dict()
        full = full_model_state(trainer.actor)
        ckpt["gather_s"] = time.perf_counter() - t
        t = time.perf_counter()
        trainer.new_stage(1, reset_optimizer=False, state=state)
        ckpt["reload_optimizer_s"] = time.perf_counter() - t
        if rank == 0:
            ckpt["full_state_gib"] = (
                nbytes(full.values())
                + nbytes(
                    v
                    for opt in ("actor_opt", "critic_opt")
                    for s in state[opt]["state"].values()
                    for v in s.values()
                    if torch.is_tensor(v) and v.dim() > 0
                )
            ) / GIB
        del state, full
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    result = {
        "label": label,
        "world": world,
        "emulated": bool(args.emulate_world),
        "params": params,
        "engine": args.engine,
        "logprobs": args.logprobs,
        "compiled_layers": args.compile_layers,
        "compiled_head": args.compile_head,
        "batch_per_gpu": {
            "prompts": args.prompts_per_gpu,
            "mini": trainer.cfg.mini_batch_size,
            "micro": trainer.cfg.micro_batch_size,
            "response": args.response,
            "checkpointing": not args.no_checkpointing,
        },
        "step_s": med["step_time"],
        "tokens_per_s_all_gpus": med["tokens_per_s"],
        "generation_share": med["generation_time"] / med["step_time"],
        "response_length": med["response_length_mean"],
    }
    if cuda:
        result["parts_gib"] = {k: round(v, 3) for k, v in parts.items()}
        result["phase_peak_gib"] = {k: round(max(v), 3) for k, v in phases.peaks.items()}
        result["phase_above_start_gib"] = {k: round(max(v), 3) for k, v in phases.extra.items()}
        result["peak_allocated_gib"] = max(max(v) for v in phases.peaks.values())
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["gpu"] = torch.cuda.get_device_name()
    result["checkpoint"] = ckpt
    result["torch"] = torch.__version__
    say(
        f"model {params / 1e9:.2f} B parameters; per GPU {args.prompts_per_gpu} prompts x "
        f"{args.response} new tokens (mean {med['response_length_mean']:.0f}), mini "
        f"{trainer.cfg.mini_batch_size}, micro {trainer.cfg.micro_batch_size}"
    )
    say(
        f"step {med['step_time']:.1f} s, {med['tokens_per_s']:,.0f} tokens/s over "
        f"{world} GPU(s){' (emulated: not a throughput)' if args.emulate_world else ''}, "
        f"generation {result['generation_share']:.0%} of the step"
        + (
            f"; {sum(compiled)} of the {len(rows)} measured steps compiled graphs (in the "
            "median: clab plan --measure leaves such steps out)"
            if any(compiled)
            else ""
        )
    )
    if cuda:
        p = parts
        say(
            "per-GPU parts (GiB): weights actor {:.2f} + critic {:.2f} + reference {:.2f} + "
            "rollout copy {:.2f}; gradients {:.2f}; optimizer {:.2f}".format(
                p["weights_actor"],
                p["weights_critic"],
                p["weights_ref"],
                p["weights_rollout_copy"],
                p["gradients"],
                p["optimizer"],
            )
        )
        say(
            "phases, peak allocated (above the phase's start), GiB: "
            + ", ".join(
                f"{k} {result['phase_peak_gib'][k]:.2f} (+{result['phase_above_start_gib'][k]:.2f})"
                for k in result["phase_peak_gib"]
            )
        )
        say(
            f"PEAK per GPU: {result['peak_allocated_gib']:.2f} GiB allocated, "
            f"{result['peak_reserved_gib']:.2f} GiB reserved"
            + (f" (cap {args.memory_cap_gib:g} GiB)" if args.memory_cap_gib else "")
        )
    if ckpt:
        say(
            "checkpoint: full state gathered onto rank 0's CPU in {:.1f} s ({:.1f} GiB: actor "
            "weights and both optimizers), optimizer state broadcast back in {:.1f} s".format(
                ckpt["gather_s"], ckpt.get("full_state_gib", 0.0), ckpt["reload_optimizer_s"]
            )
        )
    say("RESULT " + json.dumps(result))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
