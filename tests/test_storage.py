import json
import os
import signal
import stat
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clab.errors import ClabError
from clab.storage.atomic import (
    atomic_dir,
    atomic_path,
    check_writable,
    clean_stale_partials,
    write_json,
    write_parquet,
)
from clab.storage.layout import (
    Stage,
    complete_stages,
    mark_complete,
    move_aside,
    stage_sequence,
)


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "m" / "x.json"
    write_json(p, {"a": 1})
    write_json(p, {"a": 2})
    assert p.read_text().strip().endswith("}") and '"a": 2' in p.read_text()
    assert os.listdir(p.parent) == ["x.json"]
    assert stat.S_IMODE(p.stat().st_mode) & 0o044  # readable by other services' users


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.parquet"
    write_parquet(p, pa.table({"a": [1, 2]}))
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("killed")
    assert pq.read_table(p).column("a").to_pylist() == [1, 2]
    assert os.listdir(tmp_path) == ["x.parquet"]


def test_parquet_bytes_are_reproducible(tmp_path):
    t = pa.table({"a": [1, 2], "b": ["x", "y"]})
    write_parquet(tmp_path / "1.parquet", t)
    write_parquet(tmp_path / "2.parquet", t)
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()


def test_atomic_dir_swaps_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "ds"
    with atomic_dir(out) as d:
        (d / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        (d / "a").write_text("new")
        raise RuntimeError("died")
    assert (out / "a").read_text() == "old"
    with atomic_dir(out) as d:
        (d / "b").write_text("new")
    assert sorted(os.listdir(out)) == ["b"]
    assert os.listdir(tmp_path) == ["ds"]


def test_stage_sequence_orders_rounds_then_tasks():
    stages = stage_sequence(rounds=2, num_tasks=3)
    assert [s.name for s in stages] == ["r0-g0", "r0-g1", "r0-g2", "r1-g0", "r1-g1", "r1-g2"]
    assert [s.index for s in stages] == [1, 2, 3, 4, 5, 6]
    assert Stage(0, 0, 0).name == "initial"


def test_readers_see_only_stages_whose_marker_exists(tmp_path):
    run = tmp_path / "run"
    stages = stage_sequence(1, 3)
    for s in stages:
        (run / s.name).mkdir(parents=True)
        (run / s.name / "model.safetensors").write_bytes(b"..")
    mark_complete(run / "r0-g1", stages[1], global_step=20)
    mark_complete(run / "r0-g0", stages[0], global_step=10)
    (run / "initial").mkdir()
    mark_complete(run / "initial", Stage(0, 0, 0))
    found = complete_stages(run)
    assert [(s.index, d.name) for s, d in found] == [(0, "initial"), (1, "r0-g0"), (2, "r0-g1")]
    assert complete_stages(tmp_path / "absent") == []


def test_a_checkpoints_marker_holds_what_it_was_given_and_a_stage_marker_its_place(tmp_path):
    mark_complete(tmp_path, step=7, stage="not a Stage: just a field")
    assert json.loads((tmp_path / "COMPLETE").read_text()) == {
        "step": 7,
        "stage": "not a Stage: just a field",
    }
    mark_complete(tmp_path, Stage(3, 1, 0), global_step=9)
    info = json.loads((tmp_path / "COMPLETE").read_text())
    assert info == {"index": 3, "round": 1, "task": 0, "global_step": 9}


def test_moving_aside_keeps_everything_under_one_dated_name(tmp_path, capsys):
    for name in ("ckpt", "logs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    moved = [move_aside(tmp_path / n, "20240102-030405") for n in ("ckpt", "logs")]
    assert [m.name for m in moved] == ["ckpt.old-20240102-030405", "logs.old-20240102-030405"]
    assert (moved[0] / "f").read_text() == "ckpt" and not (tmp_path / "ckpt").exists()
    assert "moved" in capsys.readouterr().out
    again = move_aside(tmp_path / "ckpt.old-20240102-030405")  # today's date by default
    assert again.name.startswith("ckpt.old-20240102-030405.old-20")


def test_clean_stale_partials_removes_only_dead_writers_leftovers(tmp_path):
    # A real writer killed mid-write, as kill -9 leaves it: a staging folder and a temp file.
    code = (
        "import sys, time\n"
        "from clab.storage.atomic import atomic_dir, atomic_path\n"
        "with atomic_dir(sys.argv[1] + '/ds') as d, atomic_path(sys.argv[1] + '/x.json') as t:\n"
        "    (d / 'half').write_text('half'); t.write_text('{'); print('ready', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    dead = sorted(p.name for p in tmp_path.iterdir())
    assert len(dead) == 2 and dead[0].startswith(".ds.") and dead[1].startswith(".x.json.")
    (tmp_path / ".ds.abc123.partial").mkdir()  # an older clab's: no owner recorded, kept
    (tmp_path / "ds").mkdir()  # the target itself, kept
    with atomic_dir(tmp_path / "ds") as live:  # a live writer's staging, kept
        removed = clean_stale_partials(tmp_path)
        assert live.is_dir()
    assert sorted(p.name for p in removed) == dead
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.abc123.partial", "ds"]


def test_check_writable_names_what_blocks_the_path(tmp_path):
    (tmp_path / "f").write_text("")
    check_writable(tmp_path / "new" / "deeper", "output")  # creatable: fine
    with pytest.raises(ClabError, match=r"output: .* is a file, not a folder"):
        check_writable(tmp_path / "f" / "sub" / "ds", "output")
