"""The curriculum RL trainers: PPO (ours) or GRPO (TRL's) on Countdown operator groups.

The stage runner (``clab.runs.runner``) owns the run; this module says what
the tasks are (one per operator group, scored by the ``countdown`` scorer),
how the model before RL is built (tiny preset or a model folder, then an
optional supervised warm-up), how one stage is trained and how a checkpoint
is validated. Trainable weights are fp32 (with their optimizer state) and
computed under bf16 autocast on GPU, as veRL and TRL do: at the services'
learning rates (1e-6) an AdamW step on bf16 weights rounds away in all but a
few percent of the elements.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from clab.data.countdown.reading import Problem, check_dataset, read_group
from clab.distributed.fsdp import (
    full_model_state,
    full_optimizer_state,
    gather_into,
    load_full_optimizer_state,
    mesh_device,
    shard_model,
    unsharded_copy,
)
from clab.errors import ClabError
from clab.evaluation.countdown import evaluate_problems
from clab.generation.rollout import VLLMRollout, hf_generate, require_vllm
from clab.models.loading import (
    TINY_MARKER,
    check_model_folder,
    check_model_source,
    load_critic,
    load_policy,
    load_tokenizer,
)
from clab.models.precision import compute_autocast
from clab.models.tiny import build_tiny_model
from clab.rewards.countdown import CountdownReward
from clab.runs.protocol import StageContext, TaskRef
from clab.runs.seeding import derive_seed, seed_everything
from clab.storage.layout import INITIAL_STAGE, Stage
from clab.tracking.timing import phase
from clab.training.countdown_rl_spec import CountdownRLSpec
from clab.training.dynamic_sampling import OverSampler, flat_groups, log_flat_share
from clab.training.hf_stage import (
    StageCallback,
    carry_into_stage,
    load_optimizer_state,
    optimizer_state,
    stage_args,
)
from clab.training.ppo import NonFiniteLoss, PPOConfig, PPOTrainer
from clab.training.schedule import countdown_rows
from clab.training.steps import countdown_stage_steps, grpo_updates_per_step
from clab.training.warmup import warmup_on_solutions, warmup_on_solutions_apart

TRAINER_STATE = "trainer_state.pt"


def check_inputs(spec: CountdownRLSpec) -> None:
    """Everything that can be checked before a file is written."""
    check_dataset(spec.data.dir, spec.data.groups)
    if spec.model.name_or_path is not None:
        check_model_source(spec.model.name_or_path)
        if Path(spec.model.name_or_path).expanduser().is_dir():
            check_model_folder(Path(spec.model.name_or_path).expanduser())
    if spec.rollout.engine == "vllm":
        require_vllm()
    if spec.algorithm == "grpo" and spec.grpo.oversample > 1:
        need = spec.grpo.oversample * spec.batch.train
        for g, rows in countdown_rows(spec)[0].items():  # the files are here (checked)
            if rows < need:
                raise ClabError(
                    f"grpo.oversample {spec.grpo.oversample} draws {need} prompts a step, but "
                    f"group {g} has {rows}: lower it or use more data"
                )
    if spec.resources.use_gpu and not torch.cuda.is_available():
        raise ClabError("resources.use_gpu: true, but no CUDA device is visible")
    r = spec.resources
    if spec.algorithm == "grpo" and r.strategy == "fsdp" and r.num_workers > 1 and not r.use_gpu:
        raise ClabError(
            "resources.strategy fsdp with algorithm grpo needs resources.use_gpu: true: "
            "accelerate applies FSDP on GPUs only (it runs CPU workers under DDP, which "
            "cannot wrap a sharded policy); use strategy ddp on CPU"
        )


def make_trainer(spec: CountdownRLSpec, rank: int, world: int):
    """The stage trainer for the spec's algorithm (the runner calls this)."""
    return {"ppo": PPOStageTrainer, "grpo": GRPOStageTrainer}[spec.algorithm](spec, rank, world)


def copy_tiny_marker(src: Path, dst: Path) -> None:
    """Keep a tiny model's tokenizer marker with every checkpoint, so loaders keep its ids."""
    if (src / TINY_MARKER).is_file():
        shutil.copy(src / TINY_MARKER, dst / TINY_MARKER)


class CountdownTrainer:
    """What PPO and GRPO share: tasks, the initial model, data, validation."""

    def __init__(self, spec: CountdownRLSpec, rank: int, world: int):
        self.spec = spec
        self.rank, self.world = rank, world
        self.main = rank == 0
        self.ckpt_dir, self.metrics_dir, self.logs_dir = spec.run_dirs()
        use_gpu = spec.resources.use_gpu
        # Ray sets the current device per worker
        self.device = (
            torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
        )
        # weights that are not trained (reference, rollout copies) may be half precision
        self.infer_dtype = spec.model.dtype if use_gpu else "float32"
        self.compute_dtype = spec.model.dtype if use_gpu and spec.model.dtype != "float32" else None
        self.groups = spec.data.groups
        self.reward = CountdownReward(spec.data.enforce_ops)
        r = spec.rollout
        # validation generates as the rollouts do (vLLM's validation runs on HF's dynamic path)
        self.val_engine = "hf-static" if r.engine == "hf-static" else "hf"
        self.gen_batch = r.batch_size or spec.batch.train // world * r.responses_per_prompt
        self._rows: dict[int, list[Problem]] = {}

    # -- what the runner asks -------------------------------------------------------

    def tasks(self) -> list[TaskRef]:
        s = self.spec
        return [
            TaskRef(
                name=f"g{g}",
                scorer="countdown",
                config={
                    "data_dir": str(s.data.dir),
                    "group": g,
                    "enforce_ops": s.data.enforce_ops,
                    "max_prompt_length": s.rollout.max_prompt_length,
                    "max_response_length": s.rollout.max_response_length,
                },
            )
            for g in self.groups
        ]

    def build_initial(self, out: Path, work: Path) -> dict:
        spec = self.spec
        if spec.model.preset == "tiny":
            texts = [
                f"{p.prompt} </think>\n<answer> {p.solution} </answer>"
                for g in self.groups
                for p in read_group(spec.data.dir, g, "train", 2000)
            ]
            source = out / "model"
            build_tiny_model(
                source,
                texts,
                vocab_size=spec.model.vocab_size,
                hidden_size=spec.model.hidden_size,
                num_layers=spec.model.layers,
                num_heads=spec.model.heads,
                seed=spec.initial_seed,
                split_digits=spec.model.split_digits,
            )
        else:
            source = Path(spec.model.name_or_path)
        model = load_policy(source, "float32")
        tok = load_tokenizer(source)
        if spec.warmup.steps:
            if self.world > 1:  # rank 0 alone, outside the workers' process group
                model = warmup_on_solutions_apart(model, tok, spec, self.logs_dir, work / "warmup")
            else:
                warmup_on_solutions(model, tok, spec, self.logs_dir, work / "warmup")
        model.save_pretrained(out)
        tok.save_pretrained(out)
        copy_tiny_marker(source, out)
        if source == out / "model":
            shutil.rmtree(source)
        return {
            "source": spec.model.name_or_path or "preset:tiny",
            "warmup_steps": spec.warmup.steps,
        }

    def rows(self, task: int) -> list[Problem]:
        g = self.groups[task]
        if g not in self._rows:
            s = self.spec
            self._rows[g] = read_group(s.data.dir, g, "train", s.data.max_train_rows)
        return self._rows[g]

    def stage_steps(self, task: int) -> int:
        s = self.spec
        return countdown_stage_steps(
            len(self.rows(task)),
            s.batch.train,
            s.epochs_per_group,
            s.max_steps_per_stage,
            self.groups[task],
        )

    def validate(self, stage: Stage) -> list[dict]:
        return self._validate(self.policy)

    def _validate(self, model: torch.nn.Module) -> list[dict]:
        """Greedy success on every group's validation problems."""
        s = self.spec
        out = []
        for g in self.groups:
            with compute_autocast(self.device, self.compute_dtype):  # as the evaluator scores
                res = evaluate_problems(
                    model,
                    self.tokenizer,
                    read_group(s.data.dir, g, "test", s.batch.val),
                    max_prompt_length=s.rollout.max_prompt_length,
                    max_new_tokens=s.rollout.max_response_length,
                    # the static engine's one graph: the rollouts' batch
                    batch_size=self.gen_batch if self.val_engine == "hf-static" else s.batch.val,
                    enforce_ops=s.data.enforce_ops,
                    engine=self.val_engine,
                )
            res.pop("samples")
            res.pop("correct")
            out.append({"task": f"g{g}", "group": g, "primary": "success_rate", **res})
        return out

    def trainable_module(self) -> torch.nn.Module:
        return self.policy

    def _score(self, texts: list[str], problems: list[Problem]):
        return self.reward.score(
            texts,
            [p.target for p in problems],
            [p.nums for p in problems],
            [p.allowed_ops for p in problems],
        )

    def _save_model(self, d: Path, state_dict: dict | None = None) -> None:
        self.policy.save_pretrained(d, state_dict=state_dict)
        self.tokenizer.save_pretrained(d)
        copy_tiny_marker(self.ckpt_dir / INITIAL_STAGE, d)


class PPOStageTrainer(CountdownTrainer):
    """Our actor-critic PPO (``training/ppo.py``), stepped through a stage."""

    def load(self, model_dir: Path, initial: Path) -> None:
        """Models, rollout engine, PPO trainer and saved trainer state, each a named phase
        whose seconds the stage's first log row carries as ``time/load_<phase>``."""
        # FSDP (several workers): models are read on the CPU and moved to the GPU shard
        # by shard; one worker trains alone, as with DDP
        self.fsdp = self.spec.resources.strategy == "fsdp" and self.world > 1
        self.load_times: dict[str, float] = {}
        with phase("load_models", self.load_times):
            ref = self._load_models(model_dir, initial)
        with phase("load_engine", self.load_times):
            engine = self._rollout_engine()
        with phase("load_trainer", self.load_times):  # under FSDP it shards the models
            self.ppo = PPOTrainer(
                self.policy,
                self.critic,
                ref,
                self.tokenizer,
                PPOConfig.from_spec(self.spec, self.world, self.compute_dtype, self.fsdp),
                self._score,
                engine,
                rollout_model=self.generator if self.fsdp else None,
            )
        with phase("load_state", self.load_times):
            self._state = self._read_state(model_dir / TRAINER_STATE)
        self._full: dict | None = None

    def _load_models(self, model_dir: Path, initial: Path) -> torch.nn.Module | None:
        """Policy, critic and the generator copy onto this trainer; returns the frozen
        reference (None without a KL penalty)."""
        spec = self.spec
        dev = torch.device("cpu") if self.fsdp else self.device
        self.tokenizer = load_tokenizer(initial)  # never trained; stage 0 has its marker
        self.policy = load_policy(model_dir, "float32").to(dev)
        critic_src = model_dir / "critic" if (model_dir / "critic").is_dir() else model_dir
        self.critic = load_critic(critic_src, "float32", seed=spec.seed).to(dev)
        ref = None
        if spec.ppo.kl_coef > 0:
            ref = load_policy(initial, self.infer_dtype).to(dev)
        if spec.model.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
            self.critic.gradient_checkpointing_enable()
        # FSDP: the full copy of the policy that rollouts (and validation) generate from
        self.generator = (
            load_policy(model_dir, self.infer_dtype).to(self.device) if self.fsdp else self.policy
        )
        return ref

    def _rollout_engine(self) -> VLLMRollout | None:
        """vLLM's engine when the spec asks for it; None generates with HF."""
        r = self.spec.rollout
        if r.engine != "vllm":
            return None
        return VLLMRollout(
            self.generator,
            self.tokenizer,
            tensor_parallel_size=r.tensor_parallel_size,
            gpu_memory_utilization=r.gpu_memory_utilization,
            max_model_length=r.max_prompt_length + r.max_response_length,
            max_new_tokens=r.max_response_length,
            temperature=r.temperature,
        )

    def _read_state(self, state_file: Path) -> dict | None:
        """The saved optimizer and schedule state, for ``train_stage`` to hand to PPO. FSDP:
        rank 0 reads it and broadcasts it shard by shard; the others map the file (for the
        schedules) without reading the optimizer's pages."""
        if not state_file.is_file():
            return None
        return torch.load(state_file, weights_only=False, mmap=self.fsdp)

    def _batch(self, rows: list[Problem], stage: Stage, step: int) -> list[Problem]:
        """The step's prompts: a fixed shuffle per (seed, stage, epoch), so resume is exact."""
        spec = self.spec
        per_epoch = len(rows) // spec.batch.train
        epoch, k = divmod(step, per_epoch)
        g = torch.Generator().manual_seed(derive_seed(spec.seed, stage.index, epoch))
        order = torch.randperm(len(rows), generator=g).tolist()
        batch = [rows[i] for i in order[k * spec.batch.train : (k + 1) * spec.batch.train]]
        return batch[self.rank :: self.world]

    def train_stage(self, ctx: StageContext) -> None:
        spec = self.spec
        resumed = ctx.start_step > 0
        reset = spec.reset_optimizer and not resumed
        # optimizer state first, then the schedules (a stale lr otherwise survives)
        self.ppo.new_stage(
            ctx.n_steps,
            reset_optimizer=reset,
            state=None if reset else self._state,
            resume_schedulers=resumed,
        )
        self._state = None
        rows = self.rows(ctx.stage.task)
        per_epoch = len(rows) // spec.batch.train
        for step in range(ctx.start_step, ctx.n_steps):
            seed_everything(spec.seed, ctx.global_step + step, self.rank)
            try:
                metrics = self.ppo.step(self._batch(rows, ctx.stage, step))
            except NonFiniteLoss as e:
                raise ClabError(
                    f"stage {ctx.stage.name}: loss is not finite ({e}); the stage stopped and "
                    f"the last good checkpoint is kept under {self.ckpt_dir}; lower the "
                    "learning rate or check the data"
                ) from None
            ctx.log(
                {
                    "step_in_stage": step + 1,
                    "epoch": step // per_epoch,
                    "group": self.groups[ctx.stage.task],
                    **metrics,
                    **self.load_times,  # the first row after a load only
                }
            )
            self.load_times = {}
            if spec.save_steps and (step + 1) % spec.save_steps == 0 and step + 1 < ctx.n_steps:
                self._gather()
                ctx.save_resume(step + 1)
        self._gather()  # for the stage's validation and checkpoint on rank 0

    def _gather(self) -> None:
        """FSDP, on every worker: full weights into the rollout copy (validation
        generates from it) and full model and optimizer state onto rank 0's CPU, for
        :meth:`save`, which the runner calls on rank 0 alone. Nothing without FSDP."""
        if not self.fsdp:
            return
        self.ppo.sync_rollout()
        self._full = {
            "policy": full_model_state(self.policy),
            "critic": full_model_state(self.critic),
            "trainer": self.ppo.state_dict(),
        }

    def validate(self, stage: Stage) -> list[dict]:
        # FSDP: the rollout copy, gathered at the end of the stage (bf16 on GPU)
        return self._validate(self.generator)

    def save(self, d: Path) -> None:
        if not self.fsdp:
            self._save_model(d)
            self.critic.save_pretrained(d / "critic")
            torch.save(self.ppo.state_dict(), d / TRAINER_STATE)
            return
        # the same folder as without FSDP, from the state gathered on rank 0
        if self._full is None:
            raise RuntimeError("FSDP save without a preceding gather: the state would be stale")
        full, self._full = self._full, None
        self._save_model(d, full["policy"])
        self.critic.save_pretrained(d / "critic", state_dict=full["critic"])
        torch.save(full["trainer"], d / TRAINER_STATE)


def grpo_updates(spec: CountdownRLSpec) -> int:
    b = spec.batch
    return grpo_updates_per_step(b.train, spec.rollout.responses_per_prompt, b.mini)


def grpo_rows(rows: list[Problem]) -> list[dict]:
    """A stage's rows as TRL's data set holds them: the prompt as raw text (a string,
    so TRL applies no chat template) and the columns the reward reads."""
    return [
        {"prompt": p.prompt, "target": p.target, "nums": p.nums, "allowed_ops": p.allowed_ops}
        for p in rows
    ]


def grpo_dataset(rows: list[Problem]):
    """TRL's dataset for a stage (:func:`grpo_rows`)."""
    from datasets import Dataset

    return Dataset.from_list(grpo_rows(rows))


def grpo_rollout_func(trainer: CountdownTrainer):
    """``rollout.engine: hf-static`` for GRPO: TRL's rollout hook (``rollout_func``)
    generating through clab's :class:`~clab.generation.rollout.StaticGenerator`, the
    engine PPO rollouts and validation use (one static cache and one compiled graph
    for the run, a bf16 copy of the policy refreshed in place before each call).

    Why not TRL's own option: generate with ``cache_implementation: static`` and
    transformers' compilation turned back on ran GRPO's generation at 493 new
    tokens/s on an H100 against 2,208 for the dynamic cache
    (``benchmarks/bench_grpo_rollout.py``, Qwen2.5-1.5B's shape, 64 sequences).

    TRL hands over one prompt per completion (its sampler has already repeated each
    prompt ``num_generations`` times) and takes back the prompt and completion ids
    (the completion up to and including its EOS). ``logprobs`` is None, as on TRL's
    own transformers path: TRL computes the old log-probabilities itself.

    It serves ``rollout.engine: hf`` too, so that GRPO's prompts are cut at
    ``rollout.max_prompt_length`` (from the left) as PPO's and validation's are: TRL's
    own generation tokenizes whole prompts (TRL 1.16 has no ``max_prompt_length``).
    Under FSDP the policy's shards are gathered into the trainer's unsharded bf16
    copy once per call (a collective: every worker generates at the same step), and
    the chosen engine generates from it."""
    r = trainer.spec.rollout

    def rollout(prompts: list[str], grpo) -> dict:
        model = grpo.accelerator.unwrap_model(grpo.model)
        engine = r.engine
        if trainer.rollout_copy is not None:  # FSDP: gathered once per call, in place
            gather_into(model, trainer.rollout_copy)
            model = trainer.rollout_copy
        with compute_autocast(trainer.device, trainer.compute_dtype):
            ro = hf_generate(
                model,
                trainer.tokenizer,
                prompts,
                max_prompt_length=r.max_prompt_length,
                max_new_tokens=r.max_response_length,
                temperature=r.temperature,
                batch_size=trainer.gen_batch,
                engine=engine,
            )

        def kept(ids, mask):
            return [i[m.bool()].tolist() for i, m in zip(ids, mask, strict=True)]

        return {
            "prompt_ids": kept(ro.prompt_ids, ro.prompt_mask),
            "completion_ids": kept(ro.response_ids, ro.response_mask),
            "logprobs": None,
        }

    return rollout


# TRL's GRPO log keys -> clab's metric names
GRPO_KEYS = {
    "loss": "policy_loss",
    "reward": "reward_mean",
    "kl": "kl",
    "entropy": "entropy",
    "grad_norm": "grad_norm",
    "learning_rate": "lr_actor",
    "completions/mean_length": "response_length_mean",
    "completions/max_length": "response_length_max",
    "clip_ratio/region_mean": "pg_clipfrac",
    "flat_groups": "flat_groups",  # clab's count (dynamic_sampling.log_flat_share)
    "flat_groups_kept": "flat_groups_kept",
    "success_rate": "success_rate",
    "answer_forms": "answer_forms",
}


class GRPOStageTrainer(CountdownTrainer):
    """TRL's GRPOTrainer, one for the whole run (one optimizer, one vLLM engine).

    Under FSDP (``resources.strategy: fsdp``, several workers) the policy is
    sharded here, as PPO's actor is (:func:`~clab.distributed.fsdp.shard_model`:
    fp32 shards, bf16 compute, fp32 gradient reduction), before TRL sees it;
    transformers and accelerate run their FSDP paths on it (no DDP wrapper,
    sharded gradient clipping and checkpoints) and leave the sharding as it
    is. Rollouts and validation generate from a full bf16 copy gathered once
    per generation call, never through the sharded model (which would gather
    every layer again at every decode step).
    """

    def load(self, model_dir: Path, initial: Path) -> None:
        self.fsdp = self.spec.resources.strategy == "fsdp" and self.world > 1
        self.tokenizer = load_tokenizer(initial)  # HF checkpoints lack the tiny marker
        self.policy = load_policy(model_dir, "float32")
        # With beta > 0 TRL loads the reference from _name_or_path: the run's start.
        self.policy.config._name_or_path = str(initial)
        self.rollout_copy = None
        if self.fsdp:
            dtype = getattr(torch, self.infer_dtype)
            self.rollout_copy = unsharded_copy(self.policy, dtype, mesh_device())
            if self.spec.model.gradient_checkpointing:  # HF's own, before sharding, as PPO's
                self.policy.gradient_checkpointing_enable()
            compute = getattr(torch, self.compute_dtype) if self.compute_dtype else None
            shard_model(self.policy, compute)
        else:
            self.policy = self.policy.to(self.device)
        state_file = model_dir / TRAINER_STATE
        if self.fsdp:  # a full state (about 12 GB at 1.5B): rank 0 reads it, and broadcasts
            self._state = (
                (torch.load(state_file, weights_only=False, mmap=True) if self.main else {})
                if state_file.is_file()
                else None
            )
        else:
            self._state = load_optimizer_state(state_file)
        self._full: dict | None = None
        self.trainer = None

    def grpo_args(self, ctx: StageContext) -> dict:
        """TRL's config keys for one stage (the overhead benchmark builds a plain
        GRPOTrainer from the same keys)."""

        spec, b = self.spec, self.spec.batch
        n = spec.rollout.responses_per_prompt
        per_worker = b.train // self.world * n
        k = grpo_updates(spec)
        g = spec.grpo
        return dict(
            stage_args(spec, ctx, ctx.n_steps),
            # clab's step is one generation, as PPO's is one rollout; TRL counts optimizer
            # steps, k to a generation: one per mini-batch, as veRL's GRPO takes them
            max_steps=ctx.n_steps * k,
            logging_steps=k,  # one row a generation, TRL's metrics averaged over its k
            save_steps=(spec.save_steps or 500) * k,  # checkpoints at generation bounds
            per_device_train_batch_size=b.micro,
            gradient_accumulation_steps=b.mini // self.world // b.micro,
            steps_per_generation=per_worker // b.micro,
            num_generations=n,
            num_train_epochs=spec.epochs_per_group,
            learning_rate=g.lr,
            weight_decay=g.weight_decay,
            lr_scheduler_type=spec.lr_scheduler,
            warmup_steps=spec.lr_warmup_steps * k,
            beta=g.beta,
            epsilon=g.epsilon,
            loss_type=g.loss_type,
            scale_rewards=g.scale_rewards,
            # one reward function, summed then normalized per group (TRL's default, pinned:
            # grpo.oversample reads a flat group as all-zero advantages)
            multi_objective_aggregation="sum_then_normalize",
            # TRL 1.16's defaults, pinned so a TRL upgrade cannot change the numbers: one
            # pass over each generation (with k > 1 TRL scores the old log-probabilities
            # once, and the clip acts from the second mini-batch on; with k = 1 the ratio
            # is 1 and epsilon never acts), the KL term weighted by the importance ratio,
            # truncated completions kept in the loss
            num_iterations=1,
            use_bias_correction_kl=True,
            mask_truncated_completions=False,
            max_grad_norm=g.max_grad_norm,
            max_completion_length=spec.rollout.max_response_length,
            temperature=spec.rollout.temperature,
            top_p=1.0,
            top_k=0,
            repetition_penalty=1.0,
            use_vllm=spec.rollout.engine == "vllm",
            vllm_mode="colocate",
            vllm_tensor_parallel_size=spec.rollout.tensor_parallel_size,
            vllm_gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
            # under FSDP enabled on the model before sharding (load)
            gradient_checkpointing=spec.model.gradient_checkpointing and not self.fsdp,
            shuffle_dataset=True,
            **self.fsdp_args(),
        )

    def fsdp_args(self) -> dict:
        """transformers' FSDP2 keys: they make its Trainer (and accelerate) take the
        FSDP paths for a model this trainer has already sharded, which accelerate
        then leaves as it is; checkpoints hold the full state, as without FSDP."""
        if not self.fsdp:
            return {}
        return dict(
            fsdp="full_shard",
            fsdp_config={
                "version": 2,
                "auto_wrap_policy": "NO_WRAP",  # wrapped already, layer by layer (load)
                "reshard_after_forward": True,
                "state_dict_type": "FULL_STATE_DICT",
            },
            # each micro-batch's gradients reduce-scattered as they come (as veRL does):
            # skipping the sync keeps every parameter's full fp32 gradient on each GPU
            accelerator_config={"gradient_accumulation_kwargs": {"sync_each_batch": True}},
            # TRL loads the reference with device_map "auto" unless told (it sets None
            # for DDP only): spread over every GPU that Ray lets a worker see
            model_init_kwargs={"device_map": None},
        )

    @contextlib.contextmanager
    def _reference_sharding(self) -> Iterator[None]:
        """While TRL builds its GRPOTrainer under FSDP: the reference model sharded as
        the policy is (each decoder layer a unit, bf16 compute, outputs as computed),
        instead of by TRL's ``prepare_fsdp``, which makes the whole model one unit
        (gathered whole at every forward) and, under accelerate's bf16 policy, rounds
        the reference's fp32 log-probabilities to bf16 on their way out."""
        if not self.fsdp:
            yield
            return
        import trl.trainer.grpo_trainer as grpo_module

        compute = getattr(torch, self.compute_dtype) if self.compute_dtype else None
        original = grpo_module.prepare_fsdp
        grpo_module.prepare_fsdp = lambda model, accelerator: shard_model(model, compute).eval()
        try:
            yield
        finally:
            grpo_module.prepare_fsdp = original

    def train_stage(self, ctx: StageContext) -> None:
        from transformers import PrinterCallback
        from trl import GRPOConfig

        args = self.grpo_args(ctx)
        rows = self.rows(ctx.stage.task)
        ds = grpo_dataset(rows)
        group = self.groups[ctx.stage.task]
        g = self.spec.grpo
        if self.trainer is None:
            # our rollout hook for both HF engines (prompts cut as PPO's, under FSDP
            # from the gathered copy); TRL's own generation (its vLLM) otherwise
            ours = self.spec.rollout.engine in ("hf", "hf-static")
            self.callback = StageCallback(
                GRPO_KEYS,
                extra=lambda logs: {"group": group},
                steps_per_row=grpo_updates(self.spec),
            )
            with self._reference_sharding():
                self.trainer = grpo_trainer_class()(
                    model=self.policy,
                    reward_funcs=[self.reward],
                    args=GRPOConfig(**args),
                    train_dataset=ds,
                    processing_class=self.tokenizer,
                    callbacks=[self.callback],
                    rollout_func=grpo_rollout_func(self) if ours else None,
                )
            self.trainer.remove_callback(PrinterCallback)  # rows go to our logs, not stdout
            self._check_fsdp_taken()
        else:  # the kept trainer: its per-run counters and buffered generations start over
            self.trainer._step = 0
            self.trainer._buffered_inputs = None
            # the new TrainerState counts from 0 again: a vLLM engine last synced at step
            # 0 of the previous stage must not count as synced now
            self.trainer._last_loaded_step = -1
            self.callback.extra = lambda logs: {"group": group}
        self.trainer.oversampler = (
            OverSampler(
                grpo_rows(rows),
                g.oversample,
                self.spec.rollout.responses_per_prompt,
                (self.spec.seed, ctx.stage.index),
            )
            if g.oversample > 1
            else None
        )
        reset = self.spec.reset_optimizer and ctx.start_step == 0
        carry_into_stage(
            self.trainer,
            args,
            ds,
            optimizer_state=None if self.fsdp else self._state,
            reset_optimizer=reset,
        )
        if self.fsdp and self._state is not None and not reset:
            # saved full and keyed by parameter name (save); every worker keeps its shard

            load_full_optimizer_state(self.policy, self.trainer.optimizer, self._state)
        self._state = None
        self.callback.start(ctx)
        self.trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
        self._gather()  # a collective: before rank 0 alone may raise
        if self.main and not self.callback.rows:
            raise ClabError(f"stage {ctx.stage.name}: GRPO logged no steps")

    def _check_fsdp_taken(self) -> None:
        """Under FSDP: accelerate took its FSDP path (not DDP) on the shards' device."""
        if not self.fsdp:
            return

        if not self.trainer.is_fsdp_enabled:  # see check_inputs
            raise ClabError(
                "accelerate did not take FSDP for this GRPO run (it does on GPUs only): "
                "use resources.strategy ddp"
            )
        # accelerate places batches on cuda:LOCAL_RANK; the shards sit on the device Ray
        # gave this worker: they must be the same
        acc, mesh = self.trainer.accelerator.device, mesh_device()
        if acc.type == "cuda" and acc != mesh:
            raise ClabError(
                f"worker {self.rank}: accelerate's device {acc} is not the device its shards "
                f"are on ({mesh}): check LOCAL_RANK and CUDA_VISIBLE_DEVICES"
            )

    def _gather(self) -> None:
        """FSDP, on every worker: the full weights into the rollout copy (validation
        generates from it) and the full model and optimizer state onto rank 0's CPU
        for :meth:`save`, which the runner calls on rank 0 alone."""
        if not self.fsdp:
            return

        gather_into(self.policy, self.rollout_copy)
        self._full = {
            "policy": full_model_state(self.policy),
            "optimizer": full_optimizer_state(self.policy, self.trainer.optimizer),
        }

    def validate(self, stage: Stage) -> list[dict]:
        return self._validate(self.rollout_copy if self.fsdp else self.policy)

    def save(self, d: Path) -> None:
        if self.fsdp:  # the same folder as without FSDP, from the state gathered on rank 0
            if self._full is None:
                raise RuntimeError("FSDP save without a preceding gather: the state would be stale")
            full, self._full = self._full, None
            self._save_model(d, full["policy"])
            torch.save(full["optimizer"], d / TRAINER_STATE)
            return
        self._save_model(d)
        state = optimizer_state(self.trainer, self._state)
        if state is not None:
            torch.save(state, d / TRAINER_STATE)


def grpo_trainer_class() -> type:
    """TRL's GRPOTrainer whose prompt order is a function of (seed, epoch) alone.

    TRL's ``RepeatSampler`` draws each epoch's shuffle from one generator seeded once
    and not checkpointed: a run resumed in a stage's second epoch built a fresh
    sampler and replayed the first epoch's order (skipping its first batches), so it
    trained on other prompts than the run it resumed. Reseeded at ``set_epoch`` (which
    transformers calls before every epoch, accelerate forwarding it through its
    shards) and advanced by one shuffle per earlier epoch, epoch e gets the (e+1)-th
    shuffle of the seed, as an uninterrupted run draws it: the orders are unchanged.
    """
    from trl import GRPOTrainer
    from trl.trainer.utils import RepeatSampler

    class EpochSeededSampler(RepeatSampler):
        def set_epoch(self, epoch: int) -> None:
            if self.shuffle and self.seed is not None:
                self.generator.manual_seed(self.seed)
                for _ in range(epoch):
                    torch.randperm(self.num_samples, generator=self.generator)

    class CurriculumGRPOTrainer(GRPOTrainer):
        oversampler: OverSampler | None = None  # grpo.oversample > 1: set per stage

        def _get_train_sampler(self, dataset=None):
            sampler = super()._get_train_sampler(dataset)
            sampler.__class__ = EpochSeededSampler  # adds a method, no state
            return sampler

        def _generate_and_score_completions(self, inputs):
            o = self.oversampler
            if not self.model.training:
                return super()._generate_and_score_completions(inputs)
            if o is not None:
                return o.generate(self, inputs, super()._generate_and_score_completions)
            batch = super()._generate_and_score_completions(inputs)
            log_flat_share(
                self, "flat_groups", flat_groups(batch["advantages"], self.num_generations)
            )
            return batch

    return CurriculumGRPOTrainer
