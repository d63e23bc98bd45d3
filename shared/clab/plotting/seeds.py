"""Experiments over training seeds on the page and in ``clab report``.

For each group of related runs (a kind's ``related``): its replicate sets (runs
that differ only by seed, :mod:`clab.evaluation.experiments`), each set with
two evaluated seeds or more as one aggregate (mean, Student-t interval over
seeds, each seed's value), and every other set of the group compared with the
first, paired seed by seed. The figure: the average score after each stage,
per set the mean as a thick line with its between-seed band and each seed's
line thin behind it, and forgetting per task with between-seed intervals.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clab.evaluation.experiments import (
    ReplicateSet,
    aggregate_rows,
    aggregate_set,
    compare_sets,
    comparison_rows,
    group_replicates,
    replicate_of,
)
from clab.metrics.replicates import seeds_text
from clab.plotting import figures
from clab.plotting.runs import HEADLINE_COLUMNS, Estimate, HeadlineRow, RunData
from clab.plotting.sections import Figure, Section


@dataclass
class SeedView:
    """A group's numbers over seeds; ``multi``: the runs of sets with several seeds."""

    sets: list[ReplicateSet] = field(default_factory=list)
    aggregates: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    multi: set[str] = field(default_factory=set)


def seed_view(runs: list[RunData], metrics: Path) -> SeedView:
    """The aggregates and paired comparisons of one related group."""
    sets = group_replicates({r.name: replicate_of(r.summary, r.info) for r in runs})
    view = SeedView(sets=sets)
    multi = [s for s in sets if len(s.runs) > 1]
    for s in multi:
        view.multi |= set(s.runs.values())
        agg = aggregate_set(metrics, s)
        if agg is not None and "error" not in agg:
            view.aggregates.append(agg)
    for other in multi[1:]:
        c = compare_sets(metrics, multi[0], other)
        if c is not None:
            view.comparisons.append(c)
    return view


def _est(d: dict) -> Estimate:
    ci = None if d.get("low") is None else (d["low"], d["high"])
    return Estimate(d.get("mean"), ci)


def headline_rows(agg: dict) -> list[HeadlineRow]:
    """The aggregate as the headline table's row: mean and between-seed interval."""
    m = agg["scores"][agg["score"]]
    return [
        HeadlineRow(
            run=agg["name"],
            score=agg["score"],
            higher_is_better=bool(m["higher_is_better"]),
            n=f"{agg['n_seeds']} seeds",
            stages=int(m["stages"]),
            cells={k: _est(m[k]) for k, _ in HEADLINE_COLUMNS},
            over=f"training seeds (n = {agg['n_seeds']})",
        )
    ]


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _v(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def aggregate_html(agg: dict) -> str:
    """Per headline metric and per task: n, mean, between-seed interval, each seed."""
    seeds = agg["seeds"]
    head = "".join(f"<th>seed {s}</th>" for s in seeds)
    out = [
        f"<table class='seeds' data-set='{_e(agg['name'])}'><thead><tr><th>"
        f"{_e(agg['name'])}</th><th>n</th><th>mean</th><th>95% interval over seeds</th>"
        f"{head}</tr></thead><tbody>"
    ]
    for r in aggregate_rows(agg):
        signed = r["metric"] == "backward_transfer"
        iv = "-" if r["low"] is None else f"[{_v(r['low'], signed)}, {_v(r['high'], signed)}]"
        attrs = f"data-metric='{_e(r['metric'])}'"
        if r["mean"] is not None:
            attrs += f" data-value='{r['mean']!r}'"
        if r["low"] is not None:
            attrs += f" data-low='{r['low']!r}' data-high='{r['high']!r}'"
        vals = "".join(f"<td>{_v(r['values'].get(str(s)), signed)}</td>" for s in seeds)
        out.append(
            f"<tr {attrs}><td>{_e(r['metric'].replace('_', ' '))}</td><td>{r['n']}</td>"
            f"<td>{_v(r['mean'], signed)}</td><td>{iv}</td>{vals}</tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def comparison_html(c: dict) -> str:
    """The paired differences, each with its verdict against the seed spread."""
    out = [
        f"<table class='comparison' data-base='{_e(c['base'])}' data-other='{_e(c['other'])}'>"
        f"<thead><tr><th>{_e(c['other'])} minus {_e(c['base'])}</th><th>difference</th>"
        f"<th>95% interval (paired over {len(c['seeds'])} seeds)</th><th>verdict</th>"
        "</tr></thead><tbody>"
    ]
    for key, d in comparison_rows(c):
        beyond = d["beyond_seed_spread"]
        verdict = "beyond the seed spread" if beyond else "within the seed spread"
        iv = "-" if d["low"] is None else f"[{_v(d['low'], True)}, {_v(d['high'], True)}]"
        out.append(
            f"<tr data-metric='{_e(key)}' data-beyond='{str(beyond).lower()}'>"
            f"<td>{_e(key.replace('_', ' '))}</td><td>{_v(d['mean'], True)}</td><td>{iv}</td>"
            f"<td>{verdict}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def _per_seed_average(agg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    m = agg["scores"][agg["score"]]
    rows = m["average_accuracy_per_stage"]
    mean = np.array([r["mean"] for r in rows], dtype=float)
    low = np.array([np.nan if r["low"] is None else r["low"] for r in rows], dtype=float)
    high = np.array([np.nan if r["high"] is None else r["high"] for r in rows], dtype=float)
    seeds = np.array(
        [[r["values"].get(str(s), np.nan) for r in rows] for s in agg["seeds"]], dtype=float
    )
    return mean, low, high, seeds


def seed_figures(label: str, view: SeedView, out: Path) -> list[Section]:
    """The group's aggregates drawn: stage curves with bands, forgetting with intervals."""
    aggs = [a for a in view.aggregates if a["score"] == (view.aggregates or [{}])[0].get("score")]
    if not aggs:
        return []
    slug = label.replace("/", "--")
    score = aggs[0]["score"].replace("_", " ")
    m0 = aggs[0]["scores"][aggs[0]["score"]]
    labels = figures.stage_labels(m0["stage_tasks"], aggs[0]["task_names"])
    fig, ax = figures.plt.subplots(figsize=(11, 3.8))
    for k, agg in enumerate(aggs):
        mean, low, high, seeds = _per_seed_average(agg)
        x = np.arange(len(mean))
        for line in seeds:
            ax.plot(x, line, color=figures.color(k), lw=0.8, alpha=0.35)
        ax.fill_between(x, low, high, color=figures.color(k), alpha=0.15, lw=0)
        ax.plot(x, mean, color=figures.color(k), lw=2.4, marker="o",
                label=f"{agg['name']} (mean of {agg['n_seeds']} seeds)")  # fmt: skip
    ax.set_xticks(range(len(labels)), [lab.split(":")[0] for lab in labels])
    ax.set_xlabel("after stage (0 = before training)")
    ax.set_ylabel(f"average {score}", fontsize=8)
    ax.set_title(
        f"{label}: average {score} over tasks after each stage; thick: mean over seeds, "
        "band: 95% Student-t interval over seeds, thin: each seed",
        fontsize=9,
        loc="left",
    )
    ax.grid(alpha=0.3)
    figures.legend_outside(ax)
    figs = [
        Figure(
            figures.save(fig, out / "seeds" / f"{slug}-average.png"),
            "Each experiment's average score after every stage over its training seeds: the "
            "band is the between-seed 95% interval (Student t), not an interval over test "
            "items; each thin line is one seed's run.",
        )
    ]
    points = {}
    for agg in aggs:
        m = agg["scores"][agg["score"]]
        points[agg["name"]] = {
            key: [
                (int(j), d["mean"], None if d["low"] is None else (d["low"], d["high"]))
                for j, d in m[f"{key}_per_task"].items()
                if d["mean"] is not None
            ]
            for key in ("forgetting", "backward_transfer")
        }
    bars = figures.forgetting_bars(
        points,
        aggs[0]["task_names"],
        f"{label}: forgetting and backward transfer per task, mean over seeds",
        out / "seeds" / f"{slug}-forgetting.png",
        score,
    )
    if bars is not None:
        figs.append(
            Figure(bars, "Per task: the mean over seeds with its 95% between-seed interval.")
        )
    return [Section(f"Over training seeds ({seeds_text(aggs[0]['seeds'])})", figs)]
