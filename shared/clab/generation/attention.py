"""Attention for the static rollout engine: grouped-query attention that reads each
key/value head once.

transformers' SDPA path cannot pass a mask and grouped heads to PyTorch's fused
kernels together, so with a mask (which a static cache always needs: the cache is
longer than what has been written) it copies every key/value head out to all the
query heads of its group first (``repeat_kv``). Qwen2.5 has six query heads a
key/value head: each decode step then writes and reads the whole static cache six
times over. Profiled on an H100 (Qwen2.5-1.5B shape, batch 64, a 384-token cache),
those copies and the attention over them took 3.5 of a decode step's 5.9 ms.

Here the query heads of a group attend together, as one matrix product per
key/value head, under the same boolean mask transformers builds for SDPA; compiled,
softmax and masking fuse around the two products. The arithmetic is SDPA's (softmax
in fp32, scaled by the model's factor), so it stands in for ``sdpa`` exactly where
the rollout copy uses it, and nowhere else: the policy trains with its own.
"""

from __future__ import annotations

from functools import partial

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "clab_grouped"
SDPA_NAME = "clab_grouped_sdpa"


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sdpa: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """``query`` (batch, heads, q, d), ``key``/``value`` (batch, kv_heads, kv, d); the
    mask as :func:`transformers.masking_utils.sdpa_mask` makes it (True attends), or
    None where SDPA would rely on ``is_causal`` (top-left aligned, as SDPA's).

    ``sdpa`` (registered as ``clab_grouped_sdpa``): the two products and the softmax
    in one call of PyTorch's SDPA, whose fused kernels take a mask when the heads are
    not grouped: a group's query heads become query rows of their key/value head, each
    row with its position's mask. On a GPU that is one fused kernel where the plain
    form runs three or four a layer and a token (the decode step is bound by its
    kernels' count, docs/benchmarks.md); its scores stay fp32 inside the kernel
    instead of being rounded to bf16 first, so on a GPU its tokens may differ."""
    if dropout:
        raise ValueError("the rollout copy's attention has no dropout")
    B, H, q, d = query.shape
    Hkv, kv = key.shape[1], key.shape[2]
    G = H // Hkv  # query heads a key/value head; repeat_kv puts a group's heads together
    rows = query.reshape(B, Hkv, G * q, d)  # row g * q + i: position i of the group's head g
    if attention_mask is None and q > 1:
        attention_mask = torch.ones(q, kv, dtype=torch.bool, device=query.device).tril()
    if sdpa:
        mask = attention_mask
        if mask is not None:
            mask = mask.reshape(-1, 1, q, kv)
            if q > 1:  # each row its position's mask
                mask = mask[:, :, None].expand(-1, -1, G, -1, -1).reshape(-1, 1, G * q, kv)
        out = torch.nn.functional.scaled_dot_product_attention(
            rows, key, value, attn_mask=mask, scale=scaling
        )
        # not a view: CUDA's memory-efficient kernel (the one a mask selects) returns
        # its rows strided as (B, G * q, Hkv, d)
        out = out.reshape(B, Hkv, G, q, d).permute(0, 3, 1, 2, 4)
        return out.reshape(B, q, H, d).contiguous(), None
    scale = d**-0.5 if scaling is None else scaling
    scores = torch.matmul(rows, key.transpose(-1, -2))
    scores = scores.view(B, Hkv, G, q, kv).float() * scale
    if attention_mask is not None:  # (B or 1, 1, q, kv) or (q, kv): per kv head and group
        mask = attention_mask.reshape(-1, 1, 1, q, kv)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs.view(B, Hkv, G * q, kv), value)
    return out.view(B, H, q, d).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
AttentionInterface.register(SDPA_NAME, partial(grouped_attention, sdpa=True))
AttentionMaskInterface.register(SDPA_NAME, sdpa_mask)
