"""One experiment, many runs: the variants a kind sweeps and the training seeds.

A spec is one experiment. :meth:`RunSpec.members` lists its runs, one per
(variant, seed), named by one rule: ``<experiment>[-<variant>][-s<seed>]``
(K-1's methods and the mixing sweep's branches are variants; ``-s<seed>``
only when the spec lists ``seeds``). Each member is an ordinary run of the
stage runner, with its own lock, fingerprint and resume. This module runs
them one after another under the experiment's lock: a rerun skips finished
runs (after checking their fingerprint) and resumes the unfinished one.

A variant may start where another of the same seed ended
(:meth:`RunSpec.origin`: the mixing strategies start from phase A): its first
stages are hard links to the origin's, made once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from clab.errors import ClabError
from clab.runs.lock import RunLock
from clab.runs.runner import check_fingerprint, move_run_aside, run_spec
from clab.runs.spec import RunSpec
from clab.specs import Spec
from clab.storage.atomic import atomic_dir
from clab.storage.layout import COMPLETE_MARKER, INITIAL_STAGE, RUN_INFO, complete_stages

ORIGIN_LOGS = ("train.jsonl", "val.jsonl", "weights.jsonl")


def is_finished(spec: RunSpec) -> bool:
    """Every stage of the run has its marker (stage 0 included)."""
    ckpt = spec.run_dirs()[0]
    try:
        info = json.loads((ckpt / RUN_INFO).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    n_stages = int(info["rounds"]) * len(info["tasks"]) + 1
    return len(complete_stages(ckpt)) == n_stages


def run(spec: Spec, restart: bool = False) -> None:
    """Any spec: a training spec as its experiment's runs, any other its own way."""
    if isinstance(spec, RunSpec):
        run_experiment(spec, restart=restart)
    elif restart:
        raise ClabError(f"--restart: {spec.kind} is not a training run")
    else:
        spec.run()


def run_experiment(spec: RunSpec, restart: bool = False) -> None:
    """``clab run`` of a training spec: its runs one after another."""
    members = spec.members()
    if len(members) == 1 and members[0].name == spec.name:
        run_spec(spec, restart=restart)  # one run, named as the spec: no sweep around it
        return
    lock = spec.sweep_lock_path()
    with RunLock(lock.parent, "experiment", name=lock.name):
        if restart:
            for m in members:
                with RunLock(m.lock_path().parent, "trainer", name=m.lock_path().name):
                    move_run_aside(m)
        for i, m in enumerate(members, 1):
            head = f"=== {spec.name}: run {i}/{len(members)}, {m.name}"
            if is_finished(m):
                check_fingerprint(m)  # a finished run of other settings is an error too
                print(f"{head}: finished, skipped ===", flush=True)
                continue
            print(f"{head} ===", flush=True)
            origin = m.origin()
            if origin is not None:
                start_from(*origin, m)
            run_spec(m)


def start_from(origin: RunSpec, stages: list[str], run: RunSpec) -> None:
    """``run`` begins where ``origin`` ended ``stages``: the stages as hard links (no
    copy, no retraining) and the metrics logged up to there. Done once; stages the
    run already has are left as they are."""
    o_ckpt, o_metrics, _ = origin.run_dirs()
    ckpt, metrics, _ = run.run_dirs()
    for name in stages:
        if (ckpt / name / COMPLETE_MARKER).is_file():
            continue
        if not (o_ckpt / name / COMPLETE_MARKER).is_file():
            raise RuntimeError(f"{run.name} starts from {origin.name}/{name}, which is missing")
        _link_tree(o_ckpt / name, ckpt / name)
        if name != INITIAL_STAGE:
            for log in ORIGIN_LOGS:
                if (o_metrics / log).is_file():
                    metrics.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(o_metrics / log, metrics / log)


def _link_tree(src: Path, dst: Path) -> None:
    """``dst`` as a copy of ``src`` made of hard links (a copy where links cannot be made)."""
    with atomic_dir(dst) as d:
        shutil.rmtree(d)
        shutil.copytree(src, d, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
