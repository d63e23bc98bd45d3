"""Spec of the curriculum RL trainer (kind ``countdown-rl``).

Services ``curriculum-trainer-1.5b`` and ``curriculum-trainer-3b`` and the
random-split control all use it; only the values differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from clab.data.manifest import dataset_digest
from clab.models.spec import PrecisionModelSpec
from clab.runs.spec import RunSpec
from clab.specs import KIND_HELP, SpecModel


class DataSpec(SpecModel):
    dir: Path = Field(Path("data/continual"), description="a data set with <group>/{train,test}")
    groups: list[int] = Field(
        [0, 1, 2, 3], min_length=1, description="the tasks, in training order"
    )
    enforce_ops: bool = Field(True, description="a correct answer uses only its group's operators")
    max_train_rows: int | None = Field(None, ge=1, description="cap per group (demo, tests)")


class CountdownModelSpec(PrecisionModelSpec):
    split_digits: bool = Field(
        False,
        description="preset tiny: every digit a token, as Qwen's tokenizer splits numbers (a "
        "tiny model can then copy a problem's numbers into its answer)",
    )


class RolloutSpec(SpecModel):
    engine: Literal["hf", "hf-static", "vllm"] = Field(
        "hf",
        description="hf: transformers generate, dynamic cache; hf-static: static cache, decode "
        "step compiled once per run (CUDA); vllm: colocated vLLM (the gpu extra)",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="PPO: sequences per generate call on one worker (hf, hf-static), the "
        "validation's too; null: a worker's whole rollout (batch.train / num_workers x "
        "responses_per_prompt). hf-static pads every call to it: larger is faster while the "
        "KV cache fits (batch_size x (max_prompt_length + max_response_length) x layers x 2 x "
        "kv_heads x head_dim x 2 bytes)",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size")
    gpu_memory_utilization: float = Field(
        0.4,
        gt=0,
        le=1,
        description="vllm: the share of GPU memory the engine may take (weights and KV cache)",
    )
    max_prompt_length: int = Field(
        256, ge=8, description="prompt tokens kept (longer prompts lose their start)"
    )
    max_response_length: int = Field(
        1024, ge=1, description="generated tokens at most per response"
    )
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature of the rollouts (validation is greedy)"
    )
    responses_per_prompt: int = Field(1, ge=1, description="PPO: any; GRPO: at least 2")


class BatchSpec(SpecModel):
    train: int = Field(128, ge=1, description="prompts per training step")
    val: int = Field(128, ge=1, description="test prompts per group at each validation")
    mini: int = Field(
        64,
        ge=1,
        description="mini-batch, PPO and GRPO: sequences per optimizer step, all workers; "
        "each step's batch.train x responses_per_prompt sequences make that many / mini "
        "optimizer steps, as veRL's ppo_mini_batch_size (which counts prompts: veRL's mini "
        "x rollout.n is clab's mini)",
    )
    micro: int = Field(8, ge=1, description="sequences per forward/backward on one worker")
    score_micro: int | None = Field(
        None,
        ge=1,
        description="PPO: sequences per no-grad scoring pass (old log-probs, reference, "
        "values) on one worker; null: batch.micro. No activations are kept, so it can be "
        "several times batch.micro (the logits, sequences x response x vocabulary x 4 bytes, "
        "are what grows)",
    )


class PPOSpec(SpecModel):
    actor_lr: float = Field(1e-6, gt=0, description="the policy's AdamW learning rate")
    critic_lr: float = Field(1e-5, gt=0, description="the critic's AdamW learning rate")
    kl_coef: float = Field(
        0.001,
        ge=0,
        description="KL penalty against the reference, in the reward (0: no reference model)",
    )
    entropy_coef: float = Field(
        0.001,
        ge=0,
        description="entropy bonus in the actor's loss: higher keeps sampling more varied",
    )
    clip_ratio: float = Field(
        0.2, gt=0, description="PPO's ratio clip: how far one step may move a token's probability"
    )
    clip_ratio_c: float | None = Field(
        None,
        gt=1,
        description="dual clip (veRL's clip_ratio_c, TinyZero's 3): a token with negative "
        "advantage has its loss capped at -c A; null: the single clip",
    )
    value_clip: float = Field(
        0.5, gt=0, description="clip of the critic's value update around the old values"
    )
    gamma: float = Field(
        1.0,
        ge=0,
        le=1,
        description="discount over response tokens (1: the end reward counts fully everywhere)",
    )
    lam: float = Field(
        1.0,
        ge=0,
        le=1,
        description="GAE's lambda: 1 is Monte Carlo returns, lower leans on the critic",
    )
    ppo_epochs: int = Field(
        1, ge=1, description="passes over each rollout batch (one optimizer step per mini-batch)"
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip of actor and critic")
    weight_decay: float = Field(
        0.01, ge=0, description="AdamW decay of actor and critic (veRL's); never on norms, biases"
    )
    fused_logprobs: bool = Field(
        False,
        description="log-probs and entropy from the hidden states, chunk by chunk, without the "
        "logits tensor (less memory at long responses; docs/benchmarks.md)",
    )
    critic_warmup: int = Field(
        0,
        ge=0,
        description="steps at the start of each stage in which only the critic trains and the "
        "actor waits, so that its values fit the new group's returns before they weigh the "
        "actor's updates (veRL's trainer.critic_warmup, which counts from the run's start only "
        "and gives one step fewer)",
    )
    compile_layers: bool = Field(
        False,
        description="torch.compile each decoder layer of the actor and critic once per run "
        "(dynamic shapes, as torchtitan compiles its blocks): each layer's elementwise work "
        "runs as a few fused kernels in the scoring and update passes, the same numbers "
        "within rounding; the first step pays the compilation "
        "(benchmarks/bench_gpu_ppo.py --compile-layers)",
    )
    compile_head: bool = Field(
        False,
        description="the fused head's per-chunk log-softmax, entropy and their gradient "
        "through torch.compile (a matmul and one or two fused passes a chunk instead of "
        "several eager fp32 passes over its logits; with fused_logprobs, without which there "
        "is no head to compile), the same numbers within "
        "rounding; on an H100 at the 1.5B shape with compile_layers the PPO step went from "
        "2.57 to 2.39 s at the same peak memory (docs/benchmarks.md)",
    )


class GRPOSpec(SpecModel):
    lr: float = Field(1e-6, gt=0, description="the policy's AdamW learning rate")
    beta: float = Field(0.001, ge=0, description="KL coefficient (0: no reference model)")
    epsilon: float = Field(
        0.2,
        gt=0,
        description="the ratio clip; with one update per generation (TRL's num_iterations 1, "
        "pinned) the ratio is exactly 1 and it never acts",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="gradient-norm clip of the policy")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW decay (TRL's default 0); never on norms and biases"
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "dapo",
        description="TRL's policy-loss normalisation; dapo: token-mean over the whole batch",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="advantages divided by the reward std of each prompt's group"
    )
    oversample: int = Field(
        1,
        ge=1,
        description="DAPO's dynamic sampling, bounded: each generation draws oversample x "
        "batch.train prompts and trains on batch.train of their groups, those whose "
        "responses scored differently first, groups that scored alike only to fill; 1: off",
    )


class WarmupSpec(SpecModel):
    steps: int = Field(0, ge=0, description="supervised steps on reference solutions before RL")
    lr: float = Field(1e-3, gt=0, description="the warm-up's learning rate")
    batch_size: int = Field(16, ge=1, description="solutions per warm-up step")
    groups: list[int] = Field([0], description="groups whose solutions it trains on")
    per_seed: bool = Field(
        False,
        description="each training seed builds its own stage 0 (the tiny model's "
        "initialisation and the warm-up seeded by its seed), so the seed spread includes the "
        "warm-up's, as a rerun on a GPU meets it (a GPU's warm-up does not repeat bit for "
        "bit); false: every seed starts from the first seed's stage 0",
    )


class CountdownRLSpec(RunSpec):
    """RL through the Countdown operator groups: rounds x groups x epochs."""

    kind: Literal["countdown-rl"] = Field("countdown-rl", description=KIND_HELP)
    TRAINER: ClassVar[str] = "clab.training.countdown_rl"
    # the scoring passes' micro-batch moves no number beyond rounding: a resumed run
    # may change it to fit memory; compiling the layers neither
    SAFE_CHANGES: ClassVar[frozenset[str]] = RunSpec.SAFE_CHANGES | {
        "batch.score_micro",
        "ppo.compile_layers",  # how the same arithmetic runs, as the scoring micro-batch
        "ppo.compile_head",
    }

    @property
    def initial_seed(self) -> int:
        """``warmup.per_seed``: the run's own seed (a stage 0 of its own); else the
        shared seed, as every kind."""
        return self.seed if self.warmup.per_seed else self.shared_seed

    algorithm: Literal["ppo", "grpo"] = Field(
        "ppo",
        description="ppo: actor-critic (veRL's, TinyZero's); grpo: group-relative advantages, no "
        "critic (TRL's)",
    )
    data: DataSpec = Field(
        default_factory=DataSpec,
        description="which Countdown data set and groups the run trains on",
    )
    rounds: int = Field(3, ge=1, description="passes over all groups")
    epochs_per_group: int = Field(
        15, ge=1, description="passes over a group's training problems in each round"
    )
    max_steps_per_stage: int | None = Field(None, ge=1, description="cap, for tests and the demo")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="learning-rate schedule within each stage"
    )
    lr_warmup_steps: int = Field(0, ge=0, description="per stage: the schedule restarts")
    model: CountdownModelSpec = Field(
        ..., description="the policy to start from (the critic starts from it too)"
    )
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        description="how responses are generated: engine, lengths, sampling",
    )
    batch: BatchSpec = Field(
        default_factory=BatchSpec, description="prompts and sequences per step and per pass"
    )
    ppo: PPOSpec = Field(
        default_factory=PPOSpec, description="PPO's hyperparameters (algorithm ppo)"
    )
    grpo: GRPOSpec = Field(
        default_factory=GRPOSpec, description="GRPO's hyperparameters (algorithm grpo)"
    )
    warmup: WarmupSpec = Field(
        default_factory=WarmupSpec,
        description="supervised steps before RL, so a tiny model starts from non-zero reward",
    )

    @model_validator(mode="after")
    def _batches(self) -> CountdownRLSpec:
        b, w, n = self.batch, self.resources.num_workers, self.rollout.responses_per_prompt
        if b.train % w:
            raise ValueError(f"batch.train ({b.train}) must divide by resources.num_workers ({w})")
        if self.algorithm == "grpo" and n < 2:
            raise ValueError("grpo compares responses: rollout.responses_per_prompt >= 2")
        if (b.train * n) % b.mini:
            raise ValueError(
                f"batch.mini ({b.mini}) must divide the sequences per step "
                f"(batch.train x responses_per_prompt = {b.train * n})"
            )
        if b.mini % w or (b.mini // w) % b.micro:
            raise ValueError(
                f"batch.micro ({b.micro}) must divide each worker's share of batch.mini "
                f"({b.mini} / {w} workers)"
            )
        tp = self.rollout.tensor_parallel_size
        if tp > 1 and (self.rollout.engine != "vllm" or w % tp):
            raise ValueError(
                f"rollout.tensor_parallel_size ({tp}) needs rollout.engine vllm and must "
                f"divide resources.num_workers ({w})"
            )
        if self.algorithm == "grpo" and self.rollout.batch_size is not None:
            raise ValueError(
                "rollout.batch_size is for ppo: grpo generates each worker's sequences of a "
                "step in one call (TRL); leave it null"
            )
        if self.algorithm == "grpo" and self.grpo.oversample > 1 and self.rollout.engine == "vllm":
            raise ValueError(
                "grpo.oversample > 1 needs rollout.engine hf or hf-static (clab's rollout "
                "hook); with TRL's vLLM generation it is untested"
            )
        if self.rollout.engine == "vllm" and not self.resources.use_gpu:
            raise ValueError("rollout.engine vllm needs resources.use_gpu: true")
        cw, most = self.ppo.critic_warmup, self.max_steps_per_stage
        if self.algorithm == "ppo" and cw and most is not None and cw >= most:
            raise ValueError(
                f"ppo.critic_warmup ({cw}) must be below max_steps_per_stage ({most}): "
                "the actor would never train"
            )
        if any(g not in self.data.groups for g in self.warmup.groups) and self.warmup.steps:
            raise ValueError("warmup.groups must be among data.groups")
        return self

    def reads(self) -> list[Path]:
        return [self.data.dir]

    def input_digests(self) -> dict[str, str]:
        digest = dataset_digest(self.data.dir)
        return {} if digest is None else {"data.dir": digest}
