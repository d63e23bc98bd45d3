import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clab.cli import main
from clab.data.countdown import ALL_OPS
from clab.data.countdown.schema import SCHEMA
from clab.rewards.countdown import score_countdown
from conftest import REPO

SPEC = str(REPO / "services" / "tinyzero-dummy-generator.yaml")


def run(*sets: str) -> int:
    args = ["run", SPEC]
    for s in sets:
        args += ["--set", s]
    return main(args)


def keys(path: Path) -> list[tuple]:
    t = pq.read_table(path, columns=["nums", "target"]).to_pylist()
    return [(tuple(sorted(r["nums"])), r["target"]) for r in t]


def tinyzero_pool(path: Path, n: int, dup_every: int = 0) -> None:
    """A pool as TinyZero writes it: no solution, no group, its own prompt text."""
    nums = [[i % 97 + 1, i // 97 + 1, 7] for i in range(n)]
    if dup_every:
        nums = [nums[i - 1] if i % dup_every == 0 and i else x for i, x in enumerate(nums)]
    table = pa.table(
        {
            "target": pa.array([sum(x) for x in nums], pa.int64()),
            "nums": pa.array(nums, pa.list_(pa.int64())),
            "data_source": ["countdown"] * n,
            "extra_info": pa.array([{"split": "train", "index": i} for i in range(n)]),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_generates_pool_when_missing_and_splits_it_disjointly(workdir):
    assert run("train_size=200", "test_size=30") == 0
    pool = workdir / "data/tinyzero/train.parquet"
    assert pool.is_file() and (workdir / "data/tinyzero/train.manifest.json").is_file()
    out = workdir / "data/dummy_tinyzero"
    all_keys = []
    for g in range(4):
        for split, n in (("train", 200), ("test", 30)):
            t = pq.read_table(out / str(g) / f"{split}.parquet")
            assert t.schema.equals(SCHEMA) and t.num_rows == n
            all_keys += keys(out / str(g) / f"{split}.parquet")
            for r in t.to_pylist()[:25]:
                assert r["extra_info"]["group"] == g and r["extra_info"]["split"] == split
                assert tuple(r["extra_info"]["allowed_ops"]) == ALL_OPS
                assert "(+, -, *, /)" in r["prompt"][0]["content"]
                sol = r["extra_info"]["solution"]
                assert score_countdown(f"<answer>{sol}</answer>", r["target"], r["nums"]).correct
    assert len(set(all_keys)) == len(all_keys) == 4 * 230
    assert set(all_keys) <= set(keys(pool))
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "countdown-random-split" and m["rows"]["0/train"] == 200


def test_groups_are_random_not_by_operator(workdir):
    assert run("train_size=400", "test_size=10") == 0
    for g in range(4):
        sols = (
            pq.read_table(workdir / f"data/dummy_tinyzero/{g}/train.parquet")
            .column("extra_info")
            .to_pylist()
        )
        has_div = sum("/" in r["solution"] for r in sols)
        assert 0 < has_div < 400  # every group mixes operators


def test_uses_a_given_tinyzero_pool_and_drops_duplicates(workdir):
    tinyzero_pool(workdir / "pool.parquet", 300, dup_every=10)
    assert run("source=pool.parquet", "train_size=50", "test_size=5") == 0
    out = workdir / "data/dummy_tinyzero"
    all_keys = [
        k for g in range(4) for s in ("train", "test") for k in keys(out / str(g) / f"{s}.parquet")
    ]
    assert len(set(all_keys)) == len(all_keys) == 220
    r = pq.read_table(out / "0/train.parquet").to_pylist()[0]
    assert r["extra_info"]["solution"] is None
    assert "Using the numbers" in r["prompt"][0]["content"]
    # The rebuilt prompt is one our reward parses: a correct answer scores 1.
    a, b, c = r["nums"]
    assert score_countdown(f"<answer>{a} + {b} + {c}</answer>", r["target"], r["nums"]).correct


def test_same_seed_same_split(workdir):
    tinyzero_pool(workdir / "pool.parquet", 300)
    assert run("source=pool.parquet", "train_size=50", "test_size=5", "output=a") == 0
    assert run("source=pool.parquet", "train_size=50", "test_size=5", "output=b") == 0
    assert run("source=pool.parquet", "train_size=50", "test_size=5", "output=c", "seed=3") == 0
    assert (workdir / "a/2/train.parquet").read_bytes() == (
        workdir / "b/2/train.parquet"
    ).read_bytes()
    assert keys(workdir / "a/2/train.parquet") != keys(workdir / "c/2/train.parquet")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "does not exist"),
        ("not_parquet", "not a readable Parquet file"),
        ("wrong_schema", "missing column(s) nums"),
        ("too_small", "distinct problems, but 4 groups x (train_size + test_size) = 220"),
    ],
)
def test_bad_source_is_a_clear_error_and_nothing_is_written(workdir, capsys, setup, message):
    src = workdir / "pool.parquet"
    if setup == "not_parquet":
        src.write_text("hello")
    elif setup == "wrong_schema":
        pq.write_table(pa.table({"target": [1, 2]}), src)
    elif setup == "too_small":
        tinyzero_pool(src, 100)
    sets = ["source=pool.parquet", "train_size=50", "test_size=5"]
    if setup == "missing":
        sets.append("pool.generate_if_missing=false")
    assert run(*sets) == 2
    err = capsys.readouterr().err
    assert message in err and "pool.parquet" in err
    assert not (workdir / "data/dummy_tinyzero").exists()


def test_each_test_set_holds_both_counts_in_its_training_sets_proportion(workdir):
    assert run("train_size=200", "test_size=30") == 0
    out = workdir / "data/dummy_tinyzero"
    for g in range(4):
        train, test = (
            [len(n) for n in pq.read_table(out / f"{g}/{s}.parquet").column("nums").to_pylist()]
            for s in ("train", "test")
        )
        for n in (3, 4):
            share = train.count(n) / len(train)
            assert 0.2 < share < 0.8, (g, n, share)
            # The test set takes its group's exact share to within a row, so it is
            # within (train + test) / train rows of the training set's share.
            assert abs(test.count(n) - share * 30) < 230 / 200, (g, n, test.count(n), share)


def test_a_generated_pool_follows_the_pool_settings_asked_for(workdir, capsys):
    """A pool.size that cannot fill the groups is refused before anything is written; a
    rerun with other pool settings (or more rows needed) makes the pool again instead of
    failing on the old one; TinyZero's own pool (no manifest) is never replaced."""
    pool = workdir / "data/tinyzero/train.parquet"
    assert run("train_size=10", "test_size=2", "pool.size=5") == 2
    assert "pool.size: 5 problems cannot fill" in capsys.readouterr().err
    assert not pool.exists()
    assert run("train_size=10", "test_size=2", "pool.size=60") == 0
    assert len(keys(pool)) == 60
    assert run("train_size=10", "test_size=2", "pool.size=100") == 0  # other settings
    assert len(keys(pool)) == 100 and "made again" in capsys.readouterr().out
    assert run("train_size=10", "test_size=2") == 0  # size null: 48 needed, 100 is other
    assert len(keys(pool)) == 48
    assert run("train_size=20", "test_size=2") == 0  # size null, more needed: made again
    assert len(keys(pool)) == 88
    # TinyZero's own pool: kept, and too small is an error naming the fix
    (workdir / "data/tinyzero/train.manifest.json").unlink()
    tinyzero_pool(pool, 30)
    assert run("train_size=20", "test_size=2") == 2
    assert len(keys(pool)) == 30
