"""What scoring a policy on a preference task takes, shared by the trainer and the scorer.

- :func:`pair_logps`: log pi(response | prompt) summed over the response's
  tokens and the EOS after it, tokenized exactly as TRL's DPOTrainer does
  (prompt + response + EOS as one string, the response starting where the
  tokenized prompt stops being a prefix), so the implicit reward
  beta * (log pi - log pi_ref) here is the one DPO trained (a test compares
  them on the same batch).
- :func:`sample`: seeded sampled completions (temperature, new tokens).
- :func:`reward_scores`: a one-output sequence-classification reward model's
  score of prompt + response + EOS, as TRL's RewardTrainer trained it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from clab.generation.rollout import hf_generate, position_ids


def _full_ids(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    p = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + response + tokenizer.eos_token)["input_ids"]
    n = 0
    while n < min(len(p), len(full)) and p[n] == full[n]:
        n += 1
    return full, n


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def _batches(
    prompts: list[str], responses: list[str], batch_size: int
) -> Iterator[list[tuple[str, str]]]:
    """(prompt, response) pairs, ``batch_size`` at a time."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts against {len(responses)} responses")
    for s in range(0, len(prompts), batch_size):
        yield list(zip(prompts[s : s + batch_size], responses[s : s + batch_size], strict=True))


@torch.no_grad()
def response_logps(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    max_length: int,
    batch_size: int,
) -> list[float]:
    """Sum of log-probabilities of each response (and its EOS) after its prompt."""
    device = next(model.parameters()).device
    out: list[float] = []
    for batch in _batches(prompts, responses, batch_size):
        seqs, starts = [], []
        for p, r in batch:
            full, n = _full_ids(tokenizer, p, r)
            full = full[:max_length]  # TRL keeps the start
            seqs.append(full)
            starts.append(n)
        ids, mask = _left_pad(seqs, tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        width = ids.shape[1]
        for i, (seq, n) in enumerate(zip(seqs, starts, strict=True)):
            first = width - len(seq) + n  # position of the response's first token
            out.append(tok_logp[i, first - 1 :].sum().item())
    return out


def pair_logps(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], max_length: int, batch_size: int
) -> tuple[list[float], list[float]]:
    """(log pi(chosen), log pi(rejected)) per pair."""
    prompts = [r["prompt"] for r in rows]
    c = response_logps(
        model, tokenizer, prompts, [r["chosen"] for r in rows], max_length, batch_size
    )
    r_ = response_logps(
        model, tokenizer, prompts, [r["rejected"] for r in rows], max_length, batch_size
    )
    return c, r_


def sample(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    temperature: float,
    max_new_tokens: int,
    max_prompt_length: int,
    seed: int,
    batch_size: int,
    engine: str = "hf",
) -> list[str]:
    """Sampled completions under a fixed seed: every checkpoint draws with the same noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(seed)
        ro = hf_generate(
            model,
            tokenizer,
            prompts,
            max_prompt_length=max_prompt_length,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            batch_size=batch_size,
            engine=engine,
        )
    return ro.texts


@torch.no_grad()
def reward_scores(
    reward_model: Any,
    tokenizer: Any,
    prompts: list[str],
    responses: list[str],
    max_length: int,
    batch_size: int,
) -> list[float]:
    device = next(reward_model.parameters()).device
    out: list[float] = []
    for batch in _batches(prompts, responses, batch_size):
        # the end is kept: a reward model scores the response, and it sits at the end
        seqs = [tokenizer(p + r + tokenizer.eos_token)["input_ids"][-max_length:] for p, r in batch]
        ids, mask = _left_pad(seqs, tokenizer.pad_token_id)
        logits = reward_model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        out += logits[:, 0].float().tolist()
    return out


def preference_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs scored chosen > rejected; a tie counts one half (chance is 0.5)."""
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    return sum(wins) / max(len(wins), 1)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``p`` over ``n`` items."""
    if n == 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
