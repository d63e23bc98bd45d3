"""clab plan's schedule: steps a stage and in all against hand computations and against
the trainers' own ``stage_steps`` on the same data, where the sizes come from, the wall
time's arithmetic, and ``--measure`` (its refusals, and its CPU path)."""

import json
import math
import re
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from clab.cli import main
from clab.specs import load_spec
from clab.storage.layout import COMPLETE_MARKER
from clab.training import schedule as sc
from conftest import REPO
from rl_spec import TINY, write_spec

SERVICES = REPO / "services"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current folder with no data, checkpoints or services of its own."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def plan(path: Path, *overrides: str) -> sc.Schedule:
    return sc.schedule(load_spec(path, overrides), path)


def flat(text: str) -> str:
    """The printed plan with its wrapped lines joined: tests read words, not layout."""
    return " ".join(text.split())


def steps_of(s: sc.Schedule, run: int = 0) -> list[int]:
    return [st.steps for st in s.runs[run].stages]


# -- the services, by hand ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "generator", "per_stage", "total"),
    [
        # 15 epochs of whole batches: 100,000 // 128 = 781 (32 rows left out of an epoch)
        ("curriculum-trainer-1.5b", "data-generator", 15 * 781, 140_580),
        ("curriculum-control-1.5b", "tinyzero-dummy-generator", 15 * 781, 140_580),
        # 100,000 // 64 = 1,562 (32 left out)
        ("curriculum-trainer-3b", "data-generator", 15 * 1_562, 281_160),
        ("curriculum-control-3b", "tinyzero-dummy-generator", 15 * 1_562, 281_160),
    ],
)
def test_curriculum_services_by_hand(elsewhere, service, generator, per_stage, total):
    s = plan(SERVICES / f"{service}.yaml")
    assert steps_of(s) == [per_stage] * 12  # 3 rounds x 4 groups
    assert s.steps_per_seed == total == 12 * per_stage
    batch = 128 if "1.5b" in service else 64
    assert s.tokens_per_step == batch * (256 + 1024) and not s.tokens_exact
    assert s.workers == (8 if "1.5b" in service else 4)
    assert f"{generator}.yaml's train_size" in s.data and "is not here" in s.data


def test_mixing_service_by_hand(elsewhere):
    s = plan(SERVICES / "mixing-trainer.yaml")
    by_run = {r.name: steps_of(s, i) for i, r in enumerate(s.runs)}
    # as transformers counts an epoch: 4,000 / micro 8 = 500 micro-batches, 8 a step:
    # 62 steps and a short 63rd, x 2 epochs (not ceil(8,000 / 64) = 125: one short)
    a = 2 * math.ceil(math.ceil(4000 / 8) / 8)
    b_replayed = 2 * math.ceil(math.ceil((4000 + 400) / 8) / 8)  # 10% of B's 4,000 replayed
    assert by_run["mix-phase-a"] == [a] == [126]
    for strategy in ("difficulty_hard", "difficulty_easy", "random", "loss_ascending"):
        assert by_run[f"mix-{strategy}"] == [b_replayed] == [138]  # r0-g0 is phase A's
    assert by_run["mix-none"] == [126]
    assert by_run["mix-joint"] == [2 * math.ceil(8000 / 8 / 8), 0] == [250, 0]
    assert s.steps_per_seed == 126 + 5 * 138 + 126 + 250 == 1_192
    assert s.tokens_per_step == 64 * 2048
    assert "task_a.train_size" in s.data


def test_k1_service_by_hand(elsewhere):
    s = plan(SERVICES / "k1-trainer.yaml")
    assert [r.name for r in s.runs] == ["k1-k1", "k1-dense", "k1-random_k", "k1-random_share"]
    assert all(steps_of(s, i) == [2000] * 3 for i in range(4))
    assert s.steps_per_seed == 4 * 3 * 2000 == 24_000
    assert s.tokens_per_step == 32 * 64 and s.tokens_exact


def test_dpo_service_counts_the_builtin_pairs(elsewhere):
    from clab.data.preference.loading import load_tasks

    spec = load_spec(SERVICES / "dpo-trainer.yaml")
    s = sc.schedule(spec)
    pairs = [len(t.train) for t in load_tasks(spec)]
    assert len(pairs) == 3 and all(n > 400 for n in pairs)
    # batch 8 = micro 8 (no accumulation), one epoch: ceil(pairs / 8)
    assert steps_of(s) == [math.ceil(n / 8) for n in pairs]
    assert s.tokens_per_step == 2 * 8 * 1024


# -- the plan counts what the trainers count --------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "per_stage"),
    [
        (
            {"batch__train": 8, "epochs_per_group": 3, "max_steps_per_stage": None,
             "data__max_train_rows": None},
            3 * (40 // 8),
        ),
        (  # 30 rows: 3 whole batches of 8 an epoch, 6 rows left out
            {"batch__train": 8, "epochs_per_group": 3, "max_steps_per_stage": None,
             "data__max_train_rows": 30},
            3 * 3,
        ),
        ({"batch__train": 8, "epochs_per_group": 3, "max_steps_per_stage": 4,
          "data__max_train_rows": None}, 4),
        (  # GRPO counts generations as PPO counts rollouts (TRL's max_steps: x 4 here)
            {"algorithm": "grpo", "rollout__responses_per_prompt": 2, "batch__train": 8,
             "epochs_per_group": 2, "max_steps_per_stage": None, "rounds": 2,
             "data__max_train_rows": None},
            2 * 5,
        ),
        (  # DAPO's over-draw: more generated, the same steps
            {"algorithm": "grpo", "rollout__responses_per_prompt": 2, "batch__train": 8,
             "epochs_per_group": 2, "max_steps_per_stage": None, "grpo__oversample": 3,
             "data__max_train_rows": None},
            2 * 5,
        ),
    ],
)  # fmt: skip
def test_countdown_plan_equals_the_trainers_stage_steps(run_dir, changes, per_stage):
    from clab.training.countdown_rl import CountdownTrainer

    path = write_spec(run_dir / "s.yaml", **changes)
    spec = load_spec(path)
    s = sc.schedule(spec, path)
    trainer = CountdownTrainer(spec, 0, 1)
    assert steps_of(s) == [trainer.stage_steps(t) for t in range(4)] * spec.rounds
    assert steps_of(s) == [per_stage] * 4 * spec.rounds
    assert "row counts of its Parquet files" in s.data
    n = spec.rollout.responses_per_prompt
    assert s.tokens_per_step == 8 * n * (160 + 8)
    # 8 prompts x n responses in mini-batches of 4 sequences (the tiny spec's batch.mini)
    k = 8 * n // 4
    what = "a PPO step: rollout, scoring" if n == 1 else "a GRPO step: one generation"
    assert f"{what}, then {k} optimizer steps of 4 sequences" in s.notes[0]
    if spec.grpo.oversample > 1:
        note = "oversample 3: each step generates and scores 24 prompts' responses and trains on 8"
        assert note in s.notes[1]


def test_mixing_plan_equals_the_trainers_stage_steps(elsewhere):
    from clab.training.mixing import MixingTrainer
    from clab.training.mixing_spec import PHASE_A

    spec = load_spec(
        SERVICES / "mixing-trainer.yaml",
        [
            "task_a={name: a, format: arithmetic, train_size: 999, epochs: 2}",
            "task_b={name: b, format: context_qa, train_size: 999, epochs: 3}",
            "training={batch_size: 8, micro_batch: 4}",
            "mix={fraction: 0.5, of: b}",
            "strategies=[random, none, joint]",
            "rounds=2",
        ],
    )
    # phase A's stage 0 as the sweep writes it: the examples it will train on
    stage0 = Path("checkpoints/mix-phase-a/initial")
    for name, n in (("a", 37), ("b", 23)):
        rows = [{"id": f"{name}{i}", "level": 1, "prompt": "q", "answer": "x"} for i in range(n)]
        (stage0 / "tasks" / name).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), stage0 / "tasks" / name / "train.parquet")
    (stage0 / COMPLETE_MARKER).write_text("{}")
    s = sc.schedule(spec)
    assert "the examples phase A recorded" in s.data
    planned = {r.name.removeprefix("mix-"): r.stages for r in s.runs}
    for branch in (PHASE_A, "random", "none", "joint"):
        trainer = MixingTrainer(spec.branch_spec(branch))
        trained = {st.stage: st.steps for st in planned[branch]}
        for name, steps in trained.items():
            assert steps == trainer.stage_steps(int(name[-1])), (branch, name)
    # by hand: 12 of A's 37 replayed (half of B's 23, rounded to even), r0-g0 is phase A's;
    # 35 examples = 9 micro-batches of 4 = 5 steps of 2 an epoch (not ceil(35 x 3 / 8) = 14)
    assert {st.stage: st.steps for st in planned["random"]} == {
        "r0-g1": 3 * 5,
        "r1-g0": 2 * 5,
        "r1-g1": 3 * 5,
    }
    assert [st.steps for st in planned[PHASE_A]] == [10, 10]


def test_mixing_plan_before_phase_a_reads_local_sources_and_not_the_hub(elsewhere, capsys):
    """No stage 0 yet: a local file with fewer examples than train_size trains fewer, and
    the plan counts them as the trainer will (30 rows, 5 held out for validation: 25);
    a hub source is not downloaded to plan, its train_size stands."""
    rows = [{"problem": f"{i}+1?", "solution": f"$\\boxed{{{i + 1}}}$", "level": "Level 1",
             "type": "A"} for i in range(30)]  # fmt: skip
    Path("math.json").write_text(json.dumps(rows))
    common = ["training={batch_size: 8, micro_batch: 4}", "strategies=[none]", "rounds=1"]
    local = [
        "task_a={name: a, format: competition_math, path: math.json, train_size: 999, "
        "val_size: 5, epochs: 2}",
        "task_b={name: b, format: context_qa, train_size: 40, val_size: 8, epochs: 1}",
    ]
    s = sc.schedule(load_spec(SERVICES / "mixing-trainer.yaml", [*local, *common]))
    assert s.data == "task_a's and task_b's sources, read as the trainer reads them"
    phase_a = next(r for r in s.runs if r.name.endswith("phase-a"))
    assert [(st.examples, st.steps) for st in phase_a.stages] == [(25, 2 * 4)]  # 7 micro / 2
    none = next(r for r in s.runs if r.name.endswith("-none"))
    assert [st.examples for st in none.stages] == [40]
    hub = load_spec(SERVICES / "mixing-trainer.yaml", [local[0], *common])  # task_b: hotpotqa
    s = sc.schedule(hub)
    assert "a hub source is not downloaded to plan" in s.data
    assert next(r for r in s.runs if r.name.endswith("phase-a")).stages[0].examples == 999


def test_dpo_plan_equals_the_trainers_stage_steps(elsewhere):
    from clab.data.preference.loading import PAIRS_DIR
    from clab.data.preference.tasks import write_split
    from clab.training.dpo import DPOStageTrainer

    def pair(i: int, tag: str) -> dict:
        return {"prompt": f"q{i}{tag}:", "chosen": f" good {i}", "rejected": f" bad {i}"}

    data = {
        "datasets": [
            {"task": {"domain": tag}, "train": [pair(i, tag) for i in range(n)],
             "test": [pair(i, tag + "t") for i in range(4)]}
            for tag, n in (("x", 50), ("y", 13))
        ]
    }  # fmt: skip
    Path("aif.json").write_text(json.dumps(data))
    path = Path("dpo.yaml")
    path.write_text(
        yaml.safe_dump(
            {
                "kind": "continual-dpo",
                "name": "d",
                "data": {"source": "aif.json"},
                "model": {"preset": "tiny", "name_or_path": None},
                "dpo": {
                    "batch_size": 16,
                    "micro_batch_size": 4,
                    "epochs": 2,
                    "max_steps_per_stage": 5,
                },
                "rounds": 2,
            }
        )
    )
    spec = load_spec(path)
    s = sc.schedule(spec, path)
    # ceil(50 / 4) = 13 micro-batches, 4 a step: 4 steps an epoch, x 2 = 8, capped at 5;
    # ceil(13 / 4) = 4 micro-batches: 1 an epoch, x 2 = 2
    assert steps_of(s) == [5, 2, 5, 2]
    assert "aif.json, read as the trainer reads it" in s.data
    # the trainer reads the pairs its stage 0 recorded: so does the plan, once it exists
    trainer = DPOStageTrainer(spec)
    for t in trainer._tasks:  # fewer pairs than the source: 20 and 13
        write_split(trainer.initial / PAIRS_DIR / t.name / "train.jsonl", t.train[:20])
    (trainer.initial / COMPLETE_MARKER).write_text("{}")
    s = sc.schedule(spec, path)
    assert "the pairs the run recorded" in s.data
    # 20 pairs: 5 micro-batches, 4 a step: 2 steps an epoch (the second short), x 2; 13: 2
    assert steps_of(s) == [trainer.stage_steps(t) for t in range(2)] * 2 == [4, 2, 4, 2]


def test_k1_plan_equals_the_trainers_stage_steps(elsewhere):
    from clab.training.k1_lm import K1Trainer

    spec = load_spec(SERVICES / "k1-trainer.yaml", ["steps_per_corpus=37", "rounds=2"])
    s = sc.schedule(spec)
    trainer = K1Trainer(spec.member("dense", spec.seed))
    assert steps_of(s, 1) == [trainer.stage_steps(t) for t in range(3)] * 2 == [37] * 6


# -- where the sizes come from -----------------------------------------------------------------


def test_sizes_from_a_generator_spec_beside_the_spec_else_the_default(elsewhere):
    gen = {"kind": "countdown", "output": "data/mine", "train_size": 1000}
    Path("gen.yaml").write_text(yaml.safe_dump(gen))
    broken = {"kind": "countdown", "output": "data/mine", "train_size": -5}
    Path("another.yaml").write_text(yaml.safe_dump(broken))  # skipped: not this plan's error
    path = write_spec(Path("s.yaml"), data__dir="data/mine", data__max_train_rows=None)
    s = sc.schedule(load_spec(path), path)
    assert "gen.yaml's train_size (data/mine is not here)" in s.data
    assert [st.examples for st in s.runs[0].stages] == [1000] * 4
    assert steps_of(s) == [3] * 4  # capped at max_steps_per_stage 3
    path = write_spec(Path("s.yaml"), data__dir="data/other", data__max_train_rows=None)
    s = sc.schedule(load_spec(path), path)
    assert "the data generator's default train_size" in s.data
    assert [st.examples for st in s.runs[0].stages] == [100_000] * 4
    path = write_spec(Path("s.yaml"), data__dir="data/other", data__max_train_rows=32)
    s = sc.schedule(load_spec(path), path)
    assert [st.examples for st in s.runs[0].stages] == [32] * 4
    assert s.data.endswith("capped at data.max_train_rows 32")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"batch__train": 64, "batch__mini": 64}, "batch.train (64) exceeds the 40 training rows"),
        ({"data__groups": [0, 7], "data__dir": "data/nowhere"}, "data.groups: [7] are not"),
    ],
)
def test_bad_schedules_exit_2_in_one_line(run_dir, capsys, changes, expected):
    path = write_spec(run_dir / "s.yaml", data__max_train_rows=None, **changes)
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1


# -- the wall time -------------------------------------------------------------------------------


def test_the_estimate_from_tokens_per_s_by_hand(elsewhere):
    s = plan(SERVICES / "curriculum-trainer-1.5b.yaml")
    step = sc.from_tokens_per_s(s, 6410)
    # one GPU's 6,410 tokens/s, 8 GPUs at once: 163,840 tokens in 3.195 s
    assert step.seconds == pytest.approx(128 * 1280 / (6410 * 8))
    assert sc.wall_seconds(s, step) == pytest.approx(140_580 * 163_840 / 51_280)  # 5.2 days
    assert sc.wall_seconds(s, step, n_seeds=3) == pytest.approx(3 * 140_580 * 163_840 / 51_280)
    out = flat(sc.render(s, step))
    assert "time 5.2 days per seed (140,580 steps x 3.20 s)" in out
    assert "a step: 163,840 tokens at 6,410 tokens/s a worker (given) x 8 workers = 51,280" in out


def test_the_estimate_from_step_seconds_and_seeds(elsewhere):
    s = plan(SERVICES / "curriculum-trainer-1.5b.yaml")
    step = sc.from_step_seconds(13.6)  # issue 23's emulated FSDP step
    assert sc.wall_seconds(s, step) == pytest.approx(140_580 * 13.6)  # 1,911,888 s
    out = flat(sc.render(s, step, n_seeds=3))
    assert "22.1 days per seed (140,580 steps x 13.60 s); 66.4 days for 3 seeds" in out
    assert "total 140,580 steps per seed" in out and "3 seeds: 421,740 steps" in out


def test_seeds_from_the_spec():
    assert sc.seed_count(types.SimpleNamespace(seeds=[0, 1, 2])) == 3
    assert sc.seed_count(types.SimpleNamespace(seeds=None, seed=4)) == 1
    assert sc.seed_count(types.SimpleNamespace(seed=4)) == 1


def test_measured_parts_print_as_shares(elsewhere):
    s = plan(SERVICES / "k1-trainer.yaml")
    step = sc.StepTime(4.0, "measured", {"generation": 1.0, "scoring": 0.6, "updates": 2.4})
    out = flat(sc.render(s, step))
    assert "updates 2.40 s (60%), generation 1.00 s (25%), scoring 0.60 s (15%)" in out
    assert "24,000 steps per seed" in out and "26.7 h per seed" in out  # 24,000 x 4 s


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(59, "59 s"), (600, "10 min"), (3 * 3600, "3.0 h"), (22.13 * 86400, "22.1 days")],
)
def test_durations(seconds, text):
    assert sc.duration(seconds) == text


def test_cli_prints_memory_schedule_and_time(elsewhere, capsys):
    path = str(SERVICES / "curriculum-trainer-1.5b.yaml")
    assert main(["plan", path, "--tokens-per-s", "6410"]) == 0
    out = flat(capsys.readouterr().out)
    assert "fits: " in out  # the memory plan is still there
    assert "stages 12 stages x 11,715 steps" in out and "140,580 steps per seed" in out
    assert "5.2 days per seed" in out
    assert main(["plan", str(SERVICES / "k1-trainer.yaml")]) == 0
    out = capsys.readouterr().out
    assert "not modelled for kind k1-lm" in out and "give --tokens-per-s N" in out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--tokens-per-s", "0"], "--tokens-per-s: must be a positive number"),
        (["--step-seconds", "-2"], "--step-seconds: must be a positive number"),
        (["--measure", "--measure-steps", "0"], "--measure-steps: at least 1"),
    ],
)
def test_cli_bad_figures_exit_2_in_one_line(capsys, args, expected):
    assert main(["plan", str(SERVICES / "k1-trainer.yaml"), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1


def test_cli_takes_one_source_of_speed(capsys):
    with pytest.raises(SystemExit) as e:
        main(["plan", str(SERVICES / "k1-trainer.yaml"), "--measure", "--tokens-per-s", "5"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- --measure ----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_measure_without_a_gpu_exits_2_in_one_line(capsys):
    assert main(["plan", str(SERVICES / "curriculum-trainer-1.5b.yaml"), "--measure"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device is visible here" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("service", "overrides", "expected"),
    [
        ("k1-trainer", [], "--measure times PPO steps (kind countdown-rl, algorithm ppo), not k1"),
        (
            "curriculum-trainer-1.5b",
            ["algorithm=grpo", "rollout.responses_per_prompt=2"],
            "not countdown-rl (grpo)",
        ),
        ("curriculum-trainer-1.5b", ["rollout.engine=vllm"], "not vllm"),
    ],
)
def test_measure_refuses_what_it_cannot_time(capsys, service, overrides, expected):
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["plan", str(SERVICES / f"{service}.yaml"), *sets, "--measure"]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.splitlines()) == 1


def test_measure_times_a_cpu_spec_on_the_cpu_and_says_so(elsewhere):
    import torch.distributed as dist

    from clab.training.measure import measure

    spec = load_spec(write_spec(Path("s.yaml")))
    step = measure(spec, steps=1)
    assert step.seconds > 0 and set(step.parts) == {
        "generation",
        "scoring",
        "updates",
        "the rest",
    }
    assert sum(step.parts.values()) == pytest.approx(step.seconds)
    assert "this machine's CPU" in step.source and "4 prompts x 1 response" in step.source
    assert "random weights of the tiny preset" in step.source
    # several fsdp workers: one worker's share, as rank 0 of them, emulated
    spec = load_spec(
        write_spec(
            Path("s.yaml"),
            resources={"num_workers": 2, "strategy": "fsdp"},
            batch={**TINY["batch"], "micro": 2},
        )
    )
    step = measure(spec, steps=1)
    assert "2 prompts x 1 response" in step.source
    assert "rank 0 of 2 under fsdp, emulated" in step.source
    # rank 0's own responses (a random model runs to the 8-token maximum), not their
    # mean over a group whose other worker does not exist (it printed 8 / 2 = 4)
    length = float(re.search(r"responses ([\d.]+) tokens on average", step.source)[1])
    assert length > 6
    assert not dist.is_initialized()  # the emulated group is gone


@pytest.mark.parametrize(
    ("n", "batch", "micro", "epochs"), [(44, 8, 4, 2), (20, 16, 4, 3), (40, 8, 4, 2)]
)
def test_hf_stage_steps_are_whole_epochs_as_transformers_trains_them(
    tmp_path, n, batch, micro, epochs
):
    """The HF-based stages (mixing, DPO) set max_steps from this count: transformers'
    own Trainer must then end exactly at the last epoch's end, every example seen
    ``epochs`` times (one step short, the last epoch's leftover went untrained)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from clab.training.steps import dpo_stage_steps, mixing_stage_steps

    seen: list[int] = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx):
            seen.extend(idx.tolist())
            return {"loss": (self.w * idx.float()).pow(2).mean()}

    data = [{"idx": i} for i in range(n)]
    steps = mixing_stage_steps(n, epochs, batch, micro)
    assert steps == dpo_stage_steps(n, batch, micro, epochs, None)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=micro,
        gradient_accumulation_steps=batch // micro, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True, logging_strategy="no",
    )  # fmt: skip
    trainer = Trainer(model=Model(), args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == steps
    assert trainer.state.epoch == pytest.approx(epochs)
    assert sorted(seen) == sorted(list(range(n)) * epochs)


def test_timed_steps_warm_up_until_a_step_compiles_nothing_and_flag_those_that_do():
    """Compiled layers meet new call variants (grad mode, masks) as sampled responses
    vary: on an H100 the first timed step after one warm-up step compiled for 77 s
    against 5.6 and 5.8 s, and a two-step median said 32 days a seed instead of 9.4."""
    from clab.training.measure import timed_steps

    def run(compiles, steps):
        it, count = iter(compiles), {"g": 0}

        def step():
            count["g"] += next(it)
            return {"step_time": float(count["g"])}

        return timed_steps(step, steps, graphs=lambda: count["g"])

    # two warm-ups compile, the third does not; the second timed step compiles again
    rows, compiled, _, warm_steps = run([3, 2, 0, 0, 4, 0], 3)
    assert warm_steps == 3 and compiled == [False, True, False] and len(rows) == 3
    # a first step that compiles nothing is warm-up enough
    assert run([0, 0, 0], 2)[3] == 1
    # never quiet: the warm-up stops at three, and every timed step is flagged
    _, compiled, _, warm_steps = run([1] * 5, 2)
    assert warm_steps == 3 and compiled == [True, True]


def test_the_graph_counter_sees_a_compile_and_a_recompile():
    """What ``timed_steps`` counts in ``clab plan --measure``: a misspelt counter would
    read 0 for ever and turn the warm-up check off."""
    from clab.training.measure import graphs_compiled

    class Block(torch.nn.Module):  # dynamo skips torch.nn's own modules' frames
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def forward(self, x):
            return (x * self.w).relu()

    block = torch.compile(Block(), backend="eager")
    g0 = graphs_compiled()
    block(torch.ones(2, 3))
    g1 = graphs_compiled()
    block(torch.ones(2, 3))  # the same call: nothing new
    with torch.no_grad():  # another variant of the call, as the scoring passes make
        block(torch.ones(2, 3))
    assert g1 > g0 and graphs_compiled() > g1 and graphs_compiled() - g1 == 1


def _measure_with_compiling_steps(monkeypatch, compiles: list[int]):
    """``measure`` on the CPU spec, with the graph counter and the step times faked: a
    step that compiles takes 100 s, the others their real time."""
    from clab.training import measure as m

    count, calls = {"g": 0}, iter(compiles)
    real = m.PPOTrainer.step

    def step(self, problems):
        row = real(self, problems)
        added = next(calls)
        count["g"] += added
        return {**row, "step_time": 100.0} if added else row

    monkeypatch.setattr(m.PPOTrainer, "step", step)
    monkeypatch.setattr(m, "graphs_compiled", lambda: count["g"])
    return m.measure(load_spec(write_spec(Path("s.yaml"))))


def test_measure_leaves_a_step_that_compiled_out_of_the_median(monkeypatch, elsewhere):
    # a quiet warm-up, then two of the three timed steps compile (100 s each)
    step = _measure_with_compiling_steps(monkeypatch, [0, 0, 1, 1])
    assert step.seconds < 100  # the quiet step's time, not the median of all three
    assert "median of 1 step after a warm-up" in step.source
    assert "2 of the 3 timed steps compiled graphs: left out of the median" in step.source


def test_measure_when_every_step_compiles_says_its_figure_is_an_upper_one(monkeypatch, elsewhere):
    step = _measure_with_compiling_steps(monkeypatch, [1] * 6)  # 3 warm-ups, 3 timed
    assert step.seconds == 100
    assert "in 3 steps" in step.source
    assert "all 3 timed steps compiled graphs: an upper figure" in step.source


def test_plan_times_three_steps_unless_told():
    from clab.cli import _parser

    args = _parser().parse_args(["plan", "s.yaml", "--measure"])
    assert args.measure_steps == 3
