"""Parallel, deterministic generation of whole Countdown data sets.

A data set is a list of *jobs*, one per (group, split). Each job draws its
candidates from its own seed stream, ``SeedSequence([seed, job.stream, chunk])``,
in chunks of a fixed number of candidates; workers only compute chunks, and
the main process takes their rows in (job, chunk) order, dropping any problem
(its sorted numbers and target) seen before in any job. So the output depends
on the seed and the spec, never on the number of workers or on timing, and no
problem appears twice in a split, in two splits or in two groups.

A job may take its mix of problem sizes (3 or 4 numbers) from an earlier job:
a test set then holds each size in its training set's proportion. Each job's
rows are finally shuffled with their own seed, so no split is in blocks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from clab.data.countdown.problems import Problems, sample_problems, solvable_mixed
from clab.data.countdown.prompts import Template
from clab.data.countdown.schema import build_table
from clab.data.countdown.strata import count_quotas
from clab.errors import ClabError
from clab.storage.atomic import sha256_file, write_parquet

MAX_CHUNK_CANDIDATES = 50_000
MAX_CHUNKS_WITHOUT_PROGRESS = 200
SHUFFLE_STREAM = 2**32 - 1  # a job's final shuffle: no chunk index reaches it
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Ranges:
    count: tuple[int, int] = (3, 4)
    number: tuple[int, int] = (1, 100)
    target: tuple[int, int] = (1, 1000)


@dataclass(frozen=True)
class Job:
    """One output file's worth of problems."""

    group: int
    split: str
    size: int
    ops: tuple[str, ...]
    stream: int  # distinct per job: its own seed stream
    require_op: str | None = None
    exclude_ops: tuple[str, ...] | None = None  # strict: unsolvable with these
    counts_like: int | None = None  # index of an earlier job whose size mix this one follows

    @property
    def chunk_candidates(self) -> int:
        return int(min(MAX_CHUNK_CANDIDATES, max(2_000, 4 * self.size)))


def _chunk(seed: int, job: Job, chunk: int, ranges: Ranges) -> Problems:
    rng = np.random.default_rng(np.random.SeedSequence([seed, job.stream, chunk]))
    p = sample_problems(
        rng,
        job.chunk_candidates,
        job.ops,
        count_range=ranges.count,
        number_range=ranges.number,
        target_range=ranges.target,
        require_op=job.require_op,
    )
    if job.exclude_ops and len(p):
        keep = ~solvable_mixed(p.numbers, p.target, job.exclude_ops)
        idx = np.flatnonzero(keep).tolist()
        p = Problems(
            [p.numbers[i] for i in idx], [p.target[i] for i in idx], [p.solution[i] for i in idx]
        )
    return p


def _problem_key(numbers: list[int], target: int) -> tuple:
    return (*sorted(numbers), -1, target)


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _die_with_parent(parent: int) -> None:
    """Pool initializer: a worker must not outlive the run (kill -9 leaves no orphans).

    Linux kills the worker when its parent dies (PR_SET_PDEATHSIG); elsewhere,
    or where the parent is not the process that forked it (forkserver), a
    watchdog thread exits once the parent is gone.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    ppid = os.getppid()

    def watch() -> None:
        while os.getppid() == ppid and _pid_exists(parent):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process."""
    return ProcessPoolExecutor(
        max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),)
    )


def generate_problems(
    jobs: list[Job], seed: int, ranges: Ranges, workers: int, pool: ProcessPoolExecutor
) -> list[Problems]:
    """Fill every job with unique problems; see the module docstring."""
    seen: set[tuple] = set()
    results: list[Problems] = []
    window = max(2, 2 * workers)
    with tqdm(
        total=sum(j.size for j in jobs), desc="countdown problems", unit="row", dynamic_ncols=True
    ) as bar:
        for job in jobs:
            got = Problems([], [], [])
            quota = None
            if job.counts_like is not None:
                sizes = Counter(len(n) for n in results[job.counts_like].numbers)
                quota = count_quotas(sizes, job.size)
            pending: deque[Future[Problems]] = deque()
            next_chunk = 0
            idle = 0
            bar.set_postfix_str(f"group {job.group} {job.split}")
            while len(got) < job.size:
                while len(pending) < window:
                    pending.append(pool.submit(_chunk, seed, job, next_chunk, ranges))
                    next_chunk += 1
                chunk = pending.popleft().result()
                before = len(got)
                for nums, t, sol in zip(chunk.numbers, chunk.target, chunk.solution, strict=True):
                    key = _problem_key(nums, t)
                    if key in seen:
                        continue
                    if quota is not None:
                        if not quota.get(len(nums)):
                            continue
                        quota[len(nums)] -= 1
                    seen.add(key)
                    got.numbers.append(nums)
                    got.target.append(t)
                    got.solution.append(sol)
                    if len(got) == job.size:
                        break
                bar.update(len(got) - before)
                idle = idle + 1 if len(got) == before else 0
                if idle >= MAX_CHUNKS_WITHOUT_PROGRESS:
                    raise ClabError(
                        f"group {job.group} {job.split}: found only {len(got)} of {job.size} "
                        "distinct problems; widen ranges.number / ranges.target or ask for "
                        "fewer rows"
                    )
            for f in pending:
                f.cancel()
            results.append(_shuffled(got, seed, job))
    return results


def _shuffled(p: Problems, seed: int, job: Job) -> Problems:
    """The rows in a seeded random order (quota filling ends in a block of one size)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, job.stream, SHUFFLE_STREAM]))
    order = rng.permutation(len(p)).tolist()
    return Problems(
        [p.numbers[i] for i in order], [p.target[i] for i in order], [p.solution[i] for i in order]
    )


def _write_job(path: Path, problems: Problems, job: Job, template: Template) -> tuple[str, int]:
    table = build_table(
        problems.numbers,
        problems.target,
        problems.solution,
        split=job.split,
        group=job.group,
        ops=job.ops,
        template=template,
    )
    write_parquet(path, table)
    return sha256_file(path), table.num_rows


def write_jobs(
    out_dir: Path,
    jobs: list[Job],
    problems: list[Problems],
    template: Template,
    pool: ProcessPoolExecutor,
) -> dict[str, dict]:
    """Write ``<group>/<split>.parquet`` per job in parallel; returns the manifest's files."""
    futures = {}
    for job, probs in zip(jobs, problems, strict=True):
        rel = f"{job.group}/{job.split}.parquet"
        futures[rel] = pool.submit(_write_job, out_dir / rel, probs, job, template)
    files = {}
    for rel, fut in tqdm(futures.items(), desc="writing parquet", unit="file", dynamic_ncols=True):
        sha, rows = fut.result()
        files[rel] = {"rows": rows, "sha256": sha}
    return files
