"""Spec of the continual DPO trainer (kind ``continual-dpo``, service ``dpo-trainer``).

A policy is trained with DPO on preference task 1, then task 2, ... (one
stage each, the policy carried); a reward model per task scores every stage
checkpoint on every task. See ``training/dpo.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from clab.models.spec import LoraSpec, PrecisionModelSpec
from clab.runs.spec import RunSpec
from clab.specs import KIND_HELP, SpecModel


class PreferenceDatasetSpec(SpecModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9._-]+$", description="the task's name")
    train: str = Field(..., description="a .parquet/.json/.jsonl file, or hub:<id>[:config]@split")
    test: str = Field(..., description="the same, for the held-out pairs")


class PreferenceDataSpec(SpecModel):
    source: str | None = Field(
        "builtin:styles",
        description="builtin:styles (offline demo tasks) or an AIF-Gen continual JSON file",
    )
    datasets: list[PreferenceDatasetSpec] | None = Field(
        None, description="instead of source: one data set per task, in training order"
    )
    tasks: list[str] | None = Field(
        None, description="builtin:styles only: which tasks, in order (upper, lower, commas)"
    )
    builtin_train_size: int = Field(
        512, ge=8, description="builtin:styles: train pairs made per task"
    )
    builtin_test_size: int = Field(64, ge=4, description="builtin:styles: test pairs made per task")
    max_train_rows: int | None = Field(None, ge=1, description="first N train pairs per task")
    max_test_rows: int | None = Field(None, ge=1, description="first N test pairs per task")

    @model_validator(mode="after")
    def _one_source(self) -> PreferenceDataSpec:
        if (self.source is None) == (self.datasets is None):
            raise ValueError("give exactly one of data.source and data.datasets")
        return self

    def files(self) -> list[Path]:
        """Local files the data comes from (Compose must mount them)."""
        if self.datasets is not None:
            return [
                Path(p)
                for d in self.datasets
                for p in (d.train, d.test)
                if not p.startswith("hub:")
            ]
        if self.source and not self.source.startswith("builtin:"):
            return [Path(self.source)]
        return []


class DPOModelSpec(PrecisionModelSpec):
    name_or_path: str | None = Field(
        "Qwen/Qwen2-0.5B-Instruct",
        description="the model to start from: a local folder or a hub id; null with preset",
    )
    preset: Literal["tiny"] | None = Field(
        None,
        description="tiny: a small random Qwen2 with a tokenizer trained on the tasks' text; "
        "replaces the default name_or_path",
    )


class DPOLoraSpec(LoraSpec):
    enabled: bool = Field(True, description="false: full fine-tuning, no adapter")
    r: int = Field(32, ge=1, description="adapter rank: trainable parameters grow with it")


class WarmupSpec(SpecModel):
    steps: int = Field(
        0, ge=0, description="supervised steps on both responses of every train pair, first"
    )
    lr: float = Field(3e-3, gt=0, description="the warm-up's learning rate (AdamW, no decay)")
    batch_size: int = Field(32, ge=1, description="responses per warm-up step")


class DPOSpec(SpecModel):
    beta: float = Field(
        0.1, gt=0, description="DPO's temperature: higher keeps the policy closer to the reference"
    )
    loss_type: Literal["sigmoid"] = Field("sigmoid", description="TRL's DPO loss (Rafailov)")
    reference: Literal["previous", "initial"] = Field(
        "previous",
        description="previous: the policy after the previous task; initial: the model before any",
    )
    lr: float = Field(5e-5, gt=0, description="LoRA; about 1e-6 for full fine-tuning")
    batch_size: int = Field(8, ge=1, description="pairs per optimizer step (one worker)")
    micro_batch_size: int = Field(8, ge=1, description="pairs per forward/backward")
    epochs: int = Field(1, ge=1, description="passes over each task's train pairs")
    max_steps_per_stage: int | None = Field(None, ge=1, description="cap (tests, demo)")
    max_length: int = Field(1024, ge=8, description="prompt + response tokens")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "linear", description="learning-rate schedule within each stage"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip")

    @model_validator(mode="after")
    def _divides(self) -> DPOSpec:
        if self.batch_size % self.micro_batch_size:
            raise ValueError("dpo.batch_size must be a multiple of dpo.micro_batch_size")
        return self


class EWCSpec(SpecModel):
    """Online EWC: lambda/2 * sum F (theta - theta*)^2 over the trainable parameters."""

    model_config = ConfigDict(
        extra="forbid", validate_default=True, populate_by_name=True, serialize_by_alias=True
    )

    lambda_: float = Field(0.0, ge=0, alias="lambda", description="0: no EWC")
    fisher_samples: int = Field(64, ge=1, description="train pairs per task for its Fisher")
    gamma: float = Field(1.0, ge=0, le=1, description="decay of the earlier tasks' Fisher")


class RewardSpec(SpecModel):
    lr: float = Field(1e-4, gt=0, description="the reward models' learning rate")
    epochs: int = Field(1, ge=1, description="passes over each task's train pairs")
    batch_size: int = Field(8, ge=1, description="pairs per optimizer step")
    max_length: int = Field(1024, ge=8, description="prompt + response tokens")


class ScoreSpec(SpecModel):
    temperature: float = Field(0.7, gt=0, description="sampling temperature of scored completions")
    max_new_tokens: int = Field(50, ge=1, description="tokens per scored completion, at most")
    max_prompt_length: int = Field(512, ge=8, description="prompts are cut from the left")


class ContinualDPOSpec(RunSpec):
    """DPO through a sequence of preference tasks, a reward model per task."""

    kind: Literal["continual-dpo"] = Field("continual-dpo", description=KIND_HELP)
    TRAINER: ClassVar[str] = "clab.training.dpo"
    # stage 0 trains the reward models into the run's folder, beside initial/: every seed
    # builds its own from data_seed (they reuse the stored reward models by content)
    SHARE_INITIAL: ClassVar[bool] = False
    data: PreferenceDataSpec = Field(
        default_factory=PreferenceDataSpec, description="the preference tasks, in training order"
    )
    model: DPOModelSpec = Field(
        default_factory=DPOModelSpec, description="the policy to start from (the reward models too)"
    )
    warmup: WarmupSpec = Field(
        default_factory=WarmupSpec,
        description="supervised warm-up of the initial model (a tiny preset needs it)",
    )
    lora: DPOLoraSpec = Field(
        default_factory=DPOLoraSpec, description="the LoRA adapter, or full fine-tuning"
    )
    dpo: DPOSpec = Field(default_factory=DPOSpec, description="DPO's loss, reference and optimizer")
    ewc: EWCSpec = Field(
        default_factory=EWCSpec, description="EWC regularisation against forgetting earlier tasks"
    )
    reward: RewardSpec = Field(
        default_factory=RewardSpec, description="the per-task reward models that score every stage"
    )
    score: ScoreSpec = Field(
        default_factory=ScoreSpec, description="the sampled completions the reward models score"
    )

    @model_validator(mode="after")
    def _check(self) -> ContinualDPOSpec:
        if self.resources.num_workers != 1:
            raise ValueError("resources.num_workers: continual-dpo runs on one worker for now")
        return self

    def reads(self) -> list[Path]:
        return self.data.files()
