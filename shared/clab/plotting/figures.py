"""The figures of a curriculum run, and of runs side by side.

Training curves are drawn against the global step with each stage shaded in
its group's colour and its boundary marked, since every question the
experiment asks ("did it forget when the operator changed?") is about what
happens at those boundaries.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from clab.storage.atomic import atomic_path

GROUP_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
CURVES = [
    ("success_rate", "success rate (exactly correct)", None),
    ("weight_change_run", "normalized weight change", "weight_change_stage"),
    ("policy_loss", "loss", "value_loss"),
    ("loss", "next-token loss", None),
    ("fraction_updated", "fraction of parameters updated", None),
    ("normalized_grad", "normalized gradient", None),
    ("response_length_mean", "response length (tokens)", "response_length_max"),
]
SECOND_LABEL = {
    "weight_change_stage": "vs stage start",
    "value_loss": "value loss",
    "response_length_max": "max",
}


def save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    k = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, k, mode="valid")


def _stage_spans(rows: list[dict]) -> list[tuple[float, float, int, int]]:
    """(start step, end step, group, stage) for each stage, from the metric rows."""
    spans = []
    for r in rows:
        if not spans or spans[-1][3] != r["stage"]:
            task = r.get("group", r.get("task", 0))  # Countdown rows name the group
            spans.append([r["global_step"] - 1, r["global_step"], task, r["stage"]])
        spans[-1][1] = r["global_step"]
    return [tuple(s) for s in spans]


def training_curves(rows: list[dict], title: str, path: Path) -> Path:
    steps = np.array([r["global_step"] for r in rows])
    window = max(1, len(rows) // 50)
    curves = [c for c in CURVES if any(c[0] in r for r in rows)]  # what this trainer logs
    fig, axes = plt.subplots(len(curves), 1, figsize=(10, 2.4 * len(curves)), sharex=True)
    axes = np.atleast_1d(axes)
    spans = _stage_spans(rows)
    for ax, (key, label, second) in zip(axes, curves, strict=True):
        for start, end, group, _ in spans:
            ax.axvspan(start, end, color=GROUP_COLORS[group % len(GROUP_COLORS)], alpha=0.12, lw=0)
            ax.axvline(start, color="grey", lw=0.6, ls=":")
        for k, style, lab in ((key, "-", label), (second, "--", SECOND_LABEL.get(second))):
            if k is None or not any(k in r for r in rows):
                continue
            y = np.array([r.get(k, np.nan) for r in rows], dtype=float)
            ax.plot(steps, y, color="black", alpha=0.25 if window > 1 else 0.9, lw=0.8, ls=style)
            if window > 1:
                ax.plot(steps, smooth(y, window), color="black", lw=1.4, ls=style, label=lab)
            else:
                ax.lines[-1].set_label(lab)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
        if second and any(second in r for r in rows):
            ax.legend(fontsize=8, loc="upper right")
    groups = sorted({s[2] for s in spans})
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=GROUP_COLORS[g % len(GROUP_COLORS)], alpha=0.4)
        for g in groups
    ]
    axes[0].legend(
        handles,
        [f"{'group' if 'group' in rows[0] else 'task'} {g}" for g in groups],
        ncol=len(groups),
        fontsize=8,
        loc="lower left",
        bbox_to_anchor=(0, 1.02),
        frameon=False,
    )
    axes[-1].set_xlabel("global step")
    fig.suptitle(title, y=1.0)
    return save(fig, path)


def matrix_heatmap(
    R: np.ndarray,
    stage_labels: list[str],
    groups: list[str],
    title: str,
    path: Path,
    value: str = "success rate",
) -> Path:
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) + 2.5, 0.45 * len(stage_labels) + 1.5))
    vmax = max(float(np.nanmax(R)), 0.05)  # small rates stay visible; 0..1 when they reach it
    im = ax.imshow(R, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            v = R[i, j]
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v < 0.5 * vmax else "black",
            )
    ax.set_xticks(range(len(groups)), [str(g) for g in groups])
    ax.set_yticks(range(len(stage_labels)), stage_labels)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after stage")
    fig.colorbar(im, ax=ax, label=value)
    ax.set_title(title)
    return save(fig, path)


def success_per_group(
    R: np.ndarray,
    stage_labels: list[str],
    groups: list[str],
    title: str,
    path: Path,
    value: str = "success rate",
) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(stage_labels) + 2), 4))
    x = np.arange(len(stage_labels))
    for j, g in enumerate(groups):
        ax.plot(x, R[:, j], marker="o", color=GROUP_COLORS[j % len(GROUP_COLORS)], label=str(g))
    ax.plot(x, R.mean(axis=1), color="black", ls="--", label="average")
    ax.set_xticks(x, stage_labels, rotation=45, ha="right")
    ax.set_xlabel("after stage")
    ax.set_ylabel(value)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save(fig, path)


def compare_curves(runs: dict[str, list[dict]], key: str, label: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 4))
    for name, rows in runs.items():
        if not rows or not any(key in r for r in rows):
            continue
        steps = np.array([r["global_step"] for r in rows])
        y = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ax.plot(steps, smooth(y, max(1, len(rows) // 50)), label=name, lw=1.4)
    ax.set_xlabel("global step")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{label}: runs compared")
    return save(fig, path)


def compare_average_accuracy(summaries: dict[str, dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, s in summaries.items():
        acc = s["average_accuracy_per_stage"]
        ax.plot(range(len(acc)), acc, marker="o", label=name)
    ax.set_xlabel("stage (0 = before training)")
    score = next(iter(summaries.values())).get("score", "success_rate").replace("_", " ")
    ax.set_ylabel(f"average {score} over tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"average {score} after each stage")
    return save(fig, path)


def group_selection(rows: list[dict], title: str, path: Path) -> Path:
    """How often each parameter group was updated during each stage (sparse updates):
    a share of the stage's steps per cell, annotated."""
    stages = sorted({r["stage"] for r in rows})
    groups: list[str] = []
    for r in rows:
        for g in r.get("selected", []):
            if g not in groups:
                groups.append(g)
    M = np.zeros((len(groups), len(stages)))
    for j, s in enumerate(stages):
        mine = [r for r in rows if r["stage"] == s]
        for r in mine:
            for g in r.get("selected", []):
                M[groups.index(g), j] += 1 / len(mine)
    fig, ax = plt.subplots(figsize=(1.1 * len(stages) + 3, 0.35 * len(groups) + 1.5))
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(M.shape[0]):
        for j in range(M.shape[1]):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if M[i, j] < 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(stages)), [f"stage {s} (task {_task_of(rows, s)})" for s in stages])
    ax.set_yticks(range(len(groups)), groups)
    fig.colorbar(im, ax=ax, label="share of the stage's steps updated")
    ax.set_title(title)
    return save(fig, path)


def _task_of(rows: list[dict], stage: int) -> int:
    return next(r["task"] for r in rows if r["stage"] == stage)


def first_task_by_method(summaries: dict[str, dict], title: str, path: Path) -> Path:
    """The first task's score after each stage, one line per method of a sweep, with
    each method's forgetting of it in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, s) in enumerate(summaries.items()):
        y = [row[0] for row in s["matrix"]]
        forgot = s.get("forgetting_per_task", {}).get("0")
        label = f"{name} (forgetting {forgot:.1f})" if forgot is not None else name
        ax.plot(range(len(y)), y, marker="o", color=GROUP_COLORS[k % len(GROUP_COLORS)],
                label=label)  # fmt: skip
    first = next(iter(summaries.values()))
    ax.set_xticks(range(len(first["matrix"])), ["initial"] + [
        f"after {t}" for t in first["task_names"][: len(first["matrix"]) - 1]
    ])  # fmt: skip
    ax.set_ylabel(f"{first['score'].replace('_', ' ')} on {first['task_names'][0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return save(fig, path)
