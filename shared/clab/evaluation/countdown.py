"""Greedy evaluation of a policy on Countdown test sets, with HF generate or vLLM."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from clab.data.countdown.reading import Problem
from clab.generation.rollout import encode_prompts, hf_generate, require_vllm
from clab.rewards.countdown import CountdownReward


def score_texts(
    problems: list[Problem],
    texts: list[str],
    lengths: list[int],
    enforce_ops: bool = True,
    n_samples: int = 0,
) -> dict:
    """Success rate (exactly correct), mean reward and mean length, plus a few samples."""
    results = CountdownReward(enforce_ops).score(
        texts,
        [p.target for p in problems],
        [p.nums for p in problems],
        [p.allowed_ops for p in problems],
    )
    n = max(len(results), 1)
    return {
        "n": len(results),
        "success_rate": sum(r.correct for r in results) / n,
        "reward_mean": sum(r.score for r in results) / n,
        "response_length_mean": sum(lengths) / n,
        "correct": [r.correct for r in results],
        "samples": [
            {
                "target": p.target,
                "nums": p.nums,
                "response": t,
                "score": r.score,
                "reason": r.reason.value,
            }
            for p, t, r in list(zip(problems, texts, results, strict=True))[:n_samples]
        ],
    }


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
    engine: str = "hf",
) -> dict:
    """Greedy answers by HF generate (``engine`` hf or hf-static), scored by the shared
    reward."""
    ro = hf_generate(
        model,
        tokenizer,
        [p.prompt for p in problems],
        max_prompt_length=max_prompt_length,
        max_new_tokens=max_new_tokens,
        greedy=True,
        batch_size=batch_size,
        engine=engine,
    )
    return score_texts(
        problems, ro.texts, ro.response_mask.sum(dim=1).tolist(), enforce_ops, n_samples
    )


class VLLMEvaluator:
    """Greedy answers by vLLM (the ``gpu`` extra), one engine per checkpoint.

    Prompts are tokenised and truncated from the left here, by the same
    function as the HF path (vLLM itself would refuse or keep an over-long
    prompt), and the engine computes in the evaluator's dtype.
    """

    def __init__(self, model_dir: Path, max_model_len: int, *, dtype: str, tokenizer):
        require_vllm("engine")
        from vllm import LLM

        self.tokenizer = tokenizer
        self.llm = LLM(model=str(model_dir), max_model_len=max_model_len, seed=0, dtype=dtype)

    def evaluate(
        self,
        problems: list[Problem],
        *,
        max_prompt_length: int,
        max_new_tokens: int,
        enforce_ops: bool = True,
        n_samples: int = 0,
    ) -> dict:
        from vllm import SamplingParams

        ids, mask = encode_prompts(
            self.tokenizer, [p.prompt for p in problems], max_prompt_length, "cpu"
        )
        prompts = [
            {"prompt_token_ids": r[m.bool()].tolist()} for r, m in zip(ids, mask, strict=True)
        ]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]
        lengths = [len(o.outputs[0].token_ids) for o in outs]
        return score_texts(problems, texts, lengths, enforce_ops, n_samples)
