"""``clab report NAME...``: the page's numbers in the terminal.

An experiment with several training seeds first: its aggregate (mean, the
between-seed interval and every seed's value, :mod:`clab.evaluation.experiments`)
and the paired differences between its variants or related experiments. Then,
per run, the page's headline rows (``clab.plotting.runs.headline`` through each
kind's registration) and per task what was kept and what was lost, with 95%
intervals over test items, so people who live in a terminal read the same
numbers. ``--json``: the same for programs.
"""

from __future__ import annotations

import json
from pathlib import Path

from clab.errors import ClabError
from clab.evaluation.experiments import aggregate_text, comparison_text
from clab.plotting.registry import page_kind
from clab.plotting.runs import HEADLINE_COLUMNS, RunData, find_run_names, load_run, per_task
from clab.plotting.seeds import seed_view


def expand(metrics: Path, names: list[str]) -> list[str]:
    """A run, a sweep folder (its branches), or a sweep prefix (``demo-k1``: its methods)."""
    every = find_run_names(metrics)
    out = []
    for n in names:
        hits = [r for r in every if r == n or r.startswith(n + "/")]
        hits = hits or [r for r in every if r.startswith(n + "-")]
        if not hits:
            raise ClabError(
                f"report: no run {n!r} under {metrics}/ (runs there: {', '.join(every) or 'none'})"
            )
        out += [h for h in hits if h not in out]
    return out


def table(header: list[str], rows: list[list[str]]) -> str:
    """Columns aligned: text left, numbers right."""
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def ordered_runs(names: list[str], metrics: Path, checkpoints: Path | None) -> list[RunData]:
    """The named runs in the page's order: related runs next to each other."""
    loaded = [load_run(metrics, n, checkpoints) for n in expand(metrics, names)]
    runs: list[RunData] = []
    for kind in dict.fromkeys(r.kind for r in loaded):
        mine = [r for r in loaded if r.kind == kind]
        runs += [r for group in page_kind(kind).related(mine).values() for r in group]
    return runs


def seed_sections(runs: list[RunData], metrics: Path) -> tuple[list[dict], list[dict]]:
    """The page's numbers over seeds (:func:`clab.plotting.seeds.seed_view`), for every
    related group of the named runs: aggregates, then paired comparisons."""
    aggs, comps = [], []
    for kind in dict.fromkeys(r.kind for r in runs):
        mine = [r for r in runs if r.kind == kind]
        for group in page_kind(kind).related(mine).values():
            view = seed_view(group, metrics)
            aggs += view.aggregates
            comps += view.comparisons
    return aggs, comps


def report_json(names: list[str], metrics: Path, checkpoints: Path | None = None) -> str:
    """``clab report --json``: aggregates with per-seed values, comparisons, and each run's
    headline numbers with their item intervals."""
    runs = ordered_runs(names, metrics, checkpoints)
    aggs, comps = seed_sections(runs, metrics)
    per_run = [
        {
            "run": h.run,
            "score": h.score,
            "interval": "test items of one run",
            **{k: {"value": h.cells[k].value, "ci": h.cells[k].ci} for k, _ in HEADLINE_COLUMNS},
        }
        for r in runs
        for h in page_kind(r.kind).headline(r)
    ]
    return json.dumps({"experiments": aggs, "comparisons": comps, "runs": per_run}, indent=2)


def report(names: list[str], metrics: Path, checkpoints: Path | None = None) -> str:
    runs = ordered_runs(names, metrics, checkpoints)
    aggs, comps = seed_sections(runs, metrics)
    seed_parts = [aggregate_text(a) for a in aggs] + [comparison_text(c) for c in comps]
    head = ["run", "score", "n per task", "stages"] + [label for _, label in HEADLINE_COLUMNS]
    rows, missing = [], []
    for r in runs:
        lines = page_kind(r.kind).headline(r)
        if not lines:
            missing.append(r.name)
        for h in lines:
            rows.append(
                [
                    h.run,
                    f"{h.score.replace('_', ' ')} ({'higher' if h.higher_is_better else 'lower'}"
                    " is better)",
                    h.n,
                    str(h.stages),
                ]
                + [h.cells[k].text(signed=k == "backward_transfer") for k, _ in HEADLINE_COLUMNS]
            )
    parts = [*seed_parts, "Each run (intervals over the test items of that one run):"]
    if rows:
        parts.append(table(head, rows))
        parts.append(
            "[low, high]: 95% interval (Wilson for a success rate, paired bootstrap over test "
            "items otherwise). Backward transfer below 0 and forgetting above 0: worse on "
            "earlier tasks."
        )
    for r in runs:
        tasks = per_task(r)
        if not tasks:
            continue
        score = r.summary["score"].replace("_", " ")
        parts.append(
            f"\n{r.name}: per task ({score})\n"
            + table(
                [
                    "task",
                    "n",
                    "after its own stage",
                    "at the end",
                    "forgetting",
                    "backward transfer",
                ],
                [
                    [
                        t.task,
                        str(t.n or "-"),
                        t.after_own.text(),
                        t.final.text(),
                        t.forgetting.text(),
                        t.backward_transfer.text(signed=True),
                    ]
                    for t in tasks
                ],
            )
        )
    if missing:
        parts.append(
            "\nnot evaluated yet (no summary.json): " + ", ".join(missing) + ": run the evaluator"
        )
    return "\n".join(parts)
