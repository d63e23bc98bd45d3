"""The replay-mixing sweep's figures: what each strategy kept of task A.

- ``<sweep>_losses.png``: both validation losses against optimizer step for
  every branch (the public experiment's figure), phase B's start marked.
- ``<sweep>_forgetting.png``: per strategy, how much task A's validation
  loss rose from the phase-A model to the end of B (forgetting, lower is
  better), and task B's final loss, with ``none`` (no replay) and ``joint``
  (A and B together) drawn as reference lines across every bar.

Both read only ``metrics/<sweep>/<branch>/`` (history.json, val.jsonl), so
they are drawn while later strategies are still training.
"""

from __future__ import annotations

from pathlib import Path

from clab.plotting.figures import plt, save
from clab.plotting.history import plot_histories
from clab.tracking.metrics_log import read_rows

REFERENCES = {"none": ("no replay", "#c0392b"), "joint": ("joint A+B", "#27ae60")}


def final_losses(branch_dir: Path) -> dict[str, float]:
    """Each task's validation loss at the branch's last complete stage."""
    rows = read_rows(branch_dir / "val.jsonl")
    if not rows:
        return {}
    last = max(r["stage"] for r in rows)
    return {r["task"]: r["answer_loss"] for r in rows if r["stage"] == last and "answer_loss" in r}


def sweep_table(sweep_dir: Path) -> list[dict]:
    """One row per finished strategy: A's loss after phase A and at the end, the rise
    (forgetting of A), and B's final loss."""
    phase_a = final_losses(sweep_dir / "phase-a")
    if not phase_a:
        return []
    task_a = next(iter(phase_a))  # phase A validates A first
    out = []
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name != "phase-a"):
        end = final_losses(d)
        if task_a not in end or len(end) < 2:
            continue
        task_b = next(t for t in end if t != task_a)
        out.append(
            {
                "strategy": d.name,
                "task_a": task_a,
                "task_b": task_b,
                "a_after_phase_a": phase_a[task_a],
                "a_final": end[task_a],
                "forgetting_a": end[task_a] - phase_a[task_a],
                "b_final": end[task_b],
            }
        )
    return out


def plot_sweep(sweep_dir: Path, out_dir: Path) -> list[Path]:
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    figs = []
    histories = sorted(sweep_dir.glob("*/history.json"))
    if histories:
        path = plot_histories(histories, out_dir / f"{sweep_dir.name}_losses.png")
        figs.append(path)
    table = sweep_table(sweep_dir)
    if table:
        figs.append(plot_forgetting(table, out_dir / f"{sweep_dir.name}_forgetting.png"))
    return figs


def plot_forgetting(table: list[dict], out: Path) -> Path:
    strategies = [r for r in table if r["strategy"] not in REFERENCES] or table
    refs = {r["strategy"]: r for r in table if r["strategy"] in REFERENCES}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    panels = [
        ("forgetting_a", f"forgetting of {table[0]['task_a']}: its loss rise after B"),
        ("b_final", f"{table[0]['task_b']} validation loss after B"),
    ]
    names = [r["strategy"] for r in strategies]
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [r[key] for r in strategies]
        if key == "forgetting_a":  # a change: bars from zero
            ax.bar(range(len(values)), values, color="#4c72b0", width=0.6)
            ax.axhline(0, color="black", lw=0.6)
        else:  # a level: points, on an axis that shows their differences
            ax.plot(range(len(values)), values, "o", color="#4c72b0", ms=8)
        for x, v in enumerate(values):
            ax.annotate(f"{v:+.3f}" if key == "forgetting_a" else f"{v:.3f}", (x, v),
                        xytext=(0, 4 if v >= 0 else -10), textcoords="offset points",
                        ha="center", fontsize=8)  # fmt: skip
        for name, r in refs.items():
            label, color = REFERENCES[name]
            ax.axhline(r[key], color=color, ls="--", lw=1.2, label=f"{label}: {r[key]:.3f}")
        ax.margins(y=0.15)  # room for the labels above the highest value
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_title(title + " (lower is better)", fontsize=10)
        ax.set_ylabel("answer-token loss" if key == "b_final" else "loss after B - loss after A")
        ax.grid(axis="y", alpha=0.3)
        if refs:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.25), ncol=2)
    fig.tight_layout()
    return save(fig, out)


def is_sweep(metrics_dir: Path) -> bool:
    return (metrics_dir / "phase-a" / "val.jsonl").is_file()


# -- on the page -----------------------------------------------------------------------------


def _group_figures(label: str, runs: list, out: Path) -> list:
    from clab.plotting import generic
    from clab.plotting.registry import Figure, Section

    sweep_dir = runs[0].metrics_dir.parent if runs[0].sweep else None
    sections = []
    if sweep_dir is not None and is_sweep(sweep_dir):
        figs = plot_sweep(sweep_dir, out)
        captions = {
            "_losses.png": "Both tasks' validation loss (answer tokens, lower is better) against "
            "optimizer step for every branch: phase A, then B from the dotted line; "
            f"each point is the mean over all validation examples (n = {_n(runs)}).",
            "_forgetting.png": "Per strategy: how far task A's validation loss rose from the "
            "phase-A model to the end of B (forgetting; bars), and task B's final loss "
            "(points); dashed lines: no replay (none) and A and B trained together (joint).",
        }
        sections.append(
            Section(
                "Replay strategies: what each kept of task A",
                [
                    Figure(f, next(c for s, c in captions.items() if f.name.endswith(s)))
                    for f in figs
                ],
            )
        )
    return sections + generic.group_figures(label, runs, out)


def _n(runs: list) -> str:
    ns = {f"{r['task']} {r['n']}" for run in runs for r in run.val if "n" in r}
    return ", ".join(sorted(ns)) or "?"


def _register() -> None:
    from clab.plotting.registry import register_page_kind

    register_page_kind(
        "replay-mixing",
        title="Replay mixing (LoRA SFT, task A then B)",
        group_figures=_group_figures,
        description="Phase A once, then B with 10% of A replayed per strategy; none and "
        "joint are the baselines. Read forgetting from A's loss after B.",
    )


_register()
