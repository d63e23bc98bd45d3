"""The README's demo table: Wilson intervals and the learning/forgetting columns."""

import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from clab.errors import ClabError
from demo_numbers import run_table, wilson


def test_wilson_matches_the_textbook_values():
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    lo, hi = wilson(0, 100)  # no success: the interval still has width
    assert lo == 0 and hi == pytest.approx(0.0370, abs=1e-4)


def test_table_marks_a_rise_beyond_chance_and_the_forgetting(tmp_path: Path):
    # two groups, n=100: group 0 rises 0.10 -> 0.50 in stage 1, then falls to 0.20
    R = [[0.10, 0.05], [0.50, 0.06], [0.20, 0.09]]
    rows = [
        {
            "stage": s,
            "trained_task": s - 1 if s else -1,
            "task": g,
            "n": 100,
            "metric": metric,
            "value": R[s][g] if metric == "success_rate" else 0.3,
        }
        for s in range(3)
        for g in range(2)
        for metric in ("success_rate", "reward_mean")  # the evaluator's long format
    ]
    (tmp_path / "r").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r" / "eval.parquet")
    summary = {
        "average_accuracy": 0.145,
        "backward_transfer": -0.3,
        "forgetting": 0.3,
        "forgetting_per_task": {"0": 0.3},
    }
    (tmp_path / "r" / "summary.json").write_text(json.dumps(summary))
    table = run_table(tmp_path, "r")
    assert "| 1 | 0 | 100 | 0.10 [0.06, 0.17] | 0.50 [0.40, 0.60] | +0.40 | yes |" in table
    assert "| 2 | 1 | 100 | 0.06 [0.03, 0.12] | 0.09 [0.05, 0.16] | +0.03 | no |" in table
    assert "forgetting 0.300" in table and "0: 0.30" in table
    # a dip and a recovery show only in the first group's trail
    trail = "Group 0 (the first trained) after each stage, from stage 0: 0.10 -> 0.50 -> 0.20."
    assert trail in table
    with pytest.raises(ClabError, match="no evaluation of run 'other'"):
        run_table(tmp_path, "other")


def test_sweep_table_reads_learning_and_forgetting_per_method(tmp_path: Path):
    from demo_numbers import sweep_table

    for m, R in (("k1", [[9, 8], [3, 7], [5, 2]]), ("dense", [[9, 8], [2, 6], [6, 1]])):
        (tmp_path / f"s-{m}").mkdir()
        summary = {
            "matrix": R,
            "task_names": ["a", "b"],
            "forgetting_per_task": {"0": R[2][0] - R[1][0]},
        }
        (tmp_path / f"s-{m}" / "summary.json").write_text(json.dumps(summary))
    table = sweep_table(tmp_path, "s", ["k1", "dense"])
    assert "| k1 | a 9 -> 3, b 7 -> 2 | 9 -> 3 -> 5 | +2.0 |" in table
    assert "| dense | a 9 -> 2, b 6 -> 1 | 9 -> 2 -> 6 | +4.0 |" in table


def test_stage_dynamics_gives_each_quarter_of_a_stage_and_when_entropy_collapsed(
    tmp_path: Path, capsys
):
    """benchmarks/stage_dynamics.py, docs/demo.md's account of the policy within a
    stage: means by quarter, computed by hand here; the collapse found per stage."""
    from stage_dynamics import main as dynamics

    rows = []
    for step in range(1, 17):  # two stages of 8 steps
        group = 0 if step <= 8 else 1
        entropy = 0.2 if group == 0 else (0.1 if step <= 12 else 0.004)
        rows.append(
            dict(global_step=step, round=0, group=group, entropy=entropy,
                 success_rate=step / 16, answer_forms=1 if entropy < 0.01 else 9,
                 step_time=step / 10, generation_time=step / 100)
        )  # fmt: skip
    run = tmp_path / "demo-curriculum-s0"
    run.mkdir()
    (run / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dynamics(["--metrics", str(tmp_path)])
    out = capsys.readouterr().out
    assert "stage 1 (g0) never, stage 2 (g1) from part 3/4" in out
    lines = [line for line in out.splitlines() if line.startswith("| 2 | g1")]
    assert len(lines) == 4
    # quarter 2 of stage 2: steps 11-12, success (11 + 12) / 2 / 16
    # the step and generation times of steps 11 and 12: (1.1 + 1.2) / 2, (0.11 + 0.12) / 2
    assert lines[1] == "| 2 | g1 (r0) | 2/4 | 11-12 | 0.100 | 0.72 | 9.0 | 1.150 | 0.115 |"
    assert lines[3] == "| 2 | g1 (r0) | 4/4 | 15-16 | 0.004 | 0.97 | 1.0 | 1.550 | 0.155 |"

    with pytest.raises(SystemExit) as e:
        dynamics(["--metrics", str(tmp_path), "--runs", "nope"])
    assert e.value.code == 2
    assert "nope/train.jsonl: no such file" in capsys.readouterr().err


def test_draws_pairs_within_each_draw_then_averages_over_draws(tmp_path, capsys):
    import draws

    # two draws x 2 seeds: none forgets 1.0 / 1.2 (draw a) and 2.0 / 2.2 (draw b); random
    # forgets 0.5 less in every seed of a, 0.3 less in b; phase-a has no forgetting
    values = {"a": {"none": [1.0, 1.2], "random": [0.5, 0.7], "phase-a": [None, None]},
              "b": {"none": [2.0, 2.2], "random": [1.7, 1.9], "phase-a": [None, None]}}  # fmt: skip
    for draw, per in values.items():
        for name, seeds in per.items():
            for seed, v in enumerate(seeds):
                d = tmp_path / draw / "metrics" / f"demo-mix-{name}-s{seed}"
                d.mkdir(parents=True)
                (d / "summary.json").write_text(json.dumps({"forgetting": v}))
    got = draws.metric_by_seed(tmp_path / "a" / "metrics", "demo-mix", "forgetting")
    assert got == {"demo-mix-none": {0: 1.0, 1: 1.2}, "demo-mix-random": {0: 0.5, 1: 0.7}}
    draws.main([str(tmp_path / "a"), str(tmp_path / "b"), "--baseline", "demo-mix-none"])
    out = capsys.readouterr().out
    # every seed of a draw differs by the same: an interval of no width, not "beyond";
    # over the draws the mean of 0.5 and 0.3 with its t interval (t 12.71 at 1 df)
    row = "| demo-mix-random | +0.50 [+0.50, +0.50] within | +0.30 [+0.30, +0.30] within | "
    assert row + "+0.40 [-0.87, +1.67] within |" in out
    assert "| demo-mix-none's own | +1.10 " in out and "phase-a" not in out
    with pytest.raises(SystemExit, match="no demo-mix-other with forgetting in"):
        draws.main([str(tmp_path / "a"), "--baseline", "demo-mix-other"])
