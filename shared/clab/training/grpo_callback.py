"""Turns TRL's GRPO logs into clab's metric rows, and marks HF checkpoints complete."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from clab.storage.layout import COMPLETE_MARKER, Stage

# TRL's log keys -> clab's metric names
_KEYS = {
    "loss": "policy_loss",
    "reward": "reward_mean",
    "kl": "kl",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "learning_rate": "lr_actor",
    "completions/mean_length": "response_length_mean",
    "completions/max_length": "response_length_max",
    "clip_ratio/region_mean": "pg_clipfrac",
    "success_rate": "success_rate",
}


class MetricsCallback(TrainerCallback):
    def __init__(self, offset: int, stage: Stage, on_metrics: Callable[[dict], None], main: bool):
        self.offset, self.stage, self.on_metrics, self.main = offset, stage, on_metrics, main
        self.rows: list[dict] = []
        self._t0 = time.perf_counter()
        self._step_time = 0.0
        self._tokens = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._step_time = time.perf_counter() - self._t0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs:
            return  # the end-of-training summary
        row = {
            "global_step": self.offset + state.global_step,
            "epoch": math.floor(state.epoch or 0),
            "step_in_stage": state.global_step,
        }
        row.update(
            {ours: logs[theirs] for theirs, ours in _KEYS.items() if logs.get(theirs) is not None}
        )
        tokens = logs.get("num_tokens")
        if tokens is not None and self._step_time > 0:
            new = tokens - (self._tokens if self._tokens is not None else 0)
            row["tokens_per_s"] = new / self._step_time
            self._tokens = tokens
        row["step_time"] = self._step_time
        self.rows.append(row)
        self.on_metrics(row)

    def on_save(self, args, state, control, **kwargs):
        """HF writes checkpoint folders in place; the marker says this one is whole."""
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                (ckpt / COMPLETE_MARKER).write_text(f'{{"step": {state.global_step}}}\n')
