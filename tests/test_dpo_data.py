"""Preference data for the continual DPO trainer: the formats it reads and the
mistakes it refuses (exit 2, naming the task and the field), before anything
is written."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clab.cli import main
from clab.data.preference.builtin import style_tasks
from clab.data.preference.tasks import PreferenceTask
from clab.specs import load_spec
from clab.training.dpo import load_tasks


def pair(i: int, tag: str = "") -> dict:
    return {"prompt": f"q{i}{tag}:", "chosen": f" good {i}", "rejected": f" bad {i}"}


def aif(path: Path, datasets: list[dict]) -> Path:
    path.write_text(json.dumps({"datasets": datasets}))
    return path


def spec_file(path: Path, data: dict) -> Path:
    path.write_text(
        json.dumps(
            {
                "kind": "continual-dpo",
                "name": "d",
                "data": data,
                "model": {"preset": "tiny", "name_or_path": None},
            }
        )
    )
    return path


def run(path: Path, capsys) -> tuple[int, str]:
    code = main(["run", str(path)])
    return code, capsys.readouterr().err


def test_aif_gen_file_gives_one_task_per_dataset_named_by_domain(workdir):
    f = aif(
        workdir / "c.json",
        [
            {"task": {"domain": "Education / K-12", "objective": "x"},
             "train": [pair(i) for i in range(5)], "test": [pair(i, "t") for i in range(2)]},
            {"task": {}, "train": [pair(i, "b") for i in range(3)], "test": [pair(9, "bt")]},
        ],
    )  # fmt: skip
    tasks = load_tasks(load_spec(spec_file(workdir / "s.json", {"source": str(f)})))
    assert [t.name for t in tasks] == ["t0-education-k-12", "t1"]
    assert [len(t.train) for t in tasks] == [5, 3] and tasks[0].info["task"]["objective"] == "x"


def test_a_test_split_that_repeats_the_train_split_exits_2_naming_the_task(workdir, capsys):
    rows = [pair(i) for i in range(4)]
    f = aif(workdir / "c.json", [{"task": {"domain": "debug"}, "train": rows, "test": rows}])
    code, err = run(spec_file(workdir / "s.json", {"source": str(f)}), capsys)
    assert code == 2
    assert "t0-debug" in err and "4 of its 4 test pairs (the whole test split)" in err
    assert not Path("checkpoints/d").exists()  # refused before anything was written


def test_a_row_without_a_field_exits_2_naming_task_split_row_and_field(workdir, capsys):
    bad = [pair(0), {"prompt": "q", "chosen": " a"}]
    f = aif(workdir / "c.json", [{"task": {}, "train": bad, "test": [pair(5)]}])
    code, err = run(spec_file(workdir / "s.json", {"source": str(f)}), capsys)
    assert code == 2 and "task 't0': train row 1 lacks the field 'rejected'" in err


def test_conversational_rows_are_refused_not_silently_templated(workdir, capsys):
    conv = {"prompt": [{"role": "user", "content": "hi"}], "chosen": " a", "rejected": " b"}
    pq.write_table(pa.Table.from_pylist([conv]), workdir / "train.parquet")
    Path("test.jsonl").write_text(json.dumps(pair(1)) + "\n")
    data = {
        "source": None,
        "datasets": [{"name": "c", "train": "train.parquet", "test": "test.jsonl"}],
    }
    code, err = run(spec_file(workdir / "s.json", data), capsys)
    assert code == 2 and "task 'c': train row 0, field 'prompt' is a list, not a string" in err


def test_a_list_of_local_data_sets_in_parquet_json_and_jsonl(workdir):
    pq.write_table(pa.Table.from_pylist([pair(i) for i in range(3)]), workdir / "a.parquet")
    Path("a-test.json").write_text(json.dumps([pair(7)]))
    Path("b.jsonl").write_text("".join(json.dumps(pair(i, "b")) + "\n" for i in range(2)))
    Path("b-test.jsonl").write_text(json.dumps(pair(8)) + "\n")
    data = {
        "source": None,
        "datasets": [
            {"name": "a", "train": "a.parquet", "test": "a-test.json"},
            {"name": "b", "train": "b.jsonl", "test": "b-test.jsonl"},
        ],
    }
    spec = load_spec(spec_file(workdir / "s.json", data))
    tasks = load_tasks(spec)
    assert [(t.name, len(t.train), len(t.test)) for t in tasks] == [("a", 3, 1), ("b", 2, 1)]
    assert spec.reads() == [
        Path(p) for p in ("a.parquet", "a-test.json", "b.jsonl", "b-test.jsonl")
    ]


def test_a_bad_line_of_a_jsonl_split_exits_2_naming_the_line(workdir, capsys):
    lines = [json.dumps(pair(i)) for i in range(4)]
    lines[2] = lines[2][:-5]  # cut off
    Path("a.jsonl").write_text("\n".join(lines) + "\n")
    Path("a-test.jsonl").write_text(json.dumps(pair(8)) + "\n")
    data = {"source": None, "datasets": [{"name": "a", "train": "a.jsonl", "test": "a-test.jsonl"}]}
    code, err = run(spec_file(workdir / "s.json", data), capsys)
    assert code == 2 and "a.jsonl, line 3, column" in err and "not JSON" in err, err


def test_missing_file_and_both_sources_are_refused(workdir, capsys):
    data = {"source": None, "datasets": [{"name": "a", "train": "nope.parquet", "test": "x.json"}]}
    code, err = run(spec_file(workdir / "s.json", data), capsys)
    assert code == 2 and "nope.parquet: no such file" in err
    both = {"source": "builtin:styles", "datasets": [{"name": "a", "train": "a", "test": "b"}]}
    code, err = run(spec_file(workdir / "t.json", both), capsys)
    assert code == 2 and "exactly one of data.source and data.datasets" in err


def test_builtin_styles_conflict_on_case_and_never_test_on_a_training_prompt():
    up, low, commas = style_tasks(None, 200, 30, seed=0)
    r = up.train[0]
    assert r["chosen"] == r["chosen"].upper() and r["rejected"] == r["rejected"].lower()
    assert r["prompt"].startswith("copy: ") and r["chosen"].strip().lower() == r["rejected"].strip()
    # lower prefers exactly what upper rejects: a direct conflict on the same prompts
    assert all(x["chosen"] == x["chosen"].lower() and x["rejected"].isupper() for x in low.train)
    assert all("," in x["chosen"] and ";" in x["rejected"] for x in commas.train)
    tests = {x["prompt"] for t in (up, low, commas) for x in t.test}
    assert not tests & {x["prompt"] for t in (up, low, commas) for x in t.train}
    again = style_tasks(None, 200, 30, seed=0)
    assert [t.data_hash() for t in again] == [t.data_hash() for t in (up, low, commas)]
    assert style_tasks(None, 200, 30, seed=1)[0].data_hash() != up.data_hash()


def test_the_data_hash_changes_with_any_pair():
    a = PreferenceTask("a", [pair(0)], [pair(1)])
    b = PreferenceTask("a", [pair(0)], [{**pair(1), "rejected": " other"}])
    assert a.data_hash() != b.data_hash()


@pytest.mark.parametrize("cut", [{"max_train_rows": 2}, {"max_test_rows": 1}])
def test_row_caps_keep_the_first_rows(workdir, cut):
    f = aif(workdir / "c.json", [{"task": {}, "train": [pair(i) for i in range(4)],
                                  "test": [pair(i, "t") for i in range(3)]}])  # fmt: skip
    (t,) = load_tasks(load_spec(spec_file(workdir / "s.json", {"source": str(f), **cut})))
    assert t.train == [pair(i) for i in range(cut.get("max_train_rows", 4))]
    assert len(t.test) == cut.get("max_test_rows", 3)


def test_the_checks_read_every_row_not_only_the_rows_a_cap_keeps(workdir, capsys):
    """A capped run (a quick try on a large file) must not hide a broken file: a row
    beyond the cap that lacks a field, or a test pair that repeats a training pair,
    exits 2 naming it, as the uncapped run would (docs/services.md)."""
    rows = [pair(i) for i in range(4)] + [{"prompt": "q", "chosen": " a"}]
    f = aif(workdir / "c.json", [{"task": {}, "train": rows, "test": [pair(9, "t")]}])
    code, err = run(spec_file(workdir / "s.json", {"source": str(f), "max_train_rows": 2}), capsys)
    assert code == 2 and "task 't0': train row 4 lacks the field 'rejected'" in err
    leak = [pair(i) for i in range(4)]
    f = aif(workdir / "l.json", [{"task": {}, "train": leak, "test": [pair(9, "t"), pair(3)]}])
    cut = {"source": str(f), "max_train_rows": 2, "max_test_rows": 1}
    code, err = run(spec_file(workdir / "l.yaml", cut), capsys)
    assert code == 2 and "1 of its 2 test pairs repeat" in err
