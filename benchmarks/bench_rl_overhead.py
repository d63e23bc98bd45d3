"""What clab's bookkeeping costs on top of TRL's GRPOTrainer.

Runs N steps of a plain TRL GRPOTrainer, and N steps of clab's GRPO stage (the
same TRL config, plus clab's metrics: weight-change and gradient norms, JSONL,
W&B offline), on the same tiny model, data and batch, alternating three times,
and prints the throughput ratio. Target (issue 3): ratio >= 0.95. Also times
clab's own PPO step with and without the per-step bookkeeping.

    uv run python benchmarks/bench_rl_overhead.py [--steps 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch
    from transformers.utils import logging as hf_logging
    from trl import GRPOTrainer

    from clab.cli import main as clab
    from clab.metrics.training import WeightTracker
    from clab.specs import load_spec
    from clab.storage.layout import stage_sequence
    from clab.tracking.metrics_log import MetricsLog
    from clab.tracking.wandb_run import WandbRun
    from clab.training.countdown_rl import (
        CurriculumRun,
        GRPOAlgorithm,
        PPOAlgorithm,
        grpo_dataset,
    )

    hf_logging.set_verbosity_error()
    tmp = Path(tempfile.mkdtemp())
    os.chdir(tmp)
    (tmp / "services").symlink_to(REPO / "services")
    clab(["run", "services/data-generator.yaml", "--set", "train_size=512", "--set", "test_size=8"])
    sets = [
        "name=bench",
        "model.preset=tiny",
        "model.name_or_path=null",
        "resources.num_workers=1",
        "resources.use_gpu=false",
        "rollout.engine=hf",
        "rollout.max_response_length=32",
        "rollout.max_prompt_length=192",
        "rollout.responses_per_prompt=4",
        "batch.train=8",
        "batch.mini=32",
        "batch.micro=16",
        "batch.val=8",
        "save_steps=0",
        "grpo.lr=1e-4",
        "algorithm=grpo",
        "data.groups=[0]",
        "rounds=1",
        f"max_steps_per_stage={args.steps}",
    ]
    spec = load_spec(REPO / "services/curriculum-trainer-1.5b.yaml", sets)
    run = CurriculumRun(spec)
    initial = run.prepare_initial()
    stage = stage_sequence(1, 1)[0]
    rows = run._train_rows(0)

    def plain() -> float:
        algo = GRPOAlgorithm(run, initial, initial)
        targs = algo.grpo_args(stage, args.steps)
        ds = grpo_dataset(rows)
        trainer = GRPOTrainer(
            model=algo.policy,
            reward_funcs=[run.reward],
            args=targs,
            train_dataset=ds,
            processing_class=algo.tokenizer,
        )
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t

    def ours() -> float:
        algo = GRPOAlgorithm(run, initial, initial)
        tracker = WeightTracker(algo.policy)
        log = MetricsLog(tmp / "metrics.jsonl")
        wandb = WandbRun(True, "clab-bench", f"bench-{time.time_ns()}", {})
        sink = run.metrics_sink(stage, tracker, log, wandb)
        t = time.perf_counter()
        algo.train_stage(stage, rows, 0, args.steps, 0, sink)
        elapsed = time.perf_counter() - t
        wandb.finish()
        log.close()
        return elapsed

    torch.manual_seed(0)
    ours()  # warm-up: first-call costs (W&B start-up, kernels) off the clock
    plain()
    p_times, o_times = [], []
    for _ in range(args.repeats):
        p_times.append(plain())
        o_times.append(ours())
    p, o = statistics.median(p_times), statistics.median(o_times)
    print(
        f"GRPO, {args.steps} steps x {spec.batch.train} prompts x "
        f"{spec.rollout.responses_per_prompt} responses, tiny Qwen2 on CPU"
    )
    print(f"plain TRL GRPOTrainer: {p:.2f} s (runs: {', '.join(f'{x:.2f}' for x in p_times)})")
    print(f"clab GRPO stage:       {o:.2f} s (runs: {', '.join(f'{x:.2f}' for x in o_times)})")
    print(f"throughput ratio clab / plain: {p / o:.3f} (target >= 0.95)")

    # PPO: the same step with and without the per-step bookkeeping.
    spec_ppo = spec.model_copy(update={"algorithm": "ppo"})
    run_ppo = CurriculumRun(spec_ppo)
    algo = PPOAlgorithm(run_ppo, initial, initial)
    tracker = WeightTracker(algo.policy)
    log = MetricsLog(tmp / "ppo.jsonl")
    sink = run_ppo.metrics_sink(stage, tracker, log, WandbRun(False, "", "", {}))
    step_t, book_t = [], []
    for k in range(args.steps):
        batch = algo._batch(rows, stage, k)
        t = time.perf_counter()
        m = algo.trainer.step(batch)
        step_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        sink({"global_step": k + 1, **m})
        book_t.append(time.perf_counter() - t)
    print(
        f"PPO step {statistics.median(step_t) * 1e3:.1f} ms, bookkeeping "
        f"{statistics.median(book_t) * 1e3:.2f} ms "
        f"({sum(book_t) / sum(step_t) * 100:.2f}% of step time)"
    )


if __name__ == "__main__":
    main()
