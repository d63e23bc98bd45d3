"""95% intervals for scores over test items, and for the continual-learning metrics.

A score is an aggregate over test items (problems, examples, text windows), so
every number the page and ``clab report`` show carries the number of items
it rests on and a 95% interval:

- a success rate (items scored 0 or 1) in one cell of R: the Wilson score
  interval, which stays inside [0, 1] and has width at 0 successes (a normal
  interval collapses to a point there);
- the average of success rates over equally sized tasks: Wilson again, on the
  pooled items (the average is then the pooled rate);
- everything else (a loss, a perplexity, and every metric computed from
  differences of cells: backward transfer, forgetting, forward transfer): a
  percentile bootstrap over items. The evaluator scores the same test items
  at every stage, so items are resampled jointly across stages (paired): the
  interval of a difference such as forgetting then reflects the items, not
  two independent draws. Tasks have their own items and are resampled
  independently. The bootstrap is seeded, so a page rebuilt from the same
  results shows the same intervals.

A bootstrap interval collapses to a point when every item scores the same at
every stage (a task no checkpoint ever solves); the Wilson interval of the
cell still shows how little n items can exclude.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from clab.metrics.continual import summarize

Z95 = 1.959964
N_BOOT = 1000
# how a value is computed from its items: the weighted mean, or its exponential
# (a perplexity from per-window token losses)
AGGREGATES = ("mean", "exp_mean")


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval of a rate: unlike p +- 1.96 se it stays inside [0, 1]
    and is honest at 0 successes."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(max(p * (1 - p), 0.0) / n + Z95**2 / (4 * n**2)) / (1 + Z95**2 / n)
    # at 0 or n successes the bound is exactly 0 or 1 in closed form; computed, it
    # comes out a rounding error inside (0.9999999999999999)
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return lo, hi


def is_binary(values: Sequence[float]) -> bool:
    """Items all 0 or 1: the value is a success rate, and Wilson applies."""
    return len(values) > 0 and all(v in (0.0, 1.0) for v in values)


def aggregate(values: np.ndarray, weights: np.ndarray | None, how: str) -> np.ndarray:
    """The value from items along the last axis (the evaluator's own rule per scorer)."""
    if weights is None:
        m = values.mean(axis=-1)
    else:
        m = (values * weights).sum(axis=-1) / np.maximum(weights.sum(axis=-1), 1e-12)
    return np.exp(np.minimum(m, 50.0)) if how == "exp_mean" else m


def _percentile(x: np.ndarray) -> list[float] | None:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return None
    lo, hi = np.percentile(x, [2.5, 97.5])
    return [float(lo), float(hi)]


def cell_interval(
    value: float,
    n: int,
    items: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    how: str = "mean",
    *,
    success_rate: bool = False,
    seed: int = 0,
) -> tuple[list[float] | None, str | None]:
    """One cell's 95% interval and its method ('wilson' or 'bootstrap').

    Without items, a success rate still gets Wilson from its value and n (old
    evaluations stored no items); other values get none.
    """
    if items is not None and len(items) and is_binary(items.tolist()) and how == "mean":
        return list(wilson(float(np.sum(items)), len(items))), "wilson"
    if items is None or not len(items):
        if success_rate and n > 0:
            return list(wilson(round(value * n), n)), "wilson"
        return None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=(N_BOOT, len(items)))
    w = None if weights is None else weights[idx]
    return _percentile(aggregate(items[idx], w, how)), "bootstrap"


def continual_intervals(
    items: dict[int, np.ndarray],
    weights: dict[int, np.ndarray | None],
    how: dict[int, str],
    stage_tasks: Sequence[int | None],
    higher_is_better: bool,
    *,
    seed: int = 0,
) -> dict:
    """Paired-bootstrap 95% intervals of every continual-learning metric.

    ``items[j]`` holds task j's per-item values as a (stages, items) array, the
    same items at every stage. Returns intervals keyed as ``summarize`` keys its
    values: ``average_accuracy``, ``average_accuracy_per_stage``,
    ``backward_transfer``, ``backward_transfer_per_task``, ``forgetting``,
    ``forgetting_per_task``, ``forward_transfer``.
    """
    rng = np.random.default_rng(seed)
    tasks = sorted(items)
    n_stages = items[tasks[0]].shape[0]
    R = np.zeros((N_BOOT, n_stages, len(tasks)))
    for j in tasks:
        v = items[j]
        idx = rng.integers(0, v.shape[1], size=(N_BOOT, v.shape[1]))
        vals = v[:, idx].transpose(1, 0, 2)  # (boot, stage, item)
        w = weights.get(j)
        ws = None if w is None else w[:, idx].transpose(1, 0, 2)
        R[:, :, j] = aggregate(vals, ws, how.get(j, "mean"))
    boots = [summarize(R[b], stage_tasks, higher_is_better) for b in range(N_BOOT)]

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if b[key] is None else b[key] for b in boots], dtype=float)

    def per_task(key: str) -> dict[str, list[float] | None]:
        keys = boots[0][key].keys()
        return {k: _percentile(np.array([b[key][k] for b in boots], dtype=float)) for k in keys}

    per_stage = np.array([b["average_accuracy_per_stage"] for b in boots], dtype=float)
    avg = [_percentile(per_stage[:, i]) for i in range(n_stages)]
    sizes = {items[j].shape[1] for j in tasks}
    if len(sizes) == 1 and all(
        how.get(j, "mean") == "mean"
        and weights.get(j) is None
        and is_binary(items[j].ravel().tolist())
        for j in tasks
    ):
        # equal-sized tasks of 0/1 items: the average is the pooled rate, so Wilson
        # applies (and keeps its width where every item fails, unlike the bootstrap)
        n = sizes.pop() * len(tasks)
        avg = [
            list(wilson(float(sum(items[j][i].sum() for j in tasks)), n)) for i in range(n_stages)
        ]
    return {
        "average_accuracy": avg[-1],
        "average_accuracy_per_stage": avg,
        "backward_transfer": _percentile(col("backward_transfer")),
        "backward_transfer_per_task": per_task("backward_transfer_per_task"),
        "forgetting": _percentile(col("forgetting")),
        "forgetting_per_task": per_task("forgetting_per_task"),
        "forward_transfer": _percentile(col("forward_transfer")),
    }
