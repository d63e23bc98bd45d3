"""Experiments in the metrics volume: runs grouped by their seeds, and their aggregate.

A run records its place in its experiment (run.json's ``replicate``, copied into
summary.json by the evaluator): the experiment, the variant (K-1's method, a
mixing branch) and the training seed. Runs that differ only by seed are one
replicate set, named as the runs without ``-s<seed>``; its aggregate is
:func:`clab.metrics.replicates.aggregate_summaries` over their summaries. Read
by the evaluator (a table at its end), ``clab report`` and the page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from clab.metrics.continual import rise_per_stage
from clab.metrics.replicates import SCALARS, aggregate_summaries, paired_difference, seeds_text
from clab.storage.atomic import read_json

SEED_SUFFIX = "-s"


@dataclass
class ReplicateSet:
    """The runs of one (experiment, variant), one per training seed."""

    name: str  # "<experiment>[-<variant>]"
    experiment: str
    variant: str | None
    runs: dict[int, str] = field(default_factory=dict)  # seed -> run name

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)


# what every reader of a summary.json relies on
SUMMARY_KEYS = ("score", "task_names", "matrix", "stage_tasks")


def read_summary(metrics: Path, run: str) -> dict | None:
    """A run's summary.json; None if it has none yet. One that is not clab's (not
    JSON, or without the keys every reader uses) is a ClabError naming it."""
    path = metrics / run / "summary.json"
    return read_json(path, SUMMARY_KEYS) if path.is_file() else None


def replicate_of(summary: dict | None, info: dict | None = None) -> dict | None:
    """A run's replicate record: run.json's (``info``) or the summary's copy."""
    for src in (info, summary):
        if src and isinstance(src.get("replicate"), dict):
            return src["replicate"]
    return None


def set_name(rep: dict) -> str:
    return rep["experiment"] + (f"-{rep['variant']}" if rep.get("variant") else "")


def group_replicates(records: dict[str, dict | None]) -> list[ReplicateSet]:
    """run name -> replicate record, as replicate sets in first-seen order. A run
    without a record (older runs) is a set of its own, named as the run."""
    sets: dict[str, ReplicateSet] = {}
    for run, rep in records.items():
        if rep is None:
            sets.setdefault(run, ReplicateSet(run, run, None)).runs[0] = run
            continue
        key = set_name(rep)
        s = sets.setdefault(key, ReplicateSet(key, rep["experiment"], rep.get("variant")))
        s.runs[int(rep["seed"])] = run
    return list(sets.values())


def aggregate_set(metrics: Path, rs: ReplicateSet) -> dict | None:
    """The set's aggregate over its evaluated seeds; None with fewer than two."""
    summaries = {s: read_summary(metrics, r) for s, r in rs.runs.items()}
    have = {s: x for s, x in summaries.items() if x is not None}
    if len(have) < 2:
        return None
    try:
        agg = aggregate_summaries(have)
    except ValueError as e:  # seeds at different stages: say so rather than average
        return {"error": str(e), "seeds": sorted(have)}
    agg["name"] = rs.name
    agg["runs"] = {str(s): rs.runs[s] for s in sorted(have)}
    agg["not_evaluated"] = sorted(set(rs.runs) - set(have))
    return agg


def _num(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def aggregate_rows(agg: dict, score: str | None = None) -> list[dict]:
    """The table's rows: each headline metric, then per task its final score and
    forgetting; each row the mean, the between-seed interval and every seed's value."""
    score = score or agg["score"]
    m = agg["scores"][score]
    rows = [{"metric": k, **m[k]} for k in SCALARS]
    T = len(m["matrix"]) - 1
    for j, task in enumerate(agg["task_names"]):
        rows.append({"metric": f"{task}: final", **m["matrix"][T][j]})
        f = m["forgetting_per_task"].get(str(j))
        if f is not None:
            rows.append({"metric": f"{task}: forgetting", **f})
    return rows


def aggregate_text(agg: dict, score: str | None = None) -> str:
    """The aggregate as a terminal table, with what its interval is over."""
    if "error" in agg:
        return f"{agg.get('name', '?')}: no aggregate: {agg['error']}\n"
    score = score or agg["score"]
    seeds = agg["seeds"]
    head = ["metric", "n", "mean", "95% interval (seeds)", *[f"s{s}" for s in seeds]]
    body = []
    for r in aggregate_rows(agg, score):
        signed = r["metric"] == "backward_transfer"
        iv = "-" if r["low"] is None else f"[{_num(r['low'], signed)}, {_num(r['high'], signed)}]"
        vals = [_num(r["values"].get(str(s)), signed) for s in seeds]
        body.append([r["metric"], str(r["n"]), _num(r["mean"], signed), iv, *vals])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [head, ["-" * w for w in widths], *body]
    ]
    note = (
        f"{agg['name']}: {score.replace('_', ' ')} over {seeds_text(seeds)}; the interval is "
        "Student t over training seeds, not over test items"
    )
    if agg.get("not_evaluated"):
        note += f"; not evaluated yet: seeds {agg['not_evaluated']}"
    return note + "\n" + "\n".join(x.rstrip() for x in lines) + "\n"


def seed_table(metrics: Path, runs: list[str]) -> str:
    """The evaluator's last words: the aggregate of every set with two seeds or more."""
    records = {r: replicate_of(read_summary(metrics, r)) for r in runs}
    out = []
    for rs in group_replicates(records):
        agg = aggregate_set(metrics, rs) if len(rs.runs) > 1 else None
        if agg is not None:
            out.append(aggregate_text(agg))
    return "\n".join(out)


def compare_sets(metrics: Path, base: ReplicateSet, other: ReplicateSet) -> dict | None:
    """``other`` minus ``base``, paired seed by seed over the seeds both evaluated, for
    each headline metric of the primary score and, where both trained the same tasks in
    the same order, each stage's rise and each task's forgetting (a lever can change
    what is learned without changing the averages); None with fewer than two shared
    seeds."""
    shared = [s for s in base.seeds if s in other.runs]
    a = {s: read_summary(metrics, base.runs[s]) for s in shared}
    b = {s: read_summary(metrics, other.runs[s]) for s in shared}
    return compare_summaries(base.name, a, other.name, b)


def compare_summaries(
    base: str, a: dict[int, dict | None], other: str, b: dict[int, dict | None]
) -> dict | None:
    """:func:`compare_sets` on summaries in hand ({seed: summary}), wherever they came
    from (``seed_numbers.py --from-log`` builds them from training logs)."""
    seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    unpaired = sorted((set(a) | set(b)) - set(seeds))
    if len(seeds) < 2 or a[seeds[0]]["task_names"] != b[seeds[0]]["task_names"]:
        return None  # fewer than two pairs, or not scored on the same tasks

    def paired(x: dict, y: dict) -> dict:
        d = paired_difference(x, y)
        return {**d.to_json(), "beyond_seed_spread": d.beyond_spread, "verdict": d.verdict}

    out = {key: paired({s: a[s].get(key) for s in seeds}, {s: b[s].get(key) for s in seeds})
           for key in SCALARS}  # fmt: skip
    stages, tasks = {}, {}
    first_a = a[seeds[0]]
    order = first_a.get("stage_tasks")
    if order is not None and all(  # every seed of both: same tasks, same order
        x[s].get("stage_tasks") == order for x in (a, b) for s in seeds
    ):
        names = first_a["task_names"]
        rise_a = {s: rises_of(a[s]) for s in seeds}
        rise_b = {s: rises_of(b[s]) for s in seeds}
        for i in range(1, len(order)):
            label = f"stage {i} ({names[order[i]]})"
            stages[label] = paired(
                {s: rise_a[s][i - 1] for s in seeds}, {s: rise_b[s][i - 1] for s in seeds}
            )
        for key in sorted(first_a.get("forgetting_per_task", {}), key=int):
            tasks[names[int(key)]] = paired(
                {s: a[s]["forgetting_per_task"].get(key) for s in seeds},
                {s: b[s]["forgetting_per_task"].get(key) for s in seeds},
            )
    return {
        "base": base,
        "other": other,
        "seeds": seeds,
        "unpaired": unpaired,  # in one set only (or unscored): left out of every pair
        "metrics": out,
        "rise_per_stage": stages,
        "forgetting_per_task": tasks,
    }


def rises_of(summary: dict) -> list[float]:
    """A summary's rise of each stage (``rise_per_stage`` of its primary score)."""
    return rise_per_stage(
        summary["matrix"], summary["stage_tasks"], summary.get("higher_is_better", True)
    )


def comparison_rows(c: dict) -> list[tuple[str, dict]]:
    """(label, paired difference) for every metric a comparison holds, in reading
    order: the headline metrics, each stage's rise, each task's forgetting."""
    rows = list(c["metrics"].items())
    rows += [(f"rise, {k}", d) for k, d in c.get("rise_per_stage", {}).items()]
    rows += [(f"forgetting, {k}", d) for k, d in c.get("forgetting_per_task", {}).items()]
    return [(k, d) for k, d in rows if d["mean"] is not None]


def comparison_text(c: dict) -> str:
    """One line per metric: the paired difference, its interval and the verdict."""
    left = c.get("unpaired") or []
    out = (
        f"; seed{'s' if len(left) > 1 else ''} {', '.join(map(str, left))} left out" if left else ""
    )
    lines = [f"{c['other']} minus {c['base']}, paired over {seeds_text(c['seeds'])}{out}:"]
    words = {"yes": "beyond the seed spread", "no": "within the seed spread"}
    for key, d in comparison_rows(c):
        verdict = words.get(d["verdict"], "no verdict (no spread between seeds)")
        iv = "" if d["low"] is None else f" [{d['low']:+.3f}, {d['high']:+.3f}]"
        n = f"  (n={d['n']})" if d.get("n") is not None and d["n"] < len(c["seeds"]) else ""
        lines.append(f"  {key:<22} {d['mean']:+.3f}{iv}  {verdict}{n}")
    return "\n".join(lines) + "\n"
