"""Built-in preference tasks for the offline demo and the tests (no download).

``styles``: the prompt is three words, ``"copy: sun cat red =>"``, and every
response repeats them; the tasks differ only in which way of writing them is
preferred. ``upper`` prefers capitals over lower case, ``lower`` the
opposite (the same prompts, a direct conflict: learning it must undo
``upper``, which is what makes forgetting visible), and ``commas`` prefers
the words separated by commas over semicolons (both lower case, and neither
is a response of the other tasks: it touches the punctuation, not the case).
A tiny model learns each in a few dozen DPO steps on a CPU, and a tiny
reward model tells chosen from rejected almost perfectly, so the scores move
far beyond their noise. Train and test prompts are disjoint word triples.
"""

from __future__ import annotations

import random

from clab.data.preference.tasks import PreferenceTask, Row
from clab.errors import ClabError

WORDS = [
    "sun",
    "cat",
    "red",
    "dog",
    "sky",
    "map",
    "tea",
    "cup",
    "box",
    "pen",
    "hat",
    "oak",
    "sea",
    "fox",
    "owl",
    "bee",
    "ink",
    "jar",
    "bus",
    "key",
    "fig",
    "elk",
    "ant",
    "yak",
    "cow",
    "pig",
    "hen",
    "rat",
    "bat",
]
STYLE_TASKS = ("upper", "lower", "commas")


def _respond(words: list[str], style: str) -> str:
    if style == "upper":
        return " " + " ".join(w.upper() for w in words)
    if style == "commas":
        return " " + ", ".join(words)
    if style == "semicolons":
        return " " + "; ".join(words)
    return " " + " ".join(words)


PAIRS = {  # task: (chosen style, rejected style)
    "upper": ("upper", "lower"),
    "lower": ("lower", "upper"),
    "commas": ("commas", "semicolons"),
}


def style_tasks(
    names: list[str] | None, train_size: int, test_size: int, seed: int
) -> list[PreferenceTask]:
    names = list(names or STYLE_TASKS)
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        raise ClabError(f"data.tasks: {unknown} not built in (known: {', '.join(STYLE_TASKS)})")
    triples = [(a, b, c) for a in WORDS for b in WORDS for c in WORDS if len({a, b, c}) == 3]
    need = train_size + test_size
    if need > len(triples) // 2:
        raise ClabError(f"data: at most {len(triples) // 2} built-in rows per task")
    tasks = []
    for t, name in enumerate(names):
        rng = random.Random(f"{seed}-styles-{t}")  # str seeds: the same in every process
        picked = rng.sample(triples, need)
        # test prompts: never a training prompt of any task (the same draw for every task)
        rows: list[Row] = []
        for words in picked:
            chosen, rejected = PAIRS[name]
            rows.append(
                {
                    "prompt": "copy: " + " ".join(words) + " =>",
                    "chosen": _respond(list(words), chosen),
                    "rejected": _respond(list(words), rejected),
                }
            )
        tasks.append(PreferenceTask(name, rows[:train_size], rows[train_size:], {"builtin": name}))
    test_prompts = {r["prompt"] for t in tasks for r in t.test}
    for t in tasks:
        t.train = [r for r in t.train if r["prompt"] not in test_prompts]
    return tasks
