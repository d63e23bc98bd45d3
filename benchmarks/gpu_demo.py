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
                                           [--variant NAME key=value ... ] [--train-only]

``--processes N`` trains up to N runs at once on the one GPU (a tiny model
leaves most of it idle): each experiment's first seed builds the warm-up,
and its other seeds start from that same stage 0 (hard links, as
``clab run --seeds`` does) as soon as it is written. Separate processes
would each warm up on their own, and a GPU's warm-up does not repeat bit
for bit: group 1 started at 0.12, 0.20 and 0.36 in three of them. Which is
also why a rerun on another GPU starts from another stage 0: with
``--set warmup.per_seed=true`` every seed warms up on its own (seeded by its
seed), and the seed spread includes the warm-up's.

``--variant NAME key=value ...`` (repeatable) adds a curriculum run
``demo-curriculum-NAME`` with those settings changed, each seed of it
starting from the curriculum's stage 0 of the same seed. A lever (a critic warm-up, an
entropy bonus, GRPO instead of PPO) is then compared with the curriculum on
the same warmed model and the same seeds, and ``seed_numbers.py`` prints the
paired differences: a warm-up of its own would add the spread between
warm-ups to the lever's effect. A variant may change only what acts after
stage 0 (:data:`AFTER_STAGE_0`); anything else exits 2.

``--train-only`` stops after training: no evaluator, no plotter, and the same
tables (paired comparisons included) from each run's stage-end validations,
which score the same test problems, greedy, that the evaluator would. For a
lent GPU's calls of at most 10 minutes: session 19's three GRPO seeds trained
in 549 s and lost their evaluation to the limit.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import NamedTuple

from clab.demo import DEMO_CONTROL_DATA, DEMO_DATA
from clab.errors import ClabError
from clab.runs.fingerprint import changed_fields, fingerprint
from clab.runs.runner import run_spec
from clab.runs.spec import RunSpec
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
        # 0.01 kept sampling varied after group 0's stage in every seed; with it all three
        # later groups rose and group 0 was forgotten beyond the spread of 5 seeds
        "ppo.entropy_coef=0.01",
        "ppo.critic_lr=1e-3",
        "ppo.fused_logprobs=false",  # the path its figures in docs/demo.md were made on
        "ppo.compile_layers=false",  # the services compile their layers; the demo's figures did not
    ],
    "grpo": [
        "algorithm=grpo",
        "rollout.responses_per_prompt=8",
        "batch.train=16",
        "batch.micro=64",  # batch.mini 64, the default: two optimizer steps a generation
        "max_steps_per_stage=80",
        "grpo.lr=2e-4",
        "grpo.beta=0",
        # DAPO's dynamic sampling, bounded: 4x the prompts drawn, varying groups trained
        # first. Without it 77-90% of groups 2 and 3's groups were flat and no setting
        # of five raised both beyond the seed spread; with it, over 5 seeds, both rose
        # beyond it (docs/demo.md, session 21). It generates 4x the responses a step.
        "grpo.oversample=4",
    ],
}
# What a variant may change: the settings that act only after stage 0 (the warm-up
# reads the model, data, warm-up and seed fields; evaluation reads batch.val).
AFTER_STAGE_0 = (
    "algorithm", "ppo.", "grpo.", "batch.train", "batch.mini", "batch.micro",
    "batch.score_micro", "max_steps_per_stage", "epochs_per_group", "reset_optimizer",
    "lr_scheduler", "lr_warmup_steps", "rollout.temperature", "rollout.responses_per_prompt",
    "rollout.max_response_length",
)  # fmt: skip


class Step(NamedTuple):
    """One service run of the plan. ``base``: for a training run that is a variant,
    the run whose stage 0 of the same seed each of its seeds starts from."""

    spec: str
    overrides: list[str]
    name: str | None = None  # a training run's experiment name
    base: str | None = None

    def members(self, seeds: str) -> list[RunSpec]:
        return load_spec(self.spec, [*self.overrides, f"seeds=[{seeds}]"]).members()


def check_variant(base: RunSpec, variant: RunSpec, name: str) -> None:
    """A variant shares the base's warmed model, so it may not change what built it."""
    old = fingerprint(base.model_dump(mode="json"), base.SAFE_CHANGES)
    new = fingerprint(variant.model_dump(mode="json"), variant.SAFE_CHANGES)
    new["experiment"] = old["experiment"]  # its own name, of course
    bad = [c for c in changed_fields(old, new) if not c.split(":")[0].startswith(AFTER_STAGE_0)]
    if bad:
        raise ClabError(
            f"--variant {name}: it starts from the curriculum's warmed model, so it may "
            f"change only settings that act after stage 0 ({', '.join(AFTER_STAGE_0)}); "
            f"it changes {'; '.join(bad)}"
        )


def stage_0_origin(step: Step, plan: list[Step], seeds: str, member: RunSpec) -> RunSpec | None:
    """The run whose stage 0 ``member`` (a seed of ``step``) starts from: for a variant
    its base's run of the same seed (one file when the seeds share a warm-up, the
    seed's own warm-up with ``warmup.per_seed``), else its first seed's (``origin``);
    None: it builds its own."""
    if step.base is None:
        how = member.origin()
        return how[0] if how is not None else None
    (base,) = [s for s in plan if s.name == step.base]
    (origin,) = [m for m in base.members(seeds) if m.seed == member.seed]
    return origin


def link_stage_0(step: Step, plan: list[Step], seeds: str, name: str | None = None) -> None:
    """Every seed of ``step`` (or the one ``name``d) gets the stage 0 its plan says,
    as hard links."""
    for member in step.members(seeds):
        if name is not None and member.name != name:
            continue
        origin = stage_0_origin(step, plan, seeds, member)
        if origin is not None:
            start_from(origin, [INITIAL_STAGE], member)


def _train_member(step: Step, plan: list[Step], seeds: str, name: str) -> None:
    """One seed's run in a process of its own, from the stage 0 its plan says."""
    link_stage_0(step, plan, seeds, name)
    (member,) = [m for m in step.members(seeds) if m.name == name]
    run_spec(member)


def train_in_parallel(plan: list[Step], seeds: str, processes: int) -> None:
    """Every seed of every training run in ``plan``, up to ``processes`` at a time;
    a run waits for the stage 0 it starts from to be complete."""
    queue = []  # (step, member, the stage-0 marker it waits for)
    for step in plan:
        for m in step.members(seeds):
            origin = stage_0_origin(step, plan, seeds, m)
            marker = (
                None if origin is None else origin.run_dirs()[0] / INITIAL_STAGE / COMPLETE_MARKER
            )
            queue.append((step, m, marker))
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
            step, member, waits_for = job
            if len(running) >= processes or (waits_for and not waits_for.is_file()):
                continue
            queue.remove(job)
            if is_finished(member):
                continue
            print(f"=== {member.name}: started", flush=True)
            proc = ctx.Process(target=_train_member, args=(step, plan, seeds, member.name))
            proc.start()
            running.append((member.name, proc))
        time.sleep(1)


def build_plan(
    algorithm: str,
    train_size: int,
    test_size: int,
    extra: list[str],
    cpu: bool = False,
    variants: list[list[str]] = (),
) -> list[Step]:
    """The data, the control's data, the curriculum run, the control run, then each
    variant (``[NAME, key=value, ...]``) of the curriculum, in that order."""
    small = ["resources.use_gpu=false", "rollout.engine=hf", "warmup.steps=4",
             "max_steps_per_stage=2", "model.hidden_size=32", "model.layers=1",
             "batch.train=4", "batch.mini=4", "batch.micro=4"] if cpu else []  # fmt: skip
    train = [*TRAIN, *ALGORITHMS[algorithm], f"batch.val={test_size}", *small, *extra]
    sizes = [f"train_size={train_size}", f"test_size={test_size}"]
    curriculum = Step(
        "services/curriculum-trainer-1.5b.yaml",
        [*train, "name=demo-curriculum", f"data.dir={DEMO_DATA}"],
        "demo-curriculum",
    )
    plan = [
        Step("services/data-generator.yaml", [*sizes, f"output={DEMO_DATA}", *RANGES]),
        Step(
            "services/tinyzero-dummy-generator.yaml",
            [
                *sizes,
                "source=data/demo-tinyzero/train.parquet",
                f"output={DEMO_CONTROL_DATA}",
                *(f"pool.{r}" for r in RANGES),
            ],
        ),
        curriculum,
        Step(  # its own warm-up, as long, on its own prompts: equally prepared
            "services/curriculum-control-1.5b.yaml",
            [*train, "name=demo-control", f"data.dir={DEMO_CONTROL_DATA}"],
            "demo-control",
        ),
    ]
    base = load_spec(curriculum.spec, curriculum.overrides)
    for name, *changes in variants:
        if not changes:
            raise ClabError(f"--variant {name}: give the settings it changes, as key=value")
        run_name = f"{curriculum.name}-{name}"
        step = Step(
            curriculum.spec, [*curriculum.overrides, *changes, f"name={run_name}"], run_name,
            curriculum.name,
        )  # fmt: skip
        check_variant(base, load_spec(step.spec, step.overrides), name)
        plan.append(step)
    return plan


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
    ap.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "KEY=VALUE"),
        help="a curriculum run with these settings changed, from the same stage 0",
    )
    ap.add_argument(
        "--train-only",
        action="store_true",
        help="no evaluator or plotter: the tables from the runs' stage-end validations "
        "(the same test problems, greedy), for a device call whose time is short",
    )
    args = ap.parse_args()
    if args.only == "control" and args.variant:
        ap.error("--variant is a variant of the curriculum: not with --only control")
    args.work.mkdir(parents=True, exist_ok=True)
    if not (args.work / "services").exists():
        (args.work / "services").symlink_to(REPO / "services")
    os.chdir(args.work)
    try:
        plan = build_plan(
            args.algorithm, args.train_size, args.test_size, args.set, args.cpu, args.variant
        )
    except (ClabError, ValueError) as e:  # ValueError: pydantic's, a bad key=value
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    data, training = plan[:2], plan[2:]
    if args.only == "curriculum":  # with its variants
        training = [s for s in training if s.name != "demo-control"]
    elif args.only == "control":
        training = [s for s in training if s.name == "demo-control"]
    start = time.perf_counter()
    for step in data:
        print(f"=== {step.spec} at {time.perf_counter() - start:.0f} s", flush=True)
        run(load_spec(step.spec, step.overrides))
    if args.processes > 1:
        train_in_parallel(training, args.seeds, args.processes)
    for step in training:  # in turn, or (parallel) each run found finished
        print(f"=== {step.name} at {time.perf_counter() - start:.0f} s", flush=True)
        if step.base is not None:
            link_stage_0(step, training, args.seeds)
        run(load_spec(step.spec, [*step.overrides, f"seeds=[{args.seeds}]"]))
    if args.train_only:
        print(f"=== trained in {time.perf_counter() - start:.0f} s\n", flush=True)
        print_numbers(["--from-log", *map(str, sorted(Path("logs").glob("*/train.log")))])
        print_dynamics(["--metrics", "metrics", "--summary"])
        return
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
