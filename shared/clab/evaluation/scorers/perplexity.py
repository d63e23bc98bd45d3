"""``perplexity``: how well a checkpoint models a text corpus's test split.

Values: ``perplexity`` (primary) and ``token_loss``, both lower is better,
over consecutive windows of the task's ``seq_len`` tokens (see
``clab.metrics.language``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clab.errors import ClabError
from clab.evaluation.scorers.registry import (
    SCORERS,
    ModelHandle,
    ScoreResult,
    ScoreSettings,
)
from clab.generation.rollout import hf_generate
from clab.metrics.language import perplexity, window_token_losses, windows


@SCORERS.register("perplexity")
def score_perplexity(handle: ModelHandle, task: dict[str, Any], s: ScoreSettings) -> ScoreResult:
    path = Path(task["text"])
    if not path.is_file():
        raise ClabError(f"{path}: the corpus's test split is missing")
    ids = handle.tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
    data = windows(ids, task["seq_len"])
    if s.test_size:
        data = data[: s.test_size]
    with handle.autocast():
        per_window = window_token_losses(handle.model, data, s.batch_size)
        samples = _samples(handle, data, s)
    tokens = int(data[:, 1:].numel())
    loss = sum(per_window) / len(per_window)  # windows are equally long: the token mean
    return ScoreResult(
        values={"perplexity": perplexity(loss), "token_loss": loss},
        higher_is_better={"perplexity": False, "token_loss": False},
        primary="perplexity",
        n=tokens,
        samples=samples,
        # windows are the items an interval resamples; perplexity is exp of their mean
        items={"perplexity": per_window, "token_loss": per_window},
        aggregate={"perplexity": "exp_mean"},
    )


def _samples(handle: ModelHandle, data, s: ScoreSettings) -> list[dict[str, Any]]:
    """Continuations of fixed prompts (the first 16 tokens of the first test windows),
    sampled with a fixed seed: the same prompts for every checkpoint and method, to
    read side by side; a reading aid, never the measure of forgetting."""

    if not s.samples:
        return []
    tok = handle.tokenizer
    prompts = [tok.decode(w[:16].tolist()) for w in data[: s.samples]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        ro = hf_generate(
            handle.model,
            tok,
            prompts,
            max_prompt_length=32,
            max_new_tokens=32,
            batch_size=s.batch_size,
            engine=s.hf_engine,
        )
    return [{"prompt": p, "response": t} for p, t in zip(prompts, ro.texts, strict=True)]
