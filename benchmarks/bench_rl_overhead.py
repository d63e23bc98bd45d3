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
    from trl import GRPOConfig, GRPOTrainer

    from clab.cli import main as clab
    from clab.metrics.training import WeightTracker
    from clab.runs.protocol import StageContext
    from clab.runs.runner import StageRunner, StepSink
    from clab.specs import load_spec
    from clab.storage.layout import stage_sequence
    from clab.tracking.metrics_log import MetricsLog
    from clab.tracking.wandb_run import WandbRun
    from clab.training.countdown_rl import grpo_dataset, make_trainer

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
        "rollout.tensor_parallel_size=1",
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
    initial = StageRunner(spec).prepare_initial()
    stage = stage_sequence(1, 1)[0]

    def context(trainer, sink) -> StageContext:
        return StageContext(
            stage=stage,
            task=trainer.tasks()[0],
            n_steps=args.steps,
            start_step=0,
            global_step=0,
            resume_from=None,
            work_dir=tmp / "work",
            rank=0,
            world=1,
            log=sink,
            save_resume=lambda step: None,
            say=print,
        )

    def plain() -> float:
        tr = make_trainer(spec, 0, 1)
        tr.load(initial, initial)
        trainer = GRPOTrainer(
            model=tr.policy,
            reward_funcs=[tr.reward],
            args=GRPOConfig(**tr.grpo_args(context(tr, print))),
            train_dataset=grpo_dataset(tr.rows(0)),
            processing_class=tr.tokenizer,
        )
        t = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t

    def ours() -> float:
        tr = make_trainer(spec, 0, 1)
        tr.load(initial, initial)
        logs = {"train": MetricsLog(tmp / "metrics.jsonl"), "weights": None}
        wandb = WandbRun(True, "clab-bench", f"bench-{time.time_ns()}", {})
        sink = StepSink(stage, 0, WeightTracker(tr.policy), logs, wandb)
        t = time.perf_counter()
        tr.train_stage(context(tr, sink))
        elapsed = time.perf_counter() - t
        wandb.finish()
        logs["train"].close()
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
    tr = make_trainer(spec_ppo, 0, 1)
    tr.load(initial, initial)
    tr.ppo.new_stage(args.steps, reset_optimizer=False)
    log = MetricsLog(tmp / "ppo.jsonl")
    sink = StepSink(stage, 0, WeightTracker(tr.policy), {"train": log}, WandbRun(False, "", "", {}))
    rows = tr.rows(0)
    step_t, book_t = [], []
    for k in range(args.steps):
        batch = tr._batch(rows, stage, k)
        t = time.perf_counter()
        m = tr.ppo.step(batch)
        step_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        sink({"step_in_stage": k + 1, **m})
        book_t.append(time.perf_counter() - t)
    print(
        f"PPO step {statistics.median(step_t) * 1e3:.1f} ms, bookkeeping "
        f"{statistics.median(book_t) * 1e3:.2f} ms "
        f"({sum(book_t) / sum(step_t) * 100:.2f}% of step time)"
    )


if __name__ == "__main__":
    main()
