"""What an RL run's policy did within each stage, by quarter of the stage: token
entropy, success of the sampled responses, answer forms, response length and the
step's wall time, from ``metrics/<run>/train.jsonl``.

The evaluator's tables say what each stage changed; this says how: whether the
policy kept exploring or collapsed onto one answer template (entropy near 0, one
answer form), and when. docs/demo.md's account of the GPU runs comes from it.

    python benchmarks/stage_dynamics.py --metrics WORK/metrics [--runs demo-curriculum-s0 ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "shared"))

from clab.tracking.metrics_log import read_rows  # noqa: E402

COLUMNS = [
    ("entropy", "entropy", "{:.3f}"),
    ("success_rate", "sampled success", "{:.2f}"),
    ("answer_forms", "answer forms", "{:.1f}"),
    ("flat_groups", "flat groups", "{:.2f}"),  # GRPO only
    ("flat_groups_kept", "flat groups trained", "{:.2f}"),  # GRPO with grpo.oversample > 1
    ("response_length_mean", "response tokens", "{:.1f}"),
    # where a stage's wall time went: the GPU demo's budget is minutes a seed
    ("step_time", "s a step", "{:.3f}"),
    ("generation_time", "s generating", "{:.3f}"),
]
COLLAPSED = 0.01  # entropy below this: the policy samples (nearly) one continuation


def quarters(rows: list[dict], parts: int = 4) -> list[list[dict]]:
    """``rows`` cut into ``parts`` consecutive runs of (nearly) equal length."""
    n = len(rows)
    return [rows[n * i // parts : n * (i + 1) // parts] for i in range(parts)]


def mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    return sum(vals) / len(vals) if vals else math.nan


def stages(rows: list[dict]) -> list[tuple[int, int, list[dict]]]:
    """(round, group, rows) for each stage, in training order."""
    out: list[tuple[int, int, list[dict]]] = []
    for r in rows:
        key = (int(r.get("round", 0)), int(r["group"]))
        if not out or out[-1][:2] != key:
            out.append((*key, []))
        out[-1][2].append(r)
    return out


def table(rows: list[dict], parts: int = 4) -> list[str]:
    """Markdown lines: one row per quarter of each stage."""
    cols = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = [
        "| stage | group | part | steps | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols),
    ]
    for i, (rnd, group, part_rows) in enumerate(stages(rows), start=1):
        for q, chunk in enumerate(quarters(part_rows, parts), start=1):
            if not chunk:
                continue
            steps = f"{chunk[0]['global_step']}-{chunk[-1]['global_step']}"
            cells = []
            for key, _, fmt in cols:
                v = mean(chunk, key)
                cells.append("-" if math.isnan(v) else fmt.format(v))
            lines.append(
                f"| {i} | g{group} (r{rnd}) | {q}/{parts} | {steps} | " + " | ".join(cells) + " |"
            )
    return lines


def collapse(rows: list[dict], parts: int = 4) -> str:
    """For each stage, the first part whose mean entropy is below :data:`COLLAPSED`
    (a group already solved, as group 0 after the warm-up, gets there at once)."""
    found = []
    for i, (_, group, part_rows) in enumerate(stages(rows), start=1):
        low = [
            q
            for q, c in enumerate(quarters(part_rows, parts), 1)
            if c and mean(c, "entropy") < COLLAPSED
        ]
        found.append(f"stage {i} (g{group}) " + (f"from part {low[0]}/{parts}" if low else "never"))
    return f"entropy below {COLLAPSED}: " + ", ".join(found)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--runs", nargs="*", help="run names (default: every run with train.jsonl)")
    ap.add_argument("--parts", type=int, default=4, help="parts a stage is cut into")
    ap.add_argument("--summary", action="store_true", help="each run's collapse line only")
    args = ap.parse_args(argv)
    if args.parts < 1:
        ap.error("--parts must be at least 1")
    runs = args.runs or sorted(p.parent.name for p in args.metrics.glob("*/train.jsonl"))
    if not runs:
        print(f"error: no train.jsonl under {args.metrics}", file=sys.stderr)
        raise SystemExit(2)
    for run in runs:
        path = args.metrics / run / "train.jsonl"
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            raise SystemExit(2)
        rows = [r for r in read_rows(path) if "group" in r]
        print(f"**{run}**: {collapse(rows, args.parts)}" + ("" if args.summary else "\n"))
        if not args.summary:
            print("\n".join(table(rows, args.parts)), end="\n\n")


if __name__ == "__main__":
    main()
