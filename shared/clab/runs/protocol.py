"""The contract between the stage runner and a trainer.

The runner owns the shape of a continual-learning run (stages, resume, lock,
fingerprint, logs, checkpoints, markers, workers); a trainer owns what
happens inside a stage. A new experiment kind is one trainer class and one
spec: nothing here or in the runner changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from clab.storage.layout import Stage


@dataclass(frozen=True)
class TaskRef:
    """One task of a run, as the evaluator will find it in run.json.

    ``scorer`` names a registered scorer (``clab.evaluation.scorers``) and
    ``config`` is everything it needs (data path, lengths, ...).
    """

    name: str
    scorer: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "scorer": self.scorer, "config": self.config}


@dataclass(frozen=True)
class StageContext:
    """What a trainer gets for one stage.

    ``start_step`` > 0 means the stage resumes from ``resume_from``, an
    intermediate checkpoint that the trainer itself wrote (in ``work_dir``).
    ``log`` takes one metrics row per step with ``step_in_stage``; the runner
    adds the global step, stage, weight change and time, and writes each row
    when the next arrives (so the weight norms need no wait for the GPU).
    ``save_resume`` writes an intermediate checkpoint through
    :meth:`StageTrainer.save` (trainers built on transformers' Trainer let it
    checkpoint into ``work_dir`` itself instead, and call ``flush_logs``
    first: the rows up to a checkpoint are on disk before it is).
    """

    stage: Stage
    task: TaskRef
    n_steps: int
    start_step: int
    global_step: int  # at the stage's start (step 0), not at the resume point
    resume_from: Path | None
    work_dir: Path
    rank: int
    world: int
    log: Callable[[dict[str, Any]], None]
    save_resume: Callable[[int], None]
    say: Callable[[str], None]
    flush_logs: Callable[[], None] = lambda: None


class StageTrainer(Protocol):
    """What the runner calls, in this order: (build_initial), load, then per stage
    stage_steps, train_stage, validate, save."""

    def tasks(self) -> list[TaskRef]:
        """The run's tasks in training order; stage (round, t) trains tasks()[t]."""

    def build_initial(self, out: Path, work: Path) -> dict[str, Any]:
        """Write the model before training (stage 0) into ``out``; ``work`` survives a
        crash (for a resumable warm-up). Returns facts for the stage-0 marker."""

    def load(self, model_dir: Path, initial: Path) -> None:
        """Weights and optimizer state from a stage checkpoint (honouring reset_optimizer)."""

    def stage_steps(self, task: int) -> int:
        """Optimizer-visible training steps of a stage on tasks()[task]."""

    def train_stage(self, ctx: StageContext) -> None:
        """Train ``ctx.n_steps - ctx.start_step`` steps, logging each through ``ctx.log``."""

    def validate(self, stage: Stage) -> list[dict[str, Any]]:
        """Rows, one per task, each with ``task`` and the scores; rank 0 only."""

    def save(self, out: Path) -> None:
        """Everything :meth:`load` needs: weights, tokenizer, optimizer state."""

    def trainable_module(self) -> torch.nn.Module:
        """The model whose weight change is tracked and whose copies must agree."""
