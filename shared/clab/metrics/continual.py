"""Continual-learning metrics from the matrix R[i, j]: score on task j after stage i.

Row 0 is the model before training; rows 1..T follow the stages in training
order; ``stage_tasks[i]`` is the task stage i trained (entry 0 unused). With
repeated rounds a task is trained at several stages. Formulas (docs/metrics.md):

- average accuracy after stage i: A_i = mean_j R[i, j]; the final one is A_T.
- last(j): the last stage before or at T that trained task j; first(j): the first.
- BWT = mean over tasks j != task(T) of s * (R[T, j] - R[last(j), j]).
- forgetting f_j = max over stages l in 1..T-1 of s * (R[l, j] - R[T, j]) (Chaudhry
  et al. 2018), for tasks trained before stage T and other than task(T); and its mean.
- FWT = mean over tasks j with first(j) > 1 of s * (R[first(j) - 1, j] - R[0, j]).
- rise of stage i: s * (R[i, task(i)] - R[i - 1, task(i)]), what stage i taught the
  task it trained (learning, where forgetting is unlearning).

``s`` is +1 when higher scores are better (success rate) and -1 when lower is
better (a loss), so that negative BWT and positive forgetting always mean
the model got worse on old tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _sign(higher_is_better: bool) -> float:
    return 1.0 if higher_is_better else -1.0


def _check(R: np.ndarray, stage_tasks: Sequence[int]) -> tuple[np.ndarray, list[int]]:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] < 2:
        raise ValueError("R needs a row for the initial model and at least one stage")
    tasks = list(stage_tasks)
    if len(tasks) != R.shape[0]:
        raise ValueError(f"stage_tasks has {len(tasks)} entries for {R.shape[0]} rows of R")
    return R, tasks


def average_accuracy(R: np.ndarray) -> np.ndarray:
    """A_i = mean over tasks of R[i, j], for every row i (row 0: before training)."""
    return np.asarray(R, dtype=float).mean(axis=1)


def last_trained(stage_tasks: Sequence[int], task: int, upto: int) -> int | None:
    idx = [i for i in range(1, upto + 1) if stage_tasks[i] == task]
    return idx[-1] if idx else None


def backward_transfer_per_task(
    R, stage_tasks: Sequence[int], higher_is_better: bool = True
) -> dict[int, float]:
    """s * (R[T, j] - R[last(j), j]) for each task j trained before and other than
    task(T): the terms whose mean is BWT, so a page can show which task lost what."""
    R, tasks = _check(R, stage_tasks)
    T, s = R.shape[0] - 1, _sign(higher_is_better)
    out = {}
    for j in range(R.shape[1]):
        last = last_trained(tasks, j, T)
        if last is None or j == tasks[T]:
            continue
        out[j] = float(s * (R[T, j] - R[last, j]))
    return out


def backward_transfer(R, stage_tasks: Sequence[int], higher_is_better: bool = True) -> float:
    diffs = list(backward_transfer_per_task(R, stage_tasks, higher_is_better).values())
    return float(np.mean(diffs)) if diffs else float("nan")


def forgetting_per_task(R, stage_tasks: Sequence[int], higher_is_better: bool = True) -> dict:
    R, tasks = _check(R, stage_tasks)
    T, s = R.shape[0] - 1, _sign(higher_is_better)
    out = {}
    for j in range(R.shape[1]):
        if j == tasks[T] or last_trained(tasks, j, T - 1) is None:
            continue
        # np.max, not max(): a NaN anywhere makes the task's forgetting NaN, wherever
        # it sits (Python's max keeps or drops a NaN by its position)
        out[j] = float(np.max(s * (R[1:T, j] - R[T, j])))
    return out


def forgetting(R, stage_tasks: Sequence[int], higher_is_better: bool = True) -> float:
    f = forgetting_per_task(R, stage_tasks, higher_is_better)
    return float(np.mean(list(f.values()))) if f else float("nan")


def forward_transfer(R, stage_tasks: Sequence[int], higher_is_better: bool = True) -> float:
    R, tasks = _check(R, stage_tasks)
    s = _sign(higher_is_better)
    diffs = []
    for j in range(R.shape[1]):
        firsts = [i for i in range(1, len(tasks)) if tasks[i] == j]
        if firsts and firsts[0] > 1:
            diffs.append(s * (R[firsts[0] - 1, j] - R[0, j]))
    return float(np.mean(diffs)) if diffs else float("nan")


def rise_per_stage(R, stage_tasks: Sequence[int], higher_is_better: bool = True) -> list[float]:
    """Stage i's rise on the task it trained, for i = 1..T: did the model learn what it
    was trained on? A continual-learning result reads forgetting against this; a
    run that learns nothing forgets nothing either."""
    R, tasks = _check(R, stage_tasks)
    s = _sign(higher_is_better)
    return [float(s * (R[i, tasks[i]] - R[i - 1, tasks[i]])) for i in range(1, len(tasks))]


def summarize(R, stage_tasks: Sequence[int], higher_is_better: bool = True) -> dict:
    """Every metric above, JSON-ready: NaN (a metric undefined, or a cell a diverged
    model scored NaN, and every metric that reads it) becomes None at every level,
    since strict JSON readers reject a bare NaN."""
    R, tasks = _check(R, stage_tasks)

    def clean(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    def clean_all(xs) -> list:
        return [clean_all(x) if isinstance(x, list) else clean(x) for x in xs]

    acc = average_accuracy(R)
    return {
        "higher_is_better": higher_is_better,
        "stages": R.shape[0] - 1,
        "tasks": R.shape[1],
        "average_accuracy": clean(acc[-1]),
        "average_accuracy_per_stage": clean_all(acc.tolist()),
        "backward_transfer": clean(backward_transfer(R, tasks, higher_is_better)),
        "backward_transfer_per_task": {
            str(k): clean(v)
            for k, v in backward_transfer_per_task(R, tasks, higher_is_better).items()
        },
        "forgetting": clean(forgetting(R, tasks, higher_is_better)),
        "forgetting_per_task": {
            str(k): clean(v) for k, v in forgetting_per_task(R, tasks, higher_is_better).items()
        },
        "forward_transfer": clean(forward_transfer(R, tasks, higher_is_better)),
        "matrix": clean_all(R.tolist()),
        "stage_tasks": list(tasks),
    }
