"""The README's demo numbers, read from a demo run's evaluation (never typed by hand).

For each run and each group: greedy success on the group's test problems just
before and just after the stage that trains it, with Wilson 95% intervals and
n, and whether the change is larger than chance (the two intervals do not
overlap); then what the run forgot (success right
after a group's stage against success at the end).

    clab demo && uv run python benchmarks/demo_numbers.py            # in the demo's folder
    uv run python benchmarks/demo_numbers.py --metrics /tmp/x/metrics
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from clab.errors import ClabError
from clab.metrics.intervals import wilson


def _rate(r: dict) -> str:
    lo, hi = wilson(r["success_rate"] * r["n"], r["n"])
    return f"{r['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"


def _apart(a: dict, b: dict) -> bool:
    """The two rates' 95% intervals do not overlap: a change chance alone rarely makes."""
    a_lo, a_hi = wilson(a["success_rate"] * a["n"], a["n"])
    b_lo, b_hi = wilson(b["success_rate"] * b["n"], b["n"])
    return a_hi < b_lo or b_hi < a_lo


def run_table(metrics: Path, run: str) -> str:
    """One run's Markdown table: learning per stage, then forgetting at the end."""
    path = metrics / run / "eval.parquet"
    if not path.is_file():
        raise ClabError(f"{path}: no evaluation of run {run!r}; run `clab demo` first")
    rows = [
        {**r, "success_rate": r["value"]}
        for r in pq.read_table(path).to_pylist()
        if r["metric"] == "success_rate"
    ]
    at = {(r["stage"], r["task"]): r for r in rows}
    last = max(r["stage"] for r in rows)
    lines = [
        f"**{run}** (greedy success on each group's test problems, Wilson 95% interval)",
        "",
        "| stage | group trained | n | before its stage | after its stage | change | "
        "beyond chance | at the end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in range(1, last + 1):
        g = next(r["trained_task"] for r in rows if r["stage"] == stage)
        before, after, end = at[stage - 1, g], at[stage, g], at[last, g]
        change = after["success_rate"] - before["success_rate"]
        beyond = "yes" if _apart(before, after) else "no"
        lines.append(
            f"| {stage} | {g} | {after['n']} | {_rate(before)} | {_rate(after)} | "
            f"{change:+.2f} | {beyond} | {_rate(end)} |"
        )
    summary = json.loads((metrics / run / "summary.json").read_text())
    per_task = summary.get("forgetting_per_task") or {}
    first = next(r["trained_task"] for r in rows if r["stage"] == 1)
    trail = " -> ".join(f"{at[stage, first]['success_rate']:.2f}" for stage in range(last + 1))
    lines += [
        "",
        f"Group {first} (the first trained) after each stage, from stage 0: {trail}.",
        f"Final average success {summary['average_accuracy']:.3f}; backward transfer "
        f"{summary['backward_transfer']:+.3f}; forgetting {summary['forgetting']:.3f} "
        "(mean over the groups trained before the last of best earlier success minus final; "
        "per group: "
        + ", ".join(f"{k}: {v:.2f}" for k, v in per_task.items() if v is not None)
        + ").",
    ]
    return "\n".join(lines)


def sweep_table(metrics: Path, prefix: str, methods: list[str]) -> str:
    """Sparse updates: each corpus's perplexity before and after its own stage (learning),
    and the first corpus's after every stage (forgetting), one row per method."""
    lines = [
        f"**{prefix}** (test perplexity, lower is better)",
        "",
        "| method | each corpus before -> after its stage | first corpus after each stage | "
        "forgetting of the first corpus |",
        "|---|---|---|---|",
    ]
    for m in methods:
        path = metrics / f"{prefix}-{m}" / "summary.json"
        if not path.is_file() and m == "random_share":
            continue  # a workspace from before it was among the service's methods
        if not path.is_file():
            raise ClabError(f"{path}: no evaluation of run {prefix}-{m!s}; run `clab demo` first")
        s = json.loads(path.read_text())
        R, names = s["matrix"], s["task_names"]
        own = ", ".join(f"{names[t]} {R[t][t]:.0f} -> {R[t + 1][t]:.0f}" for t in range(len(R) - 1))
        first = " -> ".join(f"{row[0]:.0f}" for row in R)
        forgot = s.get("forgetting_per_task", {}).get("0")
        lines.append(f"| {m} | {own} | {first} | {forgot:+.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--runs", nargs="+", default=["demo-curriculum", "demo-control"])
    ap.add_argument("--sweep", default="demo-k1", help="a k1-trainer sweep's name ('' for none)")
    args = ap.parse_args(argv)
    tables = [run_table(args.metrics, run) for run in args.runs]
    if args.sweep and (args.metrics / f"{args.sweep}-k1").is_dir():
        tables.append(
            sweep_table(args.metrics, args.sweep, ["k1", "dense", "random_k", "random_share"])
        )
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
