"""Greedy evaluation of a policy on Countdown test sets."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clab.data.countdown.reading import Problem
from clab.rewards.countdown import CountdownReward
from clab.training.rollout import hf_generate


def evaluate_problems(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: list[Problem],
    *,
    max_prompt_length: int,
    max_new_tokens: int,
    batch_size: int = 64,
    enforce_ops: bool = True,
    n_samples: int = 0,
) -> dict:
    """Success rate, mean reward and response length of greedy answers."""
    ro = hf_generate(
        model,
        tokenizer,
        [p.prompt for p in problems],
        max_prompt_length=max_prompt_length,
        max_new_tokens=max_new_tokens,
        greedy=True,
        batch_size=batch_size,
    )
    results = CountdownReward(enforce_ops).score(
        ro.texts,
        [p.target for p in problems],
        [p.nums for p in problems],
        [p.allowed_ops for p in problems],
    )
    n = max(len(results), 1)
    lengths = ro.response_mask.sum(dim=1).tolist()
    return {
        "n": len(results),
        "success_rate": sum(r.correct for r in results) / n,
        "reward_mean": sum(r.score for r in results) / n,
        "response_length_mean": sum(lengths) / n,
        "samples": [
            {
                "target": p.target,
                "nums": p.nums,
                "response": t,
                "score": r.score,
                "reason": r.reason.value,
            }
            for p, t, r in list(zip(problems, ro.texts, results, strict=True))[:n_samples]
        ],
    }
