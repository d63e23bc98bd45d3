"""Preference tasks: reading, checking, hashing and writing them.

A task is a name, its train and test pairs (plain strings ``prompt``,
``chosen``, ``rejected``: no chat template is applied anywhere) and what its
source said about it. Tasks come from an AIF-Gen continual file
(``{"datasets": [{"task": {...}, "train": [...], "test": [...]}, ...]}``),
from a list of data sets (local Parquet/JSON/JSONL files or hub ids), or
from a built-in generator (``builtin:styles``, the offline demo). Every
source goes through :func:`check_task`, so a row without a field or a test
split that repeats training pairs stops the run (exit 2) before anything is
written, naming the task and the field. The public AIF-Gen debug file has
exactly that mistake: two identical tasks whose test split is the train split.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clab.data.row_files import json_lines, read_row_file
from clab.errors import ClabError
from clab.storage.atomic import write_text

FIELDS = ("prompt", "chosen", "rejected")
Row = dict[str, str]


@dataclass
class PreferenceTask:
    name: str
    train: list[Row]
    test: list[Row]
    info: dict[str, Any] = field(default_factory=dict)

    def data_hash(self) -> str:
        """sha256 of the pairs (train and test, in order): the key a reward model is
        stored under, so it is reused exactly when the data it learned from is the same."""
        h = hashlib.sha256()
        for split in (self.train, self.test):
            h.update(json.dumps([[r[f] for f in FIELDS] for r in split]).encode())
            h.update(b"\0")
        return h.hexdigest()


def check_rows(task: str, split: str, rows: list[Any]) -> list[Row]:
    """Every row a mapping with the three fields as strings; only those fields kept."""
    if not rows:
        raise ClabError(f"task {task!r}: its {split} split is empty")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ClabError(f"task {task!r}: {split} row {i} is not a mapping with {FIELDS}")
        for f in FIELDS:
            if f not in r or r[f] is None:
                raise ClabError(f"task {task!r}: {split} row {i} lacks the field {f!r}")
            if not isinstance(r[f], str):
                raise ClabError(
                    f"task {task!r}: {split} row {i}, field {f!r} is a {type(r[f]).__name__}, "
                    "not a string (conversational rows are not supported: clab feeds plain text, "
                    "never a chat template)"
                )
        out.append({f: r[f] for f in FIELDS})
    return out


def check_task(task: PreferenceTask) -> PreferenceTask:
    """Fields present, and no test pair that is also a training pair."""
    task.train = check_rows(task.name, "train", task.train)
    task.test = check_rows(task.name, "test", task.test)
    seen = {tuple(r[f] for f in FIELDS) for r in task.train}
    repeated = sum(tuple(r[f] for f in FIELDS) in seen for r in task.test)
    if repeated:
        whole = " (the whole test split)" if repeated == len(task.test) else ""
        raise ClabError(
            f"task {task.name!r}: {repeated} of its {len(task.test)} test pairs{whole} repeat "
            "training pairs (field 'test'): scores on them would measure memory, not "
            "preference; give the task a held-out test split"
        )
    return task


def check_tasks(tasks: list[PreferenceTask]) -> list[PreferenceTask]:
    if not tasks:
        raise ClabError("data: no tasks")
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClabError(f"data: task names must differ ({', '.join(dup)} repeated)")
    return [check_task(t) for t in tasks]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:24]


def read_aif_gen(path: str | Path) -> list[PreferenceTask]:
    """The AIF-Gen continual format; task names are ``t<i>`` plus the task's domain."""
    path = Path(path)
    if not path.is_file():
        raise ClabError(f"data.source: {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ClabError(f"data.source: {path} is not readable JSON ({e})") from None
    sets = data.get("datasets") if isinstance(data, dict) else None
    if not isinstance(sets, list) or not sets:
        raise ClabError(
            f"data.source: {path} is not an AIF-Gen continual file: it needs "
            '{"datasets": [{"task": {...}, "train": [...], "test": [...]}, ...]}'
        )
    tasks = []
    for i, d in enumerate(sets):
        if not isinstance(d, dict):
            raise ClabError(f"data.source: {path}: datasets[{i}] is not a mapping")
        info = d.get("task") if isinstance(d.get("task"), dict) else {}
        label = _slug(str(info.get("domain") or info.get("objective") or ""))
        name = f"t{i}-{label}" if label else f"t{i}"
        for split in ("train", "test"):
            if not isinstance(d.get(split), list):
                raise ClabError(f"task {name!r}: datasets[{i}] lacks the field {split!r} (a list)")
        tasks.append(
            PreferenceTask(name, d["train"], d["test"], {"task": info, "source": str(path)})
        )
    return tasks


def read_rows(source: str) -> list[dict]:
    """One split: a local .parquet / .json / .jsonl file, or ``hub:<id>[:<config>]@<split>``."""
    if source.startswith("hub:"):
        ref, _, split = source[4:].partition("@")
        name, _, config = ref.partition(":")
        from datasets import load_dataset

        try:
            return load_dataset(name, config or None, split=split or "train").to_list()
        except Exception as e:  # the hub's errors have many types; the user's fix is one
            raise ClabError(f"{source}: cannot load the data set ({e})") from None
    return read_row_file(Path(source))


def write_split(path: Path, rows: list[Row]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_split(path: str | Path, limit: int | None = None) -> list[Row]:
    path = Path(path)
    if not path.is_file():
        raise ClabError(f"{path}: the task's split is missing (was the run's initial stage moved?)")
    rows = json_lines(path.read_text(), path)
    return rows[:limit] if limit else rows
