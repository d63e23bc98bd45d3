"""A demo's comparisons over several draws of what its training seeds share
(``data_seed``: data sets, tokenizer, the tiny model's initialisation, phase A's
adapter, reward models), each draw over training seeds.

Within a draw, a method's effect is its paired difference from the baseline in a
summary metric (``forgetting`` by default), over the draw's training seeds (what
``seed_numbers.py`` prints). Over draws, each draw's mean difference is one
observation: the mean and its Student-t interval over draws say whether the effect
holds whatever the draw, not only for one set of examples and one starting model.

    uv run python benchmarks/demo_seeds.py /tmp/d1 --kinds mixing --set data_seed=1
    uv run python benchmarks/demo_seeds.py /tmp/d2 --kinds mixing --set data_seed=2
    uv run python benchmarks/draws.py /tmp/d0 /tmp/d1 /tmp/d2 --baseline demo-mix-none
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from clab.metrics.replicates import SeedEstimate, mean_interval, paired_difference


def metric_by_seed(metrics: Path, prefix: str, metric: str) -> dict[str, dict[int, float]]:
    """run set (a run's name without ``-s<seed>``) -> seed -> the summary's ``metric``,
    for the sets whose name starts with ``prefix`` and that have it."""
    out: dict[str, dict[int, float]] = {}
    for d in sorted(metrics.glob(f"{prefix}*-s*")):
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        summary = d / "summary.json"
        if m and summary.is_file():
            value = json.loads(summary.read_text())
            for key in metric.split("."):  # e.g. forgetting_per_task.0: the first task's
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                out.setdefault(m.group(1), {})[int(m.group(2))] = value
    return out


def _est(e: SeedEstimate) -> str:
    if e.low is None:
        return f"{e.mean:+.2f}"
    mark = "beyond" if e.beyond_spread else "within"
    return f"{e.mean:+.2f} [{e.low:+.2f}, {e.high:+.2f}] {mark}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("works", nargs="+", type=Path, help="demo_seeds.py work folders, one a draw")
    ap.add_argument("--baseline", required=True, help="the run set the others are paired with")
    ap.add_argument("--sets", help="compare the sets starting with this (default: the "
                    "baseline's name up to its last '-')")  # fmt: skip
    ap.add_argument(
        "--metric", default="forgetting", help="a summary.json key, dotted for a nested one"
    )
    args = ap.parse_args(argv)
    prefix = args.sets or args.baseline.rsplit("-", 1)[0]
    draws = [metric_by_seed(w / "metrics", prefix, args.metric) for w in args.works]
    if not all(args.baseline in d for d in draws):
        missing = [str(w) for w, d in zip(args.works, draws, strict=True) if args.baseline not in d]
        raise SystemExit(f"no {args.baseline} with {args.metric} in {', '.join(missing)}")
    others = sorted(set.intersection(*(set(d) for d in draws)) - {args.baseline})
    print(
        f"{args.metric}: {args.baseline} minus each set (positive: the set's {args.metric} is "
        f"lower), paired over each draw's training seeds, then over {len(draws)} draws\n"
    )
    cols = " | ".join(f"draw {w.name}" for w in args.works)
    print(f"| set | {cols} | over draws |")
    print("|---|" + "---|" * (len(draws) + 1))
    base = [mean_interval(d[args.baseline]) for d in draws]
    over = mean_interval(dict(enumerate(e.mean for e in base)))
    print(f"| {args.baseline}'s own | {' | '.join(_est(e) for e in base)} | {_est(over)} |")
    for s in others:
        per = [paired_difference(d[s], d[args.baseline]) for d in draws]
        over = mean_interval({i: e.mean for i, e in enumerate(per)})
        print(f"| {s} | {' | '.join(_est(e) for e in per)} | {_est(over)} |")


if __name__ == "__main__":
    main()
