"""The ``countdown-random-split`` kind: the control (service ``tinyzero-dummy-generator``).

The same kind of problems as the curriculum, but split into four groups at
random: one shuffled pool, drawn without replacement, so the groups are
disjoint and differ only by chance; each group's test set takes its 3- and
4-number problems in the group's proportions. Rows are rebuilt in the curriculum's
schema and template (all four operators allowed), so the same trainer and the
same reward run on both; a control whose prompts the reward cannot parse was
one of the mistakes of the public code this setup comes from.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from clab import __version__
from clab.data.countdown import ALL_OPS
from clab.data.countdown.curriculum import RangesSpec
from clab.data.countdown.generate import Job, default_workers, generate_problems, worker_pool
from clab.data.countdown.prompts import Template
from clab.data.countdown.schema import TINYZERO_REQUIRED, build_table
from clab.data.countdown.strata import stratified_first
from clab.data.manifest import prepare_output, read_manifest, say_if_replaced
from clab.errors import ClabError
from clab.specs import KIND_HELP, Spec, SpecModel
from clab.storage.atomic import (
    atomic_dir,
    check_writable,
    clean_stale_partials,
    sha256_file,
    write_json,
    write_parquet,
)

NUM_GROUPS = 4


class PoolSpec(SpecModel):
    """How to make the pool when ``source`` does not exist (the original cannot be downloaded)."""

    generate_if_missing: bool = Field(
        False, description="generate a pool at `source` with the Countdown generator if absent"
    )
    size: int | None = Field(
        None, ge=1, description="pool rows; default 4 groups x (train_size + test_size)"
    )
    seed: int = Field(
        0, ge=0, description="the generated pool's seed: the same seed gives the same pool"
    )
    workers: int = Field(0, ge=0, description="processes; 0 = every core")
    ranges: RangesSpec = Field(
        default_factory=RangesSpec,
        description="the generated problems' sizes and values (inclusive ranges)",
    )


class RandomSplitSpec(Spec):
    """Spec of the random-split control data set."""

    kind: Literal["countdown-random-split"] = Field("countdown-random-split", description=KIND_HELP)
    source: Path = Field(
        Path("data/tinyzero/train.parquet"), description="a TinyZero-format Countdown pool"
    )
    output: Path = Field(
        Path("data/dummy_tinyzero"),
        description="the data set's folder (<group>/{train,test}), as the curriculum's",
    )
    train_size: int = Field(100_000, ge=1, description="training rows per group")
    test_size: int = Field(1_000, ge=1, description="test rows per group")
    seed: int = Field(0, ge=0, description="the shuffle's seed")
    template: Template = Field(
        "base", description="prompt template: base or qwen-instruct (the curriculum's must match)"
    )
    pool: PoolSpec = Field(
        default_factory=PoolSpec, description="how to make the pool when source is absent"
    )

    @property
    def needed(self) -> int:
        return NUM_GROUPS * (self.train_size + self.test_size)

    def reads(self) -> list[Path]:
        return [self.source]

    @property
    def pool_manifest(self) -> Path:
        return self.source.with_name(self.source.stem + ".manifest.json")

    def writes(self) -> list[Path]:
        if self.pool.generate_if_missing:
            return [self.output, self.source, self.pool_manifest]
        return [self.output]

    def _stale_pool(self) -> bool:
        """A pool we generated with other pool settings (size, seed, ranges): made again,
        since the settings asked for are what a rerun means (TinyZero's own pool, with
        no manifest, is never touched)."""
        try:
            manifest = json.loads(self.pool_manifest.read_text())
            made, rows = manifest.get("spec"), manifest.get("rows")
        except (OSError, ValueError, AttributeError):
            return False
        if not isinstance(made, dict):
            return False
        # the workers do not change the pool's bytes
        ignore = {"workers", "generate_if_missing"}
        now = {k: v for k, v in self.pool.model_dump(mode="json").items() if k not in ignore}
        if {k: v for k, v in made.items() if k not in ignore} != now:
            return True
        return self.pool.size is None and isinstance(rows, int) and rows < self.needed

    def run(self) -> None:
        size = self.pool.size
        if self.pool.generate_if_missing and size is not None and size < self.needed:
            raise ClabError(
                f"pool.size: {size:,} problems cannot fill 4 groups x (train_size + "
                f"test_size) = {self.needed:,}: raise pool.size (or leave it null)"
            )
        prepare_output(self.output)
        before = read_manifest(self.output)
        if self.source.exists() and self.pool.generate_if_missing and self._stale_pool():
            print(f"clab: {self.source} was generated with other pool settings: made again")
            self.source.unlink()
        if not self.source.exists():
            if not self.pool.generate_if_missing:
                raise ClabError(
                    f"source: {self.source} does not exist. Put TinyZero's Countdown pool there "
                    "(a Parquet file with 'target' and 'nums' columns), point `source` at one, or "
                    "set pool.generate_if_missing: true to generate it"
                )
            check_writable(self.source, "source")
            clean_stale_partials(self.source.parent)
            generate_pool(self)
        self.check_generated_pool()
        numbers, targets, solutions = read_pool(self.source, self.needed)
        write_random_split(self, numbers, targets, solutions)
        say_if_replaced(self.output, before, self.model_dump(mode="json"))

    def check_generated_pool(self) -> None:
        """A pool we generated must still be the file its manifest hashed."""
        try:
            recorded = json.loads(self.pool_manifest.read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            return  # not a pool of ours (TinyZero's own has no manifest)
        if recorded != sha256_file(self.source):
            raise ClabError(
                f"source: {self.source}: its sha256 does not match the hash in "
                f"{self.pool_manifest}: the pool changed or is damaged since it was generated; "
                "delete both files to generate it again"
            )


def generate_pool(spec: RandomSplitSpec) -> None:
    """A TinyZero-like pool: 3 to 4 numbers, any of the four operators."""
    size = spec.pool.size or spec.needed
    job = Job(group=-1, split="train", size=size, ops=ALL_OPS, stream=1000)
    workers = spec.pool.workers or default_workers()
    with worker_pool(workers) as pool:
        (probs,) = generate_problems(
            [job], spec.pool.seed, spec.pool.ranges.to_ranges(), workers, pool
        )
    table = build_table(
        probs.numbers,
        probs.target,
        probs.solution,
        split="train",
        group=None,
        ops=ALL_OPS,
        template=spec.template,
    )
    write_parquet(spec.source, table)
    write_json(
        spec.pool_manifest,
        {
            "kind": "countdown-pool",
            "clab_version": __version__,
            "spec": spec.pool.model_dump(mode="json"),
            "rows": size,
            "sha256": sha256_file(spec.source),
        },
    )
    print(f"generated a pool of {size:,} problems at {spec.source}")


def read_pool(source: Path, needed: int) -> tuple[list[list[int]], list[int], list[str | None]]:
    """Distinct problems of a TinyZero-format pool, in file order."""
    try:
        schema = pq.read_schema(source)
    except (pa.ArrowException, OSError) as e:
        why = " ".join(str(e).split())  # pyarrow's messages span lines
        raise ClabError(f"source: {source} is not a readable Parquet file ({why})") from None
    missing = [c for c in TINYZERO_REQUIRED if c not in schema.names]
    if missing:
        raise ClabError(
            f"source: {source} is not in the TinyZero Countdown schema: missing column(s) "
            f"{', '.join(missing)} (it has: {', '.join(schema.names)})"
        )
    cols = ["target", "nums"] + (["extra_info"] if "extra_info" in schema.names else [])
    try:
        table = pq.read_table(source, columns=cols)
    except (pa.ArrowException, OSError) as e:
        why = " ".join(str(e).split())  # pyarrow's messages span lines
        raise ClabError(f"source: {source} is not a readable Parquet file ({why})") from None
    if not pa.types.is_integer(table.schema.field("target").type) or not (
        pa.types.is_list(table.schema.field("nums").type)
        and pa.types.is_integer(table.schema.field("nums").type.value_type)
    ):
        raise ClabError(
            f"source: {source}: 'target' must be integers and 'nums' lists of integers "
            f"(found {table.schema.field('target').type} and {table.schema.field('nums').type})"
        )
    targets = table.column("target").to_pylist()
    nums = table.column("nums").to_pylist()
    sols: list[str | None] = [None] * len(targets)
    if "extra_info" in cols:
        info_type = table.schema.field("extra_info").type
        if pa.types.is_struct(info_type) and info_type.get_field_index("solution") >= 0:
            sols = table.column("extra_info").combine_chunks().field("solution").to_pylist()
    seen: set[tuple] = set()
    out_n, out_t, out_s = [], [], []
    for n, t, s in zip(nums, targets, sols, strict=True):
        if n is None or t is None:
            continue
        key = (*sorted(n), -1, t)
        if key not in seen:
            seen.add(key)
            out_n.append(n)
            out_t.append(t)
            out_s.append(s)
    if len(out_t) < needed:
        raise ClabError(
            f"source: {source} holds {len(out_t):,} distinct problems, but 4 groups x "
            f"(train_size + test_size) = {needed:,} are needed: lower train_size/test_size, "
            "or use a bigger pool (delete a generated pool to have it made again at this size)"
        )
    return out_n, out_t, out_s


def write_random_split(
    spec: RandomSplitSpec,
    numbers: list[list[int]],
    targets: list[int],
    solutions: list[str | None],
) -> None:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 2000]))
    order = rng.permutation(len(targets))[: spec.needed].tolist()
    per_group = spec.train_size + spec.test_size
    files, rows = {}, {}
    with atomic_dir(spec.output) as staging:
        for g in range(NUM_GROUPS):
            block = order[g * per_group : (g + 1) * per_group]
            in_test = set(stratified_first([len(numbers[i]) for i in block], spec.test_size))
            splits = {
                "train": [i for k, i in enumerate(block) if k not in in_test],
                "test": [i for k, i in enumerate(block) if k in in_test],
            }
            for split, idx in splits.items():
                table = build_table(
                    [numbers[i] for i in idx],
                    [targets[i] for i in idx],
                    [solutions[i] for i in idx],
                    split=split,
                    group=g,
                    ops=ALL_OPS,
                    template=spec.template,
                )
                rel = f"{g}/{split}.parquet"
                write_parquet(staging / rel, table)
                files[rel] = {"rows": table.num_rows, "sha256": sha256_file(staging / rel)}
                rows[f"{g}/{split}"] = table.num_rows
        write_json(
            staging / "manifest.json",
            {
                "kind": spec.kind,
                "clab_version": __version__,
                "python": platform.python_version(),
                "seed": spec.seed,
                "spec": spec.model_dump(mode="json"),
                "source": {"path": str(spec.source), "sha256": sha256_file(spec.source)},
                "groups": {str(g): list(ALL_OPS) for g in range(NUM_GROUPS)},
                "rows": rows,
                "files": files,
            },
        )
    print(f"wrote {spec.needed:,} rows in {len(files)} files to {spec.output}/")
