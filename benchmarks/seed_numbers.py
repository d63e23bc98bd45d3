"""What each experiment learned and forgot, over its training seeds (never typed by hand).

For every replicate set under ``metrics/`` (the runs of one experiment and variant
that differ only by seed), per stage: the trained task's score just before and
just after its own stage, the rise, each as a mean over seeds with a 95%
Student-t interval over seeds and each seed's value, and whether the rise is
beyond the seed spread (its interval excludes 0); then each task's forgetting
(its best score after an earlier stage minus its final score, sign-adjusted) the
same way; then the paired comparisons of related sets (curriculum against
control, methods, strategies, ``gpu_demo.py --variant``'s levers) as ``clab
report`` gives them: where two sets trained the same tasks in the same order,
each stage's rise and each task's forgetting too.

    uv run python benchmarks/seed_numbers.py --metrics /tmp/gpu-demo/metrics [NAME ...]

``--from-log LOG ...`` builds the same learning and forgetting tables from the
stage-end validation lines that ``clab run`` logs (``RUN STAGE: validation g0=...``),
for runs whose evaluator pass did not happen (a job stopped after training). They
score the same test problems, greedy, as the evaluator; the warm-up's row is not in
the log, so stage 1's "before" is left out. Logs are read in the order given, so a
run resumed in a later job continues from its log; a seed's first stage logged again
starts that seed over (a rerun, said so): no seed mixes the stages of two runs.
Where the logs name the device a stage trained on (since session 22), each table
is followed by which seeds trained where (a stage resumed elsewhere: both). The
order is the command line's, and a shell glob sorts by name: give a rerun's log last.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from clab.evaluation.experiments import (
    compare_sets,
    compare_summaries,
    comparison_text,
    group_replicates,
    read_summary,
    replicate_of,
    rises_of,
)
from clab.metrics.continual import summarize
from clab.metrics.replicates import SeedEstimate, mean_interval, seeds_text
from clab.tracking.metrics_log import read_rows


def _est(e: SeedEstimate, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    if e.mean is None:
        return "-"
    if e.low is None:
        return f.format(e.mean)
    return f"{f.format(e.mean)} [{f.format(e.low)}, {f.format(e.high)}]"


def _seeds(e: SeedEstimate, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return ", ".join(f.format(v) for _, v in sorted(e.values.items()))


def set_table(name: str, summaries: dict[int, dict]) -> str:
    """One replicate set's Markdown table: learning per stage, forgetting per task."""
    first = next(iter(summaries.values()))
    tasks, names = first["stage_tasks"], first["task_names"]
    score = first["score"]
    sign = 1.0 if first.get("higher_is_better", True) else -1.0
    lines = [
        f"**{name}**: {score.replace('_', ' ')} over {seeds_text(sorted(summaries))}; "
        "[low, high] is a 95% Student-t interval over seeds",
        "",
        "| stage | task trained | before its stage | after its stage | rise | each seed's rise "
        "| beyond the seed spread |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in range(1, len(tasks)):
        j = tasks[i]
        before = mean_interval({s: x["matrix"][i - 1][j] for s, x in summaries.items()})
        after = mean_interval({s: x["matrix"][i][j] for s, x in summaries.items()})
        rise = mean_interval({s: rises_of(x)[i - 1] for s, x in summaries.items()})
        lines.append(
            f"| {i} | {names[j]} | {_est(before)} | {_est(after)} | {_est(rise, True)} | "
            f"{_seeds(rise, True)} | {rise.verdict} |"
        )
    lines += [
        "",
        "| task | best after an earlier stage | at the end | forgetting | each seed's "
        "| beyond the seed spread |",
        "|---|---|---|---|---|---|",
    ]
    T = len(tasks) - 1
    for key, _ in sorted(first.get("forgetting_per_task", {}).items(), key=lambda kv: int(kv[0])):
        j = int(key)
        best = mean_interval(
            {
                s: float(np.max(np.asarray([x["matrix"][i][j] for i in range(1, T)], float) * sign))
                * sign
                for s, x in summaries.items()  # a None cell (scored NaN) leaves the seed out
            }
        )
        end = mean_interval({s: x["matrix"][T][j] for s, x in summaries.items()})
        f = mean_interval({s: x["forgetting_per_task"].get(key) for s, x in summaries.items()})
        lines.append(
            f"| {names[j]} | {_est(best)} | {_est(end)} | {_est(f, True)} | {_seeds(f, True)} | "
            f"{f.verdict} |"
        )
    return "\n".join(lines) + "\n"


def updated_share(metrics: Path, name: str, runs: dict[int, str]) -> str | None:
    """A sparse-update set's share of parameters updated a step (``fraction_updated``,
    mean over its steps, then over seeds): K-1 and random_k choose as many groups,
    not as many parameters (random_share matches the share), so a comparison reads
    with this beside it. For a control, also the share K-1's rule took at the same
    steps from the control's own gradients (``k1_fraction``): what it was matched to."""
    lines = []
    keys = [("fraction_updated", "parameters updated a step (mean over steps)")]
    if not name.endswith("-k1"):
        keys.append(("k1_fraction", "K-1's rule would have updated, at the same steps"))
    for key, label in keys:
        per_seed = {}
        for seed, run in runs.items():
            vals = [r[key] for r in read_rows(metrics / run / "train.jsonl")
                    if r.get(key) is not None]  # fmt: skip
            if vals:
                per_seed[seed] = float(np.mean(vals))
        if per_seed:
            e = mean_interval(per_seed)
            lines.append(f"{label}: {_est(e)}; each seed's {_seeds(e)}\n")
    return "".join(lines) or None


VALIDATION = re.compile(r"(\S+)-s(\d+) r0-g(\d+): validation ((?:g\d+=(?:[0-9.]+|nan) ?)+)")
# a stage's first line; its device since session 22 (older lines: "not logged")
STAGE_START = re.compile(
    r"(\S+)-s(\d+) stage r0-g(\d+): task .* from step (?P<step>\d+)(?: on (?P<device>.+))?$"
)


def devices_text(summaries: dict[int, dict]) -> str | None:
    """Which machine trained which seeds, where the logs say: the same seed on another
    machine is another run (docs/demo.md), so a table over several says so."""
    by: dict[str, list[int]] = defaultdict(list)
    for seed, summary in sorted(summaries.items()):
        by[" + ".join(summary.get("devices") or ["not logged"])].append(seed)
    if list(by) == ["not logged"]:
        return None
    return "trained on: " + "; ".join(
        f"seed{'s' if len(s) > 1 else ''} {', '.join(map(str, s))}: {d}" for d, s in by.items()
    )


def summaries_from_logs(logs: list[Path]) -> dict[str, dict[int, dict]]:
    """{experiment: {seed: summary}} from the stage-end validation lines of one-round
    runs (stage k trains group k); a run without every stage is left out, said so."""
    seen: dict[tuple[str, int], dict[int, dict[int, float]]] = {}
    devices: dict[tuple[str, int], dict[int, set[str]]] = {}
    for log in logs:
        for line in re.split(r"[\r\n]", log.read_text(errors="replace")):
            start = STAGE_START.search(line)
            found = [(*start.groups()[:3], None)] if start else VALIDATION.findall(line)
            for run, seed, stage, scores in found:
                key, stage = (run, int(seed)), int(stage)
                rows, where = seen.setdefault(key, {}), devices.setdefault(key, {})
                # the run from its start again (a rerun): its first stage from step 0, or,
                # in logs without stage lines, its first stage validated after later ones
                # (a resume never validates stage 1 again once stage 2 is done)
                again = stage == 0 and (
                    (start and start.group("step") == "0" and (rows or where))
                    or (not start and any(k > 0 for k in rows))
                )
                if again:
                    if rows:
                        print(f"({run}-s{seed}: run again in {log}; the later run replaces it)\n")
                    rows.clear()
                    where.clear()
                if start:  # the stage's first line: where it trains (a resume: where it goes on)
                    where.setdefault(stage, set()).add((start.group("device") or "").strip())
                    continue
                rows[stage] = {
                    int(k[1:]): float(v) for k, v in (x.split("=") for x in scores.split())
                }
    out: dict[str, dict[int, dict]] = defaultdict(dict)
    for (run, seed), rows in sorted(seen.items()):
        if not rows:
            print(f"({run}-s{seed}: no stage validated in the log; left out)\n")
            continue
        T = len(next(iter(rows.values())))
        if sorted(rows) != list(range(T)):
            print(f"({run}-s{seed}: stages {sorted(rows)} of {T} in the log; left out)\n")
            continue
        R = np.full((T + 1, T), np.nan)  # row 0, the warm-up, is not logged
        for k, row in rows.items():
            R[k + 1] = [row[j] for j in range(T)]
        summary = summarize(R, [-1, *range(T)])
        summary.update(
            stage_tasks=[-1, *range(T)], task_names=[f"g{j}" for j in range(T)],
            score="success_rate",
            devices=sorted({d or "not logged" for ds in devices[(run, seed)].values() for d in ds}),
        )  # fmt: skip
        out[run][seed] = summary
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="experiments or runs (prefixes); default: all")
    ap.add_argument("--metrics", type=Path, default=Path("metrics"))
    ap.add_argument("--from-log", nargs="+", type=Path, help="training logs instead (above)")
    args = ap.parse_args(argv)
    if args.from_log:
        sets = summaries_from_logs(args.from_log)
        for name, summaries in sets.items():
            print(set_table(name, summaries))
            if (where := devices_text(summaries)) is not None:
                print(where + "\n")
        for a in sets:
            for b in sets:
                c = compare_summaries(a, sets[a], b, sets[b]) if a < b else None
                if c is not None:
                    print(comparison_text(c))
        return
    runs = sorted(
        d.name
        for d in args.metrics.iterdir()
        if (d / "summary.json").is_file()
        and (not args.names or any(d.name.startswith(n) for n in args.names))
    )
    records = {r: replicate_of(read_summary(args.metrics, r)) for r in runs}
    sets = group_replicates(records)
    for rs in sets:
        summaries = {s: read_summary(args.metrics, r) for s, r in rs.runs.items()}
        print(set_table(rs.name, summaries))
        share = updated_share(args.metrics, rs.name, rs.runs)
        if share is not None:
            print(share)
    for a in sets:
        for b in sets:
            if a.name < b.name:
                c = compare_sets(args.metrics, a, b)
                if c is not None:
                    print(comparison_text(c))


if __name__ == "__main__":
    main()
