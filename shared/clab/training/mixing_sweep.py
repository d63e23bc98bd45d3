"""The replay-mixing sweep: phase A once, then every strategy as a run of its own.

Kept apart from the spec and the trainer (it imports neither at run time), so
that ``MixingSpec.run`` can call it without an import circle.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clab.runs.lock import RunLock
from clab.storage.atomic import atomic_dir
from clab.storage.layout import COMPLETE_MARKER, INITIAL_STAGE

if TYPE_CHECKING:
    from clab.training.mixing_spec import MixingSpec

PHASE_A = "phase-a"
JOINT = "joint"


def run_sweep(spec: MixingSpec, restart: bool = False) -> None:
    """Phase A once, then every strategy from it, each a resumable run of its own."""
    from clab.runs.runner import run_spec

    ckpt = spec.sweep_dirs()[0]
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(ckpt.parent, "mixing sweep", name=f".{spec.name}.lock"):
        if restart:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for d in spec.sweep_dirs():
                if d.exists():
                    os.replace(d, d.with_name(f"{d.name}.old-{stamp}"))
                    print(f"clab: moved {d} aside to {d.name}.old-{stamp}", flush=True)
        print(f"=== {spec.name}: phase A ({spec.task_a.name}) ===", flush=True)
        run_spec(spec.branch_spec(PHASE_A))
        for s in spec.strategies:
            print(f"=== {spec.name}: {s} ===", flush=True)
            branch = spec.branch_spec(s)
            seed_branch(spec, s)
            run_spec(branch)


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


def seed_branch(spec: MixingSpec, strategy: str) -> None:
    """A strategy's run begins where phase A ended: its stage 0 and (except ``joint``)
    stage 1 are phase A's, and so are its metrics up to there. Done once; a branch
    that already has its stages is left as it is."""
    phase_ckpt, phase_metrics, _ = spec.branch_spec(PHASE_A).run_dirs()
    ckpt, metrics, _ = spec.branch_spec(strategy).run_dirs()
    stages = [INITIAL_STAGE] if strategy == JOINT else [INITIAL_STAGE, "r0-g0"]
    for name in stages:
        if not (ckpt / name / COMPLETE_MARKER).is_file():
            _link_tree(phase_ckpt / name, ckpt / name)
            if name != INITIAL_STAGE:
                for log in ("train.jsonl", "val.jsonl", "weights.jsonl"):
                    if (phase_metrics / log).is_file():
                        metrics.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(phase_metrics / log, metrics / log)
