"""Supervised warm-up on reference solutions, before RL.

A tiny random model never finds a correct Countdown answer by sampling, so RL
has nothing to reinforce and forgetting has nothing to erase. A few hundred
steps of SFT on the data's reference solutions (answers only: the prompt is
not in the loss) give it a start. TRL's SFTTrainer does the work, and HF
Trainer's own checkpoints let a warm-up killed half-way resume where it was
(weights, optimizer, schedule, data order and RNG) instead of starting again.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from clab.data.countdown.reading import read_group
from clab.errors import ClabError
from clab.models.loading import load_policy
from clab.runs.runner import latest_checkpoint
from clab.storage.atomic import write_json
from clab.storage.layout import mark_complete

# checkpoints kept: HF writes a checkpoint in place, so the one before the
# newest stays until the newest is marked whole
KEEP_CHECKPOINTS = 2


def warmup_answer(problem) -> str | None:
    """The answer the warm-up teaches.

    Where the target is the plain sum (every group-0 problem), the numbers in
    the prompt's own order: copying in order is what a tiny model learns
    first. Otherwise the data's reference solution.
    """
    if problem.target == sum(problem.nums) and "+" in problem.allowed_ops:
        return " + ".join(str(n) for n in problem.nums)
    return problem.solution


def completion_text(answer: str) -> str:
    return f" </think>\n<answer> {answer} </answer>"


class _MarkComplete(TrainerCallback):
    """HF writes checkpoint folders in place; the marker says this one is whole."""

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and ckpt.is_dir():
            mark_complete(ckpt, step=state.global_step)


def warmup_save_steps(steps: int) -> int:
    """About five checkpoints per warm-up: a kill loses at most a fifth of it."""
    return max(1, steps // 5)


def warmup_on_solutions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec,
    logs_dir: Path,
    work_dir: Path | None = None,
) -> None:
    """Train ``model`` in place on reference answers for ``spec.warmup.steps`` steps.

    ``work_dir`` holds the warm-up's checkpoints (default ``logs_dir/warmup/checkpoints``);
    a call that finds a whole one there resumes from it. The folder is removed
    once the warm-up has finished, since the caller saves the warmed-up model.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    work_dir = work_dir or logs_dir / "warmup" / "checkpoints"

    rows = []
    for g in spec.warmup.groups:
        for p in read_group(spec.data.dir, g, "train", spec.data.max_train_rows):
            answer = warmup_answer(p)
            if answer:
                text = completion_text(answer) + tokenizer.eos_token
                rows.append({"prompt": p.prompt, "completion": text})
    random.Random(spec.initial_seed).shuffle(rows)  # the same for every seed, by default
    use_gpu = spec.resources.use_gpu
    args = SFTConfig(
        output_dir=str(work_dir),
        max_steps=spec.warmup.steps,
        learning_rate=spec.warmup.lr,
        per_device_train_batch_size=spec.warmup.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, spec.warmup.steps // 20),
        logging_steps=max(1, spec.warmup.steps // 10),
        save_strategy="steps",
        save_steps=warmup_save_steps(spec.warmup.steps),
        save_total_limit=KEEP_CHECKPOINTS,
        report_to=[],
        use_cpu=not use_gpu,
        bf16=use_gpu and spec.model.dtype == "bfloat16",
        completion_only_loss=True,
        max_length=None,  # prompts are as long as they are; RL truncates from the left
        seed=spec.initial_seed,
        dataset_kwargs={"add_special_tokens": False},
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_MarkComplete()],
    )
    resume = latest_checkpoint(work_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    write_json(logs_dir / "warmup" / "log_history.json", trainer.state.log_history)
    shutil.rmtree(work_dir, ignore_errors=True)


# what makes transformers and accelerate join a process group (torchrun's and Ray
# Train's variables, accelerate's own)
_GROUP_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK")
_GROUP_ENV_PREFIXES = ("MASTER_", "TORCHELASTIC_", "ACCELERATE_")


def warmup_on_solutions_apart(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    spec,
    logs_dir: Path,
    work_dir: Path,
) -> PreTrainedModel:
    """:func:`warmup_on_solutions` in a process of its own, for rank 0 of several workers.

    Rank 0 alone builds the model before RL while the others wait for it; inside
    their process group, transformers' Trainer would join the group and wait at
    collectives the others never enter (a gloo or NCCL error, or a hang). The child
    starts without the group's variables, on this worker's GPU, trains and saves;
    it resumes from the warm-up's own checkpoints in ``work_dir`` as the in-process
    warm-up does. Returns the warmed-up model."""
    import torch
    import torch.multiprocessing as mp

    start, done = work_dir / "start", work_dir / "done"
    model.save_pretrained(start)
    saved = dict(os.environ)
    for key in list(os.environ):
        if key in _GROUP_ENV or key.startswith(_GROUP_ENV_PREFIXES):
            del os.environ[key]
    if spec.resources.use_gpu:  # this worker's device, as the child's only one
        index = torch.cuda.current_device()
        visible = saved.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    try:
        child = mp.get_context("spawn").Process(
            target=_warmup_child,
            args=(start, done, tokenizer, spec, logs_dir, work_dir / "checkpoints"),
        )
        child.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    child.join()
    if child.exitcode != 0:
        raise ClabError(
            f"the supervised warm-up failed (exit {child.exitcode}); see its output above"
        )
    warmed = load_policy(done, "float32")
    shutil.rmtree(start, ignore_errors=True)
    shutil.rmtree(done, ignore_errors=True)
    return warmed


def _warmup_child(start: Path, done: Path, tokenizer, spec, logs_dir: Path, work_dir: Path) -> None:
    model = load_policy(start, "float32")
    if spec.resources.use_gpu:
        model = model.to("cuda")
    warmup_on_solutions(model, tokenizer, spec, logs_dir, work_dir)
    model.save_pretrained(done)
