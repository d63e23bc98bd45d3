"""Wall time of `clab demo` (what `make demo` runs) from empty volumes.

Target (issue 4): 10 minutes or less on a 2-core machine, aiming for 5. Runs
in a temporary folder, so the project's own volumes are untouched, and prints
the time of each step and `demo_numbers.py`'s table of what the demo's
runs learned and forgot.

    uv run python benchmarks/bench_demo.py
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from demo_numbers import main as print_numbers  # noqa: E402


def main() -> None:
    clab = Path(sys.executable).parent / "clab"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "services").symlink_to(REPO / "services")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
        start = time.perf_counter()
        proc = subprocess.Popen(
            [clab, "demo"],
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        marks = []
        for line in proc.stdout:
            if m := re.match(r"=== demo (\d+)/(\d+): (.*) \(", line):
                marks.append((m.group(3), time.perf_counter() - start))
        assert proc.wait() == 0, "clab demo failed"
        total = time.perf_counter() - start
        marks.append(("end", total))
        print(f"cores: {len(os.sched_getaffinity(0))}")
        print("| step | wall time |\n|---|---|")
        for (label, t0), (_, t1) in itertools.pairwise(marks):
            print(f"| {label} | {t1 - t0:.0f} s |")
        print(f"| **total** | **{total:.0f} s** (target <= 600 s) |")
        print()
        print_numbers(["--metrics", str(Path(tmp) / "metrics")])


if __name__ == "__main__":
    main()
