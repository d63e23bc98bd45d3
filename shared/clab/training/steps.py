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


def mixing_stage_steps(n_examples: int, epochs: int, batch: int) -> int:
    """Replay mixing (TRL's SFTTrainer, ``max_steps`` set from this): every example of
    every epoch is trained, the last batch of the stage may be short."""
    return math.ceil(n_examples * epochs / batch)


def dpo_stage_steps(
    n_pairs: int, batch: int, micro_batch: int, epochs: int, cap: int | None
) -> int:
    """Continual DPO, as transformers' Trainer counts an epoch under gradient
    accumulation: ``ceil(pairs / micro)`` micro-batches, of which every
    ``batch / micro`` make an optimizer step (a leftover is dropped), at least one."""
    per_epoch = max(1, math.ceil(n_pairs / micro_batch) // (batch // micro_batch))
    total = epochs * per_epoch
    return min(total, cap) if cap else total


def k1_stage_steps(steps_per_corpus: int) -> int:
    """Sparse updates: a fixed number of steps per corpus, cycling its windows."""
    return steps_per_corpus
