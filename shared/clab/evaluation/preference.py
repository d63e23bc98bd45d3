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

from collections.abc import Iterator
from typing import Any

import torch

from clab.generation.rollout import hf_generate, position_ids


def _with_eos(tokenizer: Any, text: str) -> str:
    """``text`` ending in EOS, added only where it lacks one, as TRL's DPO and reward
    trainers add it."""
    eos = tokenizer.eos_token
    return text if text.endswith(eos) else text + eos


def _full_ids(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], int]:
    """prompt + response + EOS tokenized as one string, and where the tokenized prompt
    stops being its prefix."""
    p = tokenizer(prompt)["input_ids"]
    full = tokenizer(prompt + _with_eos(tokenizer, response))["input_ids"]
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
def _sequence_logps(
    model: Any,
    tokenizer: Any,
    seqs: list[list[int]],
    starts: list[int],
    max_length: int,
    batch_size: int,
) -> list[float]:
    """Sum of each sequence's token log-probabilities from position ``starts[i]`` on."""
    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(seqs), batch_size):
        batch = [q[:max_length] for q in seqs[s : s + batch_size]]  # TRL keeps the start
        ids, mask = _left_pad(batch, tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
        ).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tok_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        width = ids.shape[1]
        for i, (seq, n) in enumerate(zip(batch, starts[s : s + batch_size], strict=True)):
            # position of the response's first scored token: with no prompt token before
            # it (n = 0) the sequence's first token has no prediction, and TRL skips it
            first = width - len(seq) + max(n, 1)
            out.append(tok_logp[i, first - 1 :].sum().item())
    return out


def pair_logps(
    model: Any, tokenizer: Any, rows: list[dict[str, str]], max_length: int, batch_size: int
) -> tuple[list[float], list[float]]:
    """(log pi(chosen), log pi(rejected)) per pair.

    Both responses start at one position, the shorter of the two prompt prefixes, as
    TRL's DPOTrainer cuts a pair: where a response's first characters merge with the
    prompt's end into one token (Qwen's pre-tokenizer joins a final punctuation mark
    to a following word), that token counts as response in both, and the implicit
    reward here stays the one DPO trained.
    """
    chosen = [_full_ids(tokenizer, r["prompt"], r["chosen"]) for r in rows]
    rejected = [_full_ids(tokenizer, r["prompt"], r["rejected"]) for r in rows]
    starts = [min(c[1], r[1]) for c, r in zip(chosen, rejected, strict=True)]
    c = _sequence_logps(model, tokenizer, [f for f, _ in chosen], starts, max_length, batch_size)
    r_ = _sequence_logps(model, tokenizer, [f for f, _ in rejected], starts, max_length, batch_size)
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
        seqs = [tokenizer(p + _with_eos(tokenizer, r))["input_ids"][-max_length:] for p, r in batch]
        ids, mask = _left_pad(seqs, tokenizer.pad_token_id)
        ids, mask = ids.to(device), mask.to(device)
        # positions from each row's first real token, as it was trained (right-padded)
        logits = reward_model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)
        ).logits
        out += logits[:, 0].float().tolist()
    return out


def preference_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Share of pairs scored chosen > rejected; a tie counts one half (chance is 0.5)."""
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected, strict=True)]
    return sum(wins) / max(len(wins), 1)
