"""What the continual-DPO demo learned and forgot, read from the evaluator's summaries.

For each run and score: every task before its stage, after it, and at the end
(R[t, t], R[t+1, t], R[T, t]; stage 0 is the model before training), then the
summary's forgetting and backward transfer. Win rates carry their 95% Wilson
interval over the test prompts. Numbers are printed, never typed.

    uv run python benchmarks/dpo_demo_numbers.py [demo-dpo demo-dpo-ewc]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clab.evaluation.preference import wilson


def main(runs: list[str]) -> None:
    for run in runs:
        s = json.loads((Path("metrics") / run / "summary.json").read_text())
        names, n = s["task_names"], s["n_per_task"]
        print(f"== {run}")
        for score in ("reward_score", "win_rate", "implicit_accuracy", "implicit_margin"):
            v = s["scores"][score]
            R = v["matrix"]
            T = len(R) - 1
            cells = []
            for t, name in enumerate(names):
                before, after, end = R[t][t], R[t + 1][t], R[T][t]
                cell = f"{name} {before:+.2f} -> {after:+.2f} -> {end:+.2f}"
                if score == "win_rate":
                    lo, hi = wilson(after, n[name])
                    cell += f" (after [{lo:.2f}, {hi:.2f}])"
                cells.append(cell)
            print(f"  {score:17s} " + "; ".join(cells))
            f, bwt, avg = v["forgetting"], v["backward_transfer"], v["average_accuracy"]
            print(f"  {'':17s} forgetting {f:+.3f}, BWT {bwt:+.3f}, final average {avg:+.3f}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["demo-dpo", "demo-dpo-ewc"])
