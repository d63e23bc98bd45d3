"""Language-model scores: mean next-token loss and perplexity over fixed windows.

The text is tokenised once and cut into consecutive windows of ``seq_len``
tokens (the last, shorter one dropped); labels are the inputs themselves,
and the model shifts them once (position t predicts token t+1). The mean is
over every predicted token; perplexity is its exponential.
"""

from __future__ import annotations

import math

import torch

from clab.errors import ClabError


def windows(ids: list[int], seq_len: int) -> torch.Tensor:
    n = len(ids) // seq_len
    if n == 0:
        raise ClabError(
            f"a corpus split of {len(ids)} tokens is shorter than one sequence ({seq_len})"
        )
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    """An HF model whose config says ``use_cache`` (Qwen2's, Llama's) would build a KV
    cache of every layer in a pass that never reads it again: asked not to. Any other
    module keeps the plain ``model(input_ids=)`` contract."""
    if getattr(getattr(model, "config", None), "use_cache", False):
        return model(input_ids=x, use_cache=False).logits
    return model(input_ids=x).logits


@torch.no_grad()
def mean_token_loss(model, data: torch.Tensor, batch_size: int = 32) -> tuple[float, int]:
    """(mean loss per predicted token, number of predicted tokens)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was = model.training
    model.eval()
    for s in range(0, len(data), batch_size):
        x = data[s : s + batch_size].to(device)
        logits = _logits(model, x)[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += x[:, 1:].numel()
    model.train(was)
    return total / max(count, 1), count


@torch.no_grad()
def window_token_losses(model, data: torch.Tensor, batch_size: int = 32) -> list[float]:
    """Mean loss per predicted token of each window: the items a perplexity's
    interval resamples (their mean is ``mean_token_loss``, windows being equally long)."""
    device = next(model.parameters()).device
    out: list[float] = []
    was = model.training
    model.eval()
    for s in range(0, len(data), batch_size):
        x = data[s : s + batch_size].to(device)
        logits = _logits(model, x)[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        out += loss.mean(dim=1).tolist()
    model.train(was)
    return out


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
