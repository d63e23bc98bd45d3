"""Countdown prompt templates, as TinyZero writes them.

Both templates are complete prompts, fed to the model as raw text, never
through a chat template: ``base`` already opens the assistant's turn
(``Assistant: Let me solve this step by step.\\n<think>``) for a base model, and
``qwen-instruct`` already carries Qwen's chat markers for an instruct model.
Wrapping either in a chat template again changes what the model sees, the
most common reason TinyZero users give for a run that never learns.

The prompt names only the operators the group allows, its worked example too,
so a group-0 model is never told about operators it may not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

Template = Literal["base", "qwen-instruct"]
TEMPLATES: tuple[str, ...] = ("base", "qwen-instruct")

_SYSTEM = (
    "You are a helpful assistant. You first thinks about the reasoning process in the mind "
    "and then provides the user with the answer."
)


def _question(numbers: Sequence[int], target: int, ops: Sequence[str]) -> str:
    example = f"(1 + 2) {ops[-1]} 3"
    return (
        f"Using the numbers {[int(x) for x in numbers]}, create an equation that equals {target}. "
        f"You can use basic arithmetic operations ({', '.join(ops)}) and each number can only "
        "be used once. Show your work in <think> </think> tags. And return the final answer in "
        f"<answer> </answer> tags, for example <answer> {example} </answer>."
    )


def render_prompt(
    numbers: Sequence[int], target: int, ops: Sequence[str], template: Template = "base"
) -> str:
    """The full prompt text for one problem."""
    q = _question(numbers, target, ops)
    if template == "base":
        return (
            "A conversation between User and Assistant. The user asks a question, and the "
            "Assistant solves it. The assistant first thinks about the reasoning process in the "
            "mind and then provides the user with the answer.\n"
            f"User: {q}\nAssistant: Let me solve this step by step.\n<think>"
        )
    if template == "qwen-instruct":
        return (
            # TinyZero writes a space after "user\n"
            f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n<|im_start|>user\n {q}<|im_end|>\n"
            "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
        )
    raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
