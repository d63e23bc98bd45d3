"""The replay-mixing trainer: label mask, prompts, data loading and its errors, the
sweep (phase A once, every strategy from it), the loss cache, resume after a kill."""

import json
import os
import shutil
from pathlib import Path

import pytest

from clab.cli import main
from clab.data.sft import tasks as task_data
from clab.data.sft.encoding import PLAIN_SUFFIX, encode_pair, format_prompt
from clab.errors import ClabError
from clab.models.tiny import train_tokenizer
from clab.runs.sweep import run
from clab.specs import load_spec
from clab.tracking.metrics_log import read_rows
from conftest import REPO

TINY = [
    "task_a={name: arith, format: arithmetic, train_size: 40, val_size: 8, epochs: 1,"
    " lr: 3.0e-2, max_new_tokens: 4}",
    "task_b={name: qa, format: context_qa, train_size: 40, val_size: 8, epochs: 1,"
    " lr: 3.0e-2, max_new_tokens: 4}",
    "model={preset: tiny, hidden_size: 32, layers: 1, heads: 2, vocab_size: 400,"
    " gradient_checkpointing: false}",
    "lora={r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj, down_proj]}",
    "training={batch_size: 8, micro_batch: 4, max_length: 128, eval_steps: 2, eval_batch: 8}",
    "joint={epochs: 1, lr: 1.0e-2}",
    "resources.use_gpu=false",
    "wandb=false",
]


def spec_for(workdir: Path, *extra: str):
    (workdir / "services").mkdir(exist_ok=True)
    return load_spec(REPO / "services/mixing-trainer.yaml", [*TINY, "name=mx", *extra])


@pytest.fixture(scope="module")
def tok():
    texts = [e.prompt + " " + e.answer for e in task_data.arithmetic(200, 0)]
    return train_tokenizer(texts, 300)


def test_the_loss_covers_the_answer_and_its_eos_only_token_by_token(tok, workdir):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from clab.training.mixing import MixingTrainer

    trainer = MixingTrainer(spec_for(workdir))
    trainer.tokenizer = tok
    rows = [
        {"prompt": "Compute 1 + 2" + PLAIN_SUFFIX, "answer": "3"},
        {"prompt": "Compute 11 * 12 - 7" + PLAIN_SUFFIX, "answer": "125"},
    ]
    ds = trainer.encode(rows)
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(list(ds))
    for i, r in enumerate(rows):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        a = tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(p) + len(a)
        ids, labels = batch["input_ids"][i].tolist(), batch["labels"][i].tolist()
        assert ids[:n] == p + a
        assert labels[: len(p)] == [-100] * len(p)  # the prompt is not trained
        assert labels[len(p) : n] == a  # the answer is, and so is its EOS (= the pad token)
        assert labels[n:] == [-100] * (len(labels) - n)  # padding is not
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (len(ids) - n)
    # padded to the longest in the batch, not to a fixed length
    assert batch["input_ids"].shape[1] == max(len(x) for x in ds["input_ids"])


def test_prompts_use_the_models_chat_template_when_it_has_one(tok):
    assert format_prompt(tok, "What is 2+2?") == "What is 2+2?" + PLAIN_SUFFIX
    chat = train_tokenizer(["hello world"], 300)
    chat.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    out = format_prompt(chat, "What is 2+2?")
    assert out == "<|user|>What is 2+2?<|endoftext|><|assistant|>"
    ids, n_prompt = encode_pair(chat, out, "4", 64)
    assert ids[n_prompt:] == chat("4", add_special_tokens=False)["input_ids"] + [chat.eos_token_id]


def test_the_demo_qa_data_is_the_same_whatever_packages_are_installed(tmp_path, monkeypatch):
    """Its facts are made of module names: installing pytest-xdist once changed every
    example, and a test's losses with them, between two machines with one lock file."""
    before = task_data.context_qa(64, 1)
    for name in ("aardvark", "zebra", "numpy"):
        (tmp_path / f"{name}.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert task_data.context_qa(64, 1) == before
    assert "json keeps the" in "".join(e.prompt for e in task_data.context_qa(400, 0))


def test_real_data_loaders_carry_levels_by_id_and_name_bad_fields(tmp_path):
    rows = [
        {"problem": "1+1?", "solution": "It is $\\boxed{2}$.", "level": "Level 1", "type": "A"},
        {"problem": "x?", "solution": "$\\boxed{\\frac{1}{2}}$", "level": "Level ?", "type": "A"},
    ]
    f = tmp_path / "math.json"
    f.write_text(json.dumps(rows))
    ex = task_data.competition_math(task_data.read_rows(None, str(f), split="train"), str(f))
    assert [e.level for e in ex] == [1, None]  # "Level ?" is no level, not a guess
    assert [e.final for e in ex] == ["2", "\\frac{1}{2}"]
    assert ex[0].id != ex[1].id and ex[0].id == task_data.competition_math(rows[:1], "x")[0].id
    with pytest.raises(ClabError, match=r"math.json: row 0 has no field 'level'"):
        task_data.competition_math([{"problem": "p", "solution": "s"}], str(f))
    with pytest.raises(ClabError, match=r"row 1 has no usable field 'solution'"):
        task_data.competition_math([rows[0], {"problem": "p", "level": 2}], str(f))
    with pytest.raises(ClabError, match=r"nothing\.json: data file not found"):
        task_data.read_rows(None, str(tmp_path / "nothing.json"), split="train")

    official = {"_id": "q1", "question": "Who?", "answer": "Ann",
                "context": [["T1", ["Ann is here.", " Bob too."]], ["T2", ["Far."]]]}  # fmt: skip
    hub = {**official, "id": "q1", "context": {"title": ["T1", "T2"],
           "sentences": [["Ann is here.", " Bob too."], ["Far."]]}}  # fmt: skip
    a, b = task_data.hotpotqa([official], "o"), task_data.hotpotqa([hub], "h")
    assert a[0].prompt == b[0].prompt and "T1: Ann is here. Bob too.\nT2: Far." in a[0].prompt
    assert a[0].id == b[0].id == "q1"
    with pytest.raises(ClabError, match="row 0 field 'context' is not HotpotQA"):
        task_data.hotpotqa([{**official, "context": "flat text"}], "o")


def test_bad_input_exits_2_naming_the_file_and_field_and_writes_nothing(workdir, capsys):
    (workdir / "services").mkdir()
    bad = workdir / "data" / "math.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps([{"problem": "p", "solution": "s"}]))
    spec = workdir / "mx.yaml"
    spec.write_text((REPO / "services/mixing-trainer.yaml").read_text())
    args = ["run", str(spec), *[x for s in TINY for x in ("--set", s)]]
    code = main(
        [*args, "--set", "task_a={name: math, format: competition_math, path: data/math.json}"]
    )
    assert code == 2
    assert "data/math.json: row 0 has no field 'level'" in capsys.readouterr().err
    code = main(
        [*args, "--set", "task_a={name: math, format: competition_math, path: data/no.json}"]
    )
    assert code == 2 and "data/no.json: data file not found" in capsys.readouterr().err
    assert not (workdir / "checkpoints" / "mix-phase-a" / "initial").exists()


def _val(metrics: Path) -> dict:
    return {r["task"]: r["answer_loss"] for r in read_rows(metrics / "val.jsonl")}


def test_the_sweep_trains_phase_a_once_and_every_strategy_from_it(workdir):
    spec = spec_for(workdir, "strategies=[loss_descending, none, joint]", "mix.fraction=0.25")
    run(spec)
    ck, me = Path("checkpoints"), Path("metrics")
    a = ck / "mx-phase-a" / "r0-g0" / "adapter_model.safetensors"
    for s in ("loss_descending", "none"):  # the same file, not a retrained copy
        assert os.path.samefile(a, ck / f"mx-{s}" / "r0-g0" / "adapter_model.safetensors")
        assert (ck / f"mx-{s}" / "r0-g1" / "COMPLETE").is_file()
    # phase A learned task A; B without replay learned B and raised A's loss
    start = json.loads((ck / "mx-phase-a" / "initial" / "COMPLETE").read_text())
    after_a, after_b = _val(me / "mx-phase-a"), _val(me / "mx-none")
    assert after_a["arith"] < start["validation_at_start"]["arith"]
    assert after_b["qa"] < after_a["qa"]
    # loss_descending replayed the 10 (0.25 x 40) examples phase A found hardest
    replay = json.loads((me / "mx-loss_descending" / "replay.json").read_text())
    cache = json.loads((ck / "mx-phase-a" / "replay-losses.json").read_text())
    hardest = sorted(cache["losses"], key=cache["losses"].get, reverse=True)[:10]
    assert replay["chosen"] == 10 and set(replay["ids"]) == set(hardest)
    # joint trained A and B in its first stage from the initial model, nothing after
    j0 = ck / "mx-joint" / "r0-g0" / "adapter_model.safetensors"
    assert not os.path.samefile(a, j0)
    assert j0.read_bytes() == (ck / "mx-joint" / "r0-g1" / "adapter_model.safetensors").read_bytes()
    # the public experiment's history schema, steps over both phases, no repeats
    h = json.loads((me / "mx-none" / "history.json").read_text())
    assert {"steps", "arith_loss", "qa_loss", "selection_method", "mix_percentage", "name"} <= set(
        h
    )
    assert h["selection_method"] == "none" and h["name"] == "mx-none" and h["mix_percentage"] == 0
    assert h["steps"][0] == 0 and h["steps"] == sorted(set(h["steps"]))
    assert h["phase_b_start"] == 5 and h["steps"][-1] == 10  # 40 / 8 steps per phase
    # every measured point, the one just before a stage's last step too (the runner
    # holds a step's row until the next arrives: the history once missed step 9)
    measured = [r["global_step"] for r in read_rows(me / "mx-none" / "train.jsonl")
                if "val_qa_loss" in r]  # fmt: skip
    assert h["steps"] == [0, *measured] and 9 in measured
    joint = json.loads((me / "mx-joint" / "history.json").read_text())
    assert joint["mix_percentage"] == 0  # A and B together: nothing is replayed
    assert len(h["arith_loss"]) == len(h["qa_loss"]) == len(h["steps"])
    assert h["arith_loss"][-1] == pytest.approx(after_b["arith"], rel=1e-5)
    # the evaluator reads each branch as a run: initial, after A, after B
    info = json.loads((ck / "mx-none" / "run.json").read_text())
    assert [t["name"] for t in info["tasks"]] == ["arith", "qa"]
    # the page's sweep figures: forgetting of A per strategy against none and joint
    from clab.plotting.mixing import plot_sweep, sweep_table

    branches = {b: me / f"mx-{b}" for b in ("phase-a", "loss_descending", "none", "joint")}
    table = {r["strategy"]: r for r in sweep_table(branches)}
    assert set(table) == {"loss_descending", "none", "joint"}
    assert table["none"]["forgetting_a"] == pytest.approx(after_b["arith"] - after_a["arith"])
    figs = plot_sweep("mx", {0: branches}, Path("plots"))
    assert [f.name for f in figs] == ["mx_losses.png", "mx_forgetting.png"]
    assert all(f.stat().st_size > 10_000 for f in figs)
    # the evaluator: each branch a run (initial, after A, after B x A, B); stages shared
    # with phase A (hard links) are scored once, not once per branch
    from clab.evaluation import evaluator
    from clab.evaluation.scorers import registry

    calls = []
    real = registry.SCORERS["answer_loss"]
    with registry.SCORERS.replaced("answer_loss", lambda *a: calls.append(a[0].dir) or real(*a)):
        evaluator.EvaluateSpec(test_size=4, use_gpu=False, batch_size=8).run()
    ev = evaluator.read_eval(me / "mx-none" / "eval.parquet")
    assert {(r["stage"], r["task_name"]) for r in ev} == {
        (s, t) for s in (0, 1, 2) for t in ("arith", "qa")
    }
    assert {r["metric"] for r in ev} == {"answer_loss", "exact_match"}
    # phase A's two stages x two tasks once, B's stage of two strategies, joint's two
    assert len(calls) == 2 * 2 + 2 * 2 + 2 * 2
    # a rerun finds everything done and trains nothing
    before = (me / "mx-none" / "train.jsonl").read_text()
    run(spec)
    assert (me / "mx-none" / "train.jsonl").read_text() == before


def test_the_adapter_trains_with_the_specs_lora_dropout_and_nothing_else_drops(workdir):
    """lora.dropout (0.05 in the service, as the public run) acts while training; the
    base model's dropouts stay 0. Loading once zeroed the adapter's too."""
    import torch

    from clab.training.mixing import MixingTrainer

    spec = spec_for(workdir, "lora={r: 4, alpha: 8, dropout: 0.3, target_modules: [q_proj]}")
    t = MixingTrainer(spec.branch_spec("phase-a"))
    init = Path("checkpoints/mx-phase-a/initial")
    init.mkdir(parents=True)
    t.build_initial(init, workdir / "work")
    t.load(init, init)  # what the runner does before every stage
    drops = {n: m.p for n, m in t.model.named_modules() if isinstance(m, torch.nn.Dropout)}
    lora = {n: p for n, p in drops.items() if "lora_dropout" in n}
    assert lora and set(lora.values()) == {0.3}
    assert all(p == 0 for n, p in drops.items() if n not in lora)


def test_the_loss_cache_is_recomputed_when_phase_a_changes(workdir, capsys):
    from clab.training.mixing import MixingTrainer

    spec = spec_for(workdir, "strategies=[loss_ascending]")
    run(spec)
    cache = Path("checkpoints/mx-phase-a/replay-losses.json")
    first = json.loads(cache.read_text())
    t = MixingTrainer(spec.branch_spec("loss_ascending"))
    t.load(Path("checkpoints/mx-phase-a/r0-g0"), Path("checkpoints/mx-phase-a/initial"))
    rows = t._rows(0, "train")
    capsys.readouterr()
    assert t.example_losses(rows) == first["losses"]
    assert "reused" in capsys.readouterr().out
    # another adapter (the initial one) has other bytes: recomputed, never reused
    t.phase_a_dir = Path("checkpoints/mx-phase-a")
    (t.phase_a_dir / "r0-g0" / "adapter_model.safetensors").unlink()

    shutil.copy(t.phase_a_dir / "initial" / "adapter_model.safetensors", t.phase_a_dir / "r0-g0")
    # the model in memory still holds the trained adapter: losses computed with it would
    # be stored under the new file's key, so the trainer refuses (nothing is written)
    from clab.errors import ClabError

    with pytest.raises(ClabError, match="the model loaded is not phase A's adapter"):
        t.example_losses(rows)
    assert json.loads(cache.read_text())["key"] == first["key"]
    t.load(Path("checkpoints/mx-phase-a/r0-g0"), Path("checkpoints/mx-phase-a/initial"))
    capsys.readouterr()
    t.example_losses(rows)
    assert "reused" not in capsys.readouterr().out
    assert json.loads(cache.read_text())["key"] != first["key"]


def test_a_strategy_killed_mid_stage_resumes_to_the_same_numbers(workdir, monkeypatch):
    from clab.training import mixing

    spec = spec_for(workdir, "strategies=[random]", "save_steps=2",
                    "task_b.epochs=2")  # fmt: skip
    run(spec)
    whole = Path("metrics/mx-random")
    expect_val, expect_rows = _val(whole), read_rows(whole / "train.jsonl")
    os.rename("checkpoints", "checkpoints.whole")
    os.rename("metrics", "metrics.whole")

    real = mixing.History.on_step_end

    def dies(self, args, state, control, **kw):
        real(self, args, state, control, **kw)
        if self.t.spec.branch == "random" and state.global_step == 5:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(mixing.History, "on_step_end", dies)
    with pytest.raises(KeyboardInterrupt):
        run(spec)
    assert list(Path("checkpoints/mx-random/_resume/r0-g1").glob("checkpoint-4"))
    monkeypatch.setattr(mixing.History, "on_step_end", real)
    run(spec)
    got = read_rows(Path("metrics/mx-random/train.jsonl"))
    assert [r["global_step"] for r in got] == [r["global_step"] for r in expect_rows]
    for k in ("loss", "val_arith_loss", "val_qa_loss"):
        a = {r["global_step"]: r[k] for r in got if k in r}
        b = {r["global_step"]: r[k] for r in expect_rows if k in r}
        assert a.keys() == b.keys() and a, k
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6), k
    assert _val(Path("metrics/mx-random")) == pytest.approx(expect_val, rel=1e-5)
    h = json.loads(Path("metrics/mx-random/history.json").read_text())
    assert h["steps"] == sorted(set(h["steps"]))
    whole_h = json.loads(Path("metrics.whole/mx-random/history.json").read_text())
    assert h["steps"] == whole_h["steps"]
    assert h["qa_loss"] == pytest.approx(whole_h["qa_loss"], rel=1e-4)


def test_reset_optimizer_false_carries_phase_as_adam_state_into_b(workdir):
    """The public experiment builds a new optimizer for B (the default). With
    ``reset_optimizer: false`` B must continue A's AdamW: its step count goes on from
    A's and its first update reads A's moments, so B's numbers differ from the reset
    run's from B's first step on (A's are shared, one phase-A run each)."""
    import torch

    def b_state(name: str, reset: str) -> tuple[int, int, list[dict]]:
        run(spec_for(workdir, "strategies=[none]", f"name={name}", f"reset_optimizer={reset}"))
        ck = Path("checkpoints")
        steps = []
        for stage in ("r0-g0", "r0-g1"):
            saved = torch.load(ck / f"{name}-none" / stage / "optimizer.pt", weights_only=False)
            steps.append(int(next(iter(saved["state"].values()))["step"]))
        return steps[0], steps[1], read_rows(f"metrics/{name}-none/train.jsonl")

    a_reset, b_reset, rows_reset = b_state("mr", "true")
    a_kept, b_kept, rows_kept = b_state("mk", "false")
    assert a_reset == a_kept == 5  # 40 examples, batch 8
    assert b_reset == 5 and b_kept == a_kept + b_reset  # B's 40: AdamW counts on from A
    first_b = [
        [r["loss"] for r in rows if r["global_step"] in (6, 7) and "loss" in r]
        for rows in (rows_reset, rows_kept)
    ]
    # B's first loss is taken before its first update, from the model A left: the same
    assert first_b[0][0] == pytest.approx(first_b[1][0], rel=1e-6)
    assert first_b[0][1] != pytest.approx(first_b[1][1], rel=1e-4)  # after it: A's moments
