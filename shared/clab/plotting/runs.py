"""What the page and ``clab report`` know about a run: its files, its kind, its
headline numbers with their intervals.

Both read the same ``RunData`` and the same ``headline`` rows, so the table a
terminal prints and the table the page shows can never disagree. A run is a
folder under ``metrics/`` holding any of train.jsonl, val.jsonl,
eval.parquet, summary.json. A run records its experiment, variant and seed
(run.json's ``replicate``, copied into summary.json); runs of older clabs may
nest a sweep's branches one level (``metrics/<sweep>/<branch>/``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clab.evaluation.evaluator import ITEMS_FILE, read_eval, summary_from_rows
from clab.evaluation.experiments import SUMMARY_KEYS, replicate_of, set_name
from clab.storage.atomic import read_json
from clab.storage.layout import RUN_INFO
from clab.tracking.metrics_log import read_rows

RUN_FILES = ("train.jsonl", "val.jsonl", "eval.parquet", "summary.json")


@dataclass
class RunData:
    """One run's metrics, read once for every figure and table."""

    name: str  # "<run>" or "<sweep>/<branch>"
    kind: str
    metrics_dir: Path
    info: dict[str, Any] = field(default_factory=dict)  # checkpoints/<run>/run.json
    train: list[dict] = field(default_factory=list)
    val: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # with "intervals", computed if not stored

    @property
    def replicate(self) -> dict | None:
        """Experiment, variant and seed (run.json's, else the summary's copy)."""
        return replicate_of(self.summary, self.info)

    @property
    def set_name(self) -> str:
        """The run's name without its seed: what its seeds share."""
        rep = self.replicate
        return set_name(rep) if rep else self.name

    @property
    def sweep(self) -> str | None:
        """The experiment of a run among variants or seeds (or a nested run's sweep
        folder), else None."""
        rep = self.replicate
        if rep and rep["experiment"] != self.name:
            return rep["experiment"]
        return self.name.rsplit("/", 1)[0] if "/" in self.name else None

    @property
    def slug(self) -> str:
        """The run's name as one path part and HTML id."""
        return self.name.replace("/", "--")

    @property
    def task_names(self) -> list[str]:
        if self.summary:
            return list(self.summary["task_names"])
        tasks = self.info.get("tasks")
        if tasks:
            return [t["name"] for t in tasks]
        return list(dict.fromkeys(str(r["task"]) for r in self.val))  # in logged order


def is_run_dir(d: Path) -> bool:
    return any((d / f).is_file() for f in RUN_FILES)


def find_run_names(metrics: Path) -> list[str]:
    """Every run under ``metrics/``, nested sweep branches as ``<sweep>/<branch>``."""
    if not metrics.is_dir():
        return []
    out = []
    for d in sorted(metrics.iterdir()):
        if not d.is_dir() or d.name.startswith("."):
            continue
        if is_run_dir(d):
            out.append(d.name)
        else:
            out += [
                f"{d.name}/{c.name}"
                for c in sorted(d.iterdir())
                if c.is_dir() and not c.name.startswith(".") and is_run_dir(c)
            ]
    return out


def infer_kind(info: dict, summary: dict | None, train: list[dict], val: list[dict]) -> str:
    """run.json's kind; for runs whose checkpoints are not at hand, the summary's, or
    a guess from what the trainer logged."""
    if info.get("kind"):
        return str(info["kind"])
    if summary and summary.get("kind"):
        return str(summary["kind"])
    if any("selected" in r for r in train):
        return "k1-lm"
    if any("success_rate" in r for r in train + val):
        return "countdown-rl"
    return "other"


def load_run(metrics: Path, name: str, checkpoints: Path | None = None) -> RunData:
    """A run's files. A summary written before intervals were stored gets them here
    from eval.parquet (Wilson for success-rate cells; bootstrap where items exist)."""
    d = metrics / name
    info: dict = {}
    if checkpoints is not None and (checkpoints / name / RUN_INFO).is_file():
        try:
            info = json.loads((checkpoints / name / RUN_INFO).read_text())
        except (OSError, json.JSONDecodeError):
            info = {}
    summary = None
    if (d / "summary.json").is_file():
        summary = read_json(d / "summary.json", SUMMARY_KEYS)
    eval_rows = read_eval(d / "eval.parquet")
    if summary is not None and "intervals" not in summary and eval_rows:
        fresh = summary_from_rows(eval_rows, summary["task_names"], read_eval(d / ITEMS_FILE))
        if fresh is not None:
            summary["intervals"] = fresh["intervals"]
            summary.setdefault("n_items_per_task", fresh["n_items_per_task"])
    train, val = read_rows(d / "train.jsonl"), read_rows(d / "val.jsonl")
    return RunData(
        name=name,
        kind=infer_kind(info, summary, train, val),
        metrics_dir=d,
        info=info,
        train=train,
        val=val,
        eval=eval_rows,
        samples=read_rows(d / "samples.jsonl"),
        summary=summary,
    )


# -- the headline table -------------------------------------------------------------------


@dataclass
class Estimate:
    """A number with its 95% interval (None where there is none)."""

    value: float | None
    ci: tuple[float, float] | None = None

    def text(self, signed: bool = False) -> str:
        if self.value is None or not math.isfinite(self.value):
            return "-"
        scale = max([abs(self.value), *(abs(x) for x in self.ci or ())])
        s = fmt(self.value, signed, scale)
        if self.ci is not None:
            s += f" [{fmt(self.ci[0], signed, scale)}, {fmt(self.ci[1], signed, scale)}]"
        return s


def fmt(v: float, signed: bool = False, scale: float | None = None) -> str:
    """Three decimals for rates and losses, fewer for perplexities in the hundreds; a
    value and its interval share one ``scale``, so they have the same decimals."""
    a = abs(v) if scale is None else scale
    digits = 0 if a >= 1000 else 1 if a >= 100 else 2 if a >= 10 else 3
    out = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    zero = f"{0:.{digits}f}"
    return zero if out in (f"-{zero}", f"+{zero}") else out


@dataclass
class HeadlineRow:
    """One line of the headline table: a run's score after its last stage."""

    run: str
    score: str
    higher_is_better: bool
    n: str  # items per task, e.g. "100" or "100, 100, 64"
    stages: int
    cells: dict[str, Estimate]  # HEADLINE_COLUMNS keys
    over: str = "test items of one run"  # what the intervals are over


HEADLINE_COLUMNS = [
    ("average_accuracy", "average (final)"),
    ("backward_transfer", "backward transfer"),
    ("forgetting", "forgetting"),
]


def _ci(x) -> tuple[float, float] | None:
    return None if x is None else (float(x[0]), float(x[1]))


def headline(run: RunData, scores: list[str] | None = None) -> list[HeadlineRow]:
    """The default headline rows: the primary score (or the named ones) after the last
    stage, with average, backward transfer and forgetting and their intervals."""
    s = run.summary
    if not s:
        return []
    out = []
    for score in scores or [s["score"]]:
        m = s.get("scores", {}).get(score) if score != s["score"] else s
        if m is None:
            continue
        iv = s.get("intervals", {}).get(score, {})
        n_items = s.get("n_items_per_task") or s.get("n_per_task") or {}
        ns = sorted({int(v) for v in n_items.values()})
        out.append(
            HeadlineRow(
                run=run.name,
                score=score,
                higher_is_better=bool(m.get("higher_is_better", True)),
                n=", ".join(str(v) for v in ns),
                stages=int(m.get("stages", len(m["matrix"]) - 1)),
                cells={k: Estimate(m.get(k), _ci(iv.get(k))) for k, _ in HEADLINE_COLUMNS},
            )
        )
    return out


@dataclass
class TaskRow:
    """Per task: its score right after its last stage, at the end, and what was lost."""

    task: str
    n: int | None
    after_own: Estimate
    final: Estimate
    forgetting: Estimate
    backward_transfer: Estimate


def per_task(run: RunData, score: str | None = None) -> list[TaskRow]:
    s = run.summary
    if not s:
        return []
    score = score or s["score"]
    m = s if score == s["score"] else s["scores"][score]
    iv = s.get("intervals", {}).get(score, {})
    R, tasks, T = m["matrix"], m["stage_tasks"], len(m["matrix"]) - 1
    cells = iv.get("matrix") or [[None] * len(R[0]) for _ in R]
    n_items = s.get("n_items_per_task") or s.get("n_per_task") or {}
    out = []
    for j, name in enumerate(s["task_names"]):
        last = max((i for i in range(1, T + 1) if tasks[i] == j), default=None)
        key = str(j)
        out.append(
            TaskRow(
                task=name,
                n=n_items.get(name),
                after_own=Estimate(R[last][j], _ci(cells[last][j]))
                if last is not None
                else Estimate(None),
                final=Estimate(R[T][j], _ci(cells[T][j])),
                forgetting=Estimate(
                    m.get("forgetting_per_task", {}).get(key),
                    _ci(iv.get("forgetting_per_task", {}).get(key)),
                ),
                backward_transfer=Estimate(
                    m.get("backward_transfer_per_task", {}).get(key),
                    _ci(iv.get("backward_transfer_per_task", {}).get(key)),
                ),
            )
        )
    return out
