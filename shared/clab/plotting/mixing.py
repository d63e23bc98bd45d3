"""The replay-mixing sweep's figures: what each strategy kept of task A.

- ``<sweep>_losses.png``: both validation losses against optimizer step for
  every branch (the public experiment's figure), phase B's start marked.
- ``<sweep>_forgetting.png``: per strategy, how much task A's validation
  loss rose from the phase-A model to the end of B (forgetting, lower is
  better), and task B's final loss, with ``none`` (no replay) and ``joint``
  (A and B together) drawn as reference lines across every bar.

Both read only the branches' metrics folders (history.json, val.jsonl), so
they are drawn while later strategies are still training. With several
seeds the forgetting figure is the mean over seeds with between-seed
intervals; the loss curves are the first seed's.
"""

from __future__ import annotations

from pathlib import Path

from clab.metrics.replicates import mean_interval
from clab.plotting import generic
from clab.plotting.figures import plt, save
from clab.plotting.history import plot_histories
from clab.plotting.registry import Figure, Section, register_page_kind, related_by_name
from clab.tracking.metrics_log import read_rows

PHASE_A = "phase-a"  # the sweep's first branch (clab.training.mixing_spec.PHASE_A)
REFERENCES = {"none": ("no replay", "#c0392b"), "joint": ("joint A+B", "#27ae60")}


def final_losses(branch_dir: Path) -> dict[str, float]:
    """Each task's validation loss at the branch's last complete stage."""
    rows = read_rows(branch_dir / "val.jsonl")
    if not rows:
        return {}
    last = max(r["stage"] for r in rows)
    return {r["task"]: r["answer_loss"] for r in rows if r["stage"] == last and "answer_loss" in r}


def sweep_table(branches: dict[str, Path]) -> list[dict]:
    """One seed's sweep (branch -> its metrics folder): one row per finished strategy,
    A's loss after phase A and at the end, the rise (forgetting of A), B's final loss."""
    phase_a = final_losses(branches[PHASE_A]) if PHASE_A in branches else {}
    if not phase_a:
        return []
    task_a = next(iter(phase_a))  # phase A validates A first
    out = []
    for name, d in sorted(branches.items()):
        end = final_losses(d)
        if name == PHASE_A or task_a not in end or len(end) < 2:
            continue
        task_b = next(t for t in end if t != task_a)
        out.append(
            {
                "strategy": name,
                "task_a": task_a,
                "task_b": task_b,
                "a_after_phase_a": phase_a[task_a],
                "a_final": end[task_a],
                "forgetting_a": end[task_a] - phase_a[task_a],
                "b_final": end[task_b],
            }
        )
    return out


def seeds_table(per_seed: dict[int, dict[str, Path]]) -> list[dict]:
    """The sweep over seeds: per strategy the mean of each number, its between-seed
    interval (``<key>_ci``, Student t) and each seed's value (``<key>_seeds``)."""
    tables = {s: {r["strategy"]: r for r in sweep_table(b)} for s, b in per_seed.items()}
    strategies = sorted({k for t in tables.values() for k in t})
    out = []
    for name in strategies:
        have = {s: t[name] for s, t in tables.items() if name in t}
        row = {**next(iter(have.values())), "seeds": sorted(have)}
        for key in ("a_after_phase_a", "a_final", "forgetting_a", "b_final"):
            est = mean_interval({s: r[key] for s, r in have.items()})
            row[key] = est.mean
            row[f"{key}_ci"] = None if est.low is None else (est.low, est.high)
            row[f"{key}_seeds"] = est.values
        out.append(row)
    return out


def branch_dirs(runs: list) -> dict[int, dict[str, Path]]:
    """seed -> branch -> metrics folder, from each run's replicate record (runs of older
    clabs, nested as ``<sweep>/<branch>``: seed 0, the folder's name)."""
    out: dict[int, dict[str, Path]] = {}
    for r in runs:
        rep = r.replicate
        if rep and rep.get("variant"):
            out.setdefault(int(rep["seed"]), {})[rep["variant"]] = r.metrics_dir
        elif "/" in r.name:
            out.setdefault(0, {})[r.metrics_dir.name] = r.metrics_dir
    return out


def plot_sweep(label: str, per_seed: dict[int, dict[str, Path]], out_dir: Path) -> list[Path]:
    """The losses of the first seed's branches, and forgetting per strategy over seeds."""
    out_dir = Path(out_dir)
    slug = label.replace("/", "--")
    figs = []
    first = min(per_seed) if per_seed else None
    histories = sorted(
        d / "history.json"
        for d in per_seed.get(first, {}).values()
        if (d / "history.json").is_file()
    )
    if histories:
        figs.append(plot_histories(histories, out_dir / f"{slug}_losses.png"))
    table = seeds_table(per_seed)
    if table:
        figs.append(plot_forgetting(table, out_dir / f"{slug}_forgetting.png"))
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
        cis = [r.get(f"{key}_ci") for r in strategies]
        err = None
        if any(cis):  # between-seed intervals
            err = [[v - c[0] if c else 0 for v, c in zip(values, cis, strict=True)],
                   [c[1] - v if c else 0 for v, c in zip(values, cis, strict=True)]]  # fmt: skip
        if key == "forgetting_a":  # a change: bars from zero
            ax.bar(range(len(values)), values, color="#4c72b0", width=0.6, yerr=err, capsize=4)
            ax.axhline(0, color="black", lw=0.6)
        else:  # a level: points, on an axis that shows their differences
            ax.errorbar(range(len(values)), values, yerr=err, fmt="o", color="#4c72b0", ms=8,
                        capsize=4)  # fmt: skip
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


# -- on the page -----------------------------------------------------------------------------


def _group_figures(label: str, runs: list, out: Path) -> list:
    per_seed = branch_dirs(runs)
    sections = []
    if any(PHASE_A in b for b in per_seed.values()):
        figs = plot_sweep(label, per_seed, out)
        seeds = sorted(per_seed)
        over = (
            f"; mean over {len(seeds)} seeds, whiskers: 95% Student-t interval over seeds"
            if len(seeds) > 1
            else "; one training seed"
        )
        captions = {
            "_losses.png": "Both tasks' validation loss (answer tokens, lower is better) against "
            f"optimizer step for every branch of seed {seeds[0]}: phase A, then B from the "
            "dotted line; each point is the mean over all validation examples "
            f"(n = {_n(runs)}).",
            "_forgetting.png": "Per strategy: how far task A's validation loss rose from the "
            "phase-A model to the end of B (forgetting; bars), and task B's final loss "
            "(points); dashed lines: no replay (none) and A and B trained together (joint)"
            + over
            + ".",
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


def related(runs: list) -> dict[str, list]:
    """A sweep's branches together: ``none`` (no replay) first, so every strategy is
    compared with it seed by seed; phase A (task A alone) last."""

    def rank(r) -> int:
        v = (r.replicate or {}).get("variant") or r.name.rsplit("/", 1)[-1]
        return 0 if v == "none" else 2 if v == PHASE_A else 1

    return {k: sorted(v, key=rank) for k, v in related_by_name(runs).items()}


def _n(runs: list) -> str:
    ns = {f"{r['task']} {r['n']}" for run in runs for r in run.val if "n" in r}
    return ", ".join(sorted(ns)) or "?"


def _register() -> None:
    register_page_kind(
        "replay-mixing",
        title="Replay mixing (LoRA SFT, task A then B)",
        group_figures=_group_figures,
        related=related,
        description="Phase A once, then B with 10% of A replayed per strategy; none and "
        "joint are the baselines. Read forgetting from A's loss after B.",
    )


_register()
