"""The replay-mixing trainer on the stage runner (kind ``replay-mixing``).

A sweep (:mod:`clab.runs.sweep`) is one run of the stage runner per branch and seed:
``phase-a`` trains task A from the initial LoRA adapter; each strategy's run
starts with phase A's ``initial`` and ``r0-g0`` stages (hard links: no
copy, no retraining) and its metrics so far, then trains stage ``r0-g1`` on
B plus the replayed A examples its strategy chose; ``joint`` trains its
first stage on A and B together and has nothing left for its second. Each
stage is TRL's SFTTrainer on a PEFT model over examples we tokenize
ourselves (:mod:`clab.data.sft.encoding`: the label mask the evaluator
uses too), padded per batch by TRL's collator. Both tasks' validation
losses are measured every ``training.eval_steps`` optimizer steps and go
to train.jsonl, W&B and ``metrics/<name>-<branch>[-s<seed>]/history.json``.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import TrainerCallback

from clab.data.sft import tasks as task_data
from clab.data.sft.encoding import encode_pair, format_prompt
from clab.data.sft.replay import cache_key, cached_losses, replay_count, select_replay
from clab.errors import ClabError
from clab.evaluation.scorers.answer_loss import answer_losses
from clab.models.loading import (
    check_model_source,
    holds_adapter,
    load_adapter_model,
    load_policy,
    load_tokenizer,
)
from clab.models.precision import compute_autocast
from clab.models.tiny import build_tiny_model
from clab.runs.protocol import StageContext, TaskRef
from clab.storage.atomic import write_json, write_parquet
from clab.storage.layout import COMPLETE_MARKER, INITIAL_STAGE, Stage
from clab.tracking.metrics_log import read_rows
from clab.training.hf_stage import StageCallback, stage_args
from clab.training.mixing_spec import JOINT, PHASE_A, MixingSpec, TaskSpec
from clab.training.steps import mixing_stage_steps

OPTIMIZER = "optimizer.pt"
LOSS_CACHE = "replay-losses.json"  # beside the same seed's phase-A checkpoint
SFT_KEYS = {
    "loss": "loss",
    "grad_norm": "grad_norm",
    "learning_rate": "lr",
    "mean_token_accuracy": "token_accuracy",
    "num_tokens": "num_tokens",
}


# -- data ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _load_task(task_json: str, seed: int) -> tuple[list, list]:
    """(train, validation) examples of a task: seeded subsets of the source's rows."""
    import random

    t = TaskSpec.model_validate_json(task_json)
    if t.format == "arithmetic":
        rows = task_data.arithmetic(t.train_size + t.val_size, seed)
        return rows[: t.train_size], rows[t.train_size :]
    if t.format == "context_qa":
        rows = task_data.context_qa(t.train_size + t.val_size, seed + 1)
        return rows[: t.train_size], rows[t.train_size :]
    parse = {"competition_math": task_data.competition_math, "hotpotqa": task_data.hotpotqa}[
        t.format
    ]
    where = t.path or t.hub_id
    train = parse(
        task_data.read_rows(t.hub_id, t.path, split=t.train_split, config=t.hub_config), where
    )
    if t.validation_path or (t.validation_split and not t.path):
        vwhere = t.validation_path or f"{t.hub_id}[{t.validation_split}]"
        val = parse(
            task_data.read_rows(
                t.hub_id,
                t.validation_path,
                split=t.validation_split or "validation",
                config=t.hub_config,
            ),
            vwhere,
        )
    else:
        val = []
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(val)
    if not val:  # held out from the train rows, disjoint by construction
        val, train = train[: t.val_size], train[t.val_size :]
    train_ids = {e.id for e in train}
    val = [e for e in val if e.id not in train_ids]
    if len(train) < t.train_size or len(val) < t.val_size:
        print(
            f"clab: task {t.name}: {len(train)} train / {len(val)} validation examples available "
            f"(asked for {t.train_size} / {t.val_size}); using what there is",
            flush=True,
        )
    if not train or not val:
        raise ClabError(f"task {t.name} ({where}): no examples left for training or validation")
    return train[: t.train_size], val[: t.val_size]


def load_tasks(spec: MixingSpec) -> dict[str, tuple[list, list]]:
    return {
        t.name: _load_task(t.model_dump_json(), spec.shared_seed)
        for t in (spec.task_a, spec.task_b)
    }


def check_inputs(spec: MixingSpec) -> None:
    """The model source and both tasks' data, before anything is written (read once per
    sweep: every branch after phase A reads what phase A wrote into its stage 0)."""
    if spec.model.name_or_path is not None:
        check_model_source(spec.model.name_or_path)
    if spec.resources.use_gpu and not torch.cuda.is_available():
        raise ClabError("resources.use_gpu: true, but no CUDA device is visible")
    phase_a = spec.branch_spec(PHASE_A).run_dirs()[0] / INITIAL_STAGE
    if not (phase_a / COMPLETE_MARKER).is_file():
        load_tasks(spec)


def make_trainer(spec: MixingSpec, rank: int, world: int) -> MixingTrainer:
    return MixingTrainer(spec)


class MixingTrainer:
    def __init__(self, spec: MixingSpec):
        self.spec = spec
        self.ckpt_dir, self.metrics_dir, _ = spec.run_dirs()
        self.phase_a_dir = spec.branch_spec(PHASE_A).run_dirs()[0]
        self.device = torch.device("cuda" if spec.resources.use_gpu else "cpu")
        self.task_specs = [spec.task_a, spec.task_b]
        self._data: dict[int, list[dict]] = {}
        self.final_losses: dict[str, float] | None = None  # measured at a stage's last step

    # -- where things are ----------------------------------------------------------------

    def task_file(self, task: TaskSpec, split: str) -> Path:
        """Written once into phase A's stage 0; every branch and the evaluator read it."""
        return self.phase_a_dir / INITIAL_STAGE / "tasks" / task.name / f"{split}.parquet"

    def tasks(self) -> list[TaskRef]:
        refs = [
            TaskRef(
                name=t.name,
                scorer="answer_loss",
                config={
                    "data": str(self.task_file(t, "validation")),
                    "max_length": self.spec.training.max_length,
                    "max_new_tokens": t.max_new_tokens,
                    "match": {"competition_math": "boxed", "hotpotqa": "normalized"}.get(
                        t.format, "exact"
                    ),
                },
            )
            for t in self.task_specs
        ]
        return refs[:1] if self.spec.branch == PHASE_A else refs

    # -- stage 0 ---------------------------------------------------------------------------

    def build_initial(self, out: Path, work: Path) -> dict:
        spec = self.spec
        data = load_tasks(spec)
        if spec.model.preset == "tiny":
            texts = [e.prompt + " " + e.answer for tr, va in data.values() for e in tr + va]
            m = spec.model
            build_tiny_model(
                out / "base",
                texts,
                vocab_size=m.vocab_size,
                hidden_size=m.hidden_size,
                num_layers=m.layers,
                num_heads=m.heads,
                max_positions=spec.training.max_length,
                seed=spec.shared_seed,
                architecture="llama",
                initializer_range=m.init_std,
            )
            base_path = str(self.ckpt_dir / INITIAL_STAGE / "base")  # where `out` will be
            base = load_policy(out / "base")
            tokenizer = load_tokenizer(out / "base")
        else:
            base_path = spec.model.name_or_path
            base = load_policy(base_path)
            tokenizer = load_tokenizer(base_path)
        for t in self.task_specs:
            train, val = data[t.name]
            for split, rows in (("train", train), ("validation", val)):
                table = pa.Table.from_pylist(
                    [
                        {
                            **e.to_json(),
                            "question": e.prompt,
                            "prompt": format_prompt(tokenizer, e.prompt),
                        }
                        for e in rows
                    ]
                )
                write_parquet(out / "tasks" / t.name / f"{split}.parquet", table)
        from peft import LoraConfig, get_peft_model

        lo = spec.lora
        torch.manual_seed(spec.shared_seed)  # LoRA's A matrices are random; B starts at zero
        model = get_peft_model(
            base,
            LoraConfig(
                r=lo.r,
                lora_alpha=lo.alpha,
                lora_dropout=lo.dropout,
                target_modules=lo.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
        model.save_pretrained(out)
        config = json.loads((out / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_path  # not the staging folder it was read from
        write_json(out / "adapter_config.json", config)
        tokenizer.save_pretrained(out)
        self.model, self.tokenizer = model.to(self.device), tokenizer
        start = {t.name: self._val_loss(i, out / "tasks") for i, t in enumerate(self.task_specs)}
        return {"base": base_path, "validation_at_start": start}

    # -- loading ---------------------------------------------------------------------------

    def load(self, model_dir: Path, initial: Path) -> None:
        import gc

        self.model = self.trainer = None  # stage 0's copy must not sit beside the new one
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.tokenizer = load_tokenizer(initial)
        self.model = load_adapter_model(
            model_dir, "float32", trainable=True, adapter_dropout=True
        ).to(self.device)  # the spec's lora.dropout while training (eval mode turns it off)
        if self.spec.model.gradient_checkpointing:
            self.model.enable_input_require_grads()  # LoRA under checkpointing needs input grads
        state = model_dir / OPTIMIZER
        self._optimizer_state = (
            torch.load(state, weights_only=False)
            if state.is_file() and not self.spec.reset_optimizer
            else None
        )
        self._data = {}

    def _rows(self, task: int, split: str, folder: Path | None = None) -> list[dict]:
        t = self.task_specs[task]
        path = (folder / t.name / f"{split}.parquet") if folder else self.task_file(t, split)
        return pq.read_table(path).to_pylist()

    # -- what each stage trains on ---------------------------------------------------------

    def stage_data(self, task: int) -> list[dict]:
        """The stage's training examples (cached: ``stage_steps`` and ``train_stage`` agree)."""
        if task in self._data:
            return self._data[task]
        spec = self.spec
        if spec.branch == JOINT:
            rows = self._rows(0, "train") + self._rows(1, "train") if task == 0 else []
        elif task == 0:
            rows = self._rows(0, "train")
        else:
            rows = self._rows(1, "train") + self.replay_rows()
        self._data[task] = rows
        return rows

    def replay_rows(self) -> list[dict]:
        """Task A's examples that this branch's strategy mixes into B (logged with why)."""
        spec = self.spec
        a, b = self._rows(0, "train"), self._rows(1, "train")
        k = replay_count(spec.mix.fraction, spec.mix.of, len(a), len(b))
        ids = [r["id"] for r in a]
        levels = {r["id"]: r.get("level") for r in a}
        losses = self.example_losses(a) if spec.branch.startswith("loss_") else None
        chosen = select_replay(spec.branch, ids, k, spec.mix.seed, levels=levels, losses=losses)
        unlevelled = sum(v is None for v in levels.values())
        by_id = {r["id"]: r for r in a}
        picked = [by_id[i] for i in chosen]
        info = {
            "strategy": spec.branch,
            "asked": k,
            "chosen": len(picked),
            "left_out_without_level": unlevelled if spec.branch.startswith("difficulty_") else 0,
            "levels": _count(r.get("level") for r in picked),
            "ids": chosen,
        }
        write_json(self.metrics_dir / "replay.json", info)
        print(
            f"clab: {spec.name}/{spec.branch}: replaying {len(picked)} of {len(a)} "
            f"{spec.task_a.name} examples (asked {k}); levels {info['levels']}"
            + (
                f"; {unlevelled} without a level left out" if info["left_out_without_level"] else ""
            ),
            flush=True,
        )
        return picked

    def example_losses(self, rows: list[dict]) -> dict[str, float]:
        """Per-example answer loss under the phase-A adapter, computed once per sweep and
        cached beside phase A's checkpoint with what it depends on."""
        phase_a = self.phase_a_dir / "r0-g0"
        key = cache_key(sorted(phase_a.glob("adapter_model*")), rows, self.spec.training.max_length)

        def compute() -> dict[str, float]:
            if not holds_adapter(self.model, phase_a):  # the runner loads it before B trains
                raise ClabError(
                    f"per-example losses of {self.spec.task_a.name}: the model loaded is not "
                    f"phase A's adapter ({phase_a}), yet the losses would be stored as its; "
                    "run the strategy's stage from its start (--restart)"
                )
            print(
                f"clab: per-example losses of {len(rows)} {self.spec.task_a.name} examples",
                flush=True,
            )
            per = self._losses(rows)
            return {r["id"]: s / max(n, 1) for r, (s, n) in zip(rows, per, strict=True)}

        losses, reused = cached_losses(self.phase_a_dir / LOSS_CACHE, key, compute)
        if reused:
            print(
                f"clab: per-example losses reused from {self.phase_a_dir / LOSS_CACHE}", flush=True
            )
        return losses

    def _losses(self, rows: list[dict]) -> list[tuple[float, int]]:
        was_training = self.model.training
        self.model.eval()
        try:
            dtype = self.spec.model.dtype if self.device.type == "cuda" else "float32"
            with compute_autocast(self.device, dtype):
                return answer_losses(
                    self.model, self.tokenizer, rows, self.spec.training.max_length,
                    self.spec.training.eval_batch,
                )  # fmt: skip
        finally:
            self.model.train(was_training)

    def stage_steps(self, task: int) -> int:
        spec, n = self.spec, len(self.stage_data(task))
        if n == 0:
            return 0  # joint's second stage: A and B were trained together in its first
        epochs = spec.joint.epochs if spec.branch == JOINT else self.task_specs[task].epochs
        return mixing_stage_steps(n, epochs, spec.training.batch_size, spec.training.micro_batch)

    def _stage_lr(self, task: int) -> float:
        return self.spec.joint.lr if self.spec.branch == JOINT else self.task_specs[task].lr

    # -- validation ------------------------------------------------------------------------

    def _val_loss(self, task: int, folder: Path | None = None) -> float:
        rows = self._rows(task, "validation", folder)
        per = self._losses(rows)
        return sum(s for s, _ in per) / max(sum(n for _, n in per), 1)

    def val_losses(self) -> dict[str, float]:
        return {f"{t.name}_loss": self._val_loss(i) for i, t in enumerate(self.task_specs)}

    def validate(self, stage: Stage) -> list[dict]:
        # the history measured both losses at the stage's last step, on these very weights
        final, self.final_losses = self.final_losses, None
        out = []
        for i, t in enumerate(self.task_specs):
            loss = final[f"{t.name}_loss"] if final else self._val_loss(i)
            n = len(self._rows(i, "validation"))
            out.append({"task": t.name, "primary": "answer_loss", "answer_loss": loss, "n": n})
        return out

    # -- training --------------------------------------------------------------------------

    def train_stage(self, ctx: StageContext) -> None:
        if ctx.n_steps == 0:
            ctx.say(f"stage {ctx.stage.name}: nothing to train (joint trained A and B together)")
            return
        from transformers import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        spec, tr = self.spec, self.spec.training
        rows = self.stage_data(ctx.stage.task)
        dataset = self.encode(rows)
        history = History(self, ctx)
        callback = StageCallback(SFT_KEYS, extra=history.pop_row)
        args = SFTConfig(
            **stage_args(spec, ctx, ctx.n_steps),
            per_device_train_batch_size=tr.micro_batch,
            gradient_accumulation_steps=tr.batch_size // tr.micro_batch,
            learning_rate=self._stage_lr(ctx.stage.task),
            lr_scheduler_type=tr.lr_scheduler,
            warmup_steps=tr.warmup_steps,
            weight_decay=tr.weight_decay,
            max_grad_norm=tr.max_grad_norm,
            gradient_checkpointing=spec.model.gradient_checkpointing,
            max_length=None,  # truncated by encode_pair, as the scorer truncates
            completion_only_loss=True,
            packing=False,
            dataloader_drop_last=False,
        )
        trainer = SFTTrainer(
            model=self.model,
            args=args,
            train_dataset=dataset,
            processing_class=self.tokenizer,
            callbacks=[callback, history],  # step time is taken before the evaluation
        )
        trainer.remove_callback(PrinterCallback)
        trainer.create_optimizer()
        if self._optimizer_state is not None and ctx.start_step == 0:
            trainer.optimizer.load_state_dict(self._optimizer_state)
            for g in trainer.optimizer.param_groups:
                g["lr"] = g["initial_lr"] = args.learning_rate
        self._optimizer_state = None
        self.trainer = trainer
        callback.start(ctx)
        trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
        if not callback.rows:
            raise ClabError(f"stage {ctx.stage.name}: SFT logged no steps")

    def encode(self, rows: list[dict]):
        from datasets import Dataset

        max_length = self.spec.training.max_length
        ids, labels = [], []
        for r in rows:
            seq, n_prompt = encode_pair(self.tokenizer, r["prompt"], r["answer"], max_length)
            ids.append(seq)
            labels.append([-100] * n_prompt + seq[n_prompt:])
        return Dataset.from_dict({"input_ids": ids, "labels": labels})

    def save(self, out: Path) -> None:
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.optimizer is not None:
            torch.save(trainer.optimizer.state_dict(), out / OPTIMIZER)

    def trainable_module(self) -> torch.nn.Module:
        return self.model


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


class History(TrainerCallback):
    """Both validation losses every ``eval_steps`` optimizer steps, into the step's log row
    and ``metrics/<name>-<branch>[-s<seed>]/history.json`` in the public experiment's schema.

    The history is rebuilt from train.jsonl (which the runner cuts back to the resume
    point), so a resumed run's curve has no gap and no repeat."""

    def __init__(self, trainer: MixingTrainer, ctx: StageContext):
        self.t, self.ctx = trainer, ctx
        self.every = trainer.spec.training.eval_steps
        self.pending: dict = {}
        self.path = trainer.metrics_dir / "history.json"

    def measure(self, step_in_stage: int) -> dict:
        t0 = time.perf_counter()
        losses = self.t.val_losses()
        if step_in_stage == self.ctx.n_steps:
            self.t.final_losses = losses  # validate() reads them instead of measuring again
        row = {f"val_{k}": v for k, v in losses.items()}
        row["eval_time"] = time.perf_counter() - t0
        self.ctx.flush_logs()  # the runner holds the last step's row: the history reads it
        self.write(self.ctx.global_step + step_in_stage, losses)
        return row

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if (self.every and step % self.every == 0) or step == state.max_steps:
            self.pending = self.measure(step)

    def pop_row(self, logs: dict) -> dict:
        row, self.pending = self.pending, {}
        return row

    def write(self, global_step: int, losses: dict[str, float]) -> None:
        spec = self.t.spec
        steps, values = read_history(self.t.metrics_dir, self.t.ckpt_dir, global_step)
        steps.append(global_step)
        for k, v in losses.items():
            values.setdefault(k, []).append(v)
        write_json(
            self.path,
            {
                "name": spec.name,
                "steps": steps,
                **values,
                "selection_method": spec.branch,
                "mix_percentage": 0
                if spec.branch in (PHASE_A, "none", JOINT)  # joint trains A and B together
                else round(100 * spec.mix.fraction, 3),
                "mix_of": spec.mix.of,
                "phase_b_start": _phase_b_start(self.t.ckpt_dir),
            },
        )


def _phase_b_start(ckpt_dir: Path) -> int | None:
    marker = ckpt_dir / "r0-g0" / COMPLETE_MARKER
    return json.loads(marker.read_text())["global_step"] if marker.is_file() else None


def read_history(metrics_dir: Path, ckpt_dir: Path, before: int) -> tuple[list[int], dict]:
    """Steps and losses measured before global step ``before``: the start (stage 0's
    marker) and every train.jsonl row that carries validation losses."""
    steps: list[int] = []
    values: dict[str, list[float]] = {}
    marker = ckpt_dir / INITIAL_STAGE / COMPLETE_MARKER
    points = []
    if marker.is_file():
        start = json.loads(marker.read_text()).get("validation_at_start", {})
        points.append((0, {f"{k}_loss": v for k, v in start.items()}))
    for r in read_rows(metrics_dir / "train.jsonl"):
        found = {k[4:]: v for k, v in r.items() if k.startswith("val_") and k.endswith("_loss")}
        if found:
            points.append((r["global_step"], found))
    for step, losses in points:
        if step >= before:
            continue
        steps.append(step)
        for k, v in losses.items():
            values.setdefault(k, []).append(v)
    return steps, values
