"""Rollouts: prompts in, response tokens and texts out.

``hf`` generates with transformers (left padding, KV cache); ``vllm`` with a
colocated vLLM engine (the optional ``gpu`` extra) whose weights are
refreshed from the policy before each rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from clab.errors import ClabError


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P), left-padded
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor  # (B, R), right-padded after the first EOS
    response_mask: torch.Tensor  # 1 up to and including the first EOS
    texts: list[str]


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad, and truncate from the left: a prompt's end is where the answer starts."""
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    enc = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_len,
        add_special_tokens=False,
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    is_eos = response_ids == eos_id
    # tokens strictly before the first EOS, plus the EOS itself
    before = (is_eos.cumsum(dim=1) - is_eos.long()) == 0
    return before.long()


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generate uses them."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def sampling_config(
    tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float, greedy: bool
) -> GenerationConfig:
    """Every sampling setting, explicitly: a checkpoint's own generation_config.json
    (repetition penalty, top-k 50, top-p...) must not change what PPO samples, since
    PPO scores the samples as draws from softmax(logits / temperature)."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=not greedy,
        temperature=1.0 if greedy else temperature,
        top_k=0 if not greedy else None,
        top_p=1.0,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


@torch.no_grad()
def hf_generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_prompt_length: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    batch_size: int = 64,
) -> Rollout:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = encode_prompts(
            tokenizer, prompts[start : start + batch_size], max_prompt_length, device
        )
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=sampling_config(tokenizer, max_new_tokens, temperature, greedy),
        )
        parts.append((ids, mask, out[:, ids.shape[1] :]))
    model.train(was_training)
    return _assemble(parts, tokenizer)


def _assemble(parts, tokenizer: PreTrainedTokenizerBase) -> Rollout:
    pad = tokenizer.pad_token_id
    P = max(p[0].shape[1] for p in parts)
    R = max(max(p[2].shape[1] for p in parts), 1)

    def left(x, width, value):
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    def right(x, width, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    prompt_ids = torch.cat([left(p[0], P, pad) for p in parts])
    prompt_mask = torch.cat([left(p[1], P, 0) for p in parts])
    response_ids = torch.cat([right(p[2], R, pad) for p in parts])
    rmask = response_mask(response_ids, tokenizer.eos_token_id)
    response_ids = torch.where(rmask.bool(), response_ids, torch.full_like(response_ids, pad))
    texts = tokenizer.batch_decode(
        response_ids * rmask + pad * (1 - rmask), skip_special_tokens=True
    )
    return Rollout(prompt_ids, prompt_mask, response_ids, rmask, texts)


def require_vllm(field: str = "rollout.engine") -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ClabError(
            f"{field}: vllm is not installed here; install the GPU extra "
            f"(uv sync --extra gpu, as the Docker image does) or set {field}: hf"
        ) from None


class VLLMRollout:
    """Rollouts from a colocated vLLM engine, through TRL's vLLM machinery.

    TRL's ``VLLMGeneration`` owns the engine, tensor parallelism and the weight
    refresh from the policy; this adapter gives its output our :class:`Rollout`
    shape, so PPO treats both engines alike.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        tensor_parallel_size: int,
        gpu_memory_utilization: float,
        max_model_length: int,
        max_new_tokens: int,
        temperature: float,
    ):
        require_vllm()
        from accelerate import Accelerator
        from trl.generation.vllm_generation import VLLMGeneration

        self.tokenizer = tokenizer
        self.gen = VLLMGeneration(
            model,
            Accelerator(),
            tokenizer,
            mode="colocate",
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_length=max_model_length,
            temperature=temperature,
            max_completion_length=max_new_tokens,
        )

    def generate(self, prompts: list[str], max_prompt_length: int) -> Rollout:
        device = next(self.gen.model.parameters()).device
        ids, mask = encode_prompts(self.tokenizer, prompts, max_prompt_length, device)
        lists = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
        self.gen.sync_weights()
        _, completions, _, _ = self.gen.generate(lists, None, 1)
        parts = [
            (
                ids,
                mask,
                torch.nn.utils.rnn.pad_sequence(
                    [torch.tensor(c, dtype=torch.long) for c in completions],
                    batch_first=True,
                    padding_value=self.tokenizer.pad_token_id,
                ).to(device),
            )
        ]
        return _assemble(parts, self.tokenizer)
