"""The stage runner: everything a continual-learning run does between stages.

Read top to bottom: :func:`run_spec` checks the inputs, takes the run's lock,
compares the spec with the one the run started with, cleans what a dead run
left, and runs :class:`StageRunner` here or on Ray workers. The runner builds
stage 0, then for each stage still to do asks the trainer to train it,
validates, checks that the workers agree, and saves the checkpoint whose
``COMPLETE`` marker is written last. A rerun of the same command skips
complete stages and resumes a stage from its newest intermediate checkpoint;
the metrics logs are cut back to that point, so no step is logged twice or
lost. No algorithm lives here: trainers (``clab.training``) plug in through
:class:`~clab.runs.protocol.StageTrainer`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers.utils import logging as hf_logging

from clab.distributed.fsdp import local_shard
from clab.errors import ClabError
from clab.metrics.training import WeightTracker
from clab.models.loading import check_weights
from clab.runs.fingerprint import changed_fields, field_default, fingerprint
from clab.runs.lock import RunLock
from clab.runs.protocol import StageContext, StageTrainer
from clab.runs.seeding import seed_everything

if TYPE_CHECKING:  # the spec calls the runner; the runner only reads the spec
    from clab.runs.spec import RunSpec
from clab.distributed.launch import run_workers
from clab.specs import spec_class
from clab.storage.atomic import atomic_dir, write_json
from clab.storage.layout import (
    COMPLETE_MARKER,
    INITIAL_STAGE,
    RUN_INFO,
    Stage,
    complete_stages,
    mark_complete,
    move_aside,
    stage_sequence,
)
from clab.tracking.machine import machine_facts
from clab.tracking.metrics_log import MetricsLog
from clab.tracking.wandb_run import WandbRun

RESUME_DIR = "_resume"  # checkpoints/<run>/_resume/<stage>/checkpoint-<step>/
INITIAL_WORK = "_initial"  # checkpoints/<run>/_initial/: a resumable warm-up
TIMING_KEYS = ("step_time", "tokens_per_s", "generation_time", "time")


def trainer_module(spec: RunSpec) -> Any:
    """The module named by the spec: ``check_inputs(spec)`` and ``make_trainer(...)``."""
    return importlib.import_module(spec.TRAINER)


def latest_checkpoint(work: Path) -> Path | None:
    """The newest ``checkpoint-N`` whose marker says it is whole."""
    done = [c for c in work.glob("checkpoint-*") if (c / COMPLETE_MARKER).is_file()]
    return max(done, key=lambda c: int(c.name.split("-")[1]), default=None)


def checkpoint_step(ckpt: Path) -> int:
    """The clab step (within its stage) a resume checkpoint was taken at: its marker's
    ``step``, which differs from the folder's number where HF names it by optimizer
    step (GRPO's several a generation); the number for a marker without one."""
    marker = ckpt / COMPLETE_MARKER
    if marker.is_file():
        step = json.loads(marker.read_text()).get("step")
        if isinstance(step, int):
            return step
    return int(ckpt.name.split("-")[1])


# -- the entry point ---------------------------------------------------------------------


def run_spec(spec: RunSpec, restart: bool = False) -> None:
    """``clab run`` for every trainer kind: checks, lock, fingerprint, then the stages."""
    trainer_module(spec).check_inputs(spec)  # before anything is written
    ckpt_dir, _, logs_dir = spec.run_dirs()
    lock = spec.lock_path()
    with RunLock(lock.parent, "trainer", name=lock.name):
        if restart:
            move_run_aside(spec)
        check_fingerprint(spec)
        _clean_leftovers(ckpt_dir)
        if spec.resources.num_workers > 1:
            run_workers(
                "clab.runs.runner:worker_main",
                {"kind": spec.kind, "spec": spec.model_dump(mode="json"), "cwd": os.getcwd()},
                num_workers=spec.resources.num_workers,
                use_gpu=spec.resources.use_gpu,
                ray_address=spec.resources.ray_address,
                storage=(logs_dir / "ray").resolve(),
                name=spec.name,
            )
        else:
            StageRunner(spec).run()


def worker_main(config: dict, rank: int, world: int) -> None:
    """One data-parallel worker (started by ``clab.distributed.launch``)."""

    os.chdir(config["cwd"])
    spec = spec_class(config["kind"]).model_validate(config["spec"])
    StageRunner(spec, rank=rank, world=world).run()


def spec_fingerprint(spec: RunSpec) -> dict[str, Any]:
    return fingerprint(spec.model_dump(mode="json"), spec.SAFE_CHANGES)


def check_fingerprint(spec: RunSpec) -> None:
    info_path = spec.run_dirs()[0] / RUN_INFO
    if not info_path.is_file():
        return
    try:
        info = json.loads(info_path.read_text())
        old = info.get("fingerprint")
    except (json.JSONDecodeError, AttributeError):
        raise ClabError(f"{info_path}: not valid JSON; move the run aside with --restart") from None
    if old is None:
        raise ClabError(
            f"{info_path}: written by an older clab without a fingerprint; "
            "rerun with --restart to move the old run aside and start again"
        )
    diff = changed_fields(old, spec_fingerprint(spec), lambda key: field_default(type(spec), key))
    if diff:
        raise ClabError(
            f"run {spec.name!r} was started with other settings ({'; '.join(diff)}): "
            "continuing would mix two experiments in one run. Use the old settings, "
            "another name, or --restart (moves the old run aside, deletes nothing)"
        )
    recorded = info.get("inputs")  # absent in runs started before it was recorded
    recorded = recorded if isinstance(recorded, dict) else {}
    for key, digest in spec.input_digests().items():
        if recorded.get(key) not in (None, digest):
            raise ClabError(
                f"run {spec.name!r}: the data set at {key} ({getattr_dotted(spec, key)}) is "
                "not the one its earlier stages trained on (its files changed since the run "
                "started: regenerated with another seed or other settings?); continuing would "
                "train the later stages on other problems. Regenerate it as it was, or use "
                "another name or --restart (moves the old run aside, deletes nothing)"
            )


def getattr_dotted(obj: object, key: str) -> object:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def move_run_aside(spec: RunSpec) -> None:
    """--restart: every folder of the run gets one dated name beside it; nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for d in spec.run_dirs():
        if d.exists():
            move_aside(d, stamp)


def _clean_leftovers(ckpt_dir: Path) -> None:
    """What a dead run left: staging folders of unfinished atomic writes, and the
    intermediate checkpoints of stages that did complete. We hold the run's lock,
    so nobody else is writing here."""
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob(".*.partial"):
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".*.old"):  # a swap killed between its two renames
        for inner in p.iterdir():
            if not (ckpt_dir / inner.name).exists():
                os.replace(inner, ckpt_dir / inner.name)  # the old folder is all there is
        shutil.rmtree(p, ignore_errors=True)
    resume = ckpt_dir / RESUME_DIR
    for stage, _ in complete_stages(ckpt_dir):
        shutil.rmtree(resume / stage.name, ignore_errors=True)
    with contextlib.suppress(OSError):
        resume.rmdir()


# -- the stages --------------------------------------------------------------------------


class StageRunner:
    def __init__(self, spec: RunSpec, rank: int = 0, world: int = 1):
        self.spec = spec
        self.rank, self.world = rank, world
        self.main = rank == 0
        self.ckpt_dir, self.metrics_dir, self.logs_dir = spec.run_dirs()
        hf_logging.disable_progress_bar()  # one bar per stage is ours; not one per file saved
        seed_everything(spec.seed, -1, rank)
        self.trainer: StageTrainer = trainer_module(spec).make_trainer(spec, rank, world)
        self.tasks = self.trainer.tasks()
        self.stages = stage_sequence(spec.rounds, len(self.tasks))
        gpu = spec.resources.use_gpu and torch.cuda.is_available()
        self.machine = machine_facts(torch.device("cuda") if gpu else "cpu", world)

    def barrier(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.barrier()

    def say(self, message: str) -> None:
        """A line for the console and for logs/<run>/train.log (rank 0 only)."""
        if not self.main:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.spec.name} {message}"
        tqdm.write(line)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "train.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    # -- stage 0 ---------------------------------------------------------------------

    def prepare_initial(self) -> Path:
        initial = self.ckpt_dir / INITIAL_STAGE
        if self.main and not (initial / COMPLETE_MARKER).is_file():
            seed_everything(self.spec.initial_seed, 0)  # the same for every seed, by default
            work = self.ckpt_dir / INITIAL_WORK
            with atomic_dir(initial) as d:
                facts = self.trainer.build_initial(d, work)
                mark_complete(d, Stage(0, 0, 0), global_step=0, machine=self.machine, **facts)
            shutil.rmtree(work, ignore_errors=True)
        if self.main:
            # written once stage 0 exists: a start that failed leaves no run behind
            write_json(
                self.ckpt_dir / RUN_INFO,
                {
                    "kind": self.spec.kind,
                    "name": self.spec.name,
                    "rounds": self.spec.rounds,
                    "tasks": [t.to_json() for t in self.tasks],
                    "replicate": self.spec.replicate(),
                    "fingerprint": spec_fingerprint(self.spec),
                    "inputs": self.spec.input_digests(),
                    "spec": self.spec.model_dump(mode="json"),
                },
            )
        self.barrier()
        return initial

    # -- the run ---------------------------------------------------------------------

    def run(self) -> None:
        spec = self.spec
        initial = self.prepare_initial()
        done = {s.index: d for s, d in complete_stages(self.ckpt_dir)}
        todo = [s for s in self.stages if s.index not in done]
        if not todo:
            self.say(f"all {len(self.stages)} stages are complete; nothing to do")
            return
        first = todo[0]
        prev_dir = done.get(first.index - 1, initial)
        prev_step = _marker(prev_dir)["global_step"]
        resume_from = latest_checkpoint(self.ckpt_dir / RESUME_DIR / first.name)
        start = checkpoint_step(resume_from) if resume_from else 0
        if resume_from:
            self.say(
                f"resuming stage {first.name} at its step {start} (global step {prev_step + start})"
            )
        elif first.index > 1:
            self.say(f"continuing after stage {prev_dir.name} (global step {prev_step})")

        seed_everything(spec.seed, first.index, self.rank)
        check_weights(resume_from or prev_dir)
        self.trainer.load(resume_from or prev_dir, initial)
        module = self.trainer.trainable_module()
        tracker = WeightTracker(module, theta_0=_load_params(initial, module))
        tracker.start_stage(_load_params(prev_dir, module) if resume_from else None)

        logs = self._open_logs(prev_step, prev_step + start)
        wandb = WandbRun(
            spec.wandb and self.main,
            "clab",
            spec.name,
            spec.model_dump(mode="json"),
            group=spec.replicate()["experiment"],
        )
        global_step = prev_step
        try:
            for stage in todo:
                if stage is not first:
                    tracker.start_stage()
                    resume_from, start = None, 0
                seed_everything(spec.seed, stage.index, self.rank)
                global_step = self._train_stage(
                    stage, global_step, start, resume_from, tracker, logs, wandb
                )
                rows = self.trainer.validate(stage) if self.main else []
                self._log_validation(stage, global_step, rows, logs, wandb)
                self._check_workers_agree(module)
                if self.main:
                    self._save_stage(stage, global_step, rows)
                self.barrier()
        finally:
            for log in logs.values():
                if log is not None:
                    log.close()
            wandb.finish()

    def _open_logs(self, stage_start_step: int, resume_step: int) -> dict[str, MetricsLog | None]:
        names = ("train", "val", "weights")
        if not self.main:
            return dict.fromkeys(names)
        logs = {n: MetricsLog(self.metrics_dir / f"{n}.jsonl") for n in names}
        logs["train"].truncate_after(resume_step)
        logs["weights"].truncate_after(resume_step)
        logs["val"].truncate_after(stage_start_step)
        return logs

    def _train_stage(self, stage, global_step, start, resume_from, tracker, logs, wandb) -> int:
        spec, task = self.spec, self.tasks[stage.task]
        n_steps = self.trainer.stage_steps(stage.task)
        work = self.ckpt_dir / RESUME_DIR / stage.name
        where = self.machine["device"] + (f" x {self.world}" if self.world > 1 else "")
        self.say(
            f"stage {stage.name}: task {task.name}, {n_steps} steps from step {start} on {where}"
        )
        bar = tqdm(
            total=n_steps,
            initial=start,
            desc=f"{spec.name} {stage.name} ({task.name})",
            unit="step",
            disable=not self.main,
            dynamic_ncols=True,
        )
        sink = StepSink(stage, global_step, tracker, logs, wandb, bar, spec.weight_change_every)

        def save_resume(step_in_stage: int) -> None:
            if self.main:
                sink.flush()  # the rows up to the checkpoint are on disk before it is
                ckpt = work / f"checkpoint-{step_in_stage}"
                with atomic_dir(ckpt) as d:
                    self.trainer.save(d)
                    mark_complete(d, step=step_in_stage)
                prune_checkpoints(work, spec.save_total_limit)
            self.barrier()

        ctx = StageContext(
            stage=stage,
            task=task,
            n_steps=n_steps,
            start_step=start,
            global_step=global_step,
            resume_from=resume_from,
            work_dir=work,
            rank=self.rank,
            world=self.world,
            log=sink,
            save_resume=save_resume,
            say=self.say,
            flush_logs=sink.flush,
        )
        try:
            self.trainer.train_stage(ctx)
        finally:
            sink.flush()
            bar.close()
        end = global_step + n_steps
        if sink.last_step != end and self.main:
            raise RuntimeError(
                f"stage {stage.name}: the trainer logged up to global step {sink.last_step}, "
                f"not {end}"
            )
        return end

    def _log_validation(self, stage, global_step, rows, logs, wandb) -> None:
        if not self.main:
            return
        for r in rows:
            row = {
                "global_step": global_step,
                "stage": stage.index,
                "round": stage.round,
                "trained_task": stage.task,
                **r,
            }
            logs["val"].log(row)
            t = r["task"]
            wandb.log(
                {f"val/{t}/{k}": v for k, v in r.items() if isinstance(v, int | float)},
                global_step,
            )
        main_scores = [f"{r['task']}={r[r['primary']]:.3f}" for r in rows if r.get("primary") in r]
        self.say(f"{stage.name}: validation " + " ".join(main_scores))

    def _check_workers_agree(self, model: torch.nn.Module) -> None:
        """Data-parallel workers must hold the same weights: a silent drift corrupts a run.
        Sharded parameters (FSDP's DTensors) exist once, on one worker each: nothing to
        compare."""
        from torch.distributed.tensor import DTensor

        replicated = [p for p in model.parameters() if not isinstance(p, DTensor)]
        if self.world <= 1 or not dist.is_initialized() or not replicated:
            return
        with torch.no_grad():
            mine = torch.stack([p.double().norm() for p in replicated]).sum().reshape(1)
        if dist.get_backend() == "nccl":
            mine = mine.cuda()
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if any(abs(e.item() - mine.item()) > 1e-6 * max(1.0, abs(mine.item())) for e in every):
            raise RuntimeError(f"workers' weights differ: {[e.item() for e in every]}")

    def _save_stage(self, stage: Stage, global_step: int, val_rows: list[dict]) -> None:
        with atomic_dir(self.ckpt_dir / stage.name) as d:
            self.trainer.save(d)
            mark_complete(
                d,
                stage,
                task_name=self.tasks[stage.task].name,
                global_step=global_step,
                validation=val_rows,
                workers=self.world,
                machine=self.machine,
            )
        shutil.rmtree(self.ckpt_dir / RESUME_DIR / stage.name, ignore_errors=True)
        with contextlib.suppress(OSError):  # leave no empty _resume/ behind a finished stage
            (self.ckpt_dir / RESUME_DIR).rmdir()
        self.say(f"stage {stage.name} complete at global step {global_step}")


class StepSink:
    """Where a trainer's per-step rows go: the global step, the stage and the weight
    change are added, then train.jsonl, W&B and the progress bar (rank 0 only).
    Per-tensor weight change goes to weights.jsonl every ``weights_every`` steps.

    A row is written when the next one arrives (or at ``flush``): its weight norms
    are launched on the device at once but read back a step later, when the device
    has long finished them, so that bookkeeping never stalls training on a sync.
    """

    def __init__(self, stage, global_step, tracker, logs, wandb, bar=None, weights_every=0):
        self.stage, self.start = stage, global_step
        self.tracker, self.logs, self.wandb, self.bar = tracker, logs, wandb, bar
        self.weights_every = weights_every
        self.last_step = global_step
        self._t = time.perf_counter()
        self._pending: tuple[dict[str, Any], Any] | None = None

    def __call__(self, row: dict[str, Any]) -> None:
        step = self.start + int(row["step_in_stage"])
        row = {"global_step": step, **row}
        row.update(round=self.stage.round, task=self.stage.task, stage=self.stage.index)
        now = time.perf_counter()
        row.setdefault("step_time", now - self._t)
        self._t, self.last_step = now, step
        norms = self.tracker.launch()  # on every worker: under FSDP it is a collective
        if self.weights_every and step % self.weights_every == 0:
            per_tensor = self.tracker.per_tensor()  # every worker too, for the same reason
            self._emit()  # per-tensor change reads the weights of this very step
            self._write(row, norms)
            if self.logs.get("weights") is not None:
                self.logs["weights"].log({"global_step": step, **per_tensor})
        else:
            self._emit()
            self._pending = (row, norms)

    def flush(self) -> None:
        """Write the held row and force every log to disk: before a checkpoint, at the end."""
        self._emit()
        for log in self.logs.values():
            if log is not None:
                log.sync()

    def _emit(self) -> None:
        if self._pending is not None:
            row, norms = self._pending
            self._pending = None
            self._write(row, norms)

    def _write(self, row: dict[str, Any], norms) -> None:
        row.update(self.tracker.read(norms, row.get("grad_norm")))
        if self.logs.get("train") is None:
            return  # not rank 0
        self.logs["train"].log(row)
        self.wandb.log(row, row["global_step"])
        if self.bar is not None:
            self.bar.update(int(row["step_in_stage"]) - self.bar.n)
            shown = {k: row[k] for k in ("success_rate", "reward_mean", "loss") if k in row}
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)


def prune_checkpoints(work: Path, keep: int) -> None:
    """Keep the newest ``keep`` whole intermediate checkpoints of a stage."""
    ckpts = sorted(work.glob("checkpoint-*"), key=checkpoint_step)
    whole = [c for c in ckpts if (c / COMPLETE_MARKER).is_file()]
    for c in whole[:-keep]:
        shutil.rmtree(c, ignore_errors=True)


def _marker(stage_dir: Path) -> dict:
    return json.loads((stage_dir / COMPLETE_MARKER).read_text())


def _load_params(model_dir: Path, like: torch.nn.Module) -> list[torch.Tensor]:
    """The trainable parameters of a saved model, in ``like``'s order, device and dtype
    (this worker's shard of each, when ``like`` is sharded by FSDP).

    Read with safetensors (never ``torch.load``), matching names as
    ``save_pretrained`` writes them; a tied head falls back to the embedding.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise ClabError(f"{f}: not a readable safetensors file ({e})") from None
    out = []
    for name, p in like.named_parameters():
        if not p.requires_grad:
            continue
        t = state.get(name)
        if t is None and ".default." in name:  # PEFT saves adapters without their name
            t = state.get(name.replace(".default.", "."))
        if t is None and name == "lm_head.weight":
            t = state.get("model.embed_tokens.weight")
        if t is None:
            raise ClabError(f"{model_dir}: checkpoint lacks parameter {name}")
        out.append(local_shard(p, t.to(device=p.device, dtype=p.dtype)))
    return out
