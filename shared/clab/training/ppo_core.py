"""The arithmetic of actor-critic PPO, as veRL runs it (TinyZero's older veRL weighted
a mini-batch's micro-batches alike, each by its own token mean: :func:`agg_token_mean`).

Small pure functions on ``(batch, response_tokens)`` tensors with a mask of
real (non-padding) response tokens; each is tested against hand-worked
numbers. Conventions: rewards are per token (the KL penalty on every token,
the task score added on the last real one), values are the critic's estimate
before each token's action, and padded positions carry zeros.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the real tokens of the whole batch.

    Under torch.distributed the sum, sum of squares and count are all-reduced,
    so every worker whitens with the statistics of the global batch and the
    result does not depend on the number of workers. The variance is the
    unbiased one (n - 1), as veRL's ``masked_whiten`` uses.
    """
    stats = torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stats)
    total, total_sq, n = stats.tolist()
    mean = total / max(n, 1.0)
    var = (total_sq - n * mean * mean) / max(n - 1.0, 1.0)
    return (x - mean) * torch.rsqrt(torch.tensor(max(var, 0.0) + eps, dtype=x.dtype)) * mask


def agg_token_mean(
    per_token: torch.Tensor, mask: torch.Tensor, denom: float | None
) -> torch.Tensor:
    """Sum over real tokens divided by ``denom``: the token count of the whole
    mini-batch (veRL's token-mean), so that gradient accumulation over
    micro-batches of unequal length weights every token alike. ``None``: this
    tensor's own token count."""
    if denom is None:
        return masked_mean(per_token, mask)
    return (per_token * mask).sum() / max(denom, 1.0)


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl`` everywhere, plus the score on the last token.

    ``scores`` is one task score per sequence; ``kl`` the per-token estimate
    ``log pi(a) - log pi_ref(a)``.
    """
    rewards = -kl_coef * kl * mask
    last = (mask.cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & mask.bool()
    return rewards + last * scores[:, None]


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};
    returns R_t = A_t + V_t. Values past the last real token count as 0, so
    the episode ends there. Returns (advantages, returns), both masked.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
    denom: float | None = None,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate: token-mean of max(-A r, -A clip(r, 1-e, 1+e)) (see
    :func:`agg_token_mean` for ``denom``); returns (loss, clip fraction).

    ``clip_ratio_c``: the dual clip (Ye et al. 2020), as veRL's vanilla loss and
    TinyZero's run it: a token with A < 0 has its loss capped at -c A, so a bad
    token already c times likelier than when sampled stops pulling with a force
    that grows with its ratio. None: the single clip. The log-ratio is clamped to
    +-20 before ``exp``, as veRL does: past about 88 the fp32 ratio is inf, and the
    loss NaN where the advantage is 0.
    """
    ratio = torch.exp(torch.clamp(logprobs - old_logprobs, -20.0, 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    per_token = torch.maximum(unclipped, clipped)
    if clip_ratio_c is not None:
        capped = torch.minimum(per_token, -advantages * clip_ratio_c)
        per_token = torch.where(advantages < 0, capped, per_token)
    loss = agg_token_mean(per_token, mask, denom)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    denom: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: 0.5 * token-mean of max((V - R)^2, (V_clip - R)^2).

    Returns (loss, clip fraction).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped = (values - returns) ** 2
    clipped = (v_clipped - returns) ** 2
    loss = 0.5 * agg_token_mean(torch.maximum(unclipped, clipped), mask, denom)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the categorical distribution given by ``logits``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gather_logprobs` and :func:`entropy_from_logits` from one log-softmax:
    the same numbers, one vocabulary-sized pass (and its saved tensor) fewer."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    lp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return lp, -(logp.exp() * logp).sum(dim=-1)


def gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) per position, computed in float32 for stability. ``logits``
    must already be divided by the sampling temperature (see ``PPOTrainer``)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
