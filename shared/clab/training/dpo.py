"""The continual DPO trainer on the stage runner (kind ``continual-dpo``, service ``dpo-trainer``).

Stages are preference tasks in order. Each stage builds one TRL
``DPOTrainer`` (TRL tokenizes its data set at construction, so one per
task) around the same policy object, carried from task to task with its
optimizer state (unless ``reset_optimizer``), and trains one epoch of the
task's pairs with TRL's sigmoid DPO loss, unchanged; online EWC, when on,
adds its penalty to that loss (``training/ewc.py``). Trainable weights are
fp32, computed under bf16 autocast on a GPU (HF's ``bf16`` flag, as the GRPO
stage does); on a CPU ``use_cpu=True, bf16=False``.

**The reference model** is a spec choice. ``previous`` (the default) is the
policy as it was when the task began: it is what DPO's derivation assumes
(the KL-regularised optimum pi* ~ pi_ref exp(r / beta) is relative to the
model being fine-tuned, so each task starts at loss log 2 with implicit
rewards 0), and it is what the public AIF-Gen runs did (TRL's default for a
PEFT model with ``ref_model=None``), so results compare with theirs.
``initial`` anchors every task to the model before any task: the KL term then
also pulls towards the start, away from what earlier tasks taught.

With LoRA, TRL copies the adapter into a frozen ``ref`` adapter when a
trainer is built; a second trainer on the same model fails while it exists,
so it is deleted before each new trainer, and its weights are then set from
a file, never left to what the adapter holds at construction: the initial
adapter (``initial/lora_init.safetensors``, zero B: exactly the initial
model) or the previous stage's. So a stage resumed after a crash, whose
adapter is mid-stage, still gets the reference it began with. Without LoRA
the reference is loaded from the same folders (``initial/`` or the previous
stage), in the compute dtype.

Stage 0 (``initial/``) holds the model, the tasks' pairs as trained and
scored (``preference/<task>/{train,test}.jsonl``), and, with LoRA, the
adapter's initial weights. The reward models are trained (or reused) while
stage 0 is built (``training/reward_models.py``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from clab.data.preference.loading import PAIRS_DIR, load_tasks
from clab.data.preference.tasks import (
    PreferenceTask,
    read_split,
    write_split,
)
from clab.errors import ClabError
from clab.evaluation.preference import pair_logps, preference_accuracy
from clab.evaluation.scorers.answer_loss import answer_batch
from clab.generation.rollout import position_ids
from clab.models.loading import (
    TINY_MARKER,
    check_model_folder,
    check_model_source,
    is_adapter,
    load_adapter_model,
    load_policy,
    load_tokenizer,
)
from clab.models.precision import compute_autocast
from clab.models.tiny import build_tiny_model
from clab.runs.protocol import StageContext, TaskRef
from clab.runs.seeding import derive_seed
from clab.storage.atomic import write_json
from clab.storage.layout import INITIAL_STAGE, Stage, stage_sequence
from clab.training.dpo_spec import ContinualDPOSpec
from clab.training.ewc import OnlineEWC, empirical_fisher
from clab.training.hf_stage import StageCallback, carry_into_stage, stage_args
from clab.training.reward_models import (
    REWARD_DIR,
    chance_warning,
    ensure_reward_model,
    files_hash,
)
from clab.training.steps import dpo_stage_steps

TRAINER_STATE = "trainer_state.pt"
LORA_INIT = "lora_init.safetensors"
VAL_PAIRS = 64  # test pairs per task in the trainer's own validation

# TRL's DPO log keys -> train.jsonl (TRL's own names for its DPO metrics)
DPO_KEYS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "rewards/chosen": "rewards/chosen",
    "rewards/rejected": "rewards/rejected",
    "rewards/accuracies": "rewards/accuracies",
    "rewards/margins": "rewards/margins",
    "logps/chosen": "logps/chosen",
    "logps/rejected": "logps/rejected",
    "ewc_penalty": "ewc_penalty",
    "num_tokens": "num_tokens",
}


def check_inputs(spec: ContinualDPOSpec) -> None:
    """Everything that can be checked before a file is written."""
    load_tasks(spec)
    if spec.model.name_or_path is not None:
        check_model_source(spec.model.name_or_path)
        if Path(spec.model.name_or_path).expanduser().is_dir():
            check_model_folder(Path(spec.model.name_or_path).expanduser())
    if spec.resources.use_gpu and not torch.cuda.is_available():
        raise ClabError("resources.use_gpu: true, but no CUDA device is visible")


def make_trainer(spec: ContinualDPOSpec, rank: int, world: int) -> DPOStageTrainer:
    return DPOStageTrainer(spec)


def lora_config(spec: ContinualDPOSpec) -> Any:
    """PEFT's LoraConfig for the spec (typed Any: PEFT is imported only when needed)."""
    from peft import LoraConfig

    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.alpha,
        lora_dropout=0.0,  # no dropout anywhere: two scorings of one pair must agree
        target_modules=spec.lora.target_modules,
        task_type="CAUSAL_LM",
    )


def warmup_on_both_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: list[PreferenceTask],
    spec: ContinualDPOSpec,
    device: torch.device,
    say: Any,
) -> None:
    """Both responses of every train pair, answer tokens only in the loss: a random tiny
    model learns to write the tasks' responses in every style, with no preference
    between them, so sampled completions mean something from stage 0 on. A plain loop
    without checkpoints, unlike Countdown's resumable TRL warm-up (``warmup.py``): a
    kill rebuilds stage 0 from the start."""

    w = spec.warmup
    examples = [
        {"prompt": r["prompt"], "answer": r[k]}
        for t in tasks
        for r in t.train
        for k in ("chosen", "rejected")
    ]
    opt = torch.optim.AdamW(model.parameters(), lr=w.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(spec.shared_seed)  # stage 0: the same for every seed
    model.train()
    losses = []
    for _ in range(w.steps):
        idx = torch.randint(len(examples), (w.batch_size,), generator=gen).tolist()
        ids, mask, lab = (
            x.to(device)
            for x in answer_batch(tokenizer, [examples[i] for i in idx], spec.dpo.max_length)
        )
        loss = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids(mask),
            labels=lab,
            use_cache=False,  # a training pass: a KV cache would be built and dropped
        ).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    say(f"warm-up: {w.steps} steps, answer loss {losses[0]:.3f} -> {losses[-1]:.3f}")


class DPOStageTrainer:
    """TRL's DPOTrainer, one per task, around one carried policy."""

    def __init__(self, spec: ContinualDPOSpec):
        self.spec = spec
        self.ckpt_dir, self.metrics_dir, self.logs_dir = spec.run_dirs()
        self.device = torch.device("cuda" if spec.resources.use_gpu else "cpu")
        use_gpu = spec.resources.use_gpu
        self.compute_dtype = spec.model.dtype if use_gpu and spec.model.dtype != "float32" else None
        self.lora = spec.lora.enabled
        self._tasks = load_tasks(spec)
        self.names = [t.name for t in self._tasks]
        self.stages = stage_sequence(spec.rounds, len(self.names))
        self.policy = None
        self.ewc: OnlineEWC | None = None
        self._state: dict | None = None
        self.callback = None

    # -- files ------------------------------------------------------------------------

    @property
    def initial(self) -> Path:
        return self.ckpt_dir / INITIAL_STAGE

    def pairs(self, task: int, split: str) -> list[dict[str, str]]:
        """The pairs as stage 0 recorded them: what every stage trains and is scored on."""
        return read_split(self.initial / PAIRS_DIR / self.names[task] / f"{split}.jsonl")

    def say(self, message: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.spec.name} {message}"
        print(line, flush=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # -- what the runner asks -----------------------------------------------------------

    def tasks(self) -> list[TaskRef]:
        s = self.spec
        return [
            TaskRef(
                name=name,
                scorer="preference",
                config={
                    "data": str(self.initial / PAIRS_DIR / name / "test.jsonl"),
                    "reward_model": str(self.ckpt_dir / REWARD_DIR / name),
                    "baseline": str(self.initial),
                    "temperature": s.score.temperature,
                    "max_new_tokens": s.score.max_new_tokens,
                    "max_prompt_length": s.score.max_prompt_length,
                    "max_length": s.dpo.max_length,
                    # the reward model scores what it was trained on: its own length cap
                    "reward_max_length": s.reward.max_length,
                    "beta": s.dpo.beta,
                },
            )
            for name in self.names
        ]

    def build_initial(self, out: Path, work: Path) -> dict:
        spec = self.spec
        for t in self._tasks:
            write_split(out / PAIRS_DIR / t.name / "train.jsonl", t.train)
            write_split(out / PAIRS_DIR / t.name / "test.jsonl", t.test)
            write_json(out / PAIRS_DIR / t.name / "task.json", {"name": t.name, **t.info})
        if spec.model.preset == "tiny":
            texts = [
                r["prompt"] + r[k]
                for t in self._tasks
                for r in t.train
                for k in ("chosen", "rejected")
            ]
            source = build_tiny_model(
                work / "tiny",
                texts,
                vocab_size=spec.model.vocab_size,
                hidden_size=spec.model.hidden_size,
                num_layers=spec.model.layers,
                num_heads=spec.model.heads,
                max_positions=max(256, spec.dpo.max_length),
                seed=spec.shared_seed,
            )
        else:
            source = Path(spec.model.name_or_path)
        model = load_policy(source, "float32").to(self.device)
        tok = load_tokenizer(source)
        if spec.warmup.steps:
            with compute_autocast(self.device, self.compute_dtype):
                warmup_on_both_responses(model, tok, self._tasks, spec, self.device, self.say)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        if (source / TINY_MARKER).is_file():
            shutil.copy(source / TINY_MARKER, out / TINY_MARKER)
        if self.lora:  # the adapter's start, seeded by the runner: stage 1 loads it
            from peft import get_peft_model, get_peft_model_state_dict
            from safetensors.torch import save_file

            with torch.random.fork_rng(devices=[]):
                # from the seed alone: two runs from one initial model (plain and EWC)
                # start from the same adapter, whatever built the model before
                torch.manual_seed(spec.shared_seed)
                pm = get_peft_model(model, lora_config(spec))
            state = {k: v.contiguous().cpu() for k, v in get_peft_model_state_dict(pm).items()}
            save_file(state, str(out / LORA_INIT))
            pm.unload()
        del model
        rm = self.reward_models(out)
        return {
            "source": spec.model.name_or_path or "preset:tiny",
            "warmup_steps": spec.warmup.steps,
            "lora": self.lora,
            "reward_models": {k: v["accuracy"] for k, v in rm.items()},
        }

    def reward_models(self, base: Path) -> dict[str, dict]:
        """Every task's reward model, trained or reused; accuracies to the log and to
        metrics/<run>/reward_models.json (the page's warning for a chance-level one)."""
        spec = self.spec
        base_hash = files_hash(base)
        settings = spec.reward.model_dump(mode="json")
        bf16 = spec.resources.use_gpu and spec.model.dtype == "bfloat16"
        out = {}
        for i, t in enumerate(self._tasks):
            info = ensure_reward_model(
                t,
                base,
                base_hash,
                self.ckpt_dir,
                settings,
                seed=spec.shared_seed + i,  # every seed is scored by the same models
                use_gpu=spec.resources.use_gpu,
                bf16=bf16,
            )
            lo, hi = info["interval"]
            how = f"reused from {info['reused_from']}" if info.get("reused_from") else "trained"
            self.say(
                f"reward model {t.name}: {how}; accuracy on {info['n_test']} test pairs "
                f"{info['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
            )
            warning = chance_warning(t.name, (lo, hi))
            if warning:
                self.say(warning)
            out[t.name] = {
                k: info.get(k)
                for k in ("accuracy", "n_test", "interval", "chance_level", "reused_from")
            }
        write_json(self.metrics_dir / "reward_models.json", {"run": spec.name, "tasks": out})
        return out

    def load(self, model_dir: Path, initial: Path) -> None:
        self.tokenizer = load_tokenizer(initial)  # HF checkpoints lack the tiny marker
        if self.lora:
            if is_adapter(model_dir):  # a stage or an HF checkpoint of this run
                self.policy = load_adapter_model(model_dir, "float32", trainable=True)
            else:  # stage 0: the initial model and the adapter's saved start
                from peft import get_peft_model, set_peft_model_state_dict
                from safetensors.torch import load_file

                self.policy = get_peft_model(
                    load_policy(model_dir, "float32"), lora_config(self.spec)
                )
                set_peft_model_state_dict(self.policy, load_file(str(initial / LORA_INIT)))
            # checkpoints name their base relative to the volume: every service sees it there
            self.policy.peft_config["default"].base_model_name_or_path = str(initial)
        else:
            self.policy = load_policy(model_dir, "float32")
        self.policy.to(self.device)
        state = model_dir / TRAINER_STATE
        self._state = torch.load(state, weights_only=False) if state.is_file() else None
        if self.spec.ewc.lambda_ > 0:
            self.ewc = OnlineEWC(self.policy, self.spec.ewc.lambda_, self.spec.ewc.gamma)

    def stage_steps(self, task: int) -> int:
        d = self.spec.dpo
        return dpo_stage_steps(
            len(self.pairs(task, "train")),
            d.batch_size,
            d.micro_batch_size,
            d.epochs,
            d.max_steps_per_stage,
        )

    def stage_dir(self, index: int) -> Path:
        """A stage's folder by index (0: initial)."""
        return self.initial if index == 0 else self.ckpt_dir / self.stages[index - 1].name

    def reference_dir(self, stage: Stage) -> Path:
        """Where this stage's reference weights live: the start, or the previous stage."""
        if self.spec.dpo.reference == "initial":
            return self.initial
        return self.stage_dir(stage.index - 1)

    def dpo_args(self, ctx: StageContext) -> dict[str, Any]:
        """DPOConfig keys of one stage (the benchmark builds a plain DPOTrainer from them)."""

        s, d = self.spec, self.spec.dpo
        return dict(
            stage_args(s, ctx, ctx.n_steps),
            per_device_train_batch_size=d.micro_batch_size,
            gradient_accumulation_steps=d.batch_size // d.micro_batch_size,
            learning_rate=d.lr,
            weight_decay=d.weight_decay,
            lr_scheduler_type=d.lr_scheduler,
            max_grad_norm=d.max_grad_norm,
            beta=d.beta,
            loss_type=[d.loss_type],
            max_length=d.max_length,
            gradient_checkpointing=s.model.gradient_checkpointing,
            precompute_ref_log_probs=False,
            disable_dropout=True,
        )

    def _set_lora_reference(self, ref: Path) -> None:
        """The ``ref`` adapter TRL just copied from the current one gets the reference's
        weights from disk: the adapter start (initial) or a stage's adapter."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        src = ref / (LORA_INIT if ref == self.initial else "adapter_model.safetensors")
        set_peft_model_state_dict(self.policy, load_file(str(src)), adapter_name="ref")

    def train_stage(self, ctx: StageContext) -> None:
        import datasets
        from transformers import PrinterCallback
        from trl import DPOConfig

        datasets.disable_progress_bars()
        spec = self.spec
        name = self.names[ctx.stage.task]
        args = self.dpo_args(ctx)
        ref = self.reference_dir(ctx.stage)
        ref_model = None
        if self.lora:
            if "ref" in self.policy.peft_config:  # the previous task's trainer left it
                self.policy.delete_adapter("ref")
        else:
            ref_model = load_policy(ref, spec.model.dtype if self.compute_dtype else "float32")
            ref_model.to(self.device).eval()
        if self.ewc is not None:  # the Fisher of every task before this stage
            self.ewc.load(self.stage_dir(ctx.stage.index - 1))
        self.callback = StageCallback(DPO_KEYS, extra=lambda logs: {"task_name": name})
        trainer = EWCDPOTrainer(
            model=self.policy,
            ref_model=ref_model,
            args=DPOConfig(**args),
            train_dataset=datasets.Dataset.from_list(self.pairs(ctx.stage.task, "train")),
            processing_class=self.tokenizer,
            callbacks=[self.callback],
            ewc=self.ewc,
        )
        trainer.remove_callback(PrinterCallback)  # rows go to our logs, not stdout
        if self.lora:
            self._set_lora_reference(ref)
        carry_into_stage(
            trainer,
            args,
            trainer.train_dataset,
            optimizer_state=self._state,
            reset_optimizer=spec.reset_optimizer and ctx.start_step == 0,
        )
        self.callback.start(ctx)
        ctx.say(f"stage {ctx.stage.name}: reference {ref}")
        trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
        if not self.callback.rows:
            raise ClabError(f"stage {ctx.stage.name}: DPO logged no steps")
        self._state = trainer.optimizer.state_dict()
        if self.ewc is not None:
            fisher = dpo_fisher(trainer, spec.ewc.fisher_samples, (spec.seed, ctx.stage.index))
            self.ewc.consolidate(ctx.stage.task, fisher)
        self.trainer = trainer

    def validate(self, stage: Stage) -> list[dict]:
        """Cheap, reference-free: how often the policy itself gives the chosen response
        the higher log-probability, on up to 64 test pairs per task. (The evaluator's
        scores are the measure; this is a progress check in val.jsonl.)"""
        model = self.policy.eval()
        out = []
        for i, name in enumerate(self.names):
            rows = self.pairs(i, "test")[:VAL_PAIRS]
            with compute_autocast(self.device, self.compute_dtype):
                c, r = pair_logps(model, self.tokenizer, rows, self.spec.dpo.max_length, 16)
            out.append(
                {
                    "task": name,
                    "primary": "logp_accuracy",
                    "logp_accuracy": preference_accuracy(c, r),
                    "logp_margin": sum(a - b for a, b in zip(c, r, strict=True)) / len(rows),
                    "n": len(rows),
                }
            )
        model.train()
        return out

    def save(self, out: Path) -> None:
        if self.lora:
            self.policy.save_pretrained(out, selected_adapters=["default"])
        else:
            self.policy.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        if (self.initial / TINY_MARKER).is_file():
            shutil.copy(self.initial / TINY_MARKER, out / TINY_MARKER)
        if self._state is not None:
            torch.save(self._state, out / TRAINER_STATE)
        if self.ewc is not None:
            self.ewc.save(out)
        (out / "reference.json").write_text(
            json.dumps({"reference": self.spec.dpo.reference}) + "\n"
        )

    def trainable_module(self) -> torch.nn.Module:
        return self.policy


def _dpo_trainer_class() -> type:
    from trl import DPOTrainer

    class _EWCDPOTrainer(DPOTrainer):
        """TRL's DPOTrainer, its loss unchanged, plus the online-EWC penalty."""

        def __init__(self, *args, ewc: OnlineEWC | None = None, **kwargs):
            self.ewc = ewc
            super().__init__(*args, **kwargs)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.ewc is None or not self.ewc.active:
                return out
            penalty = self.ewc.penalty()
            if model.training:
                self._metrics["train"]["ewc_penalty"].append(penalty.item())
            if return_outputs:
                return out[0] + penalty, out[1]
            return out + penalty

    return _EWCDPOTrainer


def EWCDPOTrainer(*args: Any, **kwargs: Any) -> Any:
    return _dpo_trainer_class()(*args, **kwargs)


def dpo_fisher(trainer: Any, n: int, seed: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The empirical Fisher of the stage's DPO loss at its final weights: squared gradients
    of TRL's own loss (its reference, its tokenization), one train pair at a time."""
    from trl import DPOTrainer

    model = trainer.model
    params = [(n_, p) for n_, p in model.named_parameters() if p.requires_grad]
    data = trainer.train_dataset
    g = torch.Generator().manual_seed(derive_seed(*seed))
    idx = torch.randperm(len(data), generator=g)[: min(n, len(data))].tolist()
    device = trainer.accelerator.device

    def loss_of(i: int) -> torch.Tensor:
        batch = trainer.data_collator([data[i]])
        batch = {k: v.to(device) for k, v in batch.items()}
        with trainer.accelerator.autocast():
            return DPOTrainer.compute_loss(trainer, model, batch)

    was_training = model.training
    model.train()
    fisher = empirical_fisher(params, idx, loss_of)
    model.train(was_training)
    trainer._metrics["train"].clear()  # the Fisher's passes are no training step
    model.zero_grad(set_to_none=True)
    return fisher
