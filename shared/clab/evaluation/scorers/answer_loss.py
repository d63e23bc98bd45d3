"""``answer_loss``: how well a checkpoint answers an SFT task.

Mean answer-token loss: cross-entropy over the answer's tokens and the
end-of-sequence token after it, the prompt and padding masked out, averaged
over all answer tokens of the test set (lower is better). Exact match
(higher is better) compares the greedy answer with the row's short
reference (``final``, else ``answer``) as the task's ``match`` says:
``exact`` (stripped strings equal), ``normalized`` (SQuAD/HotpotQA
normalisation), or ``boxed`` (the generation's last ``\boxed{}``, as MATH
grades). Rows come from a Parquet or JSONL file with ``prompt`` and
``answer`` (and optionally ``final``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from clab.data.sft.encoding import encode_pair
from clab.data.sft.tasks import last_boxed, normalize_answer
from clab.errors import ClabError
from clab.evaluation.scorers.registry import (
    SCORERS,
    ModelHandle,
    ScoreResult,
    ScoreSettings,
)
from clab.generation.rollout import hf_generate, position_ids
from clab.registry import Registry


def read_pairs(path: str | Path, limit: int | None) -> list[dict[str, str]]:
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            names = set(pq.read_schema(path).names)
            cols = ["prompt", "answer", *(["final"] if "final" in names else [])]
            rows = pq.read_table(path, columns=cols).to_pylist()
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
        ids, n_prompt = encode_pair(tokenizer, r["prompt"], r["answer"], max_length)
        seqs.append(ids)
        labels.append([-100] * n_prompt + ids[n_prompt:])
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    lab = torch.tensor([[-100] * (width - len(x)) + x for x in labels])
    return ids, mask, lab


@torch.no_grad()
def answer_losses(model, tokenizer, rows, max_length: int, batch_size: int) -> list[tuple]:
    """(sum of answer-token losses, answer tokens) per row."""

    device = next(model.parameters()).device
    out = []
    for s in range(0, len(rows), batch_size):
        ids, mask, lab = (
            t.to(device) for t in answer_batch(tokenizer, rows[s : s + batch_size], max_length)
        )
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
        ).logits
        logits, target = logits[:, :-1].float(), lab[:, 1:]  # position t predicts token t+1
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
        )
        keep = target != -100
        out += list(zip((nll * keep).sum(1).tolist(), keep.sum(1).tolist(), strict=True))
    return out


def _boxed(generated: str, reference: str) -> bool:
    got = last_boxed(generated)
    return got is not None and normalize_answer(got) == normalize_answer(reference)


def _normalized(generated: str, reference: str) -> bool:
    return normalize_answer(generated) == normalize_answer(reference)


# how a generated answer is compared with the reference (a task's ``match``)
Match = Callable[[str, str], bool]
MATCHES: Registry[Match] = Registry("answer match")
MATCHES.add("exact", lambda generated, reference: generated.strip() == reference.strip())
MATCHES.add("normalized", _normalized)
MATCHES.add("boxed", _boxed)


@SCORERS.register("answer_loss")
def score_answer_loss(handle: ModelHandle, task: dict[str, Any], s: ScoreSettings) -> ScoreResult:
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
            engine=s.hf_engine,
        )
    match = MATCHES[task.get("match", "exact")]
    exact = [
        float(match(t, r.get("final") or r["answer"])) for t, r in zip(ro.texts, rows, strict=True)
    ]
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
