"""The continual DPO trainer on the runner, at tiny scale on the CPU: TRL's DPO
metrics per task, the evaluator's three scores, the reference each choice gives,
reward models trained once and reused, a second run on the same model folder,
EWC's Fisher over every task, and a resume after a crash equal to a whole run."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from clab.cli import main
from clab.data.preference.builtin import style_tasks
from clab.models.loading import load_policy
from clab.models.tiny import build_tiny_model
from clab.tracking.metrics_log import read_rows

BASE = {
    "kind": "continual-dpo",
    "name": "p",
    "data": {"source": "builtin:styles", "tasks": ["upper", "lower"],
             "builtin_train_size": 32, "builtin_test_size": 8},
    "model": {"preset": "tiny", "name_or_path": None, "hidden_size": 32,
              "layers": 1, "vocab_size": 300},
    "lora": {"r": 8, "alpha": 16},
    "dpo": {"lr": 5e-3, "batch_size": 8, "micro_batch_size": 8, "max_length": 64},
    "reward": {"lr": 1e-3, "batch_size": 8, "max_length": 64},
    "score": {"max_new_tokens": 8},
    "resources": {"use_gpu": False},
    "reset_optimizer": True,
    "save_steps": 2,
    "wandb": False,
}  # fmt: skip


def spec(path: Path, **changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        node = data
        *parts, last = key.split("__")
        for p in parts:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


def stage_firsts(run: str) -> list[dict]:
    rows = read_rows(f"metrics/{run}/train.jsonl")
    return [r for r in rows if r["step_in_stage"] == 1]


def folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_two_tasks_trained_logged_and_scored_on_every_checkpoint(workdir, monkeypatch):
    assert main(["run", str(spec(workdir / "s.yaml", reward__max_length=56))]) == 0
    rows = read_rows("metrics/p/train.jsonl")
    assert [r["global_step"] for r in rows] == list(range(1, 9))
    assert [r["task_name"] for r in rows] == ["upper"] * 4 + ["lower"] * 4
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
                "rewards/margins", "weight_change_run"):  # fmt: skip
        assert all(key in r for r in rows), key
    # the task was learned while trained: DPO's margin on its own pairs rises
    assert rows[3]["rewards/margins"] > 0 and rows[3]["loss"] < rows[0]["loss"]
    ckpt = Path("checkpoints/p")
    for stage in ("r0-g0", "r0-g1"):  # adapters only, without TRL's "ref" copy
        assert (ckpt / stage / "adapter_model.safetensors").is_file()
        assert (
            not (ckpt / stage / "ref").exists()
            and not (ckpt / stage / "model.safetensors").exists()
        )
        cfg = json.loads((ckpt / stage / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == "checkpoints/p/initial"
    assert sorted(p.name for p in (ckpt / "reward-models").iterdir()) == ["lower", "upper"]
    rm = json.loads(Path("metrics/p/reward_models.json").read_text())["tasks"]
    assert set(rm) == {"upper", "lower"} and all(v["n_test"] == 8 for v in rm.values())
    from clab.evaluation.scorers import preference as scorer

    cut_at, real = [], scorer.reward_scores
    monkeypatch.setattr(scorer, "reward_scores", lambda *a: cut_at.append(a[4]) or real(*a))
    Path("e.yaml").write_text("kind: evaluate\nruns: [p]\nuse_gpu: false\nsamples_per_group: 2\n")
    assert main(["run", "e.yaml"]) == 0
    # the reward models score completions cut as they were trained (reward.max_length)
    assert cut_at and set(cut_at) == {56}
    s = json.loads(Path("metrics/p/summary.json").read_text())
    assert s["score"] == "reward_score"
    assert set(s["scores"]) == {"reward_score", "win_rate", "implicit_accuracy", "implicit_margin"}
    for name in s["scores"]:
        assert len(s["scores"][name]["matrix"]) == 3 and len(s["scores"][name]["matrix"][0]) == 2
        assert "forgetting" in s["scores"][name] and "backward_transfer" in s["scores"][name]
    # stage 0 against itself: exactly even, on both pairwise scores
    assert s["scores"]["win_rate"]["matrix"][0] == [0.5, 0.5]
    assert s["scores"]["implicit_accuracy"]["matrix"][0] == [0.5, 0.5]
    assert s["scores"]["implicit_margin"]["matrix"][0] == [0.0, 0.0]
    # after the upper stage the policy prefers upper's chosen over its rejected, and
    # (the same pairs, swapped) disprefers lower's: the conflict is there to forget
    upper_then = s["scores"]["implicit_accuracy"]["matrix"][1]
    assert upper_then[0] > 0.5 > upper_then[1]
    margin = s["scores"]["implicit_margin"]["matrix"]
    assert margin[1][0] > 0 > margin[1][1]
    assert margin[2][1] > margin[1][1]  # the lower stage moves lower's margin back up
    samples = [json.loads(x) for x in Path("metrics/p/samples.jsonl").read_text().splitlines()]
    assert {(x["stage"], x["task"]) for x in samples} == {
        (a, b) for a in range(3) for b in range(2)
    }
    assert all("baseline_response" in x and "reward" in x for x in samples)
    # the page shows the real run's files: every score's matrix, the reward models
    Path("p.yaml").write_text("kind: plot\nmetrics: metrics\ncheckpoints: checkpoints\n")
    assert main(["run", "p.yaml"]) == 0
    page = Path("plots/index.html").read_text()
    assert "kind-continual-dpo" in page and "Sampled completions" in page
    for name in s["scores"]:
        assert f"p/eval_matrix-{name}.png" in page and f"p/forgetting-{name}.png" in page
    assert "p/reward-models.png" in page
    chance = [t for t, v in rm.items() if v["chance_level"]]
    assert page.count("<p class='missing warning'") == len(chance)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_each_reference_choice_gives_the_reference_it_names(workdir, lora, reference):
    """The implicit reward beta * log(pi / pi_ref) is exactly 0 on a stage's first
    batch when the reference is the policy the stage starts from ("previous"); with
    "initial" it is 0 only in the first stage, and the second stage starts away
    from its reference (task 1's training is in the policy, not in the reference)."""
    s = spec(workdir / "s.yaml", lora__enabled=lora, dpo__reference=reference, save_steps=0,
             dpo__lr=5e-3 if lora else 1e-3)  # fmt: skip
    assert main(["run", str(s)]) == 0
    first, second = stage_firsts("p")
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0
    if reference == "previous":
        assert second["rewards/chosen"] == 0.0 and second["rewards/rejected"] == 0.0
    else:
        assert abs(second["rewards/margins"]) > 1e-3
        assert second["rewards/chosen"] != 0.0
    log = Path("logs/p/train.log").read_text()
    ref_dir = "checkpoints/p/r0-g0" if reference == "previous" else "checkpoints/p/initial"
    assert f"stage r0-g1: reference {ref_dir}" in log


def test_reward_models_are_reused_and_a_second_run_on_one_model_folder_works(workdir, monkeypatch):
    """Two runs from one (read-only in Compose) model folder in one process: the
    second builds its DPO trainers on a fresh PEFT model without tripping on TRL's
    "ref" adapter, leaves the folder untouched, and links the first run's reward
    models (same data, same base) instead of training them again."""
    texts = [r["prompt"] + r[k] for t in style_tasks(["upper", "lower"], 32, 8, 0)
             for r in t.train for k in ("chosen", "rejected")]  # fmt: skip
    folder = build_tiny_model(workdir / "models" / "tiny", texts, vocab_size=300,
                              hidden_size=32, num_layers=1)  # fmt: skip
    before = folder_hash(folder)
    common = dict(model__preset=None, model__name_or_path=str(folder), save_steps=0)
    assert main(["run", str(spec(workdir / "a.yaml", name="a", **common))]) == 0

    from clab.training import reward_models

    def no_training(*a, **k):
        raise AssertionError("the reward model should have been reused")

    from clab.training import dpo

    real_load = dpo.load_policy

    def load_after_other_draws(*a, **k):  # as a warm-up or a tiny build would draw
        torch.rand(7)
        return real_load(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(reward_models, "train_reward_model", no_training)
        m.setattr(dpo, "load_policy", load_after_other_draws)
        assert main(["run", str(spec(workdir / "b.yaml", name="b", **common))]) == 0
    assert folder_hash(folder) == before
    # one model folder, one seed: the same adapter start, whatever was drawn before it
    a0 = Path("checkpoints/a/initial/lora_init.safetensors").read_bytes()
    assert a0 == Path("checkpoints/b/initial/lora_init.safetensors").read_bytes()
    for task in ("upper", "lower"):
        a = Path(f"checkpoints/a/reward-models/{task}")
        b = Path(f"checkpoints/b/reward-models/{task}")
        assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
        assert json.loads((b / "COMPLETE").read_text())["reused_from"] == str(a)
    assert "reward model upper: reused from checkpoints/a" in Path("logs/b/train.log").read_text()
    assert len(read_rows("metrics/b/train.jsonl")) == 8
    # one pair changed: another key, so a model is trained for it, not linked
    from clab.data.preference.tasks import PreferenceTask
    from clab.training.dpo import files_hash

    calls = []
    monkeypatch.setattr(
        reward_models,
        "train_reward_model",
        lambda *a, **k: (
            calls.append(1)
            or {"accuracy": 1.0, "n_test": 1, "interval": [0.2, 1.0], "chance_level": True}
        ),
    )
    (t,) = style_tasks(["upper"], 32, 8, 0)
    t.test[0] = {**t.test[0], "rejected": " other"}
    base = Path("checkpoints/a/initial")
    info = reward_models.ensure_reward_model(
        PreferenceTask("upper", t.train, t.test), base, files_hash(base), Path("checkpoints/c"),
        json.loads(Path("checkpoints/a/reward-models/upper/COMPLETE").read_text())["settings"],
        seed=0, use_gpu=False, bf16=False)  # fmt: skip
    assert calls == [1] and info["reused_from"] is None


def test_a_reward_model_at_chance_level_is_flagged_in_the_log_and_for_the_page(workdir):
    import random

    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]

    def row(i):  # chosen and rejected drawn alike: nothing to learn
        return {"prompt": f"say {i}:", "chosen": " " + rng.choice(words),
                "rejected": " " + rng.choice(words)}  # fmt: skip

    Path("train.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(32)))
    Path("test.jsonl").write_text("".join(json.dumps(row(100 + i)) + "\n" for i in range(8)))
    data = {
        "source": None,
        "datasets": [{"name": "noise", "train": "train.jsonl", "test": "test.jsonl"}],
    }
    assert main(["run", str(spec(workdir / "s.yaml", data=data, save_steps=0))]) == 0
    info = json.loads(Path("metrics/p/reward_models.json").read_text())["tasks"]["noise"]
    assert info["chance_level"] is True and info["interval"][0] <= 0.5
    assert "WARNING: reward model noise is at chance level" in Path("logs/p/train.log").read_text()


def test_the_log_says_whether_a_reward_model_guesses_or_prefers_the_rejected():
    """Both are flagged for the page (chance_level); the log says which: a model whose
    interval lies below 0.5 is not guessing, it scores the task backwards."""
    from clab.training.reward_models import chance_warning

    assert chance_warning("t", (0.62, 0.91)) is None
    assert "t is at chance level" in chance_warning("t", (0.40, 0.71))
    assert "t is at chance level" in chance_warning("t", (0.20, 0.50))
    backwards = chance_warning("t", (0.05, 0.32))
    assert "t prefers the rejected responses" in backwards and "[0.050, 0.320]" in backwards


def test_ewc_fisher_covers_both_tasks_and_a_crash_resumes_to_the_same_numbers(workdir, monkeypatch):
    from trl import DPOTrainer

    ewc = dict(ewc={"lambda": 1000.0, "fisher_samples": 8, "gamma": 1.0})
    assert main(["run", str(spec(workdir / "a.yaml", name="whole", **ewc))]) == 0
    s = spec(workdir / "b.yaml", name="cut", **ewc)
    original, calls = DPOTrainer.training_step, {"n": 0}

    def dies(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # stage 2's third step, after its checkpoint-2
            raise KeyboardInterrupt
        return original(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(DPOTrainer, "training_step", dies)
        assert main(["run", str(s)]) == 130
    assert Path("checkpoints/cut/_resume/r0-g1/checkpoint-2/COMPLETE").is_file()
    assert main(["run", str(s)]) == 0
    assert "resuming stage r0-g1 at its step 2" in Path("logs/cut/train.log").read_text()
    keys = ("loss", "rewards/margins", "ewc_penalty", "weight_change_run")
    whole = read_rows("metrics/whole/train.jsonl")
    cut = read_rows("metrics/cut/train.jsonl")
    assert [r["global_step"] for r in cut] == list(range(1, 9))
    for a, b in zip(whole, cut, strict=True):
        for k in keys:
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["global_step"], k)
    # the penalty acts only after a task has been consolidated, and is logged
    assert all("ewc_penalty" not in r for r in whole[:4])
    assert all(r["ewc_penalty"] >= 0 for r in whole[4:]) and whole[-1]["ewc_penalty"] > 0
    # the Fisher after task 2 is task 1's plus task 2's, on the adapter only
    from safetensors.torch import load_file

    f1 = load_file("checkpoints/whole/r0-g0/ewc.safetensors")
    f2 = load_file("checkpoints/whole/r0-g1/ewc.safetensors")
    fisher1 = {k: v for k, v in f1.items() if k.startswith("fisher.")}
    fisher2 = {k: v for k, v in f2.items() if k.startswith("fisher.")}
    assert fisher1 and set(fisher1) == set(fisher2)
    assert all(".lora_" in k for k in fisher1)
    added = torch.cat([(fisher2[k] - fisher1[k]).flatten() for k in fisher1])
    assert added.min() >= -1e-9 and added.max() > 0  # grew by task 2's, never overwritten
    from safetensors import safe_open

    with safe_open("checkpoints/whole/r0-g1/ewc.safetensors", "pt") as f:
        assert json.loads(f.metadata()["tasks"]) == [0, 1]


def test_ewc_penalty_counts_once_an_optimizer_step_under_gradient_accumulation(workdir):
    """The penalty is added to every micro-batch's loss; transformers divides each
    micro-batch's loss by the accumulation count, so an optimizer step sees it once,
    as without accumulation. Two micro-batches of 4 must then train as one of 8 (the
    DPO loss is a mean over equal micro-batches too), and a doubled lambda must not:
    counted twice, the penalty would act as that doubled lambda."""
    ewc = {"lambda": 1e5, "fisher_samples": 8, "gamma": 1.0}
    common = dict(save_steps=0)
    runs = {
        "one": dict(ewc=ewc),
        "accum": dict(ewc=ewc, dpo__micro_batch_size=4),
        "double": dict(ewc={**ewc, "lambda": 2e5}),
    }
    for name, changes in runs.items():
        assert (
            main(["run", str(spec(workdir / f"{name}.yaml", name=name, **common, **changes))]) == 0
        )
    rows = {n: read_rows(f"metrics/{n}/train.jsonl") for n in runs}
    assert len(rows["accum"]) == len(rows["one"]) == 8  # batch 8 either way: 4 steps a task

    def second_task(run: str, key: str) -> list[float]:
        return [r[key] for r in rows[run][4:]]

    for key in ("loss", "weight_change_run"):
        assert second_task("accum", key) == pytest.approx(second_task("one", key), rel=1e-4)
    # what counting it twice would do: the second task's later losses move by 1% to
    # 10%, where accumulating moved them by about 1e-7
    one, double = second_task("one", "loss"), second_task("double", "loss")
    assert all(abs(d - o) > 0.005 * o for d, o in zip(double[1:], one[1:], strict=True))
    assert abs(double[1] - one[1]) > 0.05 * one[1]


def test_ewc_without_lora_under_gradient_checkpointing_decays_the_earlier_fisher(workdir):
    """Full fine-tuning with activation checkpointing (a memory trade a 1.5B full-weight
    run needs) must give the Fisher, and so the penalty, that the plain run gives:
    the Fisher pass takes gradients through recomputed activations. With gamma 0.5
    the Fisher after task 2 is half task 1's plus task 2's own, on every weight."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    common = dict(
        lora__enabled=False,
        dpo__lr=1e-3,
        save_steps=0,
        ewc={"lambda": 1000.0, "fisher_samples": 8, "gamma": 0.5},
    )
    for name, ckpt in (("plain", False), ("ckpt", True)):
        s = spec(workdir / f"{name}.yaml", name=name, model__gradient_checkpointing=ckpt, **common)
        assert main(["run", str(s)]) == 0
    f = {
        (run, stage): {
            k: v for k, v in load_file(f"checkpoints/{run}/{stage}/ewc.safetensors").items()
            if k.startswith("fisher.")
        }
        for run in ("plain", "ckpt") for stage in ("r0-g0", "r0-g1")
    }  # fmt: skip
    trainable = {n for n, p in load_policy("checkpoints/plain/r0-g0").named_parameters()}
    assert {k.removeprefix("fisher.") for k in f["plain", "r0-g0"]} == trainable  # no adapter
    for key in f["plain", "r0-g1"]:
        for stage in ("r0-g0", "r0-g1"):
            torch.testing.assert_close(f["ckpt", stage][key], f["plain", stage][key],
                                       rtol=1e-3, atol=1e-9)  # fmt: skip
    first, both = f["plain", "r0-g0"], f["plain", "r0-g1"]
    own = torch.cat([(both[k] - 0.5 * first[k]).flatten() for k in first])
    kept = torch.cat([(both[k] - first[k]).flatten() for k in first])
    assert own.min() >= -1e-9 and own.max() > 0  # task 2's own Fisher: a sum of squares
    assert kept.min() < 0  # task 1's was halved, not kept whole (gamma 1 would give >= 0)
    with safe_open("checkpoints/ckpt/r0-g1/ewc.safetensors", "pt") as fh:
        assert json.loads(fh.metadata()["tasks"]) == [0, 1]
    penalties = [r["ewc_penalty"] for r in read_rows("metrics/ckpt/train.jsonl")[4:]]
    assert penalties[-1] > 0
