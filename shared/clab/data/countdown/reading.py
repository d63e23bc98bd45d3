"""Reading Countdown data sets back, for trainers and the evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from clab.errors import ClabError

MAKERS = {"continual": "data-generator", "dummy_tinyzero": "tinyzero-dummy-generator"}


@dataclass(frozen=True)
class Problem:
    prompt: str  # fed as raw text (see prompts.py)
    target: int
    nums: list[int]
    allowed_ops: list[str]
    solution: str | None


def check_dataset(data_dir: Path, groups: list[int]) -> None:
    """Fail early, naming the service that makes the data, if any file is missing."""
    missing = [
        f"{g}/{split}.parquet"
        for g in groups
        for split in ("train", "test")
        if not (data_dir / str(g) / f"{split}.parquet").is_file()
    ]
    if missing:
        maker = MAKERS.get(data_dir.name, "data-generator or tinyzero-dummy-generator")
        raise ClabError(
            f"data.dir: {data_dir} lacks {', '.join(missing)}: run the {maker} service first "
            f"(docker compose up {maker.split(' ')[0]}, or clab run services/"
            f"{maker.split(' ')[0]}.yaml)"
        )


def read_group(data_dir: Path, group: int, split: str, limit: int | None = None) -> list[Problem]:
    table = pq.read_table(
        data_dir / str(group) / f"{split}.parquet",
        columns=["prompt", "target", "nums", "extra_info"],
    )
    if limit is not None:
        table = table.slice(0, limit)
    out = []
    for r in table.to_pylist():
        info = r["extra_info"] or {}
        out.append(
            Problem(
                r["prompt"][0]["content"],
                r["target"],
                r["nums"],
                info.get("allowed_ops") or ["+", "-", "*", "/"],
                info.get("solution"),
            )
        )
    return out
