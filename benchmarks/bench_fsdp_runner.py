"""The curriculum trainer through the stage runner on the GPUs torchrun starts, without
Ray: the same small run under DDP and under FSDP, step by step side by side, with
each strategy's peak GPU memory.

Why: GRPO under FSDP (TRL's trainer on a policy clab shards) is tested on 2 CPU
workers over gloo only (tests/test_fsdp.py), where accelerate has to be told to
keep its FSDP plugin; this runs the same code on NCCL and bf16, where the two
strategies should agree up to bf16 rounding. Ray is not needed (its wheel is over
what the lent GPU machines can be sent), so the workers are torchrun's.

    PYTHONPATH=shared torchrun --nproc-per-node 2 benchmarks/bench_fsdp_runner.py --algorithm grpo
    PYTHONPATH=shared torchrun --nproc-per-node 2 benchmarks/bench_fsdp_runner.py --cpu  # check it

``--cpu`` runs gloo workers on the CPU (keeping accelerate's FSDP plugin there, as the
tests do) to check the script before it spends device time. GRPO needs trl and
datasets on the machine. Prints a table per strategy and a ``RESULT {...}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("reward_mean", "policy_loss", "grad_norm", "kl", "weight_change_run")


def spec(args, name: str, strategy: str, world: int, start: str | None) -> dict:
    """A small run: 2 groups x ``--steps`` steps, 4 prompts a worker and step, from a
    tiny model (``--warmup`` supervised steps first, none by default), or from
    ``start``: the first run's initial model, so both strategies start from the same
    weights."""
    grpo = args.algorithm == "grpo"
    model = {"preset": "tiny", "hidden_size": args.hidden, "layers": args.layers}
    if start:
        model = {"preset": None, "name_or_path": start}
    return {
        "kind": "countdown-rl",
        "name": name,
        "algorithm": args.algorithm,
        "data": {"dir": "data/continual", "groups": [0, 1], "max_train_rows": 64},
        "rounds": 1,
        "epochs_per_group": 1,
        "max_steps_per_stage": args.steps,
        "model": {**model, "dtype": "float32" if args.cpu else "bfloat16"},
        "warmup": {"steps": 0 if start else args.warmup, "lr": 5e-3, "batch_size": 32},
        "rollout": {
            "max_prompt_length": 160,
            "max_response_length": 32,
            "responses_per_prompt": 4 if grpo else 1,
            "engine": "hf-static",
        },
        # GRPO: one optimizer step a generation, as when its figures were taken
        "batch": {"train": 4 * world, "val": 16, "mini": (16 if grpo else 4) * world, "micro": 4},
        "ppo": {"actor_lr": 1e-4, "critic_lr": 1e-4},
        "grpo": {"lr": 1e-4},
        "save_steps": args.steps,
        "resources": {"num_workers": world, "strategy": strategy, "use_gpu": not args.cpu},
        "wandb": False,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algorithm", choices=["grpo", "ppo"], default="grpo")
    ap.add_argument("--steps", type=int, default=4, help="per stage (2 stages)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=0, help="supervised steps before RL")
    ap.add_argument("--cpu", action="store_true", help="gloo on the CPU: checks the script")
    ap.add_argument("--work", default="", help="folder for the runs (default: a temporary one)")
    args = ap.parse_args()

    from clab.cli import main as clab
    from clab.distributed.fsdp import keep_accelerate_fsdp_on_cpu
    from clab.rewards.countdown import Reason, RewardResult
    from clab.runs.runner import worker_main
    from clab.tracking.metrics_log import read_rows
    from clab.training import countdown_rl

    # A reward that differs within every group of responses (by length), so each step
    # has a gradient whatever the model has learned: the two strategies are compared
    # on their arithmetic, not on what a tiny random model can solve.
    countdown_rl.CountdownReward.score = lambda self, completions, *a: [
        RewardResult(len(c) % 3 / 2, False, Reason.WRONG_VALUE) for c in completions
    ]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if args.cpu:
        torch.set_num_threads(1)
        dist.init_process_group("gloo")
        keep_accelerate_fsdp_on_cpu()
    else:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
    work = [args.work or (tempfile.mkdtemp(prefix="fsdp-runner-") if rank == 0 else "")]
    dist.broadcast_object_list(work)
    work = Path(work[0]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    if rank == 0:
        gen = REPO / "services/data-generator.yaml"
        sets = ["train_size=64", "test_size=16", "ranges.count=[3,3]", "ranges.number=[1,20]"]
        if clab(["run", str(gen), *(a for s in sets for a in ("--set", s))]) != 0:
            raise SystemExit("the data generator failed")
    dist.barrier()

    result: dict = {"algorithm": args.algorithm, "world": world, "cpu": args.cpu}
    start = None
    for strategy in ("ddp", "fsdp"):
        name = f"{args.algorithm}-{strategy}"
        if not args.cpu:
            torch.cuda.reset_peak_memory_stats()
        config = {"kind": "countdown-rl", "spec": spec(args, name, strategy, world, start)}
        start = start or str(work / "checkpoints" / name / "initial")
        worker_main({**config, "cwd": str(work)}, rank, world)
        peak = torch.tensor(0.0 if args.cpu else torch.cuda.max_memory_allocated() / 2**30)
        if not args.cpu:
            peak = peak.cuda()
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        result[strategy] = {
            "peak_gib_max_over_workers": round(peak.item(), 3),
            "rows": [
                {k: r.get(k) for k in ("global_step", *COLUMNS)}
                for r in read_rows(f"metrics/{name}/train.jsonl")
            ]
            if rank == 0
            else [],
        }
    if rank == 0:
        print(f"== {args.algorithm}, {world} workers, work folder {work}")
        print("step  " + "  ".join(f"{c:>26}" for c in COLUMNS) + "   (ddp / fsdp)")
        for a, b in zip(result["ddp"]["rows"], result["fsdp"]["rows"], strict=True):
            cells = [f"{a[c] or 0:12.6g} /{b[c] or 0:12.6g}" for c in COLUMNS]
            print(f"{a['global_step']:4d}  " + "  ".join(cells))
        for s in ("ddp", "fsdp"):
            print(f"peak GPU memory, {s}: {result[s]['peak_gib_max_over_workers']:.2f} GiB")
        print("RESULT " + json.dumps(result))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
