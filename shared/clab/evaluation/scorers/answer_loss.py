"""``answer_loss``: how well a checkpoint answers an SFT task.

Mean answer-token loss: cross-entropy over the answer's tokens and the
end-of-sequence token after it, the prompt and padding masked out, averaged
over all answer tokens of the test set (lower is better). Exact match: the
greedy answer, stripped, equals the reference answer (higher is better).
Rows come from a Parquet or JSONL file with ``prompt`` and ``answer``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from clab.errors import ClabError
from clab.evaluation.scorers.registry import (
    ModelHandle,
    ScoreResult,
    ScoreSettings,
    register_scorer,
)


def read_pairs(path: str | Path, limit: int | None) -> list[dict[str, str]]:
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            rows = pq.read_table(path, columns=["prompt", "answer"]).to_pylist()
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError, KeyError) as e:
        raise ClabError(f"{path}: cannot read prompt/answer rows ({e})") from None
    for i, r in enumerate(rows):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("answer"), str):
            raise ClabError(f"{path}: row {i} lacks a string 'prompt' or 'answer'")
    return rows[:limit] if limit else rows


def answer_batch(tokenizer, rows: list[dict[str, str]], max_length: int):
    """input ids, attention mask and labels: -100 on the prompt and padding, the
    answer and its EOS labelled. Over-long prompts lose their start (the answer
    and the prompt's end are what the loss is about)."""
    seqs, labels = [], []
    for r in rows:
        p = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(r["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        a = a[:max_length]
        p = p[max(0, len(p) - (max_length - len(a))) :]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    lab = torch.tensor([[-100] * (width - len(x)) + x for x in labels])
    return ids, mask, lab


@torch.no_grad()
def answer_losses(model, tokenizer, rows, max_length: int, batch_size: int) -> list[tuple]:
    """(sum of answer-token losses, answer tokens) per row."""
    from clab.generation.rollout import position_ids

    device = next(model.parameters()).device
    out = []
    for s in range(0, len(rows), batch_size):
        ids, mask, lab = (
            t.to(device) for t in answer_batch(tokenizer, rows[s : s + batch_size], max_length)
        )
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
        logits, target = logits[:, :-1].float(), lab[:, 1:]  # position t predicts token t+1
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
        )
        keep = target != -100
        out += list(zip((nll * keep).sum(1).tolist(), keep.sum(1).tolist(), strict=True))
    return out


@register_scorer("answer_loss")
def score_answer_loss(handle: ModelHandle, task: dict[str, Any], s: ScoreSettings) -> ScoreResult:
    from clab.generation.rollout import hf_generate

    rows = read_pairs(task["data"], s.test_size)
    if not rows:
        raise ClabError(f"{task['data']}: no rows to score")
    max_length = task.get("max_length", 1024)
    with handle.autocast():
        per_row = answer_losses(handle.model, handle.tokenizer, rows, max_length, s.batch_size)
        ro = hf_generate(
            handle.model,
            handle.tokenizer,
            [r["prompt"] for r in rows],
            max_prompt_length=max_length,
            max_new_tokens=s.max_new_tokens or task.get("max_new_tokens", 64),
            greedy=True,
            batch_size=s.batch_size,
        )
    exact = [float(t.strip() == r["answer"].strip()) for t, r in zip(ro.texts, rows, strict=True)]
    total, tokens = sum(x for x, _ in per_row), sum(n for _, n in per_row)
    return ScoreResult(
        values={"answer_loss": total / max(tokens, 1), "exact_match": sum(exact) / len(rows)},
        higher_is_better={"answer_loss": False, "exact_match": True},
        primary="answer_loss",
        n=len(rows),
        items={
            "answer_loss": [x / max(n, 1) for x, n in per_row],
            "exact_match": exact,
        },
        item_weights={"answer_loss": [float(n) for _, n in per_row]},  # a mean over tokens
        samples=[
            {"prompt": r["prompt"][-200:], "answer": r["answer"], "response": t}
            for r, t in list(zip(rows, ro.texts, strict=True))[: s.samples]
        ],
    )
