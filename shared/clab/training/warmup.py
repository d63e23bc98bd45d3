"""Supervised warm-up on reference solutions, before RL.

A tiny random model never finds a correct Countdown answer by sampling, so RL
has nothing to reinforce and forgetting has nothing to erase. A few hundred
steps of SFT on the data's reference solutions (answers only: the prompt is
not in the loss) give it a start. TRL's SFTTrainer does the work.
"""

from __future__ import annotations

import random
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clab.data.countdown.reading import read_group
from clab.storage.atomic import write_json


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


def supervised_warmup(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, spec, logs_dir: Path
) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = []
    for g in spec.warmup.groups:
        for p in read_group(spec.data.dir, g, "train", spec.data.max_train_rows):
            answer = warmup_answer(p)
            if answer:
                text = completion_text(answer) + tokenizer.eos_token
                rows.append({"prompt": p.prompt, "completion": text})
    random.Random(spec.seed).shuffle(rows)
    use_gpu = spec.resources.use_gpu
    args = SFTConfig(
        output_dir=str(logs_dir / "warmup"),
        max_steps=spec.warmup.steps,
        learning_rate=spec.warmup.lr,
        per_device_train_batch_size=spec.warmup.batch_size,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, spec.warmup.steps // 20),
        logging_steps=max(1, spec.warmup.steps // 10),
        save_strategy="no",
        report_to=[],
        use_cpu=not use_gpu,
        bf16=use_gpu and spec.model.dtype == "bfloat16",
        completion_only_loss=True,
        max_length=None,  # prompts are as long as they are; RL truncates from the left
        seed=spec.seed,
        dataset_kwargs={"add_special_tokens": False},
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    trainer.train()
    write_json(logs_dir / "warmup" / "log_history.json", trainer.state.log_history)
