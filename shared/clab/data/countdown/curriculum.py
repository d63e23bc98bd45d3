"""The ``countdown`` kind: the operator curriculum data set (service ``data-generator``).

Four cumulative operator groups, ``0`` = {+}, ``1`` = {+, -}, ``2`` = {+, -, *},
``3`` = {+, -, *, /}, each with its own train and test split, written to
``<output>/<group>/{train,test}.parquet`` with a ``manifest.json``. Each test
set holds 3- and 4-number problems in its training set's proportions.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from clab import __version__
from clab.data.countdown import GROUP_OPS
from clab.data.countdown.generate import (
    Job,
    Ranges,
    default_workers,
    generate_problems,
    worker_pool,
    write_jobs,
)
from clab.data.countdown.prompts import Template
from clab.data.manifest import prepare_output, read_manifest, say_if_replaced
from clab.specs import KIND_HELP, Spec, SpecModel
from clab.storage.atomic import atomic_dir, write_json

MAX_NUMBER = 50_000  # 50,000^4 = 6.25e18 < 2^63
MAX_TARGET = 10**18


class RangesSpec(SpecModel):
    """Inclusive ranges of a problem's size and values."""

    count: tuple[int, int] = Field((3, 4), description="how many numbers a problem has")
    number: tuple[int, int] = Field((1, 100), description="the numbers' values (at most 50,000)")
    target: tuple[int, int] = Field((1, 1000), description="the target's value (positive)")

    @model_validator(mode="after")
    def _check(self) -> RangesSpec:
        for name in ("count", "number", "target"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: the lower bound {lo} is above the upper bound {hi}")
        if not 2 <= self.count[0] <= self.count[1] <= 4:
            raise ValueError(f"count: problems have 2 to 4 numbers, got {list(self.count)}")
        if self.number[0] < 1 or self.target[0] < 1:
            raise ValueError("number and target ranges must be positive integers")
        if self.number[1] > MAX_NUMBER:
            # the generator evaluates its trees in int64: four numbers multiplied must fit,
            # or wrapped values become targets their reference solutions do not reach
            raise ValueError(
                f"number: values up to {MAX_NUMBER:,} (four of them multiplied fit the "
                f"generator's 64-bit arithmetic), got {self.number[1]:,}"
            )
        if self.target[1] > MAX_TARGET:
            raise ValueError(f"target: values up to {MAX_TARGET:,}, got {self.target[1]:,}")
        return self

    def to_ranges(self) -> Ranges:
        return Ranges(self.count, self.number, self.target)


class CountdownSpec(Spec):
    """Spec of the Countdown curriculum data set."""

    kind: Literal["countdown"] = Field("countdown", description=KIND_HELP)
    output: Path = Field(Path("data/continual"), description="the data set's folder")
    train_size: int = Field(100_000, ge=1, description="training rows per group")
    test_size: int = Field(1_000, ge=1, description="test rows per group")
    seed: int = Field(0, ge=0, description="the same seed gives byte-identical files")
    strict: bool = Field(
        False,
        description="group k > 0: prove (exhaustively) that no solution exists with group "
        "k-1's operators, so each stage really needs its new operator",
    )
    require_new_op: bool = Field(
        True, description="each reference solution uses its group's newest operator"
    )
    template: Template = Field("base", description="prompt template: base or qwen-instruct")
    workers: int = Field(0, ge=0, description="processes; 0 = every core")
    ranges: RangesSpec = Field(
        default_factory=RangesSpec,
        description="problems' sizes and values (inclusive ranges): wider makes harder tasks",
    )

    def writes(self) -> list[Path]:
        return [self.output]

    def jobs(self) -> list[Job]:
        """Per group its train split, then its test split in the train split's size mix.

        A test problem that repeats a training one is dropped and replaced.
        """
        jobs = []
        for g, ops in GROUP_OPS.items():
            common = {
                "group": g,
                "ops": ops,
                "require_op": ops[-1] if self.require_new_op else None,
                "exclude_ops": GROUP_OPS[g - 1] if self.strict and g > 0 else None,
            }
            jobs.append(Job(split="train", size=self.train_size, stream=10 * g + 1, **common))
            jobs.append(
                Job(
                    split="test",
                    size=self.test_size,
                    stream=10 * g,
                    counts_like=len(jobs) - 1,
                    **common,
                )
            )
        return jobs

    def run(self) -> None:
        prepare_output(self.output)
        before = read_manifest(self.output)
        generate_dataset(self, self.jobs(), self.output)
        say_if_replaced(self.output, before, self.model_dump(mode="json"))


def generate_dataset(spec: Spec, jobs: list[Job], output: Path) -> dict:
    """Generate, write and manifest a data set; the folder is swapped in whole.

    Its staging folder exists from the start, so a run killed at any point
    leaves only a ``.partial`` sibling, which the next start removes.
    """
    workers = spec.workers or default_workers()
    with atomic_dir(output) as staging, worker_pool(workers) as pool:
        problems = generate_problems(jobs, spec.seed, spec.ranges.to_ranges(), workers, pool)
        files = write_jobs(staging, jobs, problems, spec.template, pool)
        manifest = {
            "kind": spec.kind,
            "clab_version": __version__,
            "python": platform.python_version(),
            "seed": spec.seed,
            "spec": spec.model_dump(mode="json"),
            "groups": {str(j.group): list(j.ops) for j in jobs},
            "rows": {f"{j.group}/{j.split}": j.size for j in jobs},
            "files": files,
        }
        write_json(staging / "manifest.json", manifest)
    print(f"wrote {sum(j.size for j in jobs):,} rows in {len(files)} files to {output}/")
    return manifest
