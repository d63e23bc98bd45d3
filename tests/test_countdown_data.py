import json
from itertools import pairwise
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clab.cli import main
from clab.data.countdown import GROUP_OPS
from clab.data.countdown.reading import read_group
from clab.data.countdown.schema import SCHEMA
from clab.rewards.countdown import score_countdown
from clab.storage.atomic import sha256_file
from conftest import REPO, brute_force_solvable

SPEC = str(REPO / "services" / "data-generator.yaml")
SMALL = ["--set", "train_size=300", "--set", "test_size=40"]


def generate(*extra: str) -> int:
    return main(["run", SPEC, *SMALL, *extra])


def rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "continual"
    assert generate("--set", f"output={out}", "--set", "workers=2") == 0
    return out


def test_layout_schema_and_sizes(dataset):
    for g in range(4):
        for split, n in (("train", 300), ("test", 40)):
            t = pq.read_table(dataset / str(g) / f"{split}.parquet")
            assert t.schema.equals(SCHEMA)
            assert t.num_rows == n


def test_rows_follow_the_tinyzero_verl_schema(dataset):
    for g in range(4):
        for r in rows(dataset / str(g) / "train.parquet")[:20]:
            assert r["data_source"] == "countdown" and r["ability"] == "math"
            assert len(r["prompt"]) == 1 and r["prompt"][0]["role"] == "user"
            gt = r["reward_model"]["ground_truth"]
            assert r["reward_model"]["style"] == "rule"
            assert gt == {"target": r["target"], "numbers": r["nums"]}
            info = r["extra_info"]
            assert info["split"] == "train" and info["group"] == g
            assert tuple(info["allowed_ops"]) == GROUP_OPS[g]
    indices = [r["extra_info"]["index"] for r in rows(dataset / "2" / "test.parquet")]
    assert indices == list(range(40))


def test_reference_solutions_score_one_with_group_ops_and_newest_op(dataset):
    for g in range(4):
        for split in ("train", "test"):
            for r in rows(dataset / str(g) / f"{split}.parquet"):
                sol = r["extra_info"]["solution"]
                res = score_countdown(
                    f"<answer>{sol}</answer>",
                    r["target"],
                    r["nums"],
                    r["extra_info"]["allowed_ops"],
                )
                assert res.correct, (r, res)
                assert GROUP_OPS[g][-1] in sol
                assert 3 <= len(r["nums"]) <= 4 and all(1 <= x <= 100 for x in r["nums"])
                assert r["target"] >= 1


def test_prompt_names_only_the_group_operators(dataset):
    for g in range(4):
        text = rows(dataset / str(g) / "test.parquet")[0]["prompt"][0]["content"]
        listed = text.split("arithmetic operations (")[1].split(")")[0]
        assert listed == ", ".join(GROUP_OPS[g])
        example = text.split("for example <answer>")[1].split("</answer>")[0]
        assert set(example) - set("0123456789() ") <= set(GROUP_OPS[g])
        assert text.endswith("Assistant: Let me solve this step by step.\n<think>")


def test_no_problem_repeats_within_or_across_splits_and_groups(dataset):
    keys = []
    for g in range(4):
        for split in ("train", "test"):
            keys += [
                (tuple(sorted(r["nums"])), r["target"])
                for r in rows(dataset / str(g) / f"{split}.parquet")
            ]
    assert len(keys) == len(set(keys)) == 4 * 340


def test_groups_differ_from_each_other(dataset):
    firsts = [rows(dataset / str(g) / "train.parquet")[0]["nums"] for g in range(4)]
    assert len({tuple(f) for f in firsts}) == 4


def test_manifest_records_spec_counts_and_hashes(dataset):
    m = json.loads((dataset / "manifest.json").read_text())
    assert m["kind"] == "countdown" and m["seed"] == 0 and m["clab_version"]
    assert m["spec"]["train_size"] == 300
    assert set(m["files"]) == {f"{g}/{s}.parquet" for g in range(4) for s in ("train", "test")}
    for rel, info in m["files"].items():
        assert info["sha256"] == sha256_file(dataset / rel)
    assert m["rows"]["3/test"] == 40


def test_same_seed_same_bytes_whatever_the_workers(dataset, tmp_path):
    other = tmp_path / "one-worker"
    assert generate("--set", f"output={other}", "--set", "workers=1") == 0
    for g in range(4):
        for split in ("train", "test"):
            rel = f"{g}/{split}.parquet"
            assert (other / rel).read_bytes() == (dataset / rel).read_bytes()


def test_another_seed_gives_other_problems(dataset, tmp_path):
    other = tmp_path / "seed1"
    assert generate("--set", f"output={other}", "--set", "seed=1") == 0
    assert (
        rows(other / "0/train.parquet")[0]["nums"] != rows(dataset / "0/train.parquet")[0]["nums"]
    )


def test_strict_groups_cannot_be_solved_with_the_previous_operators(tmp_path):
    out = tmp_path / "strict"
    assert (
        main(
            [
                "run",
                SPEC,
                "--set",
                "train_size=60",
                "--set",
                "test_size=20",
                "--set",
                "strict=true",
                "--set",
                f"output={out}",
            ]
        )
        == 0
    )
    for g in (1, 2, 3):
        for split in ("train", "test"):
            for r in rows(out / str(g) / f"{split}.parquet"):
                assert not brute_force_solvable(r["nums"], r["target"], GROUP_OPS[g - 1]), r
                assert brute_force_solvable(r["nums"], r["target"], GROUP_OPS[g])


def test_non_strict_data_does_contain_problems_solvable_with_fewer_ops(dataset):
    # Guards the test above against passing vacuously.
    found = sum(
        brute_force_solvable(r["nums"], r["target"], GROUP_OPS[2])
        for r in rows(dataset / "3" / "test.parquet")
    )
    assert found > 0


def test_qwen_instruct_template(tmp_path):
    out = tmp_path / "qwen"
    assert generate("--set", f"output={out}", "--set", "template=qwen-instruct") == 0
    text = rows(out / "1/test.parquet")[0]["prompt"][0]["content"]
    assert text.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\n Using the numbers" in text  # TinyZero's space
    assert text.endswith("<|im_start|>assistant\nLet me solve this step by step.\n<think>")
    assert "(+, -)" in text


def test_impossible_ranges_fail_clearly(tmp_path, capsys):
    code = main(
        [
            "run",
            SPEC,
            "--set",
            "train_size=500",
            "--set",
            "test_size=10",
            "--set",
            "ranges.number=[1,2]",
            "--set",
            "ranges.count=[3,3]",
            "--set",
            f"output={tmp_path / 'x'}",
        ]
    )
    assert code == 2
    assert "distinct problems" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def sizes(path: Path) -> list[int]:
    return [len(n) for n in pq.read_table(path, columns=["nums"]).column("nums").to_pylist()]


def test_each_test_set_holds_both_counts_in_its_training_sets_proportion(dataset):
    for g in range(4):
        train, test = sizes(dataset / f"{g}/train.parquet"), sizes(dataset / f"{g}/test.parquet")
        for n in (3, 4):
            share = train.count(n) / len(train)
            assert 0.2 < share < 0.8, (g, n, share)  # both counts are common in training
            # Stratified by largest remainder: within one row of the exact share.
            assert abs(test.count(n) - share * len(test)) < 1, (g, n, test.count(n), share)


def test_rows_are_not_in_blocks(dataset):
    for g in range(4):
        for split in ("train", "test"):
            s = sizes(dataset / f"{g}/{split}.parquet")
            first, last = s[: len(s) // 4], s[-len(s) // 4 :]
            assert {3, 4} <= set(first) and {3, 4} <= set(last), (g, split)
            switches = sum(a != b for a, b in pairwise(s))
            assert switches > len(s) / 4, (g, split, switches)  # random order: about len/2


def test_a_capped_read_is_a_seeded_random_subset_with_the_same_mix(dataset):
    full = read_group(dataset, 1, "train")
    capped = read_group(dataset, 1, "train", 100)
    assert len(capped) == 100
    assert set(p.prompt for p in capped) <= set(p.prompt for p in full)
    assert [p.prompt for p in capped] != [p.prompt for p in full[:100]]
    share = sum(len(p.nums) == 4 for p in full) / len(full)
    assert abs(sum(len(p.nums) == 4 for p in capped) - 100 * share) < 1
    assert read_group(dataset, 1, "train", 100) == capped
    assert read_group(dataset, 1, "train", 100, seed=1) != capped
    assert read_group(dataset, 1, "train", 10_000) == full


def test_prompts_are_tinyzeros_byte_for_byte_for_all_four_operators():
    """TinyZero's make_prefix (examples/data_preprocess/countdown.py) with its numbers
    [3, 5, 7, 11] and target 42: our group 3 (all four operators) must equal it."""
    import numpy as np

    from clab.data.countdown import GROUP_OPS
    from clab.data.countdown.prompts import render_prompt

    q = ("Using the numbers [3, 5, 7, 11], create an equation that equals 42. You can use basic "
         "arithmetic operations (+, -, *, /) and each number can only be used once. Show your "
         "work in <think> </think> tags. And return the final answer in <answer> </answer> "
         "tags, for example <answer> (1 + 2) / 3 </answer>.")  # fmt: skip
    base = ("A conversation between User and Assistant. The user asks a question, and the "
            "Assistant solves it. The assistant first thinks about the reasoning process in the "
            "mind and then provides the user with the answer.\nUser: " + q
            + "\nAssistant: Let me solve this step by step.\n<think>")  # fmt: skip
    instruct = ("<|im_start|>system\nYou are a helpful assistant. You first thinks about the "
                "reasoning process in the mind and then provides the user with the answer."
                "<|im_end|>\n<|im_start|>user\n " + q + "<|im_end|>\n<|im_start|>assistant\n"
                "Let me solve this step by step.\n<think>")  # fmt: skip
    assert render_prompt([3, 5, 7, 11], 42, GROUP_OPS[3], "base") == base
    assert render_prompt([3, 5, 7, 11], 42, GROUP_OPS[3], "qwen-instruct") == instruct
    # numbers from numpy print as plain ints, not np.int64(3)
    assert render_prompt(np.array([3, 5, 7, 11]), 42, GROUP_OPS[3]) == base
