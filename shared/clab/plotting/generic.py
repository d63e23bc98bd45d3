"""The figures every kind gets unless it registers its own: training curves, the
annotated R matrix, per-task scores and forgetting, all with n and 95% intervals.

Also the helpers the registered kinds build on (a run's matrix, its stage
labels, its per-task forgetting with intervals).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clab.plotting import figures
from clab.plotting.runs import RunData, per_task
from clab.plotting.sections import Figure, Section


def pretty(value: str) -> str:
    return value.replace("_", " ")


def interval_name(run: RunData, score: str | None = None) -> str:
    """How the cells' intervals were computed, in words."""
    s = run.summary or {}
    iv = s.get("intervals", {}).get(score or s.get("score", ""), {})
    m = iv.get("cell_method")
    return {"wilson": "Wilson interval", "bootstrap": "bootstrap over items"}.get(
        m, "interval (none stored)"
    )


def n_text(run: RunData) -> str:
    s = run.summary or {}
    n = s.get("n_items_per_task") or s.get("n_per_task") or {}
    vals = sorted({int(v) for v in n.values()})
    return ", ".join(str(v) for v in vals) or "?"


def matrix(run: RunData, score: str | None = None):
    """(R, cell intervals, stage tasks, higher is better) of a scored value, or None."""
    s = run.summary
    if not s:
        return None
    score = score or s["score"]
    m = s if score == s["score"] else s.get("scores", {}).get(score)
    if m is None:
        return None
    cis = s.get("intervals", {}).get(score, {}).get("matrix")
    return np.asarray(m["matrix"], dtype=float), cis, m["stage_tasks"], m["higher_is_better"]


def average_cis(run: RunData, score: str | None = None) -> list | None:
    s = run.summary or {}
    return (
        s.get("intervals", {})
        .get(score or s.get("score", ""), {})
        .get("average_accuracy_per_stage")
    )


def forgetting_points(run: RunData, score: str | None = None) -> dict[str, list]:
    """Per task forgetting and backward transfer with intervals, for ``forgetting_bars``
    (of the primary score, or the named one)."""
    out: dict[str, list] = {"forgetting": [], "backward_transfer": []}
    for j, row in enumerate(per_task(run, score)):
        if row.forgetting.value is not None:
            out["forgetting"].append((j, row.forgetting.value, row.forgetting.ci))
        if row.backward_transfer.value is not None:
            out["backward_transfer"].append(
                (j, row.backward_transfer.value, row.backward_transfer.ci)
            )
    return out


def training_section(run: RunData, out: Path) -> Section | None:
    p = figures.training_curves(
        run.train, run.val, run.task_names, f"{run.name}: training", out / "training.png"
    )
    if p is None:
        return None
    return Section(
        "Training",
        [
            Figure(
                p,
                "Against the global step, stages shaded by the task they train (stage number "
                "and task on top). Each panel says what it shows; each quantity has its own "
                "axis. Forgetting is read from the validation panel: the lines of tasks "
                "trained earlier falling after their own stage.",
            )
        ],
    )


def eval_section(run: RunData, out: Path) -> Section | None:
    m = matrix(run)
    if m is None:
        return None
    R, cis, stage_tasks, hib = m
    s = run.summary or {}
    score, names = pretty(s["score"]), s["task_names"]
    labels = figures.stage_labels(stage_tasks, names)
    how = interval_name(run)
    figs = [
        Figure(
            figures.matrix_heatmap(
                R,
                cis,
                labels,
                names,
                f"{run.name}: {score} after each stage (n = {n_text(run)} per cell)",
                out / "eval_matrix.png",
                value=score,
                higher_is_better=hib,
                stage_tasks=stage_tasks,
            ),
            f"R[stage, task] from the evaluator: {score} of every checkpoint on every task; "
            f"each cell shows its value and 95% {how}; the task each stage trained is "
            "outlined in red.",
        ),
        Figure(
            figures.per_task_lines(
                R,
                cis,
                average_cis(run),
                labels,
                names,
                f"{run.name}: {score} of each task after every stage",
                out / "eval_per_task.png",
                score,
                n_text(run),
                how,
            ),
            f"The matrix's columns as lines: a task's {score} before, during and after its "
            "own stage. The average over tasks is dashed (its interval: Wilson on the pooled "
            "items for success rates, else a paired bootstrap over items).",
        ),
    ]
    bars = figures.forgetting_bars(
        {run.name: forgetting_points(run)},
        names,
        f"{run.name}: what each task lost ({score})",
        out / "forgetting.png",
        score,
    )
    if bars is not None:
        figs.append(
            Figure(
                bars,
                "Per task trained before the last stage: forgetting (best earlier score minus "
                "final, sign-adjusted so above 0 is worse) and backward transfer (final minus "
                "right after its own stage, below 0 is worse); bars: 95% paired bootstrap over "
                "items.",
            )
        )
    return Section("Evaluation: what it learned and what it kept", figs)


def run_figures(run: RunData, out: Path) -> list[Section]:
    """Training curves and the evaluation figures of one run."""
    return [s for s in (training_section(run, out), eval_section(run, out)) if s is not None]


def group_figures(label: str, runs: list[RunData], out: Path) -> list[Section]:
    """Related runs on the same axes: average score after each stage, and forgetting and
    backward transfer per task, with 95% intervals (runs scored alike only)."""
    have = [r for r in runs if matrix(r) is not None]
    if len(have) < 2:
        return []
    score = have[0].summary["score"]
    have = [r for r in have if r.summary["score"] == score]
    if len(have) < 2:
        return []
    slug = label.replace("/", "--")
    fig, ax = figures.plt.subplots(figsize=(11, 3.6))
    figures.compare_average(
        {
            r.name: (
                r.summary["average_accuracy_per_stage"],
                average_cis(r),
                figures.stage_labels(r.summary["stage_tasks"], r.summary["task_names"]),
            )
            for r in have
        },
        f"average {pretty(score)}",
        f"Average {pretty(score)} over tasks after each stage (bars: 95% intervals)",
        ax,
    )
    figs = [
        Figure(
            figures.save(fig, out / "compare" / f"{slug}-average.png"),
            "The runs on the same axes: the average over tasks after each stage.",
        )
    ]
    bars = figures.forgetting_bars(
        {r.name: forgetting_points(r) for r in have},
        have[0].summary["task_names"],
        f"{label}: forgetting and backward transfer per task",
        out / "compare" / f"{slug}-forgetting.png",
        pretty(score),
    )
    if bars is not None:
        figs.append(Figure(bars, "Per task and run, with 95% paired-bootstrap intervals."))
    return [Section("On the same axes", figs)]
