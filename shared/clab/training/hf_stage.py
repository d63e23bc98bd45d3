"""What every stage built on transformers' Trainer shares (GRPO, SFT mixing, DPO).

One HF trainer is kept for the whole run and handed a new data set and step
budget per stage, so its optimizer state (and, for GRPO with vLLM, its
inference engine) is carried from stage to stage; each ``train()`` starts a
new TrainerState and a new learning-rate schedule, as a continual stage
should. HF checkpoints the stage into the runner's work folder itself
(``checkpoint-N`` with optimizer, scheduler and RNG state); the callback
marks each one whole, forwards the log rows to the runner, and HF's
``save_total_limit`` keeps only the newest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import set_seed
from transformers import TrainerCallback

from clab.runs.protocol import StageContext
from clab.runs.seeding import derive_seed
from clab.storage.layout import mark_complete

if TYPE_CHECKING:  # only named: PPO runs, which import this module, never load HF's Trainer
    from transformers import Trainer


def stage_args(spec, ctx: StageContext, n_steps: int) -> dict[str, Any]:
    """TrainingArguments keys that every HF-based stage sets the same way."""
    use_gpu = spec.resources.use_gpu
    return dict(
        output_dir=str(ctx.work_dir),
        max_steps=n_steps,
        logging_steps=1,
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,
        save_total_limit=spec.save_total_limit,
        save_only_model=False,
        report_to=[],
        use_cpu=not use_gpu,
        # autocast over fp32 weights (small updates must not round away), in the
        # spec's compute dtype
        bf16=use_gpu and spec.model.dtype == "bfloat16",
        fp16=use_gpu and spec.model.dtype == "float16",
        seed=derive_seed(spec.seed, ctx.stage.index),
        data_seed=derive_seed(spec.seed, ctx.stage.index),
        disable_tqdm=True,  # the runner draws the progress bar
    )


class StageCallback(TrainerCallback):
    """HF log rows -> runner rows (renamed by ``keys``), and COMPLETE on each checkpoint.

    ``steps_per_row``: HF optimizer steps in one clab step (GRPO's mini-batches of one
    generation). HF then logs every that many steps (``logging_steps``) and saves at
    their multiples; rows and checkpoint markers count clab steps, and a row's
    ``step_time`` spans all of its optimizer steps (the generation included)."""

    def __init__(
        self,
        keys: dict[str, str],
        extra: Callable[[dict], dict] | None = None,
        steps_per_row: int = 1,
    ):
        self.keys, self.extra, self.per_row = keys, extra, steps_per_row
        self.ctx: StageContext | None = None
        self.rows = 0
        self._t0 = time.perf_counter()
        self._step_time = 0.0

    def start(self, ctx: StageContext) -> None:
        self.ctx, self.rows, self._tokens = ctx, 0, 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.per_row == 0:  # the first optimizer step of a row
            self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_time = time.perf_counter() - self._t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs or self.ctx is None:
            return  # the end-of-training summary
        if state.global_step % self.per_row:
            raise RuntimeError(
                f"HF logged at optimizer step {state.global_step}, inside a clab step of "
                f"{self.per_row}: logging_steps must be {self.per_row}"
            )
        row = {
            "step_in_stage": state.global_step // self.per_row,
            # transformers counts the epoch done after each step: epoch e's last step
            # reads e + 1.0, which floor() put in the next epoch
            "epoch": max(0, math.ceil((state.epoch or 0) - 1e-9) - 1),
            "step_time": self._step_time,
        }
        row.update({ours: logs[k] for k, ours in self.keys.items() if logs.get(k) is not None})
        tokens = logs.get("num_tokens")  # HF counts the stage's tokens so far
        if tokens is not None and self._step_time > 0:
            row["tokens_per_s"] = (tokens - self._tokens) / self._step_time
            self._tokens = tokens
        if self.extra:
            row.update(self.extra(logs))
        self.rows += 1
        self.ctx.log(row)

    def on_save(self, args, state, control, **kwargs):
        """HF writes checkpoint folders in place; the marker says this one is whole."""
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if self.ctx is not None:
                self.ctx.flush_logs()  # the rows up to the checkpoint are on disk first
            if ckpt.is_dir():
                mark_complete(ckpt, step=state.global_step // self.per_row)


def carry_into_stage(
    trainer: Trainer,
    args: dict[str, Any],
    dataset,
    *,
    optimizer_state: dict | None,
    reset_optimizer: bool,
) -> None:
    """Point a kept HF trainer at the next stage.

    The optimizer is created by HF itself (weight decay only on weights, never
    on norms and biases; FSDP-compatible, unlike passing ``optimizers=``),
    once; a state saved with a stage checkpoint is loaded before the
    schedule is built, with each group's learning rate set back to its
    initial value so the new schedule starts where it should.
    """
    for key, value in args.items():
        setattr(trainer.args, key, value)
    trainer.train_dataset = dataset
    if trainer.optimizer is None:
        trainer.create_optimizer()
        if optimizer_state is not None and not reset_optimizer:
            trainer.optimizer.load_state_dict(optimizer_state)
    elif reset_optimizer:
        trainer.optimizer.state.clear()
    for g in trainer.optimizer.param_groups:
        g["lr"] = g["initial_lr"] = trainer.args.learning_rate
    # HF seeds only when a trainer is built; later stages need it too. Per process, as
    # TRL's GRPOTrainer seeds (device_specific): one seed on every worker made their
    # samples draw the same random numbers, the workers' rollouts correlated
    set_seed(args["seed"], device_specific=True)


def optimizer_state(trainer: Trainer | None, fallback: dict | None) -> dict | None:
    return trainer.optimizer.state_dict() if trainer and trainer.optimizer else fallback


def load_optimizer_state(path: Path) -> dict | None:
    return torch.load(path, weights_only=False) if path.is_file() else None
