"""One matrix product where a decoder layer has several on the same input: in the
rollout copy, Qwen2's query, key and value projections become one, and its MLP's gate
and up projections another (as vLLM's ``QKVParallelLinear`` and
``MergedColumnParallelLinear`` do).

Why: a decode step at batch 64 is launch-bound, not bandwidth-bound. Each of Qwen2.5-
1.5B's small products (the key and value projections read 0.8 MB of weights each)
costs a kernel's fixed latency rather than its bytes, and the compiled step ran 16
kernels a decoder layer, 9 of them matrix products (inductor's output code for the
decode step; ``tests/test_rollout_engines.py`` counts them). Fusing takes three
products off every layer.

How: the fused weight is one tensor, and the layer's own ``q_proj.weight``,
``k_proj.weight``... become views of its rows. The copy's parameters keep their names
and shapes, so the in-place refresh from the policy (``StaticGenerator.load_weights``,
FSDP's ``gather_into``) writes into the fused tensor without knowing of it. The
fused tensors are marked static addresses, as transformers marks its static cache,
so CUDA graphs read them where they are instead of copying them in at each replay.

Only Qwen2's modules are fused (every model clab trains is one); any other module
keeps its own forward.
"""

from __future__ import annotations

import sys
import types

import torch
import torch.nn.functional as F
from torch import nn

FUSED_ATTENTION = "Qwen2Attention"
FUSED_MLP = "Qwen2MLP"


def fuse_projections(model: nn.Module) -> int:
    """Fuse every Qwen2 attention's q/k/v and MLP's gate/up projections of ``model``
    in place (a rollout copy: its weights are refilled after); the number of modules
    fused."""
    n = 0
    for module in model.modules():
        name = type(module).__name__
        if name == FUSED_ATTENTION:
            w, b = _stack(module, ("q_proj", "k_proj", "v_proj"))
            module.clab_qkv = (w, b, [module.q_proj.out_features, module.k_proj.out_features,
                                      module.v_proj.out_features])  # fmt: skip
            module.forward = types.MethodType(_attention_forward, module)
            n += 1
        elif name == FUSED_MLP:
            w, _ = _stack(module, ("gate_proj", "up_proj"))
            module.clab_gate_up = w
            module.forward = types.MethodType(_mlp_forward, module)
            n += 1
    return n


def _stack(module: nn.Module, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) holding the rows of ``names``' linears, which become
    views of it; their current values are kept."""
    linears = [getattr(module, n) for n in names]
    has_bias = {lin.bias is not None for lin in linears}
    if len(has_bias) != 1:
        raise ValueError(f"{type(module).__name__}: {names} mix linears with and without bias")
    sizes = [lin.out_features for lin in linears]
    weight = torch.cat([lin.weight.detach() for lin in linears])
    for lin, part in zip(linears, weight.split(sizes), strict=True):
        lin.weight = nn.Parameter(part, requires_grad=False)
    torch._dynamo.mark_static_address(weight)
    bias = None
    if has_bias == {True}:
        bias = torch.cat([lin.bias.detach() for lin in linears])
        for lin, part in zip(linears, bias.split(sizes), strict=True):
            lin.bias = nn.Parameter(part, requires_grad=False)
        torch._dynamo.mark_static_address(bias)
    return weight, bias


def _attention_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    past_key_values=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' ``Qwen2Attention.forward`` (5.17), with one product for q, k, v."""
    hf = sys.modules[type(self).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    weight, bias, sizes = self.clab_qkv
    q, k, v = F.linear(hidden_states, weight, bias).split(sizes, dim=-1)
    query_states = q.reshape(hidden_shape).transpose(1, 2)
    key_states = k.reshape(hidden_shape).transpose(1, 2)
    value_states = v.reshape(hidden_shape).transpose(1, 2)

    cos, sin = position_embeddings
    query_states, key_states = hf.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    if past_key_values is not None:
        key_states, value_states = past_key_values.update(key_states, value_states, self.layer_idx)

    attention_interface = hf.ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, hf.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        sliding_window=self.sliding_window,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def _mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' ``Qwen2MLP.forward``, with one product for gate and up."""
    gate, up = F.linear(x, self.clab_gate_up).split(self.intermediate_size, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)
