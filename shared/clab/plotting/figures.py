"""Figures of continual-learning runs, drawn so that they read correctly at a glance.

Rules every figure here follows, because each one was broken once and misled:

- a panel's title says what it shows (the training success of the group being
  trained is not forgetting: forgetting is read from the earlier groups'
  validation lines);
- one quantity per axis (a policy loss near 0 drawn on a value loss's axis is a
  flat line);
- a point that is a rate over test items carries its n and a 95% interval
  (Wilson for a success rate, a bootstrap over items otherwise), and every cell
  of a matrix shows its value;
- legends sit outside the axes, so they never cover a line;
- stage axes have integer ticks, one per stage, named by what the stage trained.

Training curves are drawn against the global step with each stage shaded in its
task's colour and its number on the top axis, since every question the
experiment asks ("did it forget when the task changed?") is about what happens
at those boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize

from clab.metrics.intervals import wilson
from clab.storage.atomic import atomic_path

GROUP_COLORS = [
    "#4C72B0",
    "#DD8452",
    "#55A868",
    "#C44E52",
    "#8172B3",
    "#937860",
    "#DA8BC3",
    "#8C8C8C",
    "#CCB974",
    "#64B5CD",
]
RUN_STYLES = ["-", "--", ":", "-."]


def color(i: int) -> str:
    return GROUP_COLORS[i % len(GROUP_COLORS)]


def save(fig, path: Path) -> Path:
    """Write a figure atomically (a reader never sees half a PNG) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    k = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(padded, k, mode="valid")


def legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes: it cannot cover a line."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, **kw)


def stage_spans(rows: list[dict]) -> list[tuple[float, float, int, int]]:
    """(start step, end step, task, stage) for each stage, from the training rows."""
    spans: list[list] = []
    for r in rows:
        if not spans or spans[-1][3] != r["stage"]:
            spans.append(
                [r["global_step"] - 1, r["global_step"], int(r.get("task", 0)), r["stage"]]
            )
        spans[-1][1] = r["global_step"]
    return [(float(a), float(b), int(t), int(s)) for a, b, t, s in spans]


def shade_stages(ax, spans, task_names: Sequence[str], top: bool = False) -> None:
    """Each stage shaded in its task's colour; with ``top``, stage numbers on top."""
    for start, end, task, _ in spans:
        ax.axvspan(start, end, color=color(task), alpha=0.12, lw=0)
        ax.axvline(start, color="grey", lw=0.6, ls=":")
    if top and spans:
        sec = ax.secondary_xaxis("top")
        sec.set_xticks(
            [(a + b) / 2 for a, b, _, _ in spans],
            [f"stage {s}: {_name(task_names, t)}" for _, _, t, s in spans],
            fontsize=7,
        )
        sec.tick_params(length=0)


def _name(names: Sequence[str], j: int) -> str:
    return str(names[j]) if 0 <= j < len(names) else f"task {j}"


def stage_labels(stage_tasks: Sequence, task_names: Sequence[str]) -> list[str]:
    """'0: initial', then '<i>: after <task>' for each stage."""
    return ["0: initial"] + [
        f"{i}: after {_name(task_names, int(t))}" for i, t in enumerate(stage_tasks) if i
    ]


def _yerr(values, cis) -> list[list[float]] | None:
    if cis is None or all(c is None for c in cis):
        return None
    # an undefined value (None: a cell scored NaN) is not drawn; nor is its bar
    ok = [
        v is not None and np.isfinite(v) and c is not None for v, c in zip(values, cis, strict=True)
    ]
    lo = [v - c[0] if good else 0.0 for v, c, good in zip(values, cis, ok, strict=True)]
    hi = [c[1] - v if good else 0.0 for v, c, good in zip(values, cis, ok, strict=True)]
    # nested lists, not an array: matplotlib warns on a (2, 1) array's first element
    return np.maximum(np.array([lo, hi]), 0.0).tolist()


# -- training curves ------------------------------------------------------------------

# (panel id, keys with their line labels, title, y label); a panel is drawn when its
# first key is logged
TRAIN_PANELS: list[tuple[str, list[tuple[str, str]], str, str]] = [
    (
        "success_rate",
        [("success_rate", "this stage's rollouts")],
        "Training success on the group being trained (not forgetting: see the validation panel)",
        "success rate",
    ),
    (
        "entropy",
        [("entropy", "mean over response tokens")],
        "Token entropy of the policy on its rollouts (near 0: sampling no longer explores)",
        "nats",
    ),
    (
        "answer_forms",
        [("answer_forms", "forms")],
        "Answer forms in a step's rollouts, numbers written # (1: every answer one template)",
        "distinct forms",
    ),
    ("policy_loss", [("policy_loss", "policy loss")], "Policy loss", "policy loss"),
    ("value_loss", [("value_loss", "value loss")], "Value loss (critic)", "value loss"),
    ("loss", [("loss", "batch")], "Next-token loss on the training batch", "loss"),
    (
        "fraction_updated",
        [("fraction_updated", "updated"), ("k1_fraction", "K-1's rule would update")],
        "Fraction of parameters updated at each step",
        "fraction",
    ),
    (
        "weight_change_run",
        [
            ("weight_change_run", "since the run's start"),
            ("weight_change_stage", "since the stage's start"),
        ],
        "Normalized weight change ||W - W0|| / ||W0||",
        "relative change",
    ),
    ("normalized_grad", [("normalized_grad", "||g|| / ||W||")], "Normalized gradient", "ratio"),
    (
        "response_length_mean",
        [("response_length_mean", "mean"), ("response_length_max", "max")],
        "Response length of the rollouts",
        "tokens",
    ),
]


def train_panels(train: list[dict]) -> list[tuple[str, list[tuple[str, str]], str, str]]:
    """The panels of :data:`TRAIN_PANELS` whose first key some row logs, in order."""
    return [p for p in TRAIN_PANELS if any(p[1][0][0] in r for r in train)]


def val_series(val: list[dict]) -> tuple[str | None, dict[str, list[dict]]]:
    """Validation rows by task, and the primary value they report."""
    if not val:
        return None, {}
    primary = val[0].get("primary") or "success_rate"
    by_task: dict[str, list[dict]] = {}
    for r in val:
        if primary in r:
            by_task.setdefault(str(r["task"]), []).append(r)
    return primary, by_task


def training_curves(
    train: list[dict], val: list[dict], task_names: Sequence[str], title: str, path: Path
) -> Path | None:
    """One panel per logged quantity, each on its own axis, plus the stage-end
    validation of every task as separate lines (forgetting: the earlier tasks' lines
    falling after their stage)."""
    panels = train_panels(train)
    primary, by_task = val_series(val)
    n_panels = len(panels) + (1 if by_task else 0)
    if n_panels == 0:
        return None
    fig, axes = plt.subplots(n_panels, 1, figsize=(11, 2.3 * n_panels + 0.6), sharex=True)
    axes = list(np.atleast_1d(axes))
    spans = stage_spans(train) if train else []
    steps = np.array([r["global_step"] for r in train], dtype=float)
    window = max(1, len(train) // 50)
    order = list(panels)
    if by_task:  # validation right after the training success, the two read together
        order.insert(1 if panels and panels[0][0] == "success_rate" else 0, ("__val__", [], "", ""))
    for k, (ax, panel) in enumerate(zip(axes, order, strict=True)):
        shade_stages(ax, spans, task_names, top=k == 0)
        if panel[0] == "__val__":
            _val_panel(ax, primary, by_task, task_names)
        else:
            _, keys, ptitle, ylabel = panel
            for key, label in keys:
                if not any(key in r for r in train):
                    continue
                y = np.array([r.get(key, np.nan) for r in train], dtype=float)
                style = "-" if key == keys[0][0] else "--"
                if window > 1:
                    ax.plot(steps, y, color="black", alpha=0.2, lw=0.7, ls=style)
                    ax.plot(
                        steps,
                        smooth(y, window),
                        color="black",
                        lw=1.4,
                        ls=style,
                        label=f"{label} (mean of {window} steps)",
                    )
                else:
                    ax.plot(steps, y, color="black", lw=1.2, ls=style, marker=".", label=label)
            ax.set_title(ptitle, fontsize=9, loc="left")
            ax.set_ylabel(ylabel, fontsize=8)
            if ylabel == "success rate":
                ax.set_ylim(-0.03, 1.03)
            if len(keys) > 1 or window > 1:
                legend_outside(ax)
        ax.grid(alpha=0.3)
    if spans:
        tasks = sorted({t for _, _, t, _ in spans})
        handles = [plt.Rectangle((0, 0), 1, 1, color=color(t), alpha=0.35) for t in tasks]
        axes[0].legend(
            handles,
            [f"training on {_name(task_names, t)}" for t in tasks],
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0,
            fontsize=8,
            title="stage shading",
            title_fontsize=8,
        )
    axes[-1].set_xlabel("global step")
    fig.suptitle(title, y=1.0)
    fig.tight_layout()
    return save(fig, path)


def _val_panel(ax, primary: str | None, by_task: dict[str, list[dict]], names) -> None:
    ns = set()
    rate = primary == "success_rate"
    steps = [r["global_step"] for rows in by_task.values() for r in rows]
    nudge = 0.006 * (max(steps) - min(steps) + 1)  # tasks side by side, never hidden
    for k, (task, rows) in enumerate(by_task.items()):
        j = names.index(task) if task in names else k
        x = [r["global_step"] + (k - (len(by_task) - 1) / 2) * nudge for r in rows]
        y = [r[primary] for r in rows]
        cis = [
            wilson(round(r[primary] * r["n"]), r["n"]) if rate and r.get("n") else None
            for r in rows
        ]
        ns |= {r.get("n") for r in rows}
        ax.errorbar(
            x,
            y,
            yerr=_yerr(y, cis),
            color=color(j),
            marker="o",
            ms=4,
            lw=1.4,
            capsize=3,
            label=str(task),
        )
    n_text = ", ".join(str(n) for n in sorted(n for n in ns if n)) or "?"
    what = "success rate (greedy)" if rate else str(primary).replace("_", " ")
    unit = "problems" if rate else "tokens"
    ax.set_title(
        f"Validation {what} of every task at each stage end (n = {n_text} {unit} per point"
        + (", 95% Wilson interval)" if rate else "; no interval: validation keeps no items)"),
        fontsize=9,
        loc="left",
    )
    ax.set_ylabel(what, fontsize=8)
    if rate:
        ax.set_ylim(-0.03, 1.03)
    legend_outside(ax, title="task", title_fontsize=8)


# -- the matrix and per-task scores ---------------------------------------------------


def matrix_heatmap(
    R: np.ndarray,
    cis: list[list] | None,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    path: Path,
    value: str = "success rate",
    higher_is_better: bool = True,
    stage_tasks: Sequence | None = None,
    ax=None,
    norm=None,
) -> Path | None:
    """R[stage, task] with every cell's value (and its 95% interval) written in it; the
    cell of the task each stage trained is outlined. Colours: brighter is better."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(1.7 * len(col_labels) + 3.2, 0.62 * len(row_labels) + 1.6))
    R = np.asarray(R, dtype=float)
    if norm is None:
        norm = matrix_norm([R], value, higher_is_better)
    cmap = "viridis" if higher_is_better else "viridis_r"
    im = ax.imshow(R, cmap=cmap, norm=norm, aspect="auto")
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            v = R[i, j]
            text = _cell(v)
            c = cis[i][j] if cis else None
            if c is not None:
                text += f"\n[{_cell(c[0])}, {_cell(c[1])}]"
            shade = norm(v)
            dark = shade < 0.5 if higher_is_better else shade > 0.5
            ax.text(
                j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black"
            )
    if stage_tasks is not None:
        for i, t in enumerate(stage_tasks):
            if i and t is not None:
                ax.add_patch(
                    plt.Rectangle((int(t) - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5)
                )
    ax.set_xticks(range(len(col_labels)), [str(g) for g in col_labels], fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after stage")
    ax.set_title(title, fontsize=9)
    if own:
        better = "higher" if higher_is_better else "lower"
        fig.colorbar(im, ax=ax, label=f"{value} ({better} is better)")
        return save(fig, path)
    return None


def matrix_norm(matrices: list[np.ndarray], value: str, higher_is_better: bool):
    """One colour scale for several matrices: 0..1 for rates, log for perplexities."""
    lo = min(float(np.nanmin(m)) for m in matrices)
    hi = max(float(np.nanmax(m)) for m in matrices)
    if higher_is_better and lo >= 0 and hi <= 1:
        return Normalize(0, 1)
    if "perplexity" in value and lo > 0:
        return LogNorm(lo, max(hi, lo * 1.01))
    return Normalize(lo, hi if hi > lo else lo + 1e-9)


def _rate_axis(ax, label: str) -> None:
    """A success rate's axis spans 0..1, so a flat 0 is not drawn as a mid-plot line."""
    if "success rate" in label:
        ax.set_ylim(-0.03, 1.03)


def _cell(v: float) -> str:
    a = abs(v)
    return f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}"


def per_task_lines(
    R: np.ndarray,
    cis: list[list] | None,
    avg_cis: list | None,
    labels: Sequence[str],
    task_names: Sequence[str],
    title: str,
    path: Path,
    value: str,
    n_text: str,
    interval: str,
) -> Path:
    """Each task's score after every stage with its interval; the average over tasks
    dashed. Integer stage ticks, named by what each stage trained."""
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(labels) + 4), 4))
    x = np.arange(R.shape[0])
    k = len(task_names)
    for j, g in enumerate(task_names):
        off = (j - (k - 1) / 2) * 0.04  # nudged apart so intervals stay readable
        ci = [row[j] for row in cis] if cis else None
        ax.errorbar(
            x + off,
            R[:, j],
            yerr=_yerr(list(R[:, j]), ci),
            marker="o",
            ms=4,
            capsize=3,
            color=color(j),
            label=str(g),
        )
    avg = R.mean(axis=1)
    ax.errorbar(
        x,
        avg,
        yerr=_yerr(list(avg), avg_cis),
        color="black",
        ls="--",
        capsize=3,
        label="average over tasks",
    )
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("after stage")
    ax.set_ylabel(value)
    _rate_axis(ax, value)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.set_title(f"{title}\n(n = {n_text} items per point; bars: 95% {interval})", fontsize=9)
    return save(fig, path)


def forgetting_bars(
    runs: dict[str, dict[str, list]],
    task_names: Sequence[str],
    title: str,
    path: Path,
    unit: str,
) -> Path | None:
    """Forgetting and backward transfer per task, one bar per run, with 95% intervals.

    ``runs[name]`` maps ``forgetting``/``backward_transfer`` to a list of
    (task index, value, interval or None)."""
    if not any(v for r in runs.values() for v in r.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / max(1, len(runs))
    for ax, key, what in (
        (axes[0], "forgetting", "forgetting (above 0: worse than its best earlier score)"),
        (axes[1], "backward_transfer", "backward transfer (below 0: lost since its stage)"),
    ):
        tasks = sorted({j for r in runs.values() for j, _, _ in r.get(key, [])})
        for k, (name, r) in enumerate(runs.items()):
            pts = {j: (v, c) for j, v, c in r.get(key, [])}
            xs = [tasks.index(j) + (k - (len(runs) - 1) / 2) * width for j in pts]
            vals = [pts[j][0] for j in pts]
            err = _yerr(vals, [pts[j][1] for j in pts])
            ax.bar(
                xs,
                vals,
                width=width * 0.95,
                color=color(k),
                alpha=0.75,
                yerr=err,
                capsize=3,
                label=name,
            )
            bar_labels(ax, xs, vals, [pts[j][1] for j in pts])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(tasks)), [_name(task_names, j) for j in tasks])
        ax.set_title(what, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        if not tasks:
            ax.text(
                0.5,
                0.5,
                "not in this summary",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="grey",
            )
    drawn = axes[0] if axes[0].patches else axes[1]
    handles, labels = drawn.get_legend_handles_labels()
    axes[1].legend(
        handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def bar_labels(ax, xs, vals, cis) -> None:
    """Each bar's value, written beyond the end of its interval (never on the bar's cap)."""
    for x0, v, c in zip(xs, vals, cis, strict=True):
        end = (c[1] if v >= 0 else c[0]) if c else v
        ax.annotate(
            _cell(v),
            (x0, end),
            ha="center",
            va="bottom" if v >= 0 else "top",
            fontsize=7,
            xytext=(0, 2 if v >= 0 else -2),
            textcoords="offset points",
        )


# -- runs side by side ----------------------------------------------------------------


def compare_average(
    runs: dict[str, tuple[list[float], list | None, list[str]]],
    ylabel: str,
    title: str,
    ax,
) -> None:
    """Average score after each stage, one line per run, with 95% intervals; integer
    stage ticks."""
    longest: list[str] = []
    for k, (name, (acc, cis, labels)) in enumerate(runs.items()):
        x = np.arange(len(acc)) + (k - (len(runs) - 1) / 2) * 0.05
        ax.errorbar(
            x,
            np.asarray(acc, dtype=float),  # None (undefined) -> NaN: a gap in the line
            yerr=_yerr(acc, cis),
            marker="o",
            capsize=3,
            color=color(k),
            ls=RUN_STYLES[k % len(RUN_STYLES)],
            label=name,
        )
        longest = labels if len(labels) > len(longest) else longest
    ax.set_xticks(range(len(longest)), [lab.split(":")[0] for lab in longest])
    ax.set_xlabel("after stage (0 = before training)")
    ax.set_ylabel(ylabel, fontsize=8)
    _rate_axis(ax, ylabel)
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    legend_outside(ax)


def compare_train(runs: dict[str, list[dict]], key: str, title: str, ylabel: str, ax) -> None:
    """One logged quantity of several runs against the global step, on one axis."""
    for k, (name, rows) in enumerate(runs.items()):
        rows = [r for r in rows if key in r]
        if not rows:
            continue
        steps = np.array([r["global_step"] for r in rows], dtype=float)
        y = np.array([r[key] for r in rows], dtype=float)
        w = max(1, len(rows) // 50)
        label = name + (f" (mean of {w} steps)" if w > 1 else "")
        ax.plot(
            steps,
            smooth(y, w),
            color=color(k),
            ls=RUN_STYLES[k % len(RUN_STYLES)],
            lw=1.4,
            label=label,
        )
    first = next(iter(runs.values()))
    for start, _, _, _ in stage_spans(first):
        ax.axvline(start, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("global step")
    ax.set_ylabel(ylabel, fontsize=8)
    _rate_axis(ax, ylabel)
    ax.set_title(title, fontsize=9, loc="left")
    ax.grid(alpha=0.3)
    legend_outside(ax)


def selection_counts(rows: list[dict]) -> tuple[list[str], list[int], np.ndarray]:
    """(parameter groups, stages, share of each stage's steps that updated each group)."""
    stages = sorted({r["stage"] for r in rows if "selected" in r})
    groups: list[str] = []
    for r in rows:
        for g in r.get("selected", []):
            if g not in groups:
                groups.append(g)
    M = np.zeros((len(groups), len(stages)))
    for j, s in enumerate(stages):
        mine = [r for r in rows if r["stage"] == s and "selected" in r]
        for r in mine:
            for g in r["selected"]:
                M[groups.index(g), j] += 1 / len(mine)
    return groups, stages, M


def selection_heatmap(
    rows: list[dict], task_names: Sequence[str], title: str, ax, groups: list[str] | None = None
):
    """Share of each stage's steps that updated each parameter group, every cell
    annotated."""
    own_groups, stages, M = selection_counts(rows)
    groups = groups or own_groups
    full = np.zeros((len(groups), len(stages)))
    for i, g in enumerate(own_groups):
        full[groups.index(g)] = M[i]
    im = ax.imshow(full, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(full.shape[0]):
        for j in range(full.shape[1]):
            ax.text(
                j,
                i,
                f"{full[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if full[i, j] < 0.5 else "black",
            )
    task_of = {r["stage"]: int(r.get("task", 0)) for r in rows}
    ax.set_xticks(
        range(len(stages)), [f"{s}: {_name(task_names, task_of[s])}" for s in stages], fontsize=8
    )
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.set_xlabel("stage: corpus trained")
    ax.set_title(title, fontsize=9)
    return im
