"""One reward model per preference task: trained once, reused by every run on the same data.

TRL's RewardTrainer (a sequence-classification head with one output, the
Bradley-Terry loss on chosen against rejected) on the task's train pairs,
from the run's initial model. A model is stored under
``checkpoints/<run>/reward-models/<task>/`` with a ``COMPLETE`` marker that
holds its key: the sha256 of the task's pairs, of the base model's files and
of the reward settings. A later run whose key matches any stored model (its
own or another run's) links that model's files instead of training again.
Its accuracy on the task's test pairs is measured once and kept in the
marker; one whose 95% interval reaches 0.5 (or lies below it: the task
scored backwards) is at chance level, which the trainer reports in its log
and in ``metrics/<run>/reward_models.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from clab.data.preference.tasks import PreferenceTask
from clab.evaluation.preference import preference_accuracy, reward_scores
from clab.metrics.intervals import wilson
from clab.models.loading import (
    DTYPES,
    TINY_MARKER,
    _no_dropout_config,
    _zero_dropout_modules,
    load_tokenizer,
)
from clab.storage.atomic import atomic_dir
from clab.storage.layout import COMPLETE_MARKER, mark_complete

REWARD_DIR = "reward-models"


def files_hash(folder: Path) -> str:
    """sha256 of a model folder's weights, config and tokenizer (names and contents)."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in (".safetensors", ".json") and f.name != COMPLETE_MARKER):
            if f.name.startswith("lora_init"):
                continue  # the policy's adapter start is no part of the reward model's base
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
    return h.hexdigest()


def reward_key(task: PreferenceTask, base_hash: str, settings: dict[str, Any]) -> str:
    blob = json.dumps(
        {"data": task.data_hash(), "base": base_hash, "settings": settings}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def find_stored(checkpoints: Path, key: str) -> Path | None:
    """A complete reward model with this key, in any run under ``checkpoints``."""
    for marker in sorted(checkpoints.glob(f"*/{REWARD_DIR}/*/{COMPLETE_MARKER}")):
        try:
            if json.loads(marker.read_text()).get("key") == key:
                return marker.parent
        except (OSError, ValueError):
            continue
    return None


def link_copy(src: Path, dst: Path) -> None:
    """Hard links where the file system allows (no second copy of the weights), else copies."""
    for f in src.rglob("*"):
        target = dst / f.relative_to(src)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def load_reward_model(folder: str | Path, dtype: str = "float32") -> Any:
    """A one-output sequence classifier as RewardTrainer saved it, dropout off."""
    from transformers import AutoModelForSequenceClassification

    config = _no_dropout_config(folder, num_labels=1)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(folder), config=config, dtype=DTYPES[dtype]
    )
    return _zero_dropout_modules(model)


def train_reward_model(
    task: PreferenceTask,
    base: Path,
    out: Path,
    work: Path,
    settings: dict[str, Any],
    *,
    seed: int,
    use_gpu: bool,
    bf16: bool,
) -> dict[str, Any]:
    """Train on the task's train pairs, save into ``out``; returns the test accuracy facts."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer

    tokenizer = load_tokenizer(base)
    tokenizer.padding_side = "right"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the new head's initial weights
        model = load_reward_model(base)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(work),
        num_train_epochs=settings["epochs"],
        per_device_train_batch_size=settings["batch_size"],
        learning_rate=settings["lr"],
        max_length=settings["max_length"],
        use_cpu=not use_gpu,
        bf16=bf16,
        report_to=[],
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        seed=seed,
        gradient_checkpointing=False,
        disable_dropout=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(task.train),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    model = trainer.model.eval()
    acc = test_accuracy(model, tokenizer, task, settings["max_length"])
    model.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    if (base / TINY_MARKER).is_file():
        shutil.copy(base / TINY_MARKER, out / TINY_MARKER)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        **acc,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
    }


def chance_warning(task: str, interval: tuple[float, float]) -> str | None:
    """The log's warning for a reward model its scores cannot be read from: one whose
    95% interval reaches 0.5, or lies wholly below it (it prefers the rejected
    responses: its scores would read forgetting as learning)."""
    lo, hi = interval
    if hi < 0.5:
        return (
            f"WARNING: reward model {task} prefers the rejected responses (its 95% interval "
            f"[{lo:.3f}, {hi:.3f}] lies below 0.5): its scores would read forgetting as learning"
        )
    if lo <= 0.5:
        return (
            f"WARNING: reward model {task} is at chance level (its 95% interval reaches "
            "0.5): its scores cannot show what the policy learned or forgot"
        )
    return None


def test_accuracy(
    model: Any, tokenizer: Any, task: PreferenceTask, max_length: int
) -> dict[str, Any]:
    prompts = [r["prompt"] for r in task.test]
    with torch.no_grad():
        c = reward_scores(
            model, tokenizer, prompts, [r["chosen"] for r in task.test], max_length, 32
        )
        r = reward_scores(
            model, tokenizer, prompts, [r["rejected"] for r in task.test], max_length, 32
        )
    acc = preference_accuracy(c, r)
    # a tie counts one half of a success: Wilson on the fractional count
    lo, hi = wilson(acc * len(task.test), len(task.test)) if task.test else (0.0, 1.0)
    return {
        "accuracy": acc,
        "n_test": len(task.test),
        "interval": [lo, hi],
        "chance_level": lo <= 0.5,
    }


def ensure_reward_model(
    task: PreferenceTask,
    base: Path,
    base_hash: str,
    run_dir: Path,
    settings: dict[str, Any],
    *,
    seed: int,
    use_gpu: bool,
    bf16: bool,
) -> dict[str, Any]:
    """The task's reward model under ``run_dir``: already there, linked from another
    run with the same key, or trained. Returns its marker."""
    key = reward_key(task, base_hash, settings)
    dest = run_dir / REWARD_DIR / task.name
    marker = dest / COMPLETE_MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("key") == key:
        return {**json.loads(marker.read_text()), "reused": "this run"}
    found = find_stored(run_dir.parent, key)
    with atomic_dir(dest) as d:
        if found is not None:
            link_copy(found, d)
            info = json.loads((found / COMPLETE_MARKER).read_text())
            info = {**info, "reused_from": str(found)}
        else:
            work = run_dir / "_reward_work" / task.name
            facts = train_reward_model(
                task, base, d, work, settings, seed=seed, use_gpu=use_gpu, bf16=bf16
            )
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                work.parent.rmdir()
            info = {
                "key": key,
                "task": task.name,
                "data_hash": task.data_hash(),
                "base_hash": base_hash,
                "settings": settings,
                **facts,
            }
        mark_complete(d, **info)
    with_reuse = dict(info)
    with_reuse.setdefault("reused_from", None)
    return with_reuse
