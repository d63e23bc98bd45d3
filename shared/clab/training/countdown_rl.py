"""The curriculum RL recipe: rounds x groups x epochs of PPO or GRPO on Countdown.

Read top to bottom: :func:`train` checks inputs and picks local or Ray;
:class:`CurriculumRun` prepares the initial checkpoint (tiny preset, optional
supervised warm-up), then trains stage after stage, each ending with
validation on every group and a checkpoint whose ``COMPLETE`` marker is
written last. A rerun of the same command skips complete stages and resumes a
stage from its last intermediate checkpoint; the metrics file is cut back to
that checkpoint's step, so no step is logged twice or lost.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from clab.data.countdown.reading import Problem, check_dataset, read_group
from clab.errors import ClabError
from clab.evaluation.countdown import evaluate_problems
from clab.generation.rollout import VLLMRollout, require_vllm
from clab.metrics.training import WeightTracker
from clab.models.loading import (
    TINY_MARKER,
    check_model_source,
    load_critic,
    load_policy,
    load_tokenizer,
)
from clab.rewards.countdown import CountdownReward
from clab.storage.atomic import atomic_dir, write_json
from clab.storage.layout import (
    COMPLETE_MARKER,
    INITIAL_STAGE,
    RUN_INFO,
    Stage,
    complete_stages,
    stage_sequence,
)
from clab.tracking.metrics_log import MetricsLog
from clab.tracking.wandb_run import WandbRun
from clab.training.countdown_rl_spec import CountdownRLSpec
from clab.training.ppo import NonFiniteLoss, PPOConfig, PPOTrainer

RESUME_DIR = "_resume"
TRAINER_STATE = "trainer_state.pt"


def train(spec: CountdownRLSpec) -> None:
    """Validate every input before any work, then train here or on Ray."""
    check_dataset(spec.data.dir, spec.data.groups)
    if spec.model.name_or_path is not None:
        check_model_source(spec.model.name_or_path)
    if spec.rollout.engine == "vllm":
        require_vllm()
    if spec.resources.num_workers > 1:
        from clab.distributed.ray_train import run_on_ray

        run_on_ray(spec)
    else:
        CurriculumRun(spec).train()


def _device(spec: CountdownRLSpec) -> torch.device:
    if spec.resources.use_gpu:
        if not torch.cuda.is_available():
            raise ClabError("resources.use_gpu: true, but no CUDA device is visible")
        return torch.device("cuda", torch.cuda.current_device())  # Ray sets it per worker
    return torch.device("cpu")


def _seed_all(*parts: int) -> None:
    seed = hash(parts) % (2**31)
    random.seed(seed)
    torch.manual_seed(seed)


class CurriculumRun:
    def __init__(self, spec: CountdownRLSpec, rank: int = 0, world: int = 1):
        self.spec = spec
        self.rank, self.world = rank, world
        self.main = rank == 0
        self.ckpt_dir, self.metrics_dir, self.logs_dir = spec.run_dirs()
        self.device = _device(spec)
        self.dtype = spec.model.dtype if spec.resources.use_gpu else "float32"
        self.groups = spec.data.groups
        self.stages = stage_sequence(spec.rounds, len(self.groups))
        self.reward = CountdownReward(spec.data.enforce_ops)

    # -- helpers --------------------------------------------------------------------

    def _barrier(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()

    def group_of(self, stage: Stage) -> int:
        return self.groups[stage.task]

    def _score(self, texts: list[str], problems: list[Problem]):
        return self.reward.score(
            texts,
            [p.target for p in problems],
            [p.nums for p in problems],
            [p.allowed_ops for p in problems],
        )

    def _train_rows(self, group: int) -> list[Problem]:
        return read_group(self.spec.data.dir, group, "train", self.spec.data.max_train_rows)

    def steps_per_epoch(self, n_rows: int) -> int:
        if n_rows < self.spec.batch.train:
            raise ClabError(
                f"batch.train ({self.spec.batch.train}) exceeds the {n_rows} training "
                "rows of a group: lower batch.train or raise data.max_train_rows"
            )
        return n_rows // self.spec.batch.train

    def stage_steps(self, n_rows: int) -> int:
        total = self.spec.epochs_per_group * self.steps_per_epoch(n_rows)
        cap = self.spec.max_steps_per_stage
        return min(total, cap) if cap else total

    # -- the initial checkpoint -----------------------------------------------------------

    def prepare_initial(self) -> Path:
        """checkpoints/<run>/initial: the model before RL (after any warm-up); stage 0."""
        initial = self.ckpt_dir / INITIAL_STAGE
        if self.main:
            # what the evaluator needs to score this run: its data and its tasks
            write_json(
                self.ckpt_dir / RUN_INFO,
                {
                    "kind": self.spec.kind,
                    "algorithm": self.spec.algorithm,
                    "data_dir": str(self.spec.data.dir),
                    "groups": self.groups,
                    "rounds": self.spec.rounds,
                    "max_prompt_length": self.spec.rollout.max_prompt_length,
                    "max_response_length": self.spec.rollout.max_response_length,
                    "enforce_ops": self.spec.data.enforce_ops,
                    "spec": self.spec.model_dump(mode="json"),
                },
            )
        if self.main and not (initial / COMPLETE_MARKER).is_file():
            self._build_initial(initial)
        self._barrier()
        return initial

    def _build_initial(self, initial: Path) -> None:
        spec = self.spec
        with atomic_dir(initial) as d:
            if spec.model.preset == "tiny":
                from clab.models.tiny import build_tiny_model

                texts = []
                for g in self.groups:
                    for p in read_group(spec.data.dir, g, "train", 2000):
                        texts.append(f"{p.prompt} </think>\n<answer> {p.solution} </answer>")
                build_tiny_model(
                    d / "model",
                    texts,
                    vocab_size=spec.model.tiny_vocab_size,
                    hidden_size=spec.model.tiny_hidden_size,
                    num_layers=spec.model.tiny_layers,
                    seed=spec.seed,
                )
                source = d / "model"
            else:
                source = Path(spec.model.name_or_path)
            model = load_policy(source, self.dtype)
            tok = load_tokenizer(source)
            if spec.warmup.steps:
                from clab.training.warmup import supervised_warmup

                supervised_warmup(model, tok, spec, self.logs_dir)
            model.save_pretrained(d)
            tok.save_pretrained(d)
            copy_tiny_marker(source, d)
            if source == d / "model":
                shutil.rmtree(source)
            write_json(
                d / COMPLETE_MARKER,
                {
                    "index": 0,
                    "round": 0,
                    "task": 0,
                    "global_step": 0,
                    "source": spec.model.name_or_path or "preset:tiny",
                    "warmup_steps": spec.warmup.steps,
                },
            )

    # -- the run ------------------------------------------------------------------------

    def train(self) -> None:
        spec = self.spec
        initial = self.prepare_initial()
        done = {s.index: d for s, d in complete_stages(self.ckpt_dir)}
        todo = [s for s in self.stages if s.index not in done]
        if not todo:
            self.say(f"all {len(self.stages)} stages are complete; nothing to do")
            return
        first = todo[0]
        prev_dir = done.get(first.index - 1, initial)
        prev_info = json.loads((prev_dir / COMPLETE_MARKER).read_text())
        resume = self._resume_state(first, prev_info["global_step"])
        global_step = resume["global_step"] if resume else prev_info["global_step"]
        if resume:
            self.say(
                f"resuming stage {first.name} at its step {resume['step_in_stage']} "
                f"(global step {global_step})"
            )
        elif done.keys() - {0}:
            self.say(f"continuing after stage {prev_dir.name} (global step {global_step})")

        log = MetricsLog(self.metrics_dir / "train.jsonl") if self.main else None
        val_log = MetricsLog(self.metrics_dir / "val.jsonl") if self.main else None
        if self.main:
            log.truncate_after(global_step)
            val_log.truncate_after(prev_info["global_step"])
        wandb = WandbRun(spec.wandb and self.main, "clab", spec.name, spec.model_dump(mode="json"))

        algo_cls = PPOAlgorithm if spec.algorithm == "ppo" else GRPOAlgorithm
        algo = algo_cls(self, prev_dir, initial)
        tracker = WeightTracker(algo.policy, theta_0=_load_params(initial, algo.policy))
        try:
            for stage in todo:
                group = self.group_of(stage)
                rows = self._train_rows(group)
                n_steps = self.stage_steps(len(rows))
                start = resume["step_in_stage"] if resume and resume["stage"] == stage.name else 0
                if start == 0:
                    tracker.start_stage()
                else:  # the stage started from the previous stage's checkpoint
                    tracker.start_stage(_load_params(prev_dir, algo.policy))

                self.say(f"stage {stage.name}: group {group}, {n_steps} steps from step {start}")
                on_metrics = self.metrics_sink(stage, tracker, log, wandb)
                try:
                    global_step = algo.train_stage(
                        stage, rows, start, n_steps, global_step, on_metrics
                    )
                except NonFiniteLoss as e:
                    raise ClabError(
                        f"stage {stage.name}: loss is not finite ({e}); the stage stopped and the "
                        f"last good checkpoint is kept under {self.ckpt_dir}; lower the learning "
                        "rate or check the data"
                    ) from None
                resume = None
                val = self.validate(stage, global_step, algo, val_log, wandb)
                self._check_ranks_agree(algo.policy)
                if self.main:
                    self._save_stage(stage, algo, global_step, val)
                    self.say(f"stage {stage.name} complete at global step {global_step}")
                self._barrier()
        finally:
            if log:
                log.close()
                val_log.close()
            wandb.finish()

    def say(self, message: str) -> None:
        """A line for the console and for logs/<run>/train.log (rank 0 only)."""
        if not self.main:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.spec.name} {message}"
        print(line, flush=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def metrics_sink(self, stage: Stage, tracker: WeightTracker, log, wandb):
        """What happens to each step's metrics: weight norms added, then JSONL and W&B."""

        def on_metrics(row: dict) -> None:
            row.update(tracker.measure(row.get("grad_norm")))
            row.update(round=stage.round, group=self.group_of(stage), stage=stage.index)
            if self.main:
                log.log(row)
                wandb.log(row, row["global_step"])

        return on_metrics

    def _resume_state(self, stage: Stage, prev_global_step: int) -> dict | None:
        """Where an interrupted stage stopped.

        PPO's own state.json, or else GRPO's newest whole HF checkpoint.
        """
        work = self.ckpt_dir / RESUME_DIR / stage.name
        if (work / "state.json").is_file():
            return json.loads((work / "state.json").read_text())
        ckpt = latest_hf_checkpoint(work)
        if ckpt is None:
            return None
        step = int(ckpt.name.split("-")[1])
        return {"stage": stage.name, "step_in_stage": step, "global_step": prev_global_step + step}

    def validate(self, stage: Stage, global_step: int, algo, val_log, wandb) -> dict:
        """Greedy success on every group's validation batch, logged per group."""
        out = {}
        if self.main:
            for g in self.groups:
                probs = read_group(self.spec.data.dir, g, "test", self.spec.batch.val)
                res = evaluate_problems(
                    algo.policy,
                    algo.tokenizer,
                    probs,
                    max_prompt_length=self.spec.rollout.max_prompt_length,
                    max_new_tokens=self.spec.rollout.max_response_length,
                    batch_size=self.spec.batch.val,
                    enforce_ops=self.spec.data.enforce_ops,
                )
                res.pop("samples")
                row = {
                    "global_step": global_step,
                    "stage": stage.index,
                    "round": stage.round,
                    "trained_group": self.group_of(stage),
                    "group": g,
                    **res,
                }
                val_log.log(row)
                wandb.log(
                    {
                        f"val/g{g}/success_rate": res["success_rate"],
                        f"val/g{g}/reward_mean": res["reward_mean"],
                    },
                    global_step,
                )
                out[str(g)] = res["success_rate"]
            self.say(
                f"{stage.name}: validation success "
                + " ".join(f"g{g}={v:.2f}" for g, v in out.items())
            )
        self._barrier()
        return out

    def _check_ranks_agree(self, model: torch.nn.Module) -> None:
        """Data-parallel workers must hold the same weights: a silent drift corrupts a run."""
        if self.world <= 1 or not dist.is_initialized():
            return
        with torch.no_grad():
            mine = torch.stack([p.double().norm() for p in model.parameters()]).sum().reshape(1)
        if dist.get_backend() == "nccl":
            mine = mine.cuda()
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if any(abs(e.item() - mine.item()) > 1e-6 * max(1.0, abs(mine.item())) for e in every):
            raise RuntimeError(f"workers' weights differ: {[e.item() for e in every]}")

    def _save_stage(self, stage: Stage, algo, global_step: int, val: dict) -> None:
        with atomic_dir(self.ckpt_dir / stage.name) as d:
            algo.save(d)
            write_json(
                d / COMPLETE_MARKER,
                {
                    "index": stage.index,
                    "round": stage.round,
                    "task": stage.task,
                    "group": self.group_of(stage),
                    "global_step": global_step,
                    "algorithm": self.spec.algorithm,
                    "validation_success": val,
                    "workers": self.world,
                },
            )
        shutil.rmtree(self.ckpt_dir / RESUME_DIR / stage.name, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty _resume/ behind a finished stage
            (self.ckpt_dir / RESUME_DIR).rmdir()


def copy_tiny_marker(src: Path, dst: Path) -> None:
    """Keep a tiny model's tokenizer marker with every checkpoint, so loaders keep its ids."""
    if (src / TINY_MARKER).is_file():
        shutil.copy(src / TINY_MARKER, dst / TINY_MARKER)


def latest_hf_checkpoint(work: Path) -> Path | None:
    """The newest ``checkpoint-N`` that our callback marked whole after HF saved it."""
    done = [c for c in work.glob("checkpoint-*") if (c / COMPLETE_MARKER).is_file()]
    return max(done, key=lambda c: int(c.name.split("-")[1]), default=None)


def _load_params(model_dir: Path, like: torch.nn.Module) -> list[torch.Tensor]:
    """The trainable parameters of a saved policy, in ``like``'s order and device."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    out = []
    for name, p in like.named_parameters():
        if not p.requires_grad:
            continue
        t = state.get(name)
        if t is None and name == "lm_head.weight":
            t = state.get("model.embed_tokens.weight")
        if t is None:
            raise ClabError(f"{model_dir}: checkpoint lacks parameter {name}")
        out.append(t.to(device=p.device, dtype=p.dtype))
    return out


# -- the algorithms ------------------------------------------------------------------------


class PPOAlgorithm:
    """Our actor-critic PPO, stepped by the recipe (which owns data order and resume)."""

    def __init__(self, run: CurriculumRun, model_dir: Path, initial: Path):
        spec = run.spec
        self.run = run
        resume_dir = None
        first = next(
            s for s in run.stages if not (run.ckpt_dir / s.name / COMPLETE_MARKER).is_file()
        )
        if (run.ckpt_dir / RESUME_DIR / first.name / "state.json").is_file():
            resume_dir = run.ckpt_dir / RESUME_DIR / first.name
        src = resume_dir or model_dir
        self.tokenizer = load_tokenizer(src)
        self.policy = load_policy(src, run.dtype).to(run.device)
        critic_src = src / "critic" if (src / "critic").is_dir() else src
        self.critic = load_critic(critic_src, run.dtype).to(run.device)
        ref = load_policy(initial, run.dtype).to(run.device) if spec.ppo.kl_coef > 0 else None
        if spec.model.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
            self.critic.gradient_checkpointing_enable()
        p, r = spec.ppo, spec.rollout
        cfg = PPOConfig(
            actor_lr=p.actor_lr,
            critic_lr=p.critic_lr,
            kl_coef=p.kl_coef,
            entropy_coef=p.entropy_coef,
            clip_ratio=p.clip_ratio,
            value_clip=p.value_clip,
            gamma=p.gamma,
            lam=p.lam,
            ppo_epochs=p.ppo_epochs,
            mini_batch_size=spec.batch.mini // run.world,
            micro_batch_size=spec.batch.micro,
            responses_per_prompt=r.responses_per_prompt,
            max_grad_norm=p.max_grad_norm,
            max_prompt_length=r.max_prompt_length,
            max_response_length=r.max_response_length,
            temperature=r.temperature,
            lr_scheduler=spec.lr_scheduler,
            lr_warmup_steps=spec.lr_warmup_steps,
        )
        engine = None
        if r.engine == "vllm":
            engine = VLLMRollout(
                self.policy,
                self.tokenizer,
                tensor_parallel_size=r.tensor_parallel_size,
                gpu_memory_utilization=r.gpu_memory_utilization,
                max_model_length=r.max_prompt_length + r.max_response_length,
                max_new_tokens=r.max_response_length,
                temperature=r.temperature,
            )
        self.trainer = PPOTrainer(
            self.policy, self.critic, ref, self.tokenizer, cfg, run._score, engine
        )
        state_file = src / TRAINER_STATE
        self._pending_state = (
            torch.load(state_file, weights_only=False) if state_file.is_file() else None
        )

    def _batch(self, rows: list[Problem], stage: Stage, step: int) -> list[Problem]:
        """The step's prompts: a fixed shuffle per (seed, stage, epoch), so resume is exact."""
        spec = self.run.spec
        spe = len(rows) // spec.batch.train
        epoch, k = divmod(step, spe)
        g = torch.Generator().manual_seed(hash((spec.seed, stage.index, epoch)) % (2**31))
        order = torch.randperm(len(rows), generator=g).tolist()
        batch = [rows[i] for i in order[k * spec.batch.train : (k + 1) * spec.batch.train]]
        return batch[self.run.rank :: self.run.world]

    def train_stage(self, stage, rows, start, n_steps, global_step, on_metrics) -> int:
        spec, run = self.run.spec, self.run
        if start == 0:
            self.trainer.new_stage(n_steps, spec.reset_optimizer)
            if self._pending_state and not spec.reset_optimizer:
                self.trainer.load_state_dict(self._pending_state, schedulers=False)
        else:
            self.trainer.new_stage(n_steps, False)
            self.trainer.load_state_dict(self._pending_state)
        self._pending_state = None
        spe = len(rows) // spec.batch.train
        bar = tqdm(
            range(start, n_steps),
            desc=f"{spec.name} {stage.name} (group {run.group_of(stage)})",
            unit="step",
            disable=not run.main,
            dynamic_ncols=True,
        )
        for step in bar:
            _seed_all(spec.seed, global_step, run.rank)
            metrics = self.trainer.step(self._batch(rows, stage, step))
            metrics = _all_reduce_mean(metrics, run.world)
            global_step += 1
            row = {
                "global_step": global_step,
                "epoch": step // spe,
                "step_in_stage": step + 1,
                **metrics,
            }
            on_metrics(row)
            bar.set_postfix(
                success=f"{row['success_rate']:.2f}", reward=f"{row['reward_mean']:.2f}"
            )
            if spec.save_steps and (step + 1) % spec.save_steps == 0 and step + 1 < n_steps:
                if run.main:
                    self._save_resume(stage, step + 1, global_step)
                run._barrier()
        return global_step

    def _save_resume(self, stage: Stage, step: int, global_step: int) -> None:
        with atomic_dir(self.run.ckpt_dir / RESUME_DIR / stage.name) as d:
            self.save(d)
            write_json(
                d / "state.json",
                {"stage": stage.name, "step_in_stage": step, "global_step": global_step},
            )

    def save(self, d: Path) -> None:
        self.policy.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        self.critic.save_pretrained(d / "critic")
        copy_tiny_marker(self.run.ckpt_dir / INITIAL_STAGE, d)
        torch.save(self.trainer.state_dict(), d / TRAINER_STATE)


def _all_reduce_mean(metrics: dict[str, float], world: int) -> dict[str, float]:
    if world <= 1 or not dist.is_initialized():
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: v / world for k, v in zip(keys, t.tolist(), strict=True)}


def grpo_dataset(rows: list[Problem]):
    """TRL's dataset for a stage: the prompt as raw text (a string, so TRL applies no
    chat template) and the columns the reward reads."""
    from datasets import Dataset

    return Dataset.from_list(
        [
            {"prompt": p.prompt, "target": p.target, "nums": p.nums, "allowed_ops": p.allowed_ops}
            for p in rows
        ]
    )


class GRPOAlgorithm:
    """TRL's GRPOTrainer, one per stage, over one model and one optimizer kept across stages."""

    def __init__(self, run: CurriculumRun, model_dir: Path, initial: Path):
        self.run = run
        spec = run.spec
        self.tokenizer = load_tokenizer(model_dir)
        self.policy = load_policy(model_dir, run.dtype).to(run.device)
        # With beta > 0 TRL reloads the reference from _name_or_path: the run's start.
        self.policy.config._name_or_path = str(initial)
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=spec.grpo.lr)
        state_file = model_dir / TRAINER_STATE
        if state_file.is_file() and not spec.reset_optimizer:
            self.optimizer.load_state_dict(torch.load(state_file, weights_only=False))

    def grpo_args(self, stage: Stage, n_steps: int):
        """TRL's config for one stage; the overhead benchmark runs a plain GRPOTrainer on it."""
        from trl import GRPOConfig

        spec, run = self.run.spec, self.run
        n = spec.rollout.responses_per_prompt
        per_worker = spec.batch.train // run.world * n
        work = run.ckpt_dir / RESUME_DIR / stage.name
        use_gpu = spec.resources.use_gpu
        return GRPOConfig(
            output_dir=str(work),
            per_device_train_batch_size=spec.batch.micro,
            gradient_accumulation_steps=per_worker // spec.batch.micro,
            num_generations=n,
            num_train_epochs=spec.epochs_per_group,
            max_steps=n_steps,
            learning_rate=spec.grpo.lr,
            lr_scheduler_type=spec.lr_scheduler,
            warmup_steps=spec.lr_warmup_steps,
            beta=spec.grpo.beta,
            epsilon=spec.grpo.epsilon,
            max_grad_norm=spec.grpo.max_grad_norm,
            max_completion_length=spec.rollout.max_response_length,
            temperature=spec.rollout.temperature,
            use_vllm=spec.rollout.engine == "vllm",
            vllm_mode="colocate",
            vllm_tensor_parallel_size=spec.rollout.tensor_parallel_size,
            vllm_gpu_memory_utilization=spec.rollout.gpu_memory_utilization,
            logging_steps=1,
            save_strategy="steps" if spec.save_steps else "no",
            save_steps=spec.save_steps or 500,
            save_only_model=False,
            report_to=[],
            use_cpu=not use_gpu,
            bf16=use_gpu and spec.model.dtype == "bfloat16",
            gradient_checkpointing=spec.model.gradient_checkpointing,
            fsdp="full_shard auto_wrap" if spec.resources.strategy == "fsdp" else "",
            seed=hash((spec.seed, stage.index)) % (2**31),
            disable_tqdm=not run.main,
            shuffle_dataset=True,
        )

    def train_stage(self, stage, rows, start, n_steps, global_step, on_metrics) -> int:
        from trl import GRPOTrainer

        from clab.training.grpo_callback import MetricsCallback

        spec, run = self.run.spec, self.run
        if spec.reset_optimizer:
            self.optimizer.state.clear()
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] = spec.grpo.lr
        work = run.ckpt_dir / RESUME_DIR / stage.name
        args = self.grpo_args(stage, n_steps)
        ds = grpo_dataset(rows)
        offset = global_step - start  # HF counts the stage's steps itself, from its checkpoint
        callback = MetricsCallback(offset, stage, on_metrics, run.main)
        trainer = GRPOTrainer(
            model=self.policy,
            reward_funcs=[run.reward],
            args=args,
            train_dataset=ds,
            processing_class=self.tokenizer,
            callbacks=[callback],
            optimizers=(self.optimizer, None),
        )
        ckpt = latest_hf_checkpoint(work)
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        if run.main and not callback.rows:
            raise ClabError(f"stage {stage.name}: GRPO logged no steps")
        return offset + trainer.state.global_step

    def save(self, d: Path) -> None:
        self.policy.save_pretrained(d)
        self.tokenizer.save_pretrained(d)
        copy_tiny_marker(self.run.ckpt_dir / INITIAL_STAGE, d)
        torch.save(self.optimizer.state_dict(), d / TRAINER_STATE)
