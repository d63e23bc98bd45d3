"""Prompt + answer -> tokens and the loss mask, one function for training and scoring.

The loss covers the answer's tokens and the end-of-sequence token after it;
the prompt and the padding are masked (the public experiment rebuilt labels
from the inputs, so the prompt was trained and EOS, being the pad token,
never was). Training (``clab.training.mixing``) and the ``answer_loss``
scorer both tokenize through :func:`encode_pair`, so the loss logged during
training is the loss the evaluator computes.
"""

from __future__ import annotations

PLAIN_SUFFIX = "\nAnswer: "


def format_prompt(tokenizer, text: str) -> str:
    """The user's message in the model's own chat template (with the assistant's turn
    opened), or ``text`` + "\\nAnswer: " for a model without one. The BOS token is
    written out when the tokenizer would add it, as tokenization adds no special tokens."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    else:
        out = text + PLAIN_SUFFIX
    bos = tokenizer.bos_token
    if bos and not out.startswith(bos):
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            out = bos + out
    return out


def encode_pair(tokenizer, prompt: str, answer: str, max_length: int) -> tuple[list[int], int]:
    """(token ids, number of prompt tokens). The answer gets EOS; an over-long pair loses
    the prompt's start (the answer and the question's end are what the loss is about),
    and an answer longer than ``max_length`` keeps its first tokens."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    a = a[:max_length]
    p = p[max(0, len(p) - (max_length - len(a))) :]
    return p + a, len(p)
