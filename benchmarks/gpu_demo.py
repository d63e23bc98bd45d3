"""The demo's experiment on one GPU, at the smallest scale where learning shows.

The CPU demo (`clab demo`) runs the whole stack in minutes but its 64-wide
model learns little; this runs the same services (data generator, random-split
control, curriculum trainer, evaluator, plotter) with a 256-wide, 4-layer tiny
model trained from scratch, a longer warm-up on every group, more RL steps and
200 test problems per group, over several training seeds, then prints
`seed_numbers.py`'s tables (means over seeds with between-seed intervals).
The control gets a warm-up of its own, on its own prompts and operators, of
the same length as the curriculum's: both start equally prepared.

    python benchmarks/gpu_demo.py WORK_DIR [--algorithm ppo|grpo] [--seeds 0,1,2]
                                           [--processes N] [--set key=value ...] [--cpu]

``--processes N`` trains up to N runs at once on the one GPU (a tiny model
leaves most of it idle): each experiment's first seed builds the warm-up,
and its other seeds start from that same stage 0 (hard links, as
``clab run --seeds`` does) as soon as it is written. Separate processes
would each warm up on their own, and a GPU's warm-up does not repeat bit
for bit: group 1 started at 0.12, 0.20 and 0.36 in three of them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from clab.demo import DEMO_CONTROL_DATA, DEMO_DATA
from clab.runs.runner import run_spec
from clab.runs.sweep import is_finished, run, start_from
from clab.specs import load_spec
from clab.storage.layout import COMPLETE_MARKER, INITIAL_STAGE

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from seed_numbers import main as print_numbers  # noqa: E402
from stage_dynamics import main as print_dynamics  # noqa: E402

TEST_SIZE = 200
TRAIN_SIZE = 1200
RANGES = ["ranges.count=[3,3]", "ranges.number=[1,20]", "ranges.target=[1,200]"]
TRAIN = [
    "model.preset=tiny",
    "model.name_or_path=null",
    "model.hidden_size=256",
    "model.layers=4",
    "model.dtype=float32",
    "resources.num_workers=1",
    "resources.use_gpu=true",
    "rollout.engine=hf-static",
    "rollout.tensor_parallel_size=1",
    "rollout.max_prompt_length=160",
    "rollout.max_response_length=20",
    f"batch.val={TEST_SIZE}",
    "rounds=1",
    "save_steps=0",
    "warmup.steps=1500",
    "warmup.lr=1e-3",
    "warmup.batch_size=64",
    "warmup.groups=[0,1,2,3]",
    "wandb=false",
]
ALGORITHMS = {
    "ppo": [
        "algorithm=ppo",
        "batch.train=128",  # two optimizer steps a rollout, as veRL's mini-batches
        "batch.mini=64",
        "batch.micro=64",
        "max_steps_per_stage=120",  # 80 steps of 64 left groups 2 and 3 within the spread
        "ppo.actor_lr=2e-4",  # 5e-4 lowered the group it trained (1.00 -> 0.79)
        "ppo.entropy_coef=0",
        "ppo.critic_lr=1e-3",
        "ppo.fused_logprobs=false",  # the path its figures in docs/demo.md were made on
    ],
    "grpo": [
        "algorithm=grpo",
        "rollout.responses_per_prompt=8",
        "batch.train=16",
        "batch.micro=64",
        "max_steps_per_stage=80",
        "grpo.lr=2e-4",
        "grpo.beta=0",
    ],
}


def _train_member(spec_path: str, overrides: list[str], seeds: str, name: str) -> None:
    """One seed's run in a process of its own, from its first seed's stage 0."""
    spec = load_spec(spec_path, [*overrides, f"seeds=[{seeds}]"])
    (member,) = [m for m in spec.members() if m.name == name]
    origin = member.origin()
    if origin is not None:
        start_from(*origin, member)
    run_spec(member)


def train_in_parallel(runs: list[tuple[str, list[str]]], seeds: str, processes: int) -> None:
    """Every seed of every training spec in ``runs``, up to ``processes`` at a time; a
    later seed starts once its first seed's stage 0 is complete."""
    queue = []  # (spec path, overrides, member, the stage-0 marker it waits for)
    for spec_path, overrides in runs:
        members = load_spec(spec_path, [*overrides, f"seeds=[{seeds}]"]).members()
        first = members[0].run_dirs()[0] / INITIAL_STAGE / COMPLETE_MARKER
        queue += [
            (spec_path, overrides, m, None if i == 0 else first) for i, m in enumerate(members)
        ]
    ctx = mp.get_context("spawn")  # CUDA in the children, none in this process
    running: list[tuple[str, mp.Process]] = []
    while queue or running:
        for name, proc in list(running):
            if not proc.is_alive():
                running.remove((name, proc))
                if proc.exitcode != 0:
                    for _, other in running:  # a finished run resumes on the next call
                        other.terminate()
                    raise SystemExit(f"{name} failed (exit {proc.exitcode}): see its output above")
        for job in list(queue):
            spec_path, overrides, member, waits_for = job
            if len(running) >= processes or (waits_for and not waits_for.is_file()):
                continue
            queue.remove(job)
            if is_finished(member):
                continue
            print(f"=== {member.name}: started", flush=True)
            proc = ctx.Process(
                target=_train_member, args=(spec_path, overrides, seeds, member.name)
            )
            proc.start()
            running.append((member.name, proc))
        time.sleep(1)


def build_plan(
    algorithm: str, train_size: int, test_size: int, extra: list[str], cpu: bool = False
) -> list[tuple[str, list[str]]]:
    """(service spec, overrides) for the data, the control's data, the curriculum run
    and the control run, in that order."""
    small = ["resources.use_gpu=false", "rollout.engine=hf", "warmup.steps=4",
             "max_steps_per_stage=2", "model.hidden_size=32", "model.layers=1",
             "batch.train=4", "batch.mini=4", "batch.micro=4"] if cpu else []  # fmt: skip
    train = [*TRAIN, *ALGORITHMS[algorithm], f"batch.val={test_size}", *small, *extra]
    sizes = [f"train_size={train_size}", f"test_size={test_size}"]
    return [
        ("services/data-generator.yaml", [*sizes, f"output={DEMO_DATA}", *RANGES]),
        (
            "services/tinyzero-dummy-generator.yaml",
            [
                *sizes,
                "source=data/demo-tinyzero/train.parquet",
                f"output={DEMO_CONTROL_DATA}",
                *(f"pool.{r}" for r in RANGES),
            ],
        ),
        (
            "services/curriculum-trainer-1.5b.yaml",
            [*train, "name=demo-curriculum", f"data.dir={DEMO_DATA}"],
        ),
        (  # its own warm-up, as long, on its own prompts: equally prepared
            "services/curriculum-control-1.5b.yaml",
            [*train, "name=demo-control", f"data.dir={DEMO_CONTROL_DATA}"],
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="ppo")
    ap.add_argument("--set", action="append", default=[], help="extra trainer overrides")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    ap.add_argument("--test-size", type=int, default=TEST_SIZE, help="test problems per group")
    ap.add_argument(
        "--train-size", type=int, default=TRAIN_SIZE, help="training problems per group"
    )
    ap.add_argument(
        "--only", choices=["curriculum", "control"], help="one of the two (e.g. one per process)"
    )
    ap.add_argument(
        "--processes", type=int, default=1, help="runs trained at once (default 1: in turn)"
    )
    ap.add_argument("--cpu", action="store_true", help="check the plan on a CPU (tiny settings)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "services").exists():
        (args.work / "services").symlink_to(REPO / "services")
    os.chdir(args.work)
    plan = build_plan(args.algorithm, args.train_size, args.test_size, args.set, args.cpu)
    if args.only:  # the data services, then the one run asked for
        plan = [*plan[:2], plan[2 if args.only == "curriculum" else 3]]
    start = time.perf_counter()
    for spec_path, overrides in plan[:2]:  # the data
        print(f"=== {spec_path} at {time.perf_counter() - start:.0f} s", flush=True)
        run(load_spec(spec_path, overrides))
    if args.processes > 1:
        train_in_parallel(plan[2:], args.seeds, args.processes)
    for spec_path, overrides in plan[2:]:  # in turn, or (parallel) each run found finished
        print(f"=== {spec_path} at {time.perf_counter() - start:.0f} s", flush=True)
        run(load_spec(spec_path, [*overrides, f"seeds=[{args.seeds}]"]))
    gpu = "false" if args.cpu else "true"
    for spec_path, overrides in [
        ("services/evaluator.yaml", [f"test_size={args.test_size}", f"use_gpu={gpu}"]),
        ("services/plotter.yaml", []),
    ]:
        print(f"=== {spec_path} at {time.perf_counter() - start:.0f} s", flush=True)
        run(load_spec(spec_path, overrides))
    print(f"=== done in {time.perf_counter() - start:.0f} s\n", flush=True)
    print_numbers(["--metrics", "metrics"])
    print_dynamics(["--metrics", "metrics", "--summary"])  # the tables: without --summary


if __name__ == "__main__":
    main()
