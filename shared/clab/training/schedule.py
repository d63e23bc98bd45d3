"""How many steps a training spec runs, how many tokens a step holds, and how long it takes.

``clab plan SPEC`` prints this beside the memory plan, so that a researcher
learns before launching that a schedule takes three weeks, not three days.
The steps a stage come from the trainers' own arithmetic
(:mod:`clab.training.steps`), fed with the data sets' sizes: the files
themselves where they are here (the Parquet row counts, the pairs a DPO run
recorded in its stage 0, the tasks a mixing sweep wrote into phase A's
stage 0), else the sizes the data's own spec asks for (the data generator's
``train_size``, the mixing tasks' ``train_size``); the plan says which.

A step's tokens are an upper bound (every prompt and response at its maximum
length, every SFT or DPO example padded to ``max_length``): it is what a
random model writes and the worst a trained one does. The wall time is the
steps times a step's seconds, from a throughput the user gives
(``--tokens-per-s``, one GPU's, times the workers; or ``--step-seconds``) or
measured (``--measure``, :mod:`clab.training.measure`). Validation,
checkpoints and start-up are not in it.

Everything is per seed: :meth:`Schedule.total_steps` takes the number of
seeds (default: the length of the spec's ``seeds`` list where it has one).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clab.data.countdown.curriculum import CountdownSpec
from clab.data.preference.loading import PAIRS_DIR, load_tasks
from clab.data.sft.replay import replay_count
from clab.errors import ClabError
from clab.registry import Registry
from clab.specs import validate_spec
from clab.storage.layout import COMPLETE_MARKER, INITIAL_STAGE, stage_sequence
from clab.training.mixing_spec import JOINT, PHASE_A, REAL_FORMATS
from clab.training.steps import (
    countdown_stage_steps,
    dpo_stage_steps,
    grpo_updates_per_step,
    k1_stage_steps,
    mixing_stage_steps,
)

# the Countdown data generators' kinds, and their groups
DATA_KINDS = ("countdown", "countdown-random-split")
GENERATOR_GROUPS = (0, 1, 2, 3)
WIDTH = 110  # long lines of the printed plan wrap here


@dataclass(frozen=True)
class StageSteps:
    """One stage: what it trains on and how many optimizer steps that makes."""

    stage: str  # r0-g0
    task: str  # g0, math, prose
    examples: int | None  # rows, examples or pairs a stage trains on (None: not data-driven)
    steps: int
    how: str  # the arithmetic, printed


@dataclass(frozen=True)
class RunSchedule:
    """The stages one run trains (a sweep has several runs: branches, methods)."""

    name: str
    stages: tuple[StageSteps, ...]
    note: str = ""

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)


@dataclass
class Schedule:
    """A spec's steps, per seed, and what one step holds."""

    kind: str
    shape: str  # rounds x tasks, in words
    runs: list[RunSchedule]
    data: str  # where the sizes come from
    step: str  # what a step holds, in words
    tokens_per_step: int
    tokens_exact: bool  # False: an upper bound
    workers: int
    n_seeds: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def steps_per_seed(self) -> int:
        return sum(r.steps for r in self.runs)

    def total_steps(self, n_seeds: int | None = None) -> int:
        """Steps of the whole experiment: per seed times the seeds."""
        return self.steps_per_seed * (self.n_seeds if n_seeds is None else n_seeds)


# a training kind -> its schedule (the kinds whose trainers' steps are counted here)
Planner = Callable[[Any, Path | None], Schedule]
PLANNERS: Registry[Planner] = Registry("training kind")


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def seed_count(spec) -> int:
    """How many seeds the spec runs: the length of its ``seeds`` list where it has one
    (a list of seeds, each a run of the whole schedule), else one."""
    seeds = getattr(spec, "seeds", None)
    return len(seeds) if seeds else 1


# -- the data sets' sizes -------------------------------------------------------------------


def _parquet_rows(path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as e:
        why = " ".join(str(e).split())
        raise ClabError(f"{path}: not a readable Parquet file ({why})") from None


def _generator_spec(data_dir: Path, spec_path: Path | None):
    """The data generator's spec that writes ``data_dir``: a YAML beside the training
    spec, or under ./services, whose kind is a Countdown data set's and whose output is
    that folder. None when there is none."""
    import yaml

    folders = [Path("services")]
    if spec_path is not None:
        folders.insert(0, spec_path.parent)
    seen = set()
    for folder in folders:
        for f in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            try:
                data = yaml.safe_load(f.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if not isinstance(data, dict) or data.get("kind") not in DATA_KINDS:
                continue
            try:
                gen = validate_spec(f, data)
            except ClabError:  # another spec's mistake is not this plan's
                continue
            if Path(gen.output) == data_dir:
                return f, gen
    return None


def countdown_rows(spec, spec_path: Path | None = None) -> tuple[dict[int, int], str]:
    """Training rows per group as the trainer will read them, and where the figure
    comes from: the Parquet files when they are here, else the generator's spec, else
    the generator's default; capped by ``data.max_train_rows`` as ``read_group`` caps."""
    d = spec.data
    files = {g: d.dir / str(g) / "train.parquet" for g in d.groups}
    if all(p.is_file() for p in files.values()):
        rows = {g: _parquet_rows(p) for g, p in files.items()}
        source = f"{d.dir}: row counts of its Parquet files"
    else:
        found = _generator_spec(d.dir, spec_path)
        if found is not None:
            where, gen = found
            source = f"{where}'s train_size ({d.dir} is not here)"
        else:
            gen = CountdownSpec()
            source = (
                f"the data generator's default train_size ({d.dir} is not here, and no "
                "generator spec beside this one writes it)"
            )
        missing = [g for g in d.groups if g not in GENERATOR_GROUPS]
        if missing:
            raise ClabError(
                f"data.groups: {missing} are not groups the data generator writes "
                f"({list(GENERATOR_GROUPS)})"
            )
        rows = dict.fromkeys(d.groups, gen.train_size)
    if d.max_train_rows:
        rows = {g: min(n, d.max_train_rows) for g, n in rows.items()}
        source += f", capped at data.max_train_rows {d.max_train_rows:,}"
    return rows, source


# -- per kind ---------------------------------------------------------------------------------


def _stage_names(rounds: int, n_tasks: int) -> list[tuple[str, int]]:
    return [(s.name, s.task) for s in stage_sequence(rounds, n_tasks)]


@PLANNERS.register("countdown-rl")
def _countdown(spec, spec_path: Path | None) -> Schedule:
    rows, source = countdown_rows(spec, spec_path)
    b, r, n = spec.batch, spec.rollout, spec.rollout.responses_per_prompt
    groups = spec.data.groups
    stages = []
    for name, task in _stage_names(spec.rounds, len(groups)):
        g = groups[task]
        steps = countdown_stage_steps(
            rows[g], b.train, spec.epochs_per_group, spec.max_steps_per_stage, g
        )
        batches = rows[g] // b.train
        how = (
            f"{plural(spec.epochs_per_group, 'epoch')} x {batches:,} batches of {b.train} from "
            f"{rows[g]:,} rows"
        )
        if rows[g] % b.train:
            how += f", {rows[g] % b.train} left out of each epoch's shuffle"
        if spec.max_steps_per_stage and steps < spec.epochs_per_group * batches:
            how += f", capped at max_steps_per_stage {spec.max_steps_per_stage:,}"
        stages.append(StageSteps(name, f"g{g}", rows[g], steps, how))
    seqs = b.train * n
    seq_len = r.max_prompt_length + r.max_response_length
    step = (
        f"{b.train} prompts x {n} response{'s' if n > 1 else ''} = {seqs:,} sequences, each "
        f"at most {r.max_prompt_length} + {r.max_response_length} tokens"
    )
    if spec.algorithm == "ppo":
        opt = spec.ppo.ppo_epochs * seqs // b.mini
        notes = [
            f"a PPO step: rollout, scoring, then {opt} optimizer step{'s' if opt > 1 else ''} "
            f"of {b.mini} sequences (batch.mini, ppo_epochs {spec.ppo.ppo_epochs})"
        ]
    else:
        opt = grpo_updates_per_step(b.train, n, b.mini)
        notes = [
            f"a GRPO step: one generation, then {opt} optimizer step{'s' if opt > 1 else ''} "
            f"of {b.mini} sequences (batch.mini; TRL's max_steps is {opt} x the stage's steps)"
        ]
        o = spec.grpo.oversample
        if o > 1:
            notes.append(
                f"grpo.oversample {o}: each step generates and scores {o * b.train} prompts' "
                f"responses and trains on {b.train} of their groups (old and reference "
                f"log-probs are computed for all); a tokens/s measured without it puts "
                f"generation and scoring {o}x too low"
            )
    if spec.warmup.steps:
        notes.append(f"{spec.warmup.steps:,} supervised warm-up steps before stage 1, not timed")
    return Schedule(
        kind=f"countdown-rl ({spec.algorithm})",
        shape=f"{plural(spec.rounds, 'round')} x {plural(len(groups), 'group')} {groups}",
        runs=[RunSchedule(spec.name, tuple(stages))],
        data=source,
        step=step,
        tokens_per_step=seqs * seq_len,
        tokens_exact=False,
        workers=spec.resources.num_workers,
        n_seeds=seed_count(spec),
        notes=notes,
    )


def _mixing_sources(spec, tasks: list, stage0: Path) -> tuple[int, int, str]:
    """Each task's training examples before phase A has run: read as the trainer reads
    them where that is cheap (a generated task, a local file), else its ``train_size``
    (a hub data set is not downloaded to plan a run)."""
    if any(t.path is None and t.format in REAL_FORMATS for t in tasks):  # a hub source
        n_a, n_b = (t.train_size for t in tasks)
        return (
            n_a,
            n_b,
            (
                f"task_a.train_size and task_b.train_size ({stage0} is not here, and a hub source "
                "is not downloaded to plan; a source with fewer examples trains fewer)"
            ),
        )
    from clab.training.mixing import load_tasks  # torch: only on this path

    loaded = load_tasks(spec)
    n_a, n_b = (len(loaded[t.name][0]) for t in tasks)
    return n_a, n_b, "task_a's and task_b's sources, read as the trainer reads them"


@PLANNERS.register("replay-mixing")
def _mixing(spec, spec_path: Path | None) -> Schedule:
    tasks = [spec.task_a, spec.task_b]
    first = spec.member(PHASE_A, (spec.seeds or [spec.seed])[0])  # the first seed's phase A
    stage0 = first.run_dirs()[0] / INITIAL_STAGE
    files = [stage0 / "tasks" / t.name / "train.parquet" for t in tasks]
    if (stage0 / COMPLETE_MARKER).is_file() and all(f.is_file() for f in files):
        n_a, n_b = (_parquet_rows(f) for f in files)
        source = f"{stage0}/tasks: the examples phase A recorded"
    else:
        n_a, n_b, source = _mixing_sources(first, tasks, stage0)
    batch, micro = spec.training.batch_size, spec.training.micro_batch
    k = replay_count(spec.mix.fraction, spec.mix.of, n_a, n_b)

    def stage(name: str, task: str, n: int, epochs: int, what: str) -> StageSteps:
        steps = mixing_stage_steps(n, epochs, batch, micro)
        how = f"{plural(epochs, 'epoch')} x ceil(ceil({what} / {micro}) / {batch // micro})"
        return StageSteps(name, task, n, steps, how)

    a, b = spec.task_a, spec.task_b
    runs = []
    phase_a = [
        stage(nm, a.name, n_a, a.epochs, f"{n_a:,}") for nm, _ in _stage_names(spec.rounds, 1)
    ]
    runs.append(RunSchedule(first.name, tuple(phase_a)))
    for strategy in spec.strategies:
        stages = []
        for nm, task in _stage_names(spec.rounds, 2):
            if strategy == JOINT:
                if task == 0:
                    n = n_a + n_b
                    stages.append(
                        stage(
                            nm, f"{a.name}+{b.name}", n, spec.joint.epochs, f"({n_a:,} + {n_b:,})"
                        )
                    )
                else:
                    stages.append(StageSteps(nm, b.name, 0, 0, "trained with A in the first"))
            elif task == 0:
                if nm != "r0-g0":  # r0-g0 is phase A's, hard-linked
                    stages.append(stage(nm, a.name, n_a, a.epochs, f"{n_a:,}"))
            else:
                replayed = 0 if strategy == "none" else k
                what = f"({n_b:,} + {replayed:,} replayed)"
                stages.append(stage(nm, b.name, n_b + replayed, b.epochs, what))
        note = "" if strategy == JOINT else "r0-g0 is phase A's"
        name = spec.member(strategy, first.seed).name
        runs.append(RunSchedule(name, tuple(stages), note))
    notes = [
        "difficulty strategies replay at most the count shown: examples without a level "
        "are left out"
    ]
    if spec.training.eval_steps:
        notes.append(f"both validation losses every {spec.training.eval_steps} steps are not timed")
    return Schedule(
        kind="replay-mixing",
        shape=(
            f"phase A once, then {len(spec.strategies)} strategies; {plural(spec.rounds, 'round')}"
        ),
        runs=runs,
        data=source,
        step=f"{batch} examples of at most {spec.training.max_length:,} tokens",
        tokens_per_step=batch * spec.training.max_length,
        tokens_exact=False,
        workers=spec.resources.num_workers,
        n_seeds=seed_count(spec),
        notes=notes,
    )


def dpo_pairs(spec) -> tuple[list[tuple[str, int]], str]:
    """Each task's training pairs: from the run's stage 0 when it is complete (what the
    trainer reads), else from the data source through the trainer's own loader."""

    tasks = load_tasks(spec)
    stage0 = spec.run_dirs()[0] / INITIAL_STAGE
    files = [stage0 / PAIRS_DIR / t.name / "train.jsonl" for t in tasks]
    if (stage0 / COMPLETE_MARKER).is_file() and all(f.is_file() for f in files):
        counts = [sum(1 for line in f.read_text().splitlines() if line.strip()) for f in files]
        return [(t.name, n) for t, n in zip(tasks, counts, strict=True)], (
            f"{stage0}/{PAIRS_DIR}: the pairs the run recorded"
        )
    where = spec.data.source if spec.data.datasets is None else "data.datasets"
    return [(t.name, len(t.train)) for t in tasks], f"{where}, read as the trainer reads it"


@PLANNERS.register("continual-dpo")
def _dpo(spec, spec_path: Path | None) -> Schedule:
    pairs, source = dpo_pairs(spec)
    d = spec.dpo
    stages = []
    for nm, task in _stage_names(spec.rounds, len(pairs)):
        name, n = pairs[task]
        steps = dpo_stage_steps(
            n, d.batch_size, d.micro_batch_size, d.epochs, d.max_steps_per_stage
        )
        acc = d.batch_size // d.micro_batch_size
        how = f"{plural(d.epochs, 'epoch')} x ceil(ceil({n:,} / {d.micro_batch_size}) / {acc})"
        if d.max_steps_per_stage and steps == d.max_steps_per_stage:
            how += f", capped at dpo.max_steps_per_stage {d.max_steps_per_stage:,}"
        stages.append(StageSteps(nm, name, n, steps, how))
    notes = ["reward models (trained while stage 0 is built) are not timed"]
    if spec.warmup.steps:
        notes.append(f"{spec.warmup.steps:,} supervised warm-up steps, not timed")
    return Schedule(
        kind="continual-dpo",
        shape=f"{plural(spec.rounds, 'round')} x {plural(len(pairs), 'task')}",
        runs=[RunSchedule(spec.name, tuple(stages))],
        data=source,
        step=f"{d.batch_size} pairs, chosen and rejected, of at most {d.max_length:,} tokens",
        tokens_per_step=2 * d.batch_size * d.max_length,
        tokens_exact=False,
        workers=spec.resources.num_workers,
        n_seeds=seed_count(spec),
        notes=notes,
    )


@PLANNERS.register("k1-lm")
def _k1(spec, spec_path: Path | None) -> Schedule:
    runs = []
    for method in spec.methods:
        run = spec.member(method, (spec.seeds or [spec.seed])[0])
        stages = tuple(
            StageSteps(
                nm,
                spec.corpora[task].name,
                None,
                k1_stage_steps(spec.steps_per_corpus),
                "steps_per_corpus",
            )
            for nm, task in _stage_names(spec.rounds, len(spec.corpora))
        )
        runs.append(RunSchedule(run.name, stages))
    return Schedule(
        kind="k1-lm",
        shape=(
            f"{plural(len(spec.methods), 'method')} x {plural(spec.rounds, 'round')} x "
            f"{len(spec.corpora)} corpora"
        ),
        runs=runs,
        data="steps_per_corpus (a fixed count: the corpora's sizes do not change it)",
        step=f"{spec.batch_size} windows of {spec.seq_len} tokens",
        tokens_per_step=spec.batch_size * spec.seq_len,
        tokens_exact=True,
        workers=spec.resources.num_workers,
        n_seeds=seed_count(spec),
    )


def schedule(spec, spec_path: str | Path | None = None) -> Schedule:
    """The spec's schedule. ``spec_path`` lets the plan find a data generator's spec
    beside it (for a data set that is not generated yet)."""
    return PLANNERS[getattr(spec, "kind", None)](
        spec, Path(spec_path) if spec_path is not None else None
    )


# -- time ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    """Seconds one step of the whole run takes, how that was found, and (measured) the
    seconds of the step's parts."""

    seconds: float
    source: str
    parts: dict[str, float] = field(default_factory=dict)


def from_tokens_per_s(sched: Schedule, tokens_per_s: float) -> StepTime:
    """A step's seconds from one worker's (one GPU's) tokens/s, the figure a one-GPU
    benchmark prints: every worker computes its share of the step at that rate, so the
    run's rate is the workers times it (communication not counted)."""
    if not tokens_per_s > 0:
        raise ClabError(f"--tokens-per-s: must be a positive number (got {tokens_per_s})")
    w = sched.workers
    run_rate = tokens_per_s * w
    seconds = sched.tokens_per_step / run_rate
    scale = f" x {w} workers = {run_rate:,.0f} tokens/s" if w > 1 else ""
    return StepTime(
        seconds,
        f"{sched.tokens_per_step:,} tokens at {tokens_per_s:,.0f} tokens/s a worker (given){scale}",
    )


def from_step_seconds(seconds: float) -> StepTime:
    if not seconds > 0:
        raise ClabError(f"--step-seconds: must be a positive number (got {seconds})")
    return StepTime(seconds, "given (--step-seconds)")


def big(n: int) -> str:
    """A large count in words a person reads at a glance."""
    for size, word in ((10**12, "trillion"), (10**9, "billion"), (10**6, "million")):
        if n >= size:
            return f"{n / size:.1f} {word}"
    return f"{n:,}"


def duration(seconds: float) -> str:
    """Seconds in the unit a person plans with."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def wall_seconds(sched: Schedule, step: StepTime, n_seeds: int = 1) -> float:
    return sched.total_steps(n_seeds) * step.seconds


# -- printing -----------------------------------------------------------------------------------


def _stage_lines(run: RunSchedule) -> list[str]:
    """One line when every stage is alike, else one a stage."""
    if not run.stages:
        return ["no stage to train"]
    first = run.stages[0]
    if all((s.steps, s.how) == (first.steps, first.how) for s in run.stages):
        n = len(run.stages)
        return [f"{n} stage{'s' if n > 1 else ''} x {first.steps:,} steps ({first.how})"]
    return [f"{s.stage} {s.task}: {s.steps:,} steps ({s.how})" for s in run.stages]


def render(sched: Schedule, step: StepTime | None = None, n_seeds: int | None = None) -> str:
    """The schedule as ``clab plan`` prints it, with the wall time when ``step`` is known."""
    seeds = sched.n_seeds if n_seeds is None else n_seeds
    lines = [f"schedule  {sched.kind}: {sched.shape}; per seed"]
    lines.append(f"data      {sched.data}")
    bound = "" if sched.tokens_exact else " at most"
    lines.append(f"step      {sched.step}: {sched.tokens_per_step:,} tokens{bound}")
    multi = len(sched.runs) > 1
    for run in sched.runs:
        stage_lines = _stage_lines(run)
        head = f"{run.name}: {run.steps:,} steps" + (f" ({run.note})" if run.note else "")
        if multi:
            lines.append(("stages    " if run is sched.runs[0] else "          ") + head)
            lines += [f"            {x}" for x in stage_lines]
        else:
            lines.append(f"stages    {stage_lines[0]}")
            lines += [f"          {x}" for x in stage_lines[1:]]
    total = sched.steps_per_seed
    tokens = total * sched.tokens_per_step
    lines.append(
        f"total     {total:,} steps per seed ({big(tokens)} tokens{bound})"
        + (f"; {seeds} seeds: {sched.total_steps(seeds):,} steps" if seeds > 1 else "")
    )
    if step is None:
        lines.append(
            "time      give --tokens-per-s N (one GPU's), --step-seconds S, or --measure "
            "(times steps of this spec's shapes on this machine)"
        )
    else:
        per_seed = total * step.seconds
        text = f"time      {duration(per_seed)} per seed ({total:,} steps x {step.seconds:,.2f} s)"
        if seeds > 1:
            text += f"; {duration(per_seed * seeds)} for {seeds} seeds one after another"
        lines.append(text)
        lines += textwrap.wrap(
            f"a step: {step.source}",
            WIDTH,
            initial_indent=" " * 10,
            subsequent_indent=" " * 10,
            break_on_hyphens=False,
        )
        if step.parts:
            whole = sum(step.parts.values())
            shares = ", ".join(
                f"{k} {v:.2f} s ({v / whole:.0%})"
                for k, v in sorted(step.parts.items(), key=lambda kv: -kv[1])
            )
            lines.append(f"          the step's parts: {shares}")
        lines.append(
            "          not counted: validation after each stage, checkpoints, start-up"
            + ("" if sched.tokens_exact else "; lengths at their maximum")
        )
    for note in sched.notes:
        lines.append(f"note      {note}")
    return "\n".join(lines)
