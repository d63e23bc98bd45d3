"""The SFT tasks of the replay-mixing experiment, as examples with ids.

Every loader returns :class:`Example` rows: an id that is the example's own
(the data set's id, or a hash of its content; never its position), the
question, the answer the loss is trained on, the short reference answer
that exact match compares, and task A's difficulty level where the data
has one. Real data comes through ``datasets`` (a hub id or a local file);
the offline demo builds its two tasks from what every Python has.

- ``competition_math``: problem -> solution; level parsed from ``level``
  ("Level 3"); reference answer the solution's last ``\\boxed{...}``.
- ``hotpotqa``: distractor setting, context paragraphs + question -> answer;
  the hub's Parquet (``context: {title, sentences}``) or the official JSON
  (``context: [[title, [sentences]]]``).
- ``arithmetic`` (demo task A): an expression from the Countdown generator
  -> its value; level from its operators and how many numbers it has.
- ``context_qa`` (demo task B): short facts made of standard-library names,
  a question about one of them -> the word the context gives.
"""

from __future__ import annotations

import hashlib
import random
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from clab.data.countdown.problems import sample_problems
from clab.data.row_files import read_row_file
from clab.data.sft.replay import parse_level
from clab.errors import ClabError

MATH_INSTRUCTION = "Solve the problem. Put the final answer in \\boxed{}."
QA_INSTRUCTION = "Answer the question with a short phrase from the context."


@dataclass(frozen=True)
class Example:
    id: str
    prompt: str  # the user's message; the chat template is applied when tokenizing
    answer: str  # the target of the loss
    final: str  # what exact match compares (the boxed answer, the short answer)
    level: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


def content_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), as MATH grades it."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j].strip()
    return None


def normalize_answer(text: str) -> str:
    """SQuAD/HotpotQA normalisation: lower case, no punctuation, articles or extra spaces."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


# -- reading rows ----------------------------------------------------------------------------


def read_rows(
    hub_id: str | None, path: str | None, *, split: str, config: str | None = None
) -> list:
    """Rows as dicts from a local file or folder (Parquet, JSON, JSONL) or else a hub id."""
    if path:
        p = Path(path)
        if not p.exists():
            raise ClabError(f"{p}: data file not found")
        files = [p]
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in (".parquet", ".json", ".jsonl"))
        if not files:
            raise ClabError(f"{p}: no Parquet or JSON files in the folder")
        rows: list = []
        for f in files:
            rows += read_row_file(f)
        return rows
    if not hub_id:
        raise ClabError("a task needs a hub_id or a path")
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_id, config, split=split)
    except Exception as e:  # datasets raises many kinds; the user needs the id and the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ClabError(
            f"{hub_id}: cannot load split {split!r} ({first}); set the task's path to a local copy"
        ) from None
    return ds.to_list()


def _field(row: dict, name: str, where: str, i: int, kind=str):
    value = row.get(name) if isinstance(row, dict) else None
    if not isinstance(value, kind) or (kind is str and not value.strip()):
        raise ClabError(f"{where}: row {i} has no usable field '{name}'")
    return value


# -- the real tasks --------------------------------------------------------------------------


def competition_math(rows: list, where: str) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        problem = _field(r, "problem", where, i)
        solution = _field(r, "solution", where, i)
        if "level" not in r:
            raise ClabError(f"{where}: row {i} has no field 'level'")
        final = last_boxed(solution) or ""
        out.append(
            Example(
                id=str(r.get("id") or content_id(problem, solution)),
                prompt=f"{MATH_INSTRUCTION}\n\n{problem}",
                answer=solution,
                final=final,
                level=parse_level(r["level"]),
            )
        )
    return out


def _paragraphs(context, where: str, i: int) -> list[tuple[str, str]]:
    if isinstance(context, dict):  # the hub's Parquet: {title: [...], sentences: [[...]]}
        titles, sentences = context.get("title"), context.get("sentences")
        if isinstance(titles, list) and isinstance(sentences, list):
            return [(t, "".join(s)) for t, s in zip(titles, sentences, strict=False)]
    if isinstance(context, list) and all(
        isinstance(c, list | tuple) and len(c) == 2 for c in context
    ):  # the official JSON: [[title, [sentences]], ...]
        return [(str(t), "".join(s)) for t, s in context]
    raise ClabError(f"{where}: row {i} field 'context' is not HotpotQA's paragraphs")


def hotpotqa(rows: list, where: str) -> list[Example]:
    out = []
    for i, r in enumerate(rows):
        question = _field(r, "question", where, i)
        answer = _field(r, "answer", where, i)
        if "context" not in r:
            raise ClabError(f"{where}: row {i} has no field 'context'")
        context = "\n".join(f"{t}: {p}" for t, p in _paragraphs(r["context"], where, i))
        out.append(
            Example(
                id=str(r.get("id") or r.get("_id") or content_id(question, context)),
                prompt=f"{QA_INSTRUCTION}\n\nContext:\n{context}\n\nQuestion: {question}",
                answer=answer,
                final=answer,
            )
        )
    return out


# -- the offline demo tasks ------------------------------------------------------------------

_OPS_RANK = {"+": 1, "-": 2, "*": 3, "/": 4}


def arithmetic(n: int, seed: int) -> list[Example]:
    """Expressions from the Countdown generator and their values; level = the hardest
    operator's rank (+ 1, - 2, * 3, / 4), plus 1 for four numbers, capped at 5."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out: dict[str, Example] = {}
    while len(out) < n:
        p = sample_problems(
            rng, 4 * n, ("+", "-", "*", "/"), number_range=(1, 20), target_range=(1, 200)
        )
        for expr, value, nums in zip(p.solution, p.target, p.numbers, strict=True):
            rank = max(_OPS_RANK[c] for c in expr if c in _OPS_RANK)
            level = min(5, rank + (len(nums) == 4))
            ex = Example(content_id(expr), f"Compute {expr}", str(value), str(value), level)
            out.setdefault(ex.id, ex)
    return list(out.values())[:n]


def _words() -> tuple[list[str], list[str]]:
    """Standard-library module names as subjects, documentation-topic words as objects:
    the same on every machine with the same Python minor version. Not the modules
    installed (``pkgutil.iter_modules``): adding a package once changed every example,
    and with them a test's losses, between two machines with one lock file."""
    from pydoc_data.topics import topics

    names = sorted(n for n in sys.stdlib_module_names if n.isalpha() and len(n) < 9)
    words = sorted({w for w in re.findall(r"\b[a-z]{4,8}\b", " ".join(topics.values()))})
    return names, words


def context_qa(n: int, seed: int, facts: int = 4) -> list[Example]:
    """Each example: ``facts`` lines "<module> keeps the <word>.", a question about one
    module, the answer its word: HotpotQA's shape (the answer is in one of several
    paragraphs, the rest distract) at a size a tiny model learns in minutes."""
    names, words = _words()
    rng = random.Random(seed)
    out: dict[str, Example] = {}
    while len(out) < n:
        subjects = rng.sample(names, facts)
        objects = rng.sample(words, facts)
        asked = rng.randrange(facts)
        context = "\n".join(f"{s} keeps the {o}." for s, o in zip(subjects, objects, strict=True))
        q = f"What does {subjects[asked]} keep?"
        ex = Example(
            content_id(context, q),
            f"{QA_INSTRUCTION}\n\nContext:\n{context}\n\nQuestion: {q}",
            objects[asked],
            objects[asked],
        )
        out.setdefault(ex.id, ex)
    return list(out.values())
