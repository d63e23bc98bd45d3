"""The curriculum RL trainer on CPU with the tiny model: both algorithms, through all
four groups, kill and resume, learning, and the errors a user meets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clab.cli import main
from clab.rewards.countdown import Reason, RewardResult
from clab.runs.runner import checkpoint_step, latest_checkpoint
from clab.specs import load_spec
from clab.storage.layout import complete_stages
from clab.tracking.metrics_log import read_rows
from rl_spec import write_spec

REPO = Path(__file__).resolve().parent.parent

METRICS = {
    "global_step",
    "round",
    "group",
    "epoch",
    "success_rate",
    "answer_forms",
    "reward_mean",
    "policy_loss",
    "kl",
    "entropy",
    "grad_norm",
    "normalized_grad",
    "weight_change_run",
    "weight_change_stage",
    "response_length_mean",
    "response_length_max",
    "pg_clipfrac",
    "lr_actor",
    "tokens_per_s",
    "step_time",
}


def steps(run: str) -> list[int]:
    return [r["global_step"] for r in read_rows(f"metrics/{run}/train.jsonl")]


@pytest.mark.parametrize(
    ("algorithm", "mini", "per_rollout"), [("ppo", 2, 2), ("grpo", 2, 4), ("grpo", 8, 1)]
)
def test_optimizer_steps_per_rollout(run_dir, algorithm, mini, per_rollout):
    """Both algorithms split each step's sequences into mini-batches of batch.mini, one
    optimizer step each, as veRL does (PPO: 4 prompts x 1; GRPO: 4 x 2 responses): how
    much a stage trains is set by the mini-batch, and a clab step stays one rollout."""
    extra = {"rollout__responses_per_prompt": 2} if algorithm == "grpo" else {}
    spec = write_spec(
        run_dir / "s.yaml", name=algorithm, algorithm=algorithm, data__groups=[0],
        batch__mini=mini, batch__micro=2, **extra,
    )  # fmt: skip
    assert main(["run", str(spec)]) == 0
    state = torch.load(
        f"checkpoints/{algorithm}/r0-g0/trainer_state.pt", weights_only=False, map_location="cpu"
    )
    opt = state["actor_opt"] if algorithm == "ppo" else state
    counts = {float(p["step"]) for p in opt["state"].values()}
    assert counts == {3.0 * per_rollout}  # 3 rollouts a stage
    assert steps(algorithm) == [1, 2, 3]  # one row a rollout, whatever the mini-batches


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_one_round_through_all_four_groups(run_dir, algorithm):
    # GRPO: every reward is 0 for an untrained tiny model, so no gradient; the decay moves
    # the weights, which is what the weight-change check below needs
    extra = (
        {"rollout__responses_per_prompt": 2, "grpo__weight_decay": 0.1}
        if algorithm == "grpo"
        else {}
    )
    spec = write_spec(
        run_dir / "s.yaml", name=algorithm, algorithm=algorithm, weight_change_every=5, **extra
    )
    assert main(["run", str(spec)]) == 0

    stages = complete_stages(f"checkpoints/{algorithm}")
    assert [d.name for _, d in stages] == ["initial", "r0-g0", "r0-g1", "r0-g2", "r0-g3"]
    for stage, d in stages[1:]:
        info = json.loads((d / "COMPLETE").read_text())
        assert info["task"] == stage.task and info["task_name"] == f"g{stage.task}"
        assert info["global_step"] == 3 * stage.index
        assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
        assert (d / "trainer_state.pt").is_file()
        assert (d / "critic" / "model.safetensors").is_file() == (algorithm == "ppo")
    assert not Path(f"checkpoints/{algorithm}/_resume").exists()
    log = Path(f"logs/{algorithm}/train.log").read_text()
    assert "stage r0-g3 complete at global step 12" in log

    rows = read_rows(f"metrics/{algorithm}/train.jsonl")
    assert [r["global_step"] for r in rows] == list(range(1, 13))
    assert [r["group"] for r in rows] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    for r in rows:
        assert set(r) >= METRICS, METRICS - set(r)
        assert 0 <= r["success_rate"] <= 1
        assert r["answer_forms"] >= 1
    if algorithm == "ppo":
        assert {"value_loss", "vf_clipfrac", "lr_critic"} <= set(rows[0])
    else:  # no response of the untrained model succeeds: every prompt's group is flat
        assert all(r["flat_groups"] == 1.0 for r in rows), [r["flat_groups"] for r in rows]
    # the run's page draws the entropy and the answer forms (a collapse onto one template)
    from clab.plotting.figures import train_panels

    assert {"entropy", "answer_forms"} <= {p[0] for p in train_panels(rows)}
    # weight change against the stage start restarts; against the run start it does not
    assert (
        rows[3]["weight_change_stage"]
        < rows[2]["weight_change_stage"] + rows[3]["weight_change_run"]
    )
    assert rows[-1]["weight_change_run"] > 0
    # per-tensor weight change every 5 steps, one value per named tensor
    per_tensor = read_rows(f"metrics/{algorithm}/weights.jsonl")
    assert [r["global_step"] for r in per_tensor] == [5, 10]
    assert "model.embed_tokens.weight" in per_tensor[-1]
    assert max(v for k, v in per_tensor[-1].items() if k != "global_step") > 0

    val = read_rows(f"metrics/{algorithm}/val.jsonl")
    assert len(val) == 16
    assert {(v["stage"], v["group"]) for v in val} == {
        (s, g) for s in range(1, 5) for g in range(4)
    }


def test_learning_rate_schedule_restarts_each_stage(run_dir):
    spec = write_spec(
        run_dir / "s.yaml", name="lr", lr_scheduler="linear", save_steps=0, data__groups=[0, 1]
    )
    assert main(["run", str(spec)]) == 0
    lrs = [r["lr_actor"] for r in read_rows("metrics/lr/train.jsonl")]
    assert lrs[0] == lrs[3] == pytest.approx(1e-3)
    assert lrs[0] > lrs[1] > lrs[2] and lrs[3] > lrs[4] > lrs[5]


class Crash(Exception):
    pass


def _crash_after(monkeypatch, cls, method: str, calls: int):
    original = getattr(cls, method)
    seen = {"n": 0}

    def wrapper(self, *a, **k):
        seen["n"] += 1
        if seen["n"] > calls:
            raise Crash("killed")
        return original(self, *a, **k)

    monkeypatch.setattr(cls, method, wrapper)


def test_ppo_crash_and_resume_equals_an_uninterrupted_run(run_dir, monkeypatch):
    from clab.training.ppo import PPOTrainer

    spec = write_spec(run_dir / "a.yaml", name="whole")
    assert main(["run", str(spec)]) == 0
    whole = read_rows("metrics/whole/train.jsonl")

    spec = write_spec(run_dir / "b.yaml", name="broken")
    with monkeypatch.context() as m:
        _crash_after(m, PPOTrainer, "step", 5)  # dies in stage r0-g1, after its 2nd step
        with pytest.raises(Crash):
            main(["run", str(spec)])
    assert steps("broken") == [1, 2, 3, 4, 5]
    assert [d.name for _, d in complete_stages("checkpoints/broken")] == ["initial", "r0-g0"]
    assert main(["run", str(spec)]) == 0
    resumed = read_rows("metrics/broken/train.jsonl")
    assert [r["global_step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(whole, resumed, strict=True):
        for key in (
            "reward_mean",
            "policy_loss",
            "value_loss",
            "weight_change_run",
            "weight_change_stage",
            "entropy",
        ):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["global_step"], key)
    # the load's named phases and their seconds, on the first row after each load
    phases = ["time/load_models", "time/load_engine", "time/load_trainer", "time/load_state"]
    loaded = [r["global_step"] for r in resumed if all(r.get(k, -1) >= 0 for k in phases)]
    assert [r["global_step"] for r in whole if phases[0] in r] == [1]
    assert len(loaded) == 2 and loaded[0] == 1
    assert main(["run", str(spec)]) == 0  # a complete run is left alone
    assert steps("broken") == list(range(1, 13))


def test_grpo_crash_and_resume_loses_and_repeats_nothing(run_dir, monkeypatch):
    from clab.rewards.countdown import CountdownReward

    spec = write_spec(
        run_dir / "g.yaml", name="g", algorithm="grpo", rollout__responses_per_prompt=2
    )
    with monkeypatch.context() as m:
        _crash_after(m, CountdownReward, "__call__", 8)  # in stage r0-g2, step 3
        with pytest.raises(Crash):
            main(["run", str(spec)])
    assert steps("g") == list(range(1, 9))
    # 8 sequences a step in mini-batches of 4: HF names the checkpoint by optimizer step,
    # its marker (which the runner reads) by clab step
    ckpt = latest_checkpoint(Path("checkpoints/g/_resume/r0-g2"))
    assert ckpt.name == "checkpoint-4" and checkpoint_step(ckpt) == 2
    assert main(["run", str(spec)]) == 0
    assert (
        "resuming stage r0-g2 at its step 2 (global step 8)" in Path("logs/g/train.log").read_text()
    )
    assert steps("g") == list(range(1, 13))
    assert len(complete_stages("checkpoints/g")) == 5


def _whole_then_broken(run_dir, monkeypatch, seen: list, crash_after: int, **spec) -> tuple:
    """The same GRPO spec run whole, then killed at reward call ``crash_after + 1`` and
    rerun; ``seen`` is what a reward spy appends per call. Returns (the whole run's
    calls, the broken run's calls, both runs' train.jsonl rows)."""
    from clab.rewards.countdown import CountdownReward

    assert main(["run", str(write_spec(run_dir / "w.yaml", name="whole", **spec))]) == 0
    whole_calls, seen[:] = list(seen), []
    broken = write_spec(run_dir / "b.yaml", name="broken", **spec)
    with monkeypatch.context() as m:
        _crash_after(m, CountdownReward, "__call__", crash_after)
        with pytest.raises(Crash):
            main(["run", str(broken)])
    assert main(["run", str(broken)]) == 0
    rows = read_rows("metrics/whole/train.jsonl"), read_rows("metrics/broken/train.jsonl")
    return whole_calls, list(seen), *rows


def test_grpo_resumed_in_a_later_epoch_trains_the_same_prompts_and_numbers(run_dir, monkeypatch):
    """TRL's sampler is not checkpointed: a run resumed in a stage's second epoch
    replayed the first epoch's shuffle (other prompts, some twice). Crash in epoch 1,
    resume: every step's prompts and numbers as the uninterrupted run's; the logged
    epoch of each step is its own (the last step of an epoch read the next one)."""
    from clab.rewards.countdown import CountdownReward

    seen: list = []
    original = CountdownReward.__call__

    def spy(self, prompts, completions, **k):
        seen.append(sorted(set(prompts)))
        return original(self, prompts, completions, **k)

    monkeypatch.setattr(CountdownReward, "__call__", spy)
    whole_prompts, prompts, whole, resumed = _whole_then_broken(
        run_dir, monkeypatch, seen, 3,  # dies at step 4: epoch 1's second
        algorithm="grpo", rollout__responses_per_prompt=2, data__groups=[0],
        data__max_train_rows=8, epochs_per_group=3, max_steps_per_stage=None, save_steps=1,
    )  # fmt: skip
    assert prompts == whole_prompts and len(prompts) == 6  # 8 rows / 4 a step x 3 epochs
    assert [r["epoch"] for r in whole] == [0, 0, 1, 1, 2, 2]
    for a, b in zip(whole, resumed, strict=True):
        for key in ("epoch", "reward_mean", "policy_loss", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["global_step"], key)


def test_grpo_oversample_draws_more_prompts_and_trains_the_groups_whose_scores_vary(
    run_dir, monkeypatch
):
    """grpo.oversample 3: each generation scores 3 x 4 prompts of the stage (TRL's 4,
    then 8 others, none twice) and trains on 4 groups, those whose two responses
    scored differently first. Prompts whose target divides by 3 get responses scored
    0 and 1 (they vary); the others all 0 (flat). Kept flat share = max(0, 4 - 12 +
    drawn flat) / 4 exactly, step by step."""
    from clab.rewards.countdown import CountdownReward

    calls: list[list[str]] = []

    def reward(self, prompts, completions, target, **_):
        calls.append(list(prompts))
        return [float(t % 3 == 0 and i % 2) for i, t in enumerate(target)]

    from trl import GRPOTrainer

    losses: list[dict] = []
    compute_loss = GRPOTrainer._compute_loss

    def spy(self, model, inputs):
        losses.append({k: inputs[k] for k in ("advantages", "completion_mask")})
        losses[-1]["tokens"] = inputs["num_items_in_batch"]
        return compute_loss(self, model, inputs)

    monkeypatch.setattr(CountdownReward, "__call__", reward)
    monkeypatch.setattr(GRPOTrainer, "_compute_loss", spy)
    spec = write_spec(
        run_dir / "o.yaml", name="o", algorithm="grpo", data__groups=[0],
        rollout__responses_per_prompt=2, grpo__oversample=3, data__max_train_rows=32,
    )  # fmt: skip
    assert main(["run", str(spec)]) == 0
    rows = read_rows("metrics/o/train.jsonl")
    assert len(calls) == len(rows) == 3 and len(losses) == 2 * 3  # 2 micro-batches of 4
    for i, (drawn, row) in enumerate(zip(calls, rows, strict=True)):
        firsts = drawn[::2]
        assert drawn[1::2] == firsts and len(set(firsts)) == 12  # 12 groups, none twice
        flat = round(row["flat_groups"] * 12)
        assert row["flat_groups_kept"] == pytest.approx(max(0, 4 - 12 + flat) / 4)
        # the loss sees the 4 kept groups: both responses of each varying one move
        trained = losses[2 * i : 2 * i + 2]
        adv = torch.cat([t["advantages"] for t in trained])
        assert len(adv) == 8 and int((adv != 0).sum()) == 2 * min(4, 12 - flat)
        kept_tokens = sum(int(t["completion_mask"].sum()) for t in trained)
        assert all(int(t["tokens"]) == kept_tokens for t in trained)
    assert any(r["flat_groups"] > 0 for r in rows)
    assert any(r["flat_groups_kept"] < r["flat_groups"] for r in rows)


def test_grpo_oversample_resumed_draws_and_trains_as_the_uninterrupted_run(run_dir, monkeypatch):
    """The over-draw's extra prompts come from (seed, stage, step), not from a state
    a crash loses: killed in the second epoch and rerun, every step draws the same
    prompts and keeps the same groups, with the same numbers, as the run never killed."""
    from clab.rewards.countdown import CountdownReward

    seen: list = []

    def reward(self, prompts, completions, target, **_):  # some groups vary, some are flat
        seen.append(list(prompts))
        return [float(t % 3 == 0 and i % 2) for i, t in enumerate(target)]

    monkeypatch.setattr(CountdownReward, "__call__", reward)
    whole_prompts, prompts, whole, resumed = _whole_then_broken(
        run_dir, monkeypatch, seen, 5,  # dies at step 6: epoch 1's second
        algorithm="grpo", rollout__responses_per_prompt=2, data__groups=[0],
        data__max_train_rows=16, epochs_per_group=2, max_steps_per_stage=None,
        grpo__oversample=2, save_steps=1,
    )  # fmt: skip
    assert len(prompts) == 8 and prompts == whole_prompts  # 5 draws before the crash, 3 after
    assert len(whole) == len(resumed) == 8
    for a, b in zip(whole, resumed, strict=True):
        for key in ("reward_mean", "policy_loss", "flat_groups", "flat_groups_kept"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["global_step"], key)
    assert any(0 < r["flat_groups_kept"] < r["flat_groups"] for r in whole)


def test_grpo_flat_groups_counts_groups_scored_alike_at_any_group_size(run_dir, monkeypatch):
    """Twelve responses a prompt, every one scored 0.1 (the format credit alone): each
    group is flat and teaches nothing. TRL's frac_reward_zero_std reads 0.0 here (the
    float32 std of twelve 0.1s is 1.6e-8, beyond its 1e-8 tolerance); clab's count,
    from the advantages, reads 1.0. With half the prompts' responses varying, 0.5."""
    from clab.rewards.countdown import CountdownReward

    def alike(self, prompts, completions, target, **_):
        return [0.1] * len(prompts)

    monkeypatch.setattr(CountdownReward, "__call__", alike)
    common = dict(algorithm="grpo", data__groups=[0], rollout__responses_per_prompt=12,
                  max_steps_per_stage=2)  # fmt: skip
    assert main(["run", str(write_spec(run_dir / "a.yaml", name="alike", **common))]) == 0
    rows = read_rows("metrics/alike/train.jsonl")
    assert len(rows) == 2 and all(r["flat_groups"] == 1.0 for r in rows), rows

    def half(self, prompts, completions, target, **_):  # a prompt's 12 rows are consecutive
        return [0.1 + (i // 12 % 2) * (i % 2) for i in range(len(prompts))]

    monkeypatch.setattr(CountdownReward, "__call__", half)
    assert main(["run", str(write_spec(run_dir / "h.yaml", name="half", **common))]) == 0
    rows = read_rows("metrics/half/train.jsonl")
    assert [r["flat_groups"] for r in rows] == [0.5, 0.5]


def test_grpo_oversample_refuses_a_stage_too_small_and_vllm(run_dir, capsys):
    spec = write_spec(
        run_dir / "o.yaml", name="o", algorithm="grpo", data__groups=[0],
        rollout__responses_per_prompt=2, grpo__oversample=3, data__max_train_rows=8,
    )  # fmt: skip
    assert main(["run", str(spec)]) == 2
    assert "grpo.oversample 3 draws 12 prompts a step, but group 0 has 8" in capsys.readouterr().err
    assert not Path("checkpoints/o").exists()  # refused before stage 0 is built
    bad = write_spec(
        run_dir / "v.yaml", algorithm="grpo", rollout__responses_per_prompt=2,
        grpo__oversample=2, rollout__engine="vllm",
    )  # fmt: skip
    assert main(["run", str(bad)]) == 2
    assert "grpo.oversample > 1 needs rollout.engine hf or hf-static" in capsys.readouterr().err


def test_sigkill_mid_run_then_rerun_same_command(run_dir):
    spec = write_spec(run_dir / "k.yaml", name="k", max_steps_per_stage=6)
    cmd = [str(Path(sys.executable).parent / "clab"), "run", str(spec)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and len(steps("k")) < 8:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = len(steps("k"))
    assert 8 <= killed_at < 24
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert steps("k") == list(range(1, 25))
    assert len(complete_stages("checkpoints/k")) == 5


class DigitReward:
    """A simple reward a tiny model can learn in a few dozen steps: the share of digits."""

    __name__ = "digits"

    def __init__(self, *_):
        pass

    def score(self, completions, *_):
        return [
            RewardResult(s, s > 0.5, Reason.WRONG_VALUE)
            for s in (sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions)
        ]

    def __call__(self, prompts, completions, **_):
        return [r.score for r in self.score(completions)]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_simple_reward_rises(run_dir, monkeypatch, algorithm):
    import clab.training.countdown_rl as rl

    monkeypatch.setattr(rl, "CountdownReward", DigitReward)
    extra = {"rollout__responses_per_prompt": 4} if algorithm == "grpo" else {}
    spec = write_spec(
        run_dir / "r.yaml",
        name="rise",
        algorithm=algorithm,
        data__groups=[0],
        max_steps_per_stage=30,
        epochs_per_group=100,
        save_steps=0,
        batch={"train": 16, "val": 4, "mini": 16, "micro": 16},
        ppo={"actor_lr": 1e-2, "critic_lr": 1e-3, "kl_coef": 0.0, "entropy_coef": 0.0},
        grpo={"lr": 1e-2, "beta": 0.0},
        **extra,
    )
    assert main(["run", str(spec)]) == 0
    rewards = [r["reward_mean"] for r in read_rows("metrics/rise/train.jsonl")]
    assert len(rewards) == 30
    first, last = sum(rewards[:8]) / 8, sum(rewards[-8:]) / 8
    assert last > first + 0.15, (first, last, rewards)


# -- bad input --------------------------------------------------------------------------------


def test_missing_data_names_the_service_that_makes_it(workdir, capsys):
    spec = write_spec(workdir / "s.yaml")
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "data/continual lacks 0/train.parquet" in err and "data-generator" in err
    spec = write_spec(workdir / "s.yaml", data__dir="data/dummy_tinyzero")
    assert main(["run", str(spec)]) == 2
    assert "tinyzero-dummy-generator" in capsys.readouterr().err


def test_missing_model_folder_names_the_mount(run_dir, capsys):
    spec = write_spec(run_dir / "s.yaml", model={"name_or_path": "/models/qwen1.5b"})
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "model folder /models/qwen1.5b does not exist" in err and "mount" in err
    assert not Path("checkpoints").exists()


def test_a_critic_warmup_starts_every_stage_with_the_actor_waiting(run_dir):
    """``ppo.critic_warmup: 1`` in a run of two groups: the first step of each stage
    logs no policy loss and the actor's rate as 0; the others train both."""
    spec = write_spec(run_dir / "s.yaml", name="cw", data__groups=[0, 1], ppo__critic_warmup=1)
    assert main(["run", str(spec)]) == 0
    rows = read_rows("metrics/cw/train.jsonl")
    assert [r["global_step"] for r in rows] == list(range(1, 7))
    waiting = [r["global_step"] for r in rows if "policy_loss" not in r]
    assert waiting == [1, 4]
    assert [r["lr_actor"] == 0 for r in rows] == [s in (1, 4) for s in range(1, 7)]
    assert all("value_loss" in r for r in rows)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch": {"train": 6, "val": 4, "mini": 4, "micro": 4}}, "batch.mini (4) must divide"),
        ({"batch": {"train": 8, "val": 4, "mini": 8, "micro": 3}}, "batch.micro (3) must divide"),
        ({"resources": {"num_workers": 3}}, "must divide by resources.num_workers (3)"),
        ({"algorithm": "grpo"}, "responses_per_prompt >= 2"),
        ({"model": {"preset": "tiny", "name_or_path": "x"}}, "exactly one of"),
        ({"rollout": {"engine": "vllm"}}, "needs resources.use_gpu"),
        ({"rollout": {"engine": "hf-dynamic"}}, "rollout.engine"),
        ({"rollout": {"batch_size": 0}}, "rollout.batch_size"),
        (
            {"ppo": {"critic_warmup": 3}, "max_steps_per_stage": 3},
            "ppo.critic_warmup (3) must be below max_steps_per_stage (3)",
        ),
        (
            {"algorithm": "grpo", "rollout": {"responses_per_prompt": 2, "batch_size": 4}},
            "rollout.batch_size is for ppo",
        ),
    ],
)
def test_bad_settings_are_rejected_when_the_spec_is_validated(workdir, capsys, changes, message):
    spec = write_spec(workdir / "s.yaml", **changes)
    assert main(["validate", str(spec)]) == 2
    assert message in capsys.readouterr().err


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(run_dir, monkeypatch, capsys):
    import torch

    import clab.training.ppo as ppo

    spec = write_spec(run_dir / "s.yaml", name="nan", data__groups=[0, 1])
    real = ppo.policy_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss, frac = real(*a, **k)
        return (loss * torch.nan if calls["n"] > 4 else loss), frac

    monkeypatch.setattr(ppo, "policy_loss", poisoned)
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "stage r0-g1: loss is not finite" in err
    assert [d.name for _, d in complete_stages("checkpoints/nan")] == ["initial", "r0-g0"]
    assert not Path("checkpoints/nan/r0-g1").exists()
    # step 4 (r0-g1's first) was good and saved; step 5 went NaN and was not logged
    assert steps("nan") == [1, 2, 3, 4]
    state = json.loads(Path("checkpoints/nan/_resume/r0-g1/checkpoint-1/COMPLETE").read_text())
    assert state == {"step": 1}


def test_warmup_teaches_the_answer_format_before_rl(run_dir):
    from clab.data.countdown.reading import read_group
    from clab.evaluation.countdown import evaluate_problems
    from clab.models.loading import load_policy, load_tokenizer

    spec = write_spec(
        run_dir / "w.yaml",
        name="w",
        data__groups=[0],
        max_steps_per_stage=1,
        warmup={"steps": 80, "lr": 5e-3, "batch_size": 16},
        rollout__max_response_length=24,
    )
    assert main(["run", str(spec)]) == 0
    initial = Path("checkpoints/w/initial")
    assert json.loads((initial / "COMPLETE").read_text())["warmup_steps"] == 80
    problems = read_group(Path("data/continual"), 0, "test", 8)
    res = evaluate_problems(
        load_policy(initial),
        load_tokenizer(initial),
        problems,
        max_prompt_length=160,
        max_new_tokens=24,
        n_samples=8,
    )
    # the supervised loss on the answers fell, and greedy replies close an answer block
    losses = [
        h["loss"]
        for h in json.loads(Path("logs/w/warmup/log_history.json").read_text())
        if "loss" in h
    ]
    assert losses[-1] < 0.6 * losses[0], losses
    assert all("</answer>" in s["response"] for s in res["samples"]), res["samples"]


def test_vllm_rollouts_where_vllm_is_absent_say_so(run_dir, capsys):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    spec = write_spec(run_dir / "s.yaml", rollout={"engine": "vllm"}, resources={"use_gpu": True})
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "rollout.engine: vllm is not installed here" in err and "--extra gpu" in err
    assert not Path("checkpoints").exists()


def test_reset_optimizer_clears_state_and_the_schedule_restarts(run_dir):
    from clab.data.countdown.reading import read_group
    from clab.models.loading import load_critic, load_policy, load_tokenizer
    from clab.models.tiny import build_tiny_model
    from clab.rewards.countdown import score_countdown
    from clab.training.ppo import PPOConfig, PPOTrainer

    probs = read_group(Path("data/continual"), 0, "train", 4)
    build_tiny_model(Path("m"), [p.prompt for p in probs], vocab_size=300, hidden_size=32)
    tr = PPOTrainer(
        load_policy("m"),
        load_critic("m"),
        None,
        load_tokenizer("m"),
        PPOConfig(
            actor_lr=1e-3,
            mini_batch_size=4,
            micro_batch_size=4,
            max_response_length=4,
            max_prompt_length=160,
            lr_scheduler="linear",
        ),
        lambda texts, ps: [
            score_countdown(t, p.target, p.nums) for t, p in zip(texts, ps, strict=True)
        ],
    )
    tr.new_stage(2, reset_optimizer=False)
    first = tr.step(probs)
    assert tr.actor_opt.state and tr.critic_opt.state
    tr.new_stage(2, reset_optimizer=False)
    assert tr.actor_opt.state  # kept across stages by default
    again = tr.step(probs)
    assert again["lr_actor"] == first["lr_actor"] == pytest.approx(1e-3)  # restarted
    tr.new_stage(2, reset_optimizer=True)
    assert not tr.actor_opt.state and not tr.critic_opt.state


# -- GRPO settings (issue 8, point 8 and 11) ---------------------------------------------------


@pytest.fixture
def grpo_trainers(monkeypatch) -> list:
    """Every GRPOTrainer built while the test runs, in order."""
    from trl import GRPOTrainer

    built: list = []
    original = GRPOTrainer.__init__

    def counting(self, *a, **k):
        built.append(self)
        original(self, *a, **k)

    monkeypatch.setattr(GRPOTrainer, "__init__", counting)
    return built


def test_grpo_keeps_one_trainer_for_the_run_and_decays_no_norm_or_bias(run_dir, grpo_trainers):
    """One GRPOTrainer (so one optimizer and, with vLLM, one engine) through every stage;
    HF's own optimizer: decay as the spec says, never on norms and biases."""
    built = grpo_trainers
    spec = write_spec(
        run_dir / "g.yaml",
        name="one",
        algorithm="grpo",
        rollout__responses_per_prompt=2,
        grpo__weight_decay=0.05,
        max_steps_per_stage=1,
    )
    assert main(["run", str(spec)]) == 0
    assert len(built) == 1
    opt = built[0].optimizer
    names = {id(p): n for n, p in built[0].model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            no_decay = name.endswith("bias") or "norm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
    args = built[0].args
    assert (args.loss_type, args.scale_rewards, args.weight_decay) == ("dapo", "group", 0.05)


def test_at_most_save_total_limit_intermediate_checkpoints_are_kept(run_dir, monkeypatch):
    from clab.training.ppo import PPOTrainer

    spec = write_spec(run_dir / "s.yaml", name="lim", data__groups=[0], max_steps_per_stage=6,
                      save_steps=1, save_total_limit=2)  # fmt: skip
    with monkeypatch.context() as m:
        _crash_after(m, PPOTrainer, "step", 5)
        with pytest.raises(Crash):
            main(["run", str(spec)])
    kept = sorted(p.name for p in Path("checkpoints/lim/_resume/r0-g0").iterdir())
    assert kept == ["checkpoint-4", "checkpoint-5"]


def test_tensor_parallel_size_must_divide_the_workers(workdir, capsys):
    spec = write_spec(
        workdir / "s.yaml",
        rollout={"engine": "vllm", "tensor_parallel_size": 2},
        resources={"num_workers": 3, "use_gpu": True},
        batch={"train": 6, "val": 4, "mini": 6, "micro": 2},
    )
    assert main(["validate", str(spec)]) == 2
    assert "tensor_parallel_size (2)" in capsys.readouterr().err


# -- static-cache rollouts (issue 14) -----------------------------------------------------------


@pytest.fixture
def static_calls(monkeypatch) -> tuple[list, list]:
    """The chunk shapes every static generate call gets, and every StaticGenerator
    built, while the test runs."""
    from clab.generation import rollout

    shapes, built = [], []
    generate_ids = rollout.StaticGenerator.generate_ids
    init = rollout.StaticGenerator.__init__

    def recording(self, ids, *a, **k):
        shapes.append(tuple(ids.shape))
        return generate_ids(self, ids, *a, **k)

    def counting(self, *a, **k):
        built.append(self)
        init(self, *a, **k)

    monkeypatch.setattr(rollout.StaticGenerator, "generate_ids", recording)
    monkeypatch.setattr(rollout.StaticGenerator, "__init__", counting)
    return shapes, built


def test_ppo_with_static_rollouts_in_calls_of_rollout_batch_size(run_dir, static_calls):
    """rollout.engine hf-static with rollout.batch_size 3 for 4 prompts a step: every
    generate call (rollouts and validation) has 3 rows, prompts padded to
    max_prompt_length; one static generator serves the whole run."""
    shapes, built = static_calls
    spec = write_spec(
        run_dir / "s.yaml",
        name="static",
        data__groups=[0, 1],
        max_steps_per_stage=2,
        rollout={"engine": "hf-static", "batch_size": 3, "max_prompt_length": 160,
                 "max_response_length": 8},
    )  # fmt: skip
    assert main(["run", str(spec)]) == 0
    assert steps("static") == [1, 2, 3, 4]
    assert set(shapes) == {(3, 160)}
    assert len(shapes) >= 4 * 2  # 2 calls a step (3 + 1 real rows), and validation's
    assert len(built) == 1
    rows = read_rows("metrics/static/train.jsonl")
    assert all(r["response_length_mean"] > 0 for r in rows)


def test_grpo_static_rollouts_through_clabs_static_engine(
    run_dir, grpo_trainers, static_calls, monkeypatch
):
    """GRPO's hf-static: TRL's rollout hook generates through the static engine PPO
    uses (TRL's own generate is never called), in calls of a step's sequences, and
    validation reuses the same generator: one static generator for the run."""
    from trl import GRPOTrainer

    shapes, built = static_calls

    def trls_own(*a, **k):
        raise AssertionError("TRL's own generation ran")

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", trls_own)
    spec = write_spec(
        run_dir / "g.yaml",
        name="gstatic",
        algorithm="grpo",
        data__groups=[0],
        max_steps_per_stage=2,
        rollout={"engine": "hf-static", "responses_per_prompt": 2, "max_prompt_length": 160,
                 "max_response_length": 8},
    )  # fmt: skip
    assert main(["run", str(spec)]) == 0
    assert grpo_trainers[0].rollout_func is not None
    assert steps("gstatic") == [1, 2]
    per_step = load_spec(spec).batch.train * 2
    assert shapes and set(shapes) == {(per_step, 160)}
    assert len(built) == 1
    rows = read_rows("metrics/gstatic/train.jsonl")
    assert all(r["response_length_mean"] > 0 for r in rows)


def test_hf_stages_seed_each_worker_apart(monkeypatch):
    """Every HF-based stage (GRPO, mixing, DPO) reseeds at its start; with one seed on
    every worker the workers' sampling drew the same random numbers (correlated
    rollouts). Seeded per process, as TRL's GRPOTrainer seeds: rank r gets seed + r."""
    from types import SimpleNamespace

    import accelerate.utils.random as accelerate_random
    import torch

    from clab.training.hf_stage import carry_into_stage

    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=1e-3)
    trainer = SimpleNamespace(args=SimpleNamespace(learning_rate=1e-3), optimizer=opt,
                              train_dataset=None)  # fmt: skip
    seeds = {}
    for rank in (0, 1):
        state = SimpleNamespace(process_index=rank)
        monkeypatch.setattr(accelerate_random, "AcceleratorState", lambda s=state: s)
        carry_into_stage(trainer, {"seed": 1234}, [], optimizer_state=None, reset_optimizer=False)
        seeds[rank] = (torch.initial_seed(), torch.rand(1).item())
    assert seeds[0][0] == 1234 and seeds[1][0] == 1235 and seeds[0][1] != seeds[1][1]


def test_grpo_with_engine_hf_cuts_prompts_at_max_prompt_length(run_dir, monkeypatch):
    """TRL's own generation (1.16: no max_prompt_length) tokenized whole prompts; GRPO's
    hf engine now goes through clab's rollout hook, which cuts them from the left at
    rollout.max_prompt_length as PPO and validation do."""
    from trl import GRPOTrainer

    from clab.training import countdown_rl

    def trls_own(*a, **k):
        raise AssertionError("TRL's own generation ran")

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", trls_own)
    widths = []
    real = countdown_rl.hf_generate

    def spy(*a, **k):
        ro = real(*a, **k)
        if k.get("engine") == "hf":
            widths.append(int(ro.prompt_mask.sum(1).max()))
        return ro

    monkeypatch.setattr(countdown_rl, "hf_generate", spy)
    spec = write_spec(run_dir / "h.yaml", name="ghf", algorithm="grpo", data__groups=[0],
                      max_steps_per_stage=2,
                      rollout={"engine": "hf", "responses_per_prompt": 2, "max_prompt_length": 64,
                               "max_response_length": 8})  # fmt: skip
    assert main(["run", str(spec)]) == 0
    assert steps("ghf") == [1, 2] and widths and max(widths) == 64  # the prompts are longer


def test_a_data_set_regenerated_under_a_run_stops_its_resume_and_its_scoring(workdir, capsys):
    """The data generator replaces its own earlier output, whatever seed it was made
    with. A run resumed on it would have trained its later stages on other problems
    than its earlier ones, and the evaluator scored old stages on new test problems,
    both without a word. Now each stops naming the data set; nothing is written."""
    gen = ["run", str(REPO / "services/data-generator.yaml"), "--set", "train_size=40",
           "--set", "test_size=8", "--set", "output=data/continual"]  # fmt: skip
    assert main(gen) == 0
    spec = write_spec(workdir / "s.yaml", name="d", max_steps_per_stage=1, save_steps=0)
    assert main(["run", str(spec)]) == 0
    longer = write_spec(
        workdir / "s2.yaml", name="d", max_steps_per_stage=1, save_steps=0, rounds=2
    )
    info = json.loads(Path("checkpoints/d/run.json").read_text())
    assert len(info["inputs"]["data.dir"]) == 64
    capsys.readouterr()
    assert main([*gen, "--set", "workers=1"]) == 0  # the same files: not a word
    assert "replaced" not in capsys.readouterr().out
    assert main([*gen, "--set", "seed=1"]) == 0  # regenerated in place, with a word
    out = capsys.readouterr().out
    assert "replaced the data set at data/continual (made with other seed)" in out
    before = Path("checkpoints/d/run.json").read_text()
    assert main(["run", str(longer)]) == 2  # a second round: the run resumes
    err = capsys.readouterr().err
    assert "data set at data.dir (data/continual) is not the one its earlier stages" in err
    assert Path("checkpoints/d/run.json").read_text() == before
    assert len(complete_stages("checkpoints/d")) == 5
    ev = ["run", str(REPO / "services/evaluator.yaml"), "--set", "use_gpu=false"]
    assert main(ev) == 2
    assert "data/continual is not the one this run trained on" in capsys.readouterr().err
    assert not Path("metrics/d/eval.parquet").exists()
    assert main([*gen, "--set", "seed=0"]) == 0  # regenerated as it was: both go on
    assert main(["run", str(longer)]) == 0
    assert len(complete_stages("checkpoints/d")) == 9
    assert main(ev) == 0
    # a run scored in full keeps its results: replacing its data set for the next
    # experiment does not stop the evaluator (which scores other runs after it)
    assert main([*gen, "--set", "seed=1"]) == 0
    assert main(ev) == 0
