"""How much of each Countdown group needs its new operator: the share of a group's
test problems that an exhaustive solver can also solve with an earlier group's
operators, for the curriculum data set as the service generates it (``strict:
false``) and with ``strict: true``.

The curriculum reads forgetting of group k as losing what group k's operator
taught; a group-3 problem solvable without division tests less of that. The
default leaves such problems in (as the public experiment did); ``strict``
proves every group-k problem unsolvable with group k-1's operators.

    uv run python benchmarks/group_overlap.py [DATA_DIR ...]   # default: generate both

With folders given it reads their test splits; without, it generates the service's
data set twice (1,000 test problems a group, the service's ranges) in a temporary
folder.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from clab.data.countdown import GROUP_OPS
from clab.data.countdown.problems import solvable_mixed
from clab.data.countdown.reading import read_group

REPO = Path(__file__).resolve().parent.parent


def overlap(data_dir: Path) -> list[str]:
    """Markdown rows: per group k > 0, the share of its test problems solvable with the
    operators of each earlier group."""
    rows = []
    for g in range(1, len(GROUP_OPS)):
        probs = read_group(data_dir, g, "test")
        nums, targets = [p.nums for p in probs], [p.target for p in probs]
        shares = [
            f"{float(np.mean(solvable_mixed(nums, targets, tuple(GROUP_OPS[k])))):.1%}"
            for k in range(g)
        ]
        shares += ["-"] * (len(GROUP_OPS) - 1 - g)  # a later group's operators: no column
        rows.append(f"| {g} ({' '.join(GROUP_OPS[g])}) | {len(probs):,} | {' | '.join(shares)} |")
    return rows


def generate(tmp: Path, strict: bool) -> Path:
    out = tmp / ("strict" if strict else "default")
    clab = Path(sys.executable).parent / "clab"
    args = [str(clab), "run", "services/data-generator.yaml", "--set", f"output={out}",
            "--set", "train_size=1000", "--set", f"strict={str(strict).lower()}"]  # fmt: skip
    subprocess.run(args, cwd=tmp, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def main() -> None:
    header = ["| group | test problems | " + " | ".join(
        f"solvable with {' '.join(GROUP_OPS[k])}" for k in range(len(GROUP_OPS) - 1)
    ) + " |", "|---|---|" + "---|" * (len(GROUP_OPS) - 1)]  # fmt: skip
    dirs = [Path(a) for a in sys.argv[1:]]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if not dirs:
            (tmp / "services").symlink_to(REPO / "services")
            dirs = [generate(tmp, False), generate(tmp, True)]
        for d in dirs:
            print(f"\n{d.name}:")
            print("\n".join(header + overlap(d)))


if __name__ == "__main__":
    main()
