import os
from collections.abc import Iterator
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Under pytest-xdist (`make test`: 2 workers for CI's 2 cores), one thread a worker, set
# before torch loads and inherited by the runs tests start: two test processes of 2 threads
# each on 2 cores spin-wait on each other (the slowest tests ran 5 to 15 times slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder as the current directory, as Compose's /app would be."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def brute_force_solvable(numbers: list[int], target: int, ops: tuple[str, ...]) -> bool:
    """Independent oracle: exact rational search over every pairwise combination."""

    def rec(vals: list[Fraction]) -> bool:
        if len(vals) == 1:
            return vals[0] == target
        for i, j in combinations(range(len(vals)), 2):
            a, b = vals[i], vals[j]
            rest = [v for k, v in enumerate(vals) if k not in (i, j)]
            results = []
            if "+" in ops:
                results.append(a + b)
            if "-" in ops:
                results += [a - b, b - a]
            if "*" in ops:
                results.append(a * b)
            if "/" in ops:
                results += [a / b] if b else []
                results += [b / a] if a else []
            if any(rec([*rest, r]) for r in results):
                return True
        return False

    return rec([Fraction(n) for n in numbers])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """A small curriculum data set, made once and shared read-only."""
    from clab.cli import main

    out = tmp_path_factory.mktemp("shared") / "continual"
    assert (
        main(
            [
                "run",
                str(REPO / "services/data-generator.yaml"),
                "--set",
                "train_size=40",
                "--set",
                "test_size=8",
                "--set",
                f"output={out}",
            ]
        )
        == 0
    )
    return out


@pytest.fixture
def run_dir(workdir: Path, dataset: Path) -> Path:
    """A working folder whose data/continual is the shared small data set."""
    (workdir / "data").mkdir()
    (workdir / "data/continual").symlink_to(dataset)
    return workdir
