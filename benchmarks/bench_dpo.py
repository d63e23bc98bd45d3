"""Steps/s of the continual DPO trainer against a plain TRL DPOTrainer; evaluation cost.

Both sides train the same tiny Qwen2 (LoRA, r 32) on the same preference
task with the same DPOConfig keys (``DPOStageTrainer.dpo_args``), from the
same initial weights and adapter start. The clab side is a whole stage on
the runner (a new DPOTrainer, the reference adapter set from disk, the
metrics callback, weight-change norms, JSONL rows); the plain side is
``DPOTrainer(...)`` + ``train()``. Each side is timed from the trainer's
construction to the end of training, alternating, after a warm-up round.
Goal (issue 11): ratio clab / plain >= 0.95. Reported separately: training
the task's reward model, and scoring one checkpoint on one task (sampled
completions, reward-model scores, win rate, implicit accuracy).

    uv run python benchmarks/bench_dpo.py [--rows 512] [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parent.parent


def overrides(name: str, rows: int, use_gpu: bool) -> list[str]:
    return [
        f"name={name}",
        "model.preset=tiny",
        "model.name_or_path=null",
        f"resources.use_gpu={str(use_gpu).lower()}",
        "data.tasks=[upper]",
        f"data.builtin_train_size={rows}",
        "data.builtin_test_size=64",
        "dpo.lr=2e-3",
        "dpo.batch_size=8",
        "dpo.micro_batch_size=8",
        "dpo.max_length=64",
        "reward.max_length=64",
        "reward.batch_size=16",
        "score.max_new_tokens=12",
        "save_steps=0",
        "wandb=false",
    ]


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    use_gpu = a.device == "cuda"
    os.chdir(tempfile.mkdtemp(prefix="bench-dpo-"))
    (Path("services")).symlink_to(REPO / "services")

    import datasets
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from clab.models.loading import load_policy, load_tokenizer
    from clab.runs.runner import run_spec
    from clab.runs.sweep import run
    from clab.specs import load_spec
    from clab.training import dpo
    from clab.training.dpo import LORA_INIT, lora_config

    datasets.disable_progress_bars()
    parts = ("", "_train", "_inside", "_between")
    keys = ["reward_model", "rows"] + [f"{s}{p}" for s in ("clab", "plain") for p in parts]
    timings: dict[str, list[float]] = {k: [] for k in keys}
    captured: dict = {}
    original_stage, original_rm = dpo.DPOStageTrainer.train_stage, dpo.DPOStageTrainer.reward_models

    def timed_stage(self, ctx):
        t = time.perf_counter()
        original_stage(self, ctx)
        captured["stage"] = time.perf_counter() - t
        captured["args"], captured["steps"] = self.dpo_args(ctx), ctx.n_steps

    def timed_rm(self, base):
        t = time.perf_counter()
        out = original_rm(self, base)
        captured["rm"] = time.perf_counter() - t
        return out

    dpo.DPOStageTrainer.train_stage = timed_stage

    # DPOTrainer.train() alone on each side, and the time our per-step rows take
    # (HF row -> runner row -> weight norms, JSONL, progress bar): the bookkeeping.
    from clab.runs import runner as runner_module
    from clab.training.hf_stage import StageCallback

    original_train, original_on_log = DPOTrainer.train, StageCallback.on_log

    class StepTimes(TrainerCallback):
        """Inside a step (forward, backward, optimizer) and between steps (logging, rows)."""

        def __init__(self):
            self.begin, self.end = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.end.append(time.perf_counter())

    def timed_train(self, *args, **kwargs):
        times = StepTimes()
        self.add_callback(times)
        t = time.perf_counter()
        out = original_train(self, *args, **kwargs)
        captured["train"] = time.perf_counter() - t
        inside = [e - b for b, e in zip(times.begin, times.end, strict=False)]
        between = [b - e for e, b in zip(times.end, times.begin[1:], strict=False)]
        captured["inside"], captured["between"] = sum(inside), sum(between)
        return out

    def timed_on_log(self, *args, **kwargs):
        t = time.perf_counter()
        original_on_log(self, *args, **kwargs)
        captured["rows"] = captured.get("rows", 0.0) + time.perf_counter() - t

    DPOTrainer.train, StageCallback.on_log = timed_train, timed_on_log
    assert runner_module.StepSink  # rows reach it through StageCallback.on_log
    dpo.DPOStageTrainer.reward_models = timed_rm

    def clab_run(i: int) -> Path:
        spec = load_spec("services/dpo-trainer.yaml", overrides(f"b{i}", a.rows, use_gpu))
        captured["rows"] = 0.0
        run_spec(spec)
        timings["clab"].append(captured["stage"])
        timings["clab_train"].append(captured["train"])
        timings["rows"].append(captured["rows"])
        timings["clab_inside"].append(captured["inside"])
        timings["clab_between"].append(captured["between"])
        timings["reward_model"].append(captured["rm"])
        return Path(f"checkpoints/b{i}/initial")

    def plain_run(initial: Path) -> None:
        spec = load_spec("services/dpo-trainer.yaml", overrides("plain", a.rows, use_gpu))
        rows = dpo.read_split(initial / "preference/upper/train.jsonl")
        args = dict(captured["args"], output_dir="plain-out")
        tok = load_tokenizer(initial)
        model = get_peft_model(load_policy(initial), lora_config(spec))
        set_peft_model_state_dict(model, load_file(str(initial / LORA_INIT)))
        model.to(a.device)
        t = time.perf_counter()
        trainer = DPOTrainer(
            model=model,
            args=DPOConfig(**args),
            train_dataset=datasets.Dataset.from_list(rows),
            processing_class=tok,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        timings["plain"].append(time.perf_counter() - t)
        timings["plain_train"].append(captured["train"])
        timings["plain_inside"].append(captured["inside"])
        timings["plain_between"].append(captured["between"])

    initial = clab_run(0)  # warm-up round: the reward model is trained here, then reused
    plain_run(initial)
    rm_first = timings["reward_model"][0]
    for k in timings:
        timings[k].clear()
    for i in range(1, a.repeats + 1):  # alternating which side goes first
        if i % 2:
            clab_run(i)
            plain_run(initial)
        else:
            plain_run(initial)
            clab_run(i)
    steps = captured["steps"]
    c, p = statistics.median(timings["clab"]), statistics.median(timings["plain"])
    print(f"device {a.device}; {steps} DPO steps of 8 pairs, LoRA r 32 on a tiny Qwen2 "
          f"(hidden 64, 2 layers); median of {a.repeats}")  # fmt: skip
    for side, t in (("clab stage", c), ("plain TRL", p)):
        runs = [round(x, 2) for x in timings["clab" if side == "clab stage" else "plain"]]
        print(f"{side:11s}: {t:.2f} s ({steps / t:.2f} steps/s)  runs {runs}")
    print(f"throughput ratio clab / plain = {p / c:.3f} (goal >= 0.95)")
    ct, pt = statistics.median(timings["clab_train"]), statistics.median(timings["plain_train"])
    rows = statistics.median(timings["rows"])
    print(f"train() alone: clab {ct:.2f} s, plain {pt:.2f} s (ratio {pt / ct:.3f}); "
          f"construction and setup: clab {c - ct:.2f} s, plain {p - pt:.2f} s; "
          f"our per-step rows: {rows:.2f} s = {1e3 * rows / steps:.2f} ms a step")  # fmt: skip
    for side in ("clab", "plain"):
        inside = statistics.median(timings[f"{side}_inside"])
        between = statistics.median(timings[f"{side}_between"])
        print(f"{side:5s} per step: {1e3 * inside / steps:.2f} ms inside a step (forward, "
              f"backward, optimizer), {1e3 * between / steps:.2f} ms between steps "
              f"(logging, callbacks)")  # fmt: skip
    print(f"reward model (first round, trained): {rm_first:.2f} s; "
          f"reused in later runs: {statistics.median(timings['reward_model']):.2f} s")  # fmt: skip

    Path("e.yaml").write_text(
        f"kind: evaluate\nruns: [b1]\nuse_gpu: {str(use_gpu).lower()}\nsamples_per_group: 0\n"
    )
    t = time.perf_counter()
    run(load_spec("e.yaml"))
    ev = time.perf_counter() - t
    print(f"evaluation: {ev:.2f} s for 2 checkpoints x 1 task (64 test prompts: sampling "
          f"12 new tokens, reward model, win rate, implicit accuracy): "
          f"{ev / 2:.2f} s per (checkpoint, task)")  # fmt: skip


if __name__ == "__main__":
    main()
