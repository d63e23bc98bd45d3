"""How many optimizer steps a stage takes, for every trainer kind.

Each trainer's ``stage_steps`` calls these, and so does ``clab plan``
(:mod:`clab.training.schedule`): the plan counts what training will really
do because it runs the same arithmetic, not a copy of it. The module imports
nothing heavy, so planning a run does not load torch.
"""

from __future__ import annotations

import math

from clab.errors import ClabError


def countdown_stage_steps(
    n_rows: int, batch: int, epochs: int, cap: int | None, group: int | None = None
) -> int:
    """Curriculum RL (PPO and GRPO): whole batches only. Each epoch is a fresh shuffle
    of the group's rows cut into ``n_rows // batch`` batches; the remainder is left out
    of that epoch (a different remainder each epoch). ``cap`` is
    ``max_steps_per_stage``."""
    if n_rows < batch:
        where = f" of group {group}" if group is not None else ""
        raise ClabError(
            f"batch.train ({batch}) exceeds the {n_rows} training rows{where}: lower "
            "batch.train or raise data.max_train_rows"
        )
    total = epochs * (n_rows // batch)
    return min(total, cap) if cap else total


def grpo_updates_per_step(train: int, responses_per_prompt: int, mini: int) -> int:
    """Optimizer steps in one GRPO step (one generation): its ``train`` x
    ``responses_per_prompt`` sequences in mini-batches of ``mini`` sequences, as veRL's
    GRPO (and clab's PPO) splits a rollout. TinyZero's GRPO script (128 prompts x 5,
    a mini-batch of 64 prompts, 320 sequences) takes 2. Before batch.mini applied to
    GRPO, clab's took 1 whatever the mini-batch."""
    return train * responses_per_prompt // mini


def hf_epoch_steps(n_examples: int, batch: int, micro_batch: int) -> int:
    """Optimizer steps in one epoch as transformers' Trainer (5.x) counts them under
    gradient accumulation: ``ceil(n / micro)`` micro-batches, every ``batch / micro``
    of them one step, and the epoch's leftover micro-batches one more (short) step.

    The HF-based stages set ``max_steps`` to a whole number of these epochs: a count
    one short ends training before the last epoch's last examples, and a count that
    rounds the leftover away shifts the epochs (with 13 micro-batches of 4 a step,
    ``3 * floor(13 / 4)`` = 9 steps ran epochs of 4, 4 and 1 step)."""
    return max(1, math.ceil(math.ceil(n_examples / micro_batch) / (batch // micro_batch)))


def mixing_stage_steps(n_examples: int, epochs: int, batch: int, micro_batch: int) -> int:
    """Replay mixing (TRL's SFTTrainer, ``max_steps`` set from this): every example of
    every epoch is trained once."""
    return epochs * hf_epoch_steps(n_examples, batch, micro_batch)


def dpo_stage_steps(
    n_pairs: int, batch: int, micro_batch: int, epochs: int, cap: int | None
) -> int:
    """Continual DPO (TRL's DPOTrainer, ``max_steps`` set from this): whole epochs, as
    transformers counts them, up to ``cap``."""
    total = epochs * hf_epoch_steps(n_pairs, batch, micro_batch)
    return min(total, cap) if cap else total


def k1_stage_steps(steps_per_corpus: int) -> int:
    """Sparse updates: a fixed number of steps per corpus, cycling its windows."""
    return steps_per_corpus
