"""Data generators and readers never lose, mix or silently accept bad data."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clab.cli import main
from clab.data.countdown.reading import check_dataset, read_group
from clab.errors import ClabError
from conftest import REPO

GENERATORS = {
    "curriculum": ["services/data-generator.yaml", "workers=1"],
    "control": ["services/tinyzero-dummy-generator.yaml", "pool.workers=1"],
}


def generate(kind: str, output: Path, *sets: str) -> int:
    spec, *fixed = GENERATORS[kind]
    args = ["run", str(REPO / spec)]
    for s in ["train_size=20", "test_size=4", f"output={output}", *fixed, *sets]:
        args += ["--set", s]
    return main(args)


@pytest.mark.parametrize("kind", sorted(GENERATORS))
@pytest.mark.parametrize("existing", ["folder", "file"])
def test_output_that_is_not_a_data_set_is_left_untouched(workdir, capsys, kind, existing):
    out = workdir / "mine"
    if existing == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
    else:
        out.write_text("my notes")
    assert generate(kind, out) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "not a clab data set" in err
    assert len(err.strip().splitlines()) == 1
    kept = out / "notes.txt" if existing == "folder" else out
    assert kept.read_text() == "my notes"
    assert sorted(p.name for p in workdir.iterdir() if p.name != "data") == ["mine"]


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_an_earlier_data_set_is_replaced(workdir, kind):
    out = workdir / "ds"
    assert generate(kind, out) == 0
    assert generate(kind, out, "seed=1") == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_unwritable_output_fails_first_naming_the_folder(workdir, capsys, kind):
    # Tests run as root, which ignores permission bits: a file where a folder
    # should be makes the output just as impossible to create.
    (workdir / "blocker").write_text("a file")
    out = workdir / "blocker" / "sub" / "ds"
    assert generate(kind, out) == 2
    err = capsys.readouterr().err
    assert "output" in err and str(workdir / "blocker") in err and "not a folder" in err
    assert sorted(p.name for p in workdir.iterdir()) == ["blocker"]  # no pool made either


def children(pid: int) -> list[int]:
    """Live descendants of ``pid``, from /proc (zombies count as dead)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent and fields[0] != "Z":
                found.append(int(stat.parent.name))
                frontier.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_kill_9_leaves_no_workers_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "clab.cli", "run", str(REPO / "services/data-generator.yaml")]
    cmd += ["--set", f"output={out}", "--set", "workers=2", "--set", "train_size=5000000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = children(proc.pid)
            partials = list(tmp_path.glob(".ds.*.partial"))
            if len(workers) >= 2 and partials:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the generator never started its workers")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "orphaned workers survived"
    finally:
        proc.kill()
        for w in children(proc.pid):
            os.kill(w, signal.SIGKILL)
    assert partials[0].is_dir()  # what a killed run leaves
    assert generate("curriculum", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


@pytest.fixture
def copied(dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the shared small data set, to damage."""
    return Path(shutil.copytree(dataset, tmp_path / "continual"))


def test_a_changed_byte_is_named_with_the_manifest(copied):
    check_dataset(copied, [0, 1, 2, 3])  # whole: passes (and caches the hashes)
    path = copied / "1" / "test.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ClabError, match="sha256") as e:
        check_dataset(copied, [0, 1, 2, 3])
    assert str(path) in str(e.value) and "manifest.json" in str(e.value)


def test_a_truncated_file_is_named_by_the_check_and_by_the_reader(copied):
    path = copied / "2" / "train.parquet"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ClabError, match="sha256") as e:
        check_dataset(copied, [2])
    assert str(path) in str(e.value)
    with pytest.raises(ClabError, match="not a readable") as e:
        read_group(copied, 2, "train")
    assert str(path) in str(e.value)


def test_a_file_missing_a_column_is_named_by_the_reader(copied):
    path = copied / "0" / "test.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["nums"]), path)
    with pytest.raises(ClabError, match="nums") as e:
        read_group(copied, 0, "test")
    assert str(path) in str(e.value)


def test_a_data_set_without_its_manifest_is_refused(copied):
    (copied / "manifest.json").unlink()
    with pytest.raises(ClabError, match="manifest"):
        check_dataset(copied, [0])


def test_an_unreadable_pool_is_named(workdir, capsys):
    table = pa.table({"target": list(range(1, 5001)), "nums": [[i, 1, 1] for i in range(5000)]})
    pq.write_table(table, workdir / "pool.parquet", compression="zstd")
    data = bytearray((workdir / "pool.parquet").read_bytes())
    data[4:20000] = bytes(19996)  # the data pages; the footer (schema) stays readable
    (workdir / "pool.parquet").write_bytes(bytes(data))
    assert generate("control", workdir / "ds", "source=pool.parquet") == 2
    err = capsys.readouterr().err
    assert "pool.parquet" in err and "not a readable Parquet" in err
    assert len(err.strip().splitlines()) == 1
    assert not (workdir / "ds").exists()


def test_a_generated_pool_that_changed_is_named(workdir, capsys):
    assert generate("control", workdir / "ds") == 0
    pool = workdir / "data/tinyzero/train.parquet"
    data = bytearray(pool.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pool.write_bytes(bytes(data))
    assert generate("control", workdir / "ds", "seed=1") == 2
    err = capsys.readouterr().err
    assert str(Path("data/tinyzero/train.parquet")) in err and "sha256" in err
    assert json.loads((workdir / "ds/manifest.json").read_text())["seed"] == 0  # kept
