"""The mixing demo's replay strategies over several draws of what the training seeds
share (``data_seed``: the tasks' examples, the tokenizer, the tiny model, phase A's
adapter), each draw over training seeds.

Within a draw, a strategy's effect is its paired difference from no replay in task
A's forgetting, over the draw's training seeds (what ``seed_numbers.py`` prints).
Over draws, each draw's mean difference is one observation: the mean and its
Student-t interval over draws say whether a strategy forgets less whatever the
draw, not only for one set of examples.

    uv run python benchmarks/demo_seeds.py /tmp/dm0 --kinds mixing --set data_seed=0
    uv run python benchmarks/demo_seeds.py /tmp/dm1 --kinds mixing --set data_seed=1
    uv run python benchmarks/demo_seeds.py /tmp/dm2 --kinds mixing --set data_seed=2
    uv run python benchmarks/mixing_draws.py /tmp/dm0 /tmp/dm1 /tmp/dm2
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from clab.metrics.replicates import SeedEstimate, mean_interval, paired_difference

PREFIX = "demo-mix-"


def forgetting_by_seed(metrics: Path) -> dict[str, dict[int, float]]:
    """strategy -> seed -> task A's forgetting (answer loss: a rise is forgetting)."""
    out: dict[str, dict[int, float]] = {}
    for d in sorted(metrics.glob(f"{PREFIX}*-s*")):
        m = re.fullmatch(rf"{PREFIX}(.+)-s(\d+)", d.name)
        summary = d / "summary.json"
        if m and m.group(1) != "phase-a" and summary.is_file():
            value = json.loads(summary.read_text())["forgetting_per_task"]["0"]
            out.setdefault(m.group(1), {})[int(m.group(2))] = value
    return out


def _est(e: SeedEstimate) -> str:
    if e.low is None:
        return f"{e.mean:+.2f}"
    mark = "beyond" if e.beyond_spread else "within"
    return f"{e.mean:+.2f} [{e.low:+.2f}, {e.high:+.2f}] {mark}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("works", nargs="+", type=Path, help="demo_seeds.py work folders, one a draw")
    args = ap.parse_args()
    draws = [forgetting_by_seed(w / "metrics") for w in args.works]
    strategies = sorted(set.intersection(*(set(d) for d in draws)) - {"none"})
    print(
        f"Task A's forgetting: no replay minus each strategy (positive: the strategy forgets "
        f"less), paired over each draw's training seeds, then over {len(draws)} draws\n"
    )
    cols = " | ".join(f"draw {w.name}" for w in args.works)
    print(f"| strategy | {cols} | over draws |")
    print("|---|" + "---|" * (len(draws) + 1))
    none = [mean_interval(d["none"]) for d in draws]
    print(f"| no replay's own forgetting | {' | '.join(_est(e) for e in none)} | "
          f"{_est(mean_interval(dict(enumerate(e.mean for e in none))))} |")  # fmt: skip
    for s in strategies:
        per = [paired_difference(d[s], d["none"]) for d in draws]
        over = mean_interval({i: e.mean for i, e in enumerate(per)})
        print(f"| {s} | {' | '.join(_est(e) for e in per)} | {_est(over)} |")


if __name__ == "__main__":
    main()
