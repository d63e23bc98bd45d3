"""Spec of the replay-mixing trainer (kind ``replay-mixing``, service ``mixing-trainer``).

LoRA SFT on task A, then on task B with a share of A's training examples
mixed in, chosen by a strategy. One spec is one sweep (:mod:`clab.runs.sweep`)
whose variants are branches: phase A is trained once per seed
(``checkpoints/<name>-phase-a[-s<seed>]/``), and every strategy of
``strategies`` is its own run, ``checkpoints/<name>-<strategy>[-s<seed>]/``,
that starts from the same seed's phase A (``joint`` starts from the initial
model and trains on A and B together). Every branch is a run of the stage
runner, so each resumes on its own after a kill.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from clab.models.spec import LoraSpec, PrecisionModelSpec
from clab.runs.spec import RunSpec
from clab.specs import KIND_HELP, SpecModel
from clab.storage.layout import INITIAL_STAGE

PHASE_A = "phase-a"
JOINT = "joint"

DEFAULT_STRATEGIES = [
    "difficulty_hard",
    "difficulty_easy",
    "random",
    "loss_descending",
    "loss_ascending",
    "none",
    JOINT,
]
REAL_FORMATS = ("competition_math", "hotpotqa")


class TaskSpec(SpecModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_]+$", description="history key <name>_loss")
    format: Literal["competition_math", "hotpotqa", "arithmetic", "context_qa"] = Field(
        ..., description="real: competition_math | hotpotqa; offline demo: arithmetic | context_qa"
    )
    hub_id: str | None = Field(None, description="a data set on the hub (Parquet)")
    hub_config: str | None = Field(None, description="the hub data set's config (distractor)")
    path: str | None = Field(None, description="a local file or folder; used instead of hub_id")
    train_split: str = Field("train", description="the hub split the train rows come from")
    validation_split: str | None = Field(
        None, description="the hub split for validation; null: held out from the train rows"
    )
    validation_path: str | None = Field(None, description="a local validation file")
    train_size: int = Field(4000, ge=1, description="training examples used, at most")
    val_size: int = Field(400, ge=1, description="validation examples used, at most")
    epochs: int = Field(2, ge=1, description="passes over the task's training examples")
    lr: float = Field(2e-4, gt=0, description="the task's learning rate (the adapter's AdamW)")
    max_new_tokens: int = Field(64, ge=1, description="greedy answer length for exact match")

    @model_validator(mode="after")
    def _source(self) -> TaskSpec:
        if self.format in REAL_FORMATS and not (self.hub_id or self.path):
            raise ValueError(f"task {self.name}: a {self.format} task needs hub_id or path")
        return self


class MixSpec(SpecModel):
    fraction: float = Field(0.1, ge=0, le=1, description="replayed share, of the set `of` names")
    of: Literal["a", "b"] = Field("b", description="b: of B's training-set size (public); a: A's")
    seed: int = Field(42, description="seeds the random strategy and every tie-break")


class MixingLoraSpec(LoraSpec):
    r: int = Field(8, ge=1, description="adapter rank: trainable parameters grow with it")
    dropout: float = Field(
        0.05, ge=0, lt=1, description="dropout on the adapter's input while training"
    )
    target_modules: list[str] | Literal["all-linear"] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="module names that get an adapter (TinyLlama's attention projections), "
        "or all-linear: every linear layer but the head",
    )


class MixingModelSpec(PrecisionModelSpec):
    name_or_path: str | None = Field(
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        description="the model to start from: a local folder or a hub id; null with preset",
    )
    preset: Literal["tiny"] | None = Field(
        None,
        description="tiny: a small random Llama with a tokenizer trained on the tasks (demo); "
        "replaces the default name_or_path",
    )
    hidden_size: int = Field(128, ge=16, description="preset tiny: the model's width")
    vocab_size: int = Field(
        1000, ge=300, description="preset tiny: the tokenizer's vocabulary, at most (BPE merges)"
    )
    init_std: float = Field(
        0.1,
        gt=0,
        description="preset tiny: std of the random weights; at the usual 0.02 the head caps "
        "logits near +-2.5, so what LoRA learns barely shows as a lower loss",
    )
    gradient_checkpointing: bool = Field(
        True, description="recompute activations in the backward pass: less memory, slower steps"
    )


class TrainSpec(SpecModel):
    batch_size: int = Field(64, ge=1, description="examples per optimizer step")
    micro_batch: int = Field(8, ge=1, description="examples per forward/backward")
    max_length: int = Field(
        2048, ge=8, description="prompt + answer tokens; longer prompts lose their start"
    )
    eval_steps: int = Field(
        10, ge=0, description="both validation losses every N steps; 0: stage ends only"
    )
    eval_batch: int = Field(16, ge=1, description="examples per validation forward pass")
    lr_scheduler: Literal["linear", "constant", "cosine"] = Field(
        "linear", description="learning-rate schedule within each phase"
    )
    warmup_steps: int = Field(
        0, ge=0, description="learning-rate warm-up steps at the start of each phase"
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay of the adapter")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip")

    @model_validator(mode="after")
    def _batches(self) -> TrainSpec:
        if self.batch_size % self.micro_batch:
            raise ValueError("training.batch_size must be a multiple of training.micro_batch")
        return self


class JointSpec(SpecModel):
    epochs: int = Field(2, ge=1, description="over A and B together")
    lr: float = Field(2e-4, gt=0, description="the joint run's learning rate")


class MixingSpec(RunSpec):
    """Replay mixing: LoRA SFT on A, then B with replayed A examples, per strategy."""

    kind: Literal["replay-mixing"] = Field("replay-mixing", description=KIND_HELP)
    TRAINER: ClassVar[str] = "clab.training.mixing"
    VARIANT: ClassVar[str | None] = "branch"
    SAFE_CHANGES: ClassVar[frozenset[str]] = RunSpec.SAFE_CHANGES | {"strategies"}
    seed: int = Field(
        42,
        description="the training seed: data order and dropout in phases A and B. LoRA's "
        "initial A matrices are stage 0's, which every seed shares (`data_seed`, else the "
        "first seed); the replayed examples come from `mix.seed`",
    )
    reset_optimizer: bool = Field(
        True, description="a new optimizer for B, as the public experiment trains each phase"
    )
    strategies: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STRATEGIES),
        description="replay strategies, one run each from phase A; joint trains on A and B "
        "together",
    )
    branch: str = Field(PHASE_A, description="set per run by the sweep: phase-a or a strategy")
    task_a: TaskSpec = Field(
        default_factory=lambda: TaskSpec(
            name="math",
            format="competition_math",
            hub_id="qwedsacf/competition_math",
            lr=2e-4,
            max_new_tokens=512,
        ),
        description="the first task, trained in phase A and replayed in phase B",
    )
    task_b: TaskSpec = Field(
        default_factory=lambda: TaskSpec(
            name="hotpot",
            format="hotpotqa",
            hub_id="hotpotqa/hotpot_qa",
            hub_config="distractor",
            validation_split="validation",
            lr=7e-5,
            max_new_tokens=32,
        ),
        description="the second task, trained with A's examples mixed in",
    )
    mix: MixSpec = Field(
        default_factory=MixSpec, description="how many of A's examples are replayed"
    )
    lora: MixingLoraSpec = Field(
        default_factory=MixingLoraSpec, description="the LoRA adapter trained on the frozen model"
    )
    model: MixingModelSpec = Field(
        default_factory=MixingModelSpec, description="the model to start from"
    )
    training: TrainSpec = Field(
        default_factory=TrainSpec,
        description="batches, lengths, validation and optimizer of both phases",
    )
    joint: JointSpec = Field(default_factory=JointSpec, description="the joint run's own schedule")

    @model_validator(mode="after")
    def _check(self) -> MixingSpec:
        from clab.data.sft.replay import STRATEGIES

        known = set(STRATEGIES) | {JOINT}
        bad = [s for s in self.strategies if s not in known]
        if bad:
            raise ValueError(f"strategies: unknown {bad} (known: {', '.join(sorted(known))})")
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("strategies: each at most once")
        if self.branch not in {PHASE_A, *self.strategies}:
            raise ValueError(f"branch: {self.branch!r} is neither phase-a nor a listed strategy")
        if self.task_a.name == self.task_b.name:
            raise ValueError("task_a.name and task_b.name must differ")
        if self.resources.num_workers != 1:
            raise ValueError("resources.num_workers: replay-mixing runs on one worker")
        return self

    # -- the sweep: phase A, then each strategy from it ------------------------------------

    def variants(self) -> list[str | None]:
        return [PHASE_A, *self.strategies]

    def branch_spec(self, branch: str) -> MixingSpec:
        """The same seed's run of ``branch``."""
        return self.member(branch, self.seed)  # type: ignore[return-value]

    def origin(self) -> tuple[RunSpec, list[str]] | None:
        """A strategy starts after phase A's task-A stage; ``joint`` from its stage 0."""
        if self.branch == PHASE_A:
            return super().origin()  # a later seed's phase A: the first seed's stage 0
        stages = [INITIAL_STAGE] if self.branch == JOINT else [INITIAL_STAGE, "r0-g0"]
        return self.branch_spec(PHASE_A), stages

    def reads(self) -> list[Path]:
        return [
            Path(p) for t in (self.task_a, self.task_b) for p in (t.path, t.validation_path) if p
        ]
