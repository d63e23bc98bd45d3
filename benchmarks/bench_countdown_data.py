"""Wall time of the full Countdown data sets, Parquet writing included.

Targets (issue 2, on a 2-core machine): the default curriculum data set
(4 groups x 101,000 rows) in 60 s or less; with ``strict: true`` in 180 s or
less; the random-split control for comparison. Runs the same command a user
runs, in a temporary folder.

    uv run python benchmarks/bench_countdown_data.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = [
    ("curriculum (default)", "services/data-generator.yaml", [], 60),
    ("curriculum, strict: true", "services/data-generator.yaml", ["strict=true"], 180),
    ("random-split control (pool generated)", "services/tinyzero-dummy-generator.yaml", [], None),
]


def main() -> None:
    clab = Path(sys.executable).parent / "clab"
    print(f"cores: {len(os.sched_getaffinity(0))}")
    print("| data set | rows | wall time | rows/s | target |")
    print("|---|---|---|---|---|")
    for label, spec, sets, target in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "services").symlink_to(REPO / "services")
            args = [str(clab), "run", spec]
            for s in sets:
                args += ["--set", s]
            start = time.perf_counter()
            subprocess.run(
                args, cwd=tmp, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
            wall = time.perf_counter() - start
        rows = 4 * 101_000
        goal = f"<= {target} s" if target else "-"
        print(f"| {label} | {rows:,} | {wall:.1f} s | {rows / wall:,.0f} | {goal} |", flush=True)


if __name__ == "__main__":
    main()
