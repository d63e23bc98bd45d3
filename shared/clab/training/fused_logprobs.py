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


def _even_chunks(n: int, vocab: int) -> list[slice]:
    """At most :data:`CHUNK_BYTES` of fp32 logits a chunk, as :func:`_chunks`, but of
    near-equal lengths: a compiled chunk function specialises on a length of 1 (a
    tail of one token would compile it again), and its graph is one for the rest."""
    if n == 0:
        return []
    k = -(-n // max(1, CHUNK_BYTES // (4 * vocab)))
    q, r = divmod(n, k)  # r chunks of q + 1 tokens, then k - r of q
    starts = [i * q + min(i, r) for i in range(k + 1)]
    return [slice(starts[i], starts[i + 1]) for i in range(k)]


def _stats_for_compile(
    h: torch.Tensor, w: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One chunk's log-sum-exp, log p of each token and entropy (fp32) from its hidden
    states and the head, written for inductor: out of place, so that compiled it is a
    matmul and a few fused reductions over its output, with no vocabulary-sized fp32
    tensor (eagerly it would hold several; the eager path is the class's own loop)."""
    z = (h @ w.T).float() / temperature
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    ent = lse - (torch.exp(z - lse.unsqueeze(-1)) * z).sum(-1)  # H = lse - sum p z
    return lse, lp, ent


def _grad_for_compile(
    h: torch.Tensor,
    w: torch.Tensor,
    tokens: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_lp: torch.Tensor,
    g_ent: torch.Tensor,
    temperature: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The gradient at one chunk's head output, in ``dtype``, from its recomputed logits:
    d lp / dz = onehot - p, d H / dz = -p (log p + H), divided by the temperature.
    The one-hot as a comparison, not a scatter, so that compiled it is one fused
    pass over the matmul's output."""
    z = (h @ w.T).float() / temperature
    logp = z - lse.unsqueeze(-1)
    p = torch.exp(logp)
    g = -g_ent.unsqueeze(-1) * p * (logp + ent.unsqueeze(-1)) - g_lp.unsqueeze(-1) * p
    hit = torch.arange(z.shape[-1], device=z.device) == tokens.unsqueeze(-1)
    return (torch.where(hit, g + g_lp.unsqueeze(-1), g) / temperature).to(dtype)


_COMPILED: dict = {}


def _compiled(fn):
    if fn not in _COMPILED:  # token counts vary with the rollout: dynamic shapes
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


class _LinearLogprobEntropy(torch.autograd.Function):
    """hidden [N, H], weight [V, H], tokens [N] -> log p(token) [N], entropy [N]
    of softmax(hidden @ weight.T / temperature), matmuls in ``dtype``."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature: float, dtype, compiled: bool):
        h, w = hidden.to(dtype), weight.to(dtype)
        lp = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        if compiled:
            stats = _compiled(_stats_for_compile)
            for c in _even_chunks(hidden.shape[0], weight.shape[0]):
                lse[c], lp[c], ent[c] = stats(h[c], w, tokens[c], temperature)
        else:
            for c in _chunks(hidden.shape[0], weight.shape[0]):
                z = (h[c] @ w.T).float()
                if temperature != 1.0:
                    z = z / temperature
                lse[c] = torch.logsumexp(z, dim=-1)
                lp[c] = z.gather(-1, tokens[c].unsqueeze(-1)).squeeze(-1) - lse[c]
                # H = lse - sum p z, with p = softmax(z): one more vocabulary-sized buffer
                ent[c] = lse[c] - z.softmax(-1).mul_(z).sum(-1)
        ctx.save_for_backward(hidden, weight, tokens, lse, ent)
        ctx.temperature, ctx.dtype, ctx.compiled = temperature, dtype, compiled
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, tokens, lse, ent = ctx.saved_tensors
        T, dtype = ctx.temperature, ctx.dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        g_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        g_w = None
        if ctx.compiled:
            chunks = _even_chunks(hidden.shape[0], weight.shape[0])
            # contiguous: a gradient's strides (a stack's 2, a sum's 0) would be a
            # guard of their own and compile again
            zeros = torch.zeros_like(lse)
            g_lp = zeros if g_lp is None else g_lp.contiguous()
            g_ent = zeros if g_ent is None else g_ent.contiguous()
            compiled = _compiled(_grad_for_compile)

            def grad(c: slice) -> torch.Tensor:
                return compiled(h[c], w, tokens[c], lse[c], ent[c], g_lp[c], g_ent[c], T, dtype)
        else:
            chunks = list(_chunks(hidden.shape[0], weight.shape[0]))

            def grad(c: slice) -> torch.Tensor:
                return _eager_grad(h[c], w, tokens[c], lse[c], ent[c], g_lp, g_ent, c, T, dtype)

        # the head's gradient is summed over the chunks in fp32 and rounded once, as
        # one matmul over all tokens rounds it (veRL's kernel): summed in bf16 over 16
        # chunks it was 4.7e-3 from the fp32 gradient, against 2.9e-3 for one chunk
        # (tests/test_fused_logprobs.py); one chunk needs no fp32 copy
        acc = weight.dtype if len(chunks) == 1 else torch.float32
        for c in chunks:
            g_z = grad(c)
            if g_h is not None:
                g_h[c] = (g_z @ w).to(hidden.dtype)
            if ctx.needs_input_grad[1]:
                part = g_z.T @ h[c]
                g_w = part.to(acc) if g_w is None else g_w.add_(part)
            del g_z  # not alive while the next chunk's buffers are made
        if g_w is not None:
            g_w = g_w.to(weight.dtype)
        return g_h, g_w, None, None, None, None


def _eager_grad(h, w, tokens, lse, ent, g_lp, g_ent, c: slice, T: float, dtype):
    """One chunk's gradient at the head's output, eagerly: two vocabulary-sized buffers
    updated in place (the backward's temporaries set the peak at the start of the
    model's backward; the memory plan counts these). ``g_lp`` and ``g_ent`` whole,
    either None when autograd gives none."""
    g_z = (h @ w.T).float()
    if T != 1.0:
        g_z /= T
    p = g_z.sub_(lse[:, None]).exp()  # g_z now holds log p
    # d lp / dz = onehot - p;  d H / dz = -p (log p + H)
    if g_ent is not None:
        g_z.add_(ent[:, None]).mul_(p).mul_(-g_ent[c, None])
    else:
        g_z.zero_()
    if g_lp is not None:
        g_z.sub_(p.mul_(g_lp[c, None]))
        g_z.scatter_add_(-1, tokens.unsqueeze(-1), g_lp[c].unsqueeze(-1))
    del p
    if T != 1.0:
        g_z /= T
    return g_z.to(dtype)


def linear_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    dtype: torch.dtype | None = None,
    compiled: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token) and the entropy at each position, in fp32, for hidden states
    [..., H] and a head weight [V, H]; the same numbers as ``logprobs_and_entropy``
    on ``hidden @ weight.T / temperature`` without the logits tensor. ``dtype``
    is the matmuls' (default: the weight's; bf16 where the plain path runs under
    bf16 autocast). ``compiled``: each chunk's statistics and gradient through
    torch.compile (inductor's fused kernels on a GPU) instead of eager passes over
    fp32 copies of its logits."""
    shape = tokens.shape
    lp, ent = _LinearLogprobEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        tokens.reshape(-1),
        float(temperature),
        dtype or weight.dtype,
        compiled,
    )
    return lp.reshape(shape), ent.reshape(shape)


@contextmanager
def fused_head(
    model: torch.nn.Module, tokens: torch.Tensor, temperature: float = 1.0, compiled: bool = False
):
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
            lp, ent = linear_logprobs_and_entropy(
                hidden, head.weight, tokens, temperature, dtype, compiled
            )
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
