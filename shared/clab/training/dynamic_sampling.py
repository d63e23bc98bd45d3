"""DAPO's dynamic sampling for GRPO (``grpo.oversample``), as a bounded over-draw.

A group whose responses all score alike has zero advantage for every response:
it moves nothing but the KL term and dilutes a token-mean loss. In clab's GPU
mini-experiment 68% to 90% of the groups of Countdown's groups 1 to 3 were such
(docs/demo.md), so a step learned from a few prompts of sixteen. DAPO (Yu et al.
2025; veRL's ``recipe/dapo``, ``algorithm.filter_groups``) generates
``gen_batch_size`` prompts' responses at a time (3 x the train batch in the
recipe), drops the groups whose ``filter_groups.metric`` does not vary (``acc``,
correctness, in the recipe's scripts), and generates again from the next
batches of the data until ``train_batch_size`` groups remain, raising an error
after ``max_num_gen_batches`` generations (0: no limit); log-probs and
advantages are then computed on the kept groups alone.

clab's form, for TRL's GRPOTrainer, whose steps need a batch of fixed size:
each generation draws ``oversample`` x ``batch.train`` prompts (TRL's own, then
others of the stage drawn at random, none twice in a step over all workers) and
keeps ``batch.train`` groups: those whose scores vary first, in drawing order,
then groups that scored alike to fill the batch when too few vary. Where veRL
would generate again or stop, clab trains on the filled batch, which is what
TRL's GRPO does with every flat group. Differences from the recipe, on purpose
or by TRL's design: a group varies when its total score does (the 0.1 format
credit counts, as it does in the advantage GRPO trains on), not its
correctness; the extra prompts do not advance TRL's sampler (an epoch is still
TRL's prompts); TRL scores the old and reference log-probs and the advantages
of every drawn group before the choice. Per group, as ``scale_rewards: group``
(the default) and ``none`` compute them, the choice does not change the
advantages (``batch`` scaling uses the std of every drawn reward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from clab.errors import ClabError

# an advantage at or below this is zero: in a varying group of clab's rewards (0, 0.1
# for the format, 1 for the answer) some advantage is at least 0.05 (0.1 (n - 1) / n
# unscaled, about 1 scaled by the group's std)
FLAT = 1e-3

# TRL 1.16's generation batch for a text-only model: these keys hold one row each
# (completion_* and the *_logps also one column per completion token)
ROW_KEYS = {
    "prompt_ids",
    "prompt_mask",
    "completion_ids",
    "completion_mask",
    "advantages",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
    "tool_mask",
}
COMPLETION_KEYS = {
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "tool_mask",
}


def flat_groups(advantages: torch.Tensor, n: int) -> torch.Tensor:
    """Per group of ``n`` consecutive rows: True where every advantage is zero (the
    group's responses all scored alike)."""
    return advantages.detach().reshape(-1, n).abs().amax(dim=1) <= FLAT


def log_flat_share(trl: Any, key: str, flat: torch.Tensor) -> None:
    """Log the share of ``flat`` groups over every worker as TRL logs its metrics.

    clab's own count replaces TRL's ``frac_reward_zero_std``, which calls a group flat
    when its rewards' float32 std is within 1e-8 of zero: twelve responses all scored
    0.1 have a std of 1.6e-8, so TRL counts them as varying (and under ``scale_rewards:
    batch`` it tests the batch's std, not the group's). A zero advantage is what makes
    a group teach nothing, under every scaling."""
    acc = trl.accelerator
    trl._metrics["train"][key].append(acc.gather(flat.float().mean()).mean().item())


def kept_rows(flat: torch.Tensor, n: int, keep: int) -> torch.Tensor:
    """The rows of ``keep`` groups: the groups that are not flat first, in their
    order, then flat ones in theirs; returned in the groups' original order."""
    order = torch.cat([torch.nonzero(~flat).flatten(), torch.nonzero(flat).flatten()])
    groups = order[:keep].sort().values
    return (groups[:, None] * n + torch.arange(n, device=groups.device)).flatten()


def select_rows(
    batch: dict[str, Any],
    rows: torch.Tensor,
    count_tokens: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, Any]:
    """TRL's generation batch cut to ``rows``; the completion columns that no kept row
    uses (padding to a dropped row's length) are cut too, never the prompts' left
    padding. ``num_items_in_batch`` (the loss's token count over every worker) is
    counted again on the kept rows by ``count_tokens`` (a gather-sum)."""
    unknown = set(batch) - ROW_KEYS - {"num_items_in_batch"}
    if unknown:
        raise ValueError(f"dynamic sampling cannot cut TRL's batch keys {sorted(unknown)}")
    mask = batch["completion_mask"][rows]
    used = torch.nonzero(mask.any(dim=0)).flatten()
    width = int(used[-1]) + 1 if len(used) else 1
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "num_items_in_batch":
            continue
        value = value[rows.to(value.device)]
        if key in COMPLETION_KEYS or (key == "importance_sampling_ratio" and value.dim() == 2):
            value = value[:, :width]
        out[key] = value
    tokens = out["completion_mask"]
    if "tool_mask" in out:
        tokens = tokens * out["tool_mask"]
    out["num_items_in_batch"] = count_tokens(tokens.sum())
    return out


def extra_prompts(
    pool: Sequence[dict], taken: set[str], groups: int, n: int, seed: Sequence[int]
) -> list[dict]:
    """``groups`` prompts of the stage other than those ``taken``, each repeated ``n``
    times as TRL's sampler repeats them; drawn without replacement by a generator
    seeded by ``seed`` (run seed, stage, step), so a resumed run draws the same ones."""
    free = [r for r in pool if r["prompt"] not in taken]
    if len(free) < groups:
        raise ClabError(
            f"grpo.oversample needs {groups} more prompts a step than the batch, but the "
            f"stage has {len(free)} others: lower grpo.oversample or use more data"
        )
    picks = np.random.default_rng(list(seed)).choice(len(free), size=groups, replace=False)
    return [dict(free[i]) for i in picks for _ in range(n)]


class OverSampler:
    """One stage's over-draw for TRL's GRPOTrainer: its prompt pool (the stage's rows,
    as TRL's data set holds them) and the seed of its draws."""

    def __init__(self, pool: Sequence[dict], factor: int, n: int, seed: Sequence[int]):
        self.pool, self.factor, self.n, self.seed = list(pool), factor, n, tuple(seed)

    def generate(
        self, trl: Any, inputs: list[dict], generate: Callable[[list[dict]], dict[str, Any]]
    ) -> dict[str, Any]:
        """``generate`` (TRL's own generation and scoring) on this worker's prompts and
        ``factor - 1`` times as many others; returns TRL's batch for the kept groups.
        The extra prompts are drawn once for all workers (the same seed on each),
        avoiding every worker's batch, and cut into one share per worker. Logs
        ``flat_groups`` (every drawn group) and ``flat_groups_kept`` (the kept ones)."""
        from accelerate.utils import gather_object

        n, groups = self.n, len(inputs) // self.n
        acc = trl.accelerator
        share = groups * (self.factor - 1)
        taken = set(gather_object([r["prompt"] for r in inputs[::n]]))
        seed = (*self.seed, trl.state.global_step)
        every = extra_prompts(self.pool, taken, share * acc.num_processes, n, seed)
        extra = every[acc.process_index * share * n : (acc.process_index + 1) * share * n]
        batch = generate(inputs + extra)
        flat = flat_groups(batch["advantages"], n)
        rows = kept_rows(flat, n, groups)
        log_flat_share(trl, "flat_groups", flat)
        log_flat_share(trl, "flat_groups_kept", flat[rows[::n] // n])
        return select_rows(batch, rows, lambda t: acc.gather(t).sum())
