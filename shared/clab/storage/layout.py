"""Where things live in the volumes, and what a complete stage looks like.

Every experiment kind in clab is a sequence of stages: a stage is one pass
over one task in one round (a Countdown operator group, SFT task A or B, a
DPO task, a text corpus). Naming stages the same way for every kind lets one
evaluator and one plotter serve them all.

    data/<dataset>/<task>/{train,test}.parquet, data/<dataset>/manifest.json
    checkpoints/<run>/initial/                  the model before training (stage 0)
    checkpoints/<run>/r<round>-g<task>/         after stage (round, task)
    checkpoints/<run>/<stage>/COMPLETE          written last: the stage is whole
    checkpoints/<run>/run.json                  the run's data set, tasks and spec
    metrics/<run>/...  logs/<run>/...  plots/<run>/...
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clab.storage.atomic import write_json

VOLUMES = ("data", "checkpoints", "logs", "metrics", "plots")
COMPLETE_MARKER = "COMPLETE"
RUN_INFO = "run.json"  # checkpoints/<run>/run.json: what a run trained on, for its readers
INITIAL_STAGE = "initial"
_STAGE_RE = re.compile(r"^r(\d+)-g(\d+)$")


@dataclass(frozen=True, order=True)
class Stage:
    """One (round, task) step of a run; ``index`` 0 is the untrained model.

    ``index`` counts stages from 1 in training order, so the continual-learning
    matrix R[index, task] can be read straight off a run's stages.
    """

    index: int
    round: int
    task: int

    @property
    def name(self) -> str:
        return INITIAL_STAGE if self.index == 0 else f"r{self.round}-g{self.task}"


def stage_sequence(rounds: int, num_tasks: int) -> list[Stage]:
    """The stages of a run in training order, after the initial stage 0."""
    return [
        Stage(index=r * num_tasks + t + 1, round=r, task=t)
        for r in range(rounds)
        for t in range(num_tasks)
    ]


def mark_complete(folder: str | Path, stage: Stage | None = None, /, **info: object) -> None:
    """Write the marker that makes a folder (a stage, a resume checkpoint, a reward
    model) whole to its readers; call it last. The write is atomic, so a reader sees
    the whole marker or none; a stage's marker starts with its index, round and task."""
    write_json(Path(folder) / COMPLETE_MARKER, {**(asdict(stage) if stage else {}), **info})


def aside_path(path: str | Path, stamp: str | None = None) -> Path:
    """Where ``path`` goes when it is moved aside: ``<name>.old-<date-time>`` beside it.
    Old results are kept, never deleted, and never mixed with new ones; ``stamp``
    gives several folders one date."""
    path = Path(path)
    return path.with_name(f"{path.name}.old-{stamp or time.strftime('%Y%m%d-%H%M%S')}")


def move_aside(path: str | Path, stamp: str | None = None) -> Path:
    """Rename ``path`` to its ``aside_path`` (one atomic rename) and say so."""
    target = aside_path(path, stamp)
    os.replace(path, target)
    print(f"clab: moved {path} aside to {target}", flush=True)
    return target


def complete_stages(run_dir: str | Path) -> list[tuple[Stage, Path]]:
    """The stages of a run whose marker exists, in training order.

    A stage folder without its marker is being written (or its writer died):
    readers skip it, which is what makes evaluating a live run safe.
    """
    run_dir = Path(run_dir)
    found = []
    if not run_dir.is_dir():
        return found
    for d in run_dir.iterdir():
        marker = d / COMPLETE_MARKER
        if not (d.is_dir() and marker.is_file()):
            continue
        if d.name != INITIAL_STAGE and not _STAGE_RE.match(d.name):
            continue
        info = json.loads(marker.read_text())
        found.append((Stage(info["index"], info["round"], info["task"]), d))
    return sorted(found)
