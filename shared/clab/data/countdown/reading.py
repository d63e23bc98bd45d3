"""Reading Countdown data sets back, for trainers and the evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clab.data.countdown.strata import stratified_sample
from clab.data.manifest import verify_files
from clab.errors import ClabError

MAKERS = {"continual": "data-generator", "dummy_tinyzero": "tinyzero-dummy-generator"}
COLUMNS = ["prompt", "target", "nums", "extra_info"]
SPLIT_STREAMS = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Problem:
    prompt: str  # fed as raw text (see prompts.py)
    target: int
    nums: list[int]
    allowed_ops: list[str]
    solution: str | None


def check_dataset(data_dir: Path, groups: list[int]) -> None:
    """Fail early if a file is missing (naming the service that makes it) or damaged.

    Every file is checked against the sha256 in the data set's manifest (each
    hashed once per process while its size and mtime stay), so a run never
    trains or scores on a file that changed since it was generated.
    """
    rels = [f"{g}/{split}.parquet" for g in groups for split in ("train", "test")]
    missing = [rel for rel in rels if not (data_dir / rel).is_file()]
    if missing:
        maker = MAKERS.get(data_dir.name, "data-generator or tinyzero-dummy-generator")
        raise ClabError(
            f"data.dir: {data_dir} lacks {', '.join(missing)}: run the {maker} service first "
            f"(docker compose up {maker.split(' ')[0]}, or clab run services/"
            f"{maker.split(' ')[0]}.yaml)"
        )
    verify_files(data_dir, rels)


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path, columns=COLUMNS)
    except FileNotFoundError:
        raise ClabError(f"{path}: file not found; run the data generator first") from None
    except (pa.ArrowException, OSError) as e:
        # A missing column is an ArrowInvalid too; pyarrow's message names it.
        why = " ".join(str(e).split())  # pyarrow's messages span lines
        raise ClabError(f"{path}: not a readable Countdown Parquet file ({why})") from None


def read_group(
    data_dir: Path, group: int, split: str, limit: int | None = None, *, seed: int = 0
) -> list[Problem]:
    """A group's split; with ``limit``, a seeded random subset of that many rows.

    The subset holds 3- and 4-number problems in the file's proportions (to
    within a row), so a cap never changes what the split measures; the same
    ``seed`` gives the same rows, in file order.
    """
    path = data_dir / str(group) / f"{split}.parquet"
    table = _read_table(path)
    if limit is not None and limit < table.num_rows:
        sizes = [len(n) for n in table.column("nums").to_pylist()]
        rng = np.random.default_rng(
            np.random.SeedSequence([seed, group, SPLIT_STREAMS.get(split, 2)])
        )
        table = table.take(stratified_sample(sizes, limit, rng))
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
