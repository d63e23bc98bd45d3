"""Log-probs and entropy of chosen tokens straight from the last hidden states,
without the [tokens, vocabulary] logits tensor.

Qwen's vocabulary has 151,936 entries: a micro-batch of 8 x 257 response
positions makes 1.25 GB of fp32 logits, and the plain path (bf16 logits, their
fp32 copy, log-softmax, its exp, their product, and as many again backward)
holds several such tensors at once. Here the head's matmul, the log-softmax,
the token's log-prob and the entropy run chunk by chunk over the tokens, and
the backward recomputes each chunk's logits instead of keeping them, as veRL's
``LinearCrossEntropy`` and Liger's fused linear cross-entropy do (veRL and
Liger write Triton kernels; this is plain torch, so it also runs on a CPU and
in tests). Numbers equal the plain path's within bf16 rounding
(``tests/test_fused_logprobs.py``).

The computation must run inside the model's own forward, where FSDP has
gathered the head's weight: :func:`fused_head` makes the model's output
``logits`` a [batch, positions, 2] tensor of (log-prob, entropy) for the
targets it is given, for the duration of one call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

CHUNK_BYTES = 1 << 28  # one chunk's fp32 logits: 256 MiB (441 tokens of Qwen's vocabulary)


def _chunks(n: int, vocab: int) -> Iterator[slice]:
    step = max(1, CHUNK_BYTES // (4 * vocab))
    for s in range(0, n, step):
        yield slice(s, min(s + step, n))


class _LinearLogprobEntropy(torch.autograd.Function):
    """hidden [N, H], weight [V, H], tokens [N] -> log p(token) [N], entropy [N]
    of softmax(hidden @ weight.T / temperature), matmuls in ``dtype``."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature: float, dtype: torch.dtype):
        h, w = hidden.to(dtype), weight.to(dtype)
        lp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        for c in _chunks(hidden.shape[0], weight.shape[0]):
            z = (h[c] @ w.T).float()
            if temperature != 1.0:
                z = z / temperature
            lse[c] = torch.logsumexp(z, dim=-1)
            lp[c] = z.gather(-1, tokens[c].unsqueeze(-1)).squeeze(-1) - lse[c]
            # H = lse - sum p z, with p = softmax(z): one more vocabulary-sized buffer
            ent[c] = lse[c] - z.softmax(-1).mul_(z).sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse, ent)
        ctx.temperature, ctx.dtype = temperature, dtype
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, tokens, lse, ent = ctx.saved_tensors
        T, dtype = ctx.temperature, ctx.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        g_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        g_w = None
        chunks = list(_chunks(hidden.shape[0], weight.shape[0]))
        # the head's gradient is summed over the chunks in fp32 and rounded once, as
        # one matmul over all tokens rounds it (veRL's kernel): summed in bf16 over 16
        # chunks it was 4.7e-3 from the fp32 gradient, against 2.9e-3 for one chunk
        # (tests/test_fused_logprobs.py); one chunk needs no fp32 copy
        acc = weight.dtype if len(chunks) == 1 else torch.float32
        for c in chunks:
            # two vocabulary-sized buffers a chunk, updated in place: the backward's
            # temporaries are what sets the peak at the start of the model's backward
            g_z = (h[c] @ w.T).float()
            if T != 1.0:
                g_z /= T
            p = g_z.sub_(lse[c, None]).exp()  # g_z now holds log p
            # d lp / dz = onehot - p;  d H / dz = -p (log p + H)
            if g_ent is not None:
                g_z.add_(ent[c, None]).mul_(p).mul_(-g_ent[c, None])
            else:
                g_z.zero_()
            if g_lp is not None:
                g_z.sub_(p.mul_(g_lp[c, None]))
                g_z.scatter_add_(-1, tokens[c].unsqueeze(-1), g_lp[c].unsqueeze(-1))
            del p
            if T != 1.0:
                g_z /= T
            g_z = g_z.to(dtype)
            if g_h is not None:
                g_h[c] = (g_z @ w).to(hidden.dtype)
            if ctx.needs_input_grad[1]:
                part = g_z.T @ h[c]
                g_w = part.to(acc) if g_w is None else g_w.add_(part)
        if g_w is not None:
            g_w = g_w.to(weight.dtype)
        return g_h, g_w, None, None, None


def linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) and the entropy at each position, in fp32, for hidden states
    [..., H] and a head weight [V, H]; the same numbers as ``logprobs_and_entropy``
    on ``hidden @ weight.T / temperature`` without the logits tensor. ``dtype``
    is the matmuls' (default: the weight's; bf16 where the plain path runs under
    bf16 autocast)."""
    shape = tokens.shape
    lp, ent = _LinearLogprobEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        tokens.reshape(-1),
        float(temperature),
        dtype or weight.dtype,
    )
    return lp.reshape(shape), ent.reshape(shape)


@contextmanager
def fused_head(model: torch.nn.Module, tokens: torch.Tensor, temperature: float = 1.0):
    """Within the block, ``model(...).logits`` is [batch, positions, 2]: log p and
    entropy of ``tokens`` [batch, positions] at the positions the head is asked
    for (``logits_to_keep``), computed by :func:`linear_logprobs_and_entropy`
    inside the model's forward (where FSDP has the head's weight gathered)."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "bias", None) is not None:
        raise ValueError("fused log-probs need a bias-free linear output head")

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:2] != tokens.shape:
            raise ValueError(f"targets {tuple(tokens.shape)} for hidden {tuple(hidden.shape)}")
        dev = hidden.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        with torch.autocast(dev, enabled=False):
            lp, ent = linear_logprobs_and_entropy(hidden, head.weight, tokens, temperature, dtype)
        return torch.stack([lp, ent], dim=-1)

    saved = head.__dict__.get("forward")
    head.forward = forward
    try:
        yield
    finally:
        if saved is None:
            del head.forward  # back to the class's own forward
        else:
            head.forward = saved
