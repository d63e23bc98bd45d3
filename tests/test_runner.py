"""The stage runner's guarantees, for every trainer: one writer per run, a spec that
cannot change under a run, leftovers of a dead run cleaned, nothing written before the
inputs are checked, reproducible runs, and no import circle in the package."""

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clab.cli import main
from clab.storage.layout import COMPLETE_MARKER, complete_stages
from clab.tracking.metrics_log import read_rows
from rl_spec import write_spec

REPO = Path(__file__).resolve().parent.parent
TIMING = {"step_time", "tokens_per_s", "generation_time"}  # and every time/<phase>


def _rows(run: str, name: str = "train") -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/")}
        for r in read_rows(f"metrics/{run}/{name}.jsonl")
    ]


def test_a_second_trainer_on_the_same_run_exits_2_naming_the_holder(run_dir, capsys):
    """Another process holds the run (as a live trainer does, for its whole life): a
    second start exits 2 naming it; once the holder is killed, its lock is taken over."""
    spec = write_spec(run_dir / "s.yaml", name="busy", data__groups=[0], max_steps_per_stage=2)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(folder="checkpoints", name=".busy.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", str(spec)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "trainer" in err
        assert not Path("checkpoints/busy").exists()  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["run", str(spec)]) == 0
    assert [r["global_step"] for r in read_rows("metrics/busy/train.jsonl")] == [1, 2]


HOLD = """
import time
from clab.runs.lock import RunLock
RunLock("{folder}", "trainer", name="{name}").acquire()
print("held", flush=True)
time.sleep(120)
"""


def test_a_changed_spec_is_refused_and_restart_moves_the_old_run_aside(run_dir, capsys):
    spec = write_spec(run_dir / "s.yaml", name="fp", data__groups=[0, 1], max_steps_per_stage=1)
    assert main(["run", str(spec)]) == 0
    before = Path("checkpoints/fp/run.json").read_text()

    changed = write_spec(
        run_dir / "c.yaml",
        name="fp",
        data__groups=[0, 1],
        max_steps_per_stage=1,
        algorithm="grpo",
        rollout__responses_per_prompt=2,
    )
    assert main(["run", str(changed)]) == 2
    err = capsys.readouterr().err
    assert "algorithm: 'ppo' -> 'grpo'" in err and "rollout.responses_per_prompt" in err
    assert "--restart" in err
    assert Path("checkpoints/fp/run.json").read_text() == before  # untouched

    # safe changes continue the same run: logging keys, and more rounds
    safe = write_spec(
        run_dir / "ok.yaml",
        name="fp",
        data__groups=[0, 1],
        max_steps_per_stage=1,
        rounds=2,
        save_steps=0,
        wandb=True,
    )
    assert main(["run", str(safe)]) == 0
    assert [d.name for _, d in complete_stages("checkpoints/fp")][-1] == "r1-g1"

    assert main(["run", str(changed), "--restart"]) == 0
    aside = sorted(Path("checkpoints").glob("fp.old-*"))
    assert len(aside) == 1 and (aside[0] / "r1-g1" / "COMPLETE").is_file()
    assert len(list(Path("metrics").glob("fp.old-*"))) == 1
    info = json.loads(Path("checkpoints/fp/run.json").read_text())
    assert info["spec"]["algorithm"] == "grpo"


def test_leftovers_of_a_dead_run_are_cleaned_at_the_next_start(run_dir):
    spec = write_spec(run_dir / "s.yaml", name="left", data__groups=[0], max_steps_per_stage=1)
    run = Path("checkpoints/left")
    (run / ".r0-g0.abc.partial").mkdir(parents=True)
    (run / ".r0-g0.abc.partial" / "model.safetensors").write_bytes(b"half")
    assert main(["run", str(spec)]) == 0
    assert not list(run.glob(".*.partial"))
    assert not (run / "_resume").exists()
    # a swap killed between its two renames: the old stage folder waits aside, and is
    # put back (it is all there is), not deleted
    (run / ".r0-g0.1.old").mkdir()
    os.replace(run / "r0-g0", run / ".r0-g0.1.old" / "r0-g0")
    assert main(["run", str(spec)]) == 0
    assert (run / "r0-g0" / "COMPLETE").is_file() and not list(run.glob(".*.old"))


def test_a_failed_start_writes_nothing(run_dir, capsys):
    bad = run_dir / "badmodel"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    spec = write_spec(run_dir / "s.yaml", name="nothing", model={"name_or_path": str(bad)})
    assert main(["run", str(spec)]) == 2
    assert "badmodel" in capsys.readouterr().err
    assert not Path("checkpoints/nothing/run.json").exists()
    assert not Path("checkpoints/nothing/initial").exists()


def test_a_corrupt_checkpoint_is_named(run_dir, capsys):
    spec = write_spec(run_dir / "s.yaml", name="corrupt", data__groups=[0, 1],
                      max_steps_per_stage=1)  # fmt: skip
    assert main(["run", str(spec)]) == 0
    weights = Path("checkpoints/corrupt/r0-g1/model.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    more = write_spec(run_dir / "m.yaml", name="corrupt", data__groups=[0, 1],
                      max_steps_per_stage=1, rounds=2)  # fmt: skip
    assert main(["run", str(more)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("clab: error: ") and "r0-g1/model.safetensors" in last


def test_two_runs_from_the_same_model_folder_are_identical(run_dir, tmp_path):
    """Every random draw is seeded from the spec: the critic's new head, sampling, data."""
    spec = write_spec(run_dir / "a.yaml", name="src", data__groups=[0], max_steps_per_stage=1)
    assert main(["run", str(spec)]) == 0
    model = str(Path("checkpoints/src/initial").resolve())
    for name in ("one", "two"):
        s = write_spec(run_dir / f"{name}.yaml", name=name, data__groups=[0, 1],
                       model={"name_or_path": model})  # fmt: skip
        assert main(["run", str(s)]) == 0
    one, two = _rows("one"), _rows("two")
    assert len(one) == 6 and one == two


def test_a_run_killed_in_its_first_stage_resumes_to_the_same_numbers(run_dir, monkeypatch):
    from clab.training.ppo import PPOTrainer

    common = dict(data__groups=[0, 1], max_steps_per_stage=4, lr_scheduler="linear",
                  lr_warmup_steps=1, save_steps=2)  # fmt: skip
    assert main(["run", str(write_spec(run_dir / "a.yaml", name="whole", **common))]) == 0
    spec = write_spec(run_dir / "b.yaml", name="cut", **common)
    original, calls = PPOTrainer.step, {"n": 0}

    def dies_at_step_3(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(PPOTrainer, "step", dies_at_step_3)
        assert main(["run", str(spec)]) == 130
    assert [r["global_step"] for r in _rows("cut")] == [1, 2]
    assert main(["run", str(spec)]) == 0
    whole, cut = _rows("whole"), _rows("cut")
    assert [r["global_step"] for r in cut] == list(range(1, 9))
    for a, b in zip(whole, cut, strict=True):
        for key in ("lr_actor", "lr_critic", "weight_change_run", "weight_change_stage",
                    "policy_loss", "value_loss"):  # fmt: skip
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8), (a["global_step"], key)


def test_each_stage_records_the_machine_that_trained_it_so_a_resume_elsewhere_shows(
    run_dir, monkeypatch
):
    """The same seed on another machine is another run (docs/demo.md): each stage's
    marker (stage 0's too: a warm-up trains there) and its log line name the device,
    host and software that trained it; a run stopped after stage 1 and resumed
    "elsewhere" keeps stage 1's record."""
    import torch
    import transformers

    import clab.runs.runner as runner

    spec = write_spec(run_dir / "m.yaml", name="moved", data__groups=[0, 1], max_steps_per_stage=1)
    original = runner.StageRunner._train_stage
    with monkeypatch.context() as m:

        def stops_before_stage_2(self, stage, *a, **k):
            if stage.index == 2:
                raise KeyboardInterrupt
            return original(self, stage, *a, **k)

        m.setattr(runner.StageRunner, "_train_stage", stops_before_stage_2)
        assert main(["run", str(spec)]) == 130
    here = runner.machine_facts("cpu")
    elsewhere = {**here, "device": "NVIDIA H100 80GB HBM3", "host": "lease-2"}
    monkeypatch.setattr(runner, "machine_facts", lambda device, workers=1: elsewhere)
    assert main(["run", str(spec)]) == 0
    markers = [
        json.loads((d / COMPLETE_MARKER).read_text())
        for _, d in complete_stages("checkpoints/moved")
    ]
    initial, first, second = (mk["machine"] for mk in markers)  # stage 0 holds the warm-up
    assert initial == first and first["device"].startswith("cpu (") and first["workers"] == 1
    assert first["torch"] == torch.__version__ and first["transformers"] == transformers.__version__
    assert second == elsewhere
    log = Path("logs/moved/train.log").read_text()
    assert f"steps from step 0 on {here['device']}" in log
    assert "steps from step 0 on NVIDIA H100 80GB HBM3" in log


def _imports(path: Path, modules, package: str = "clab") -> set[str]:
    """Every module of ``package`` that ``path`` imports: at module level, inside functions,
    and for type checkers (``if TYPE_CHECKING:``): each is a dependency of the file, and a
    circle through any of them is two files that cannot be read apart."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            # `from package import module` depends on that module, not on the package
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            out.update(subs or {node.module})
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(package))
    return out


def import_graph(root: Path, package: str = "clab") -> dict[str, set[str]]:
    """Module -> the package's modules it imports, for every file under ``root``."""
    modules = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (root / package).rglob("*.py")
    }
    return {
        m: {i for i in _imports(p, modules, package) if i in modules and i != m}
        for m, p in modules.items()
    }


def import_circle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of the graph (its modules, the first repeated at the end), or []."""
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str]:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path, m, n]
            if n not in state and (found := visit(n, [*path, m])):
                return found
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m, [])):
            return found[found.index(found[-1]) :]
    return []


def test_no_import_circle_in_the_package_even_through_function_level_imports():
    graph = import_graph(REPO / "shared")
    assert import_circle(graph) == []
    assert not any(i.startswith("clab.training") for i in graph["clab.distributed.launch"])
    assert not any(i.startswith("clab.training") for i in graph["clab.runs.runner"])


@pytest.mark.parametrize(
    "back",
    [
        "def run():\n    from pkg.runner import run_spec\n",  # inside a function
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import runner\n",
    ],
)
def test_the_circle_check_sees_a_circle_closed_inside_a_function_or_for_type_checkers(
    tmp_path, back
):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "runner.py").write_text("from pkg.spec import RunSpec\n")
    (pkg / "spec.py").write_text(back)
    assert import_circle(import_graph(tmp_path, "pkg")) == ["pkg.runner", "pkg.spec", "pkg.runner"]
    (pkg / "spec.py").write_text("import json\n")
    assert import_circle(import_graph(tmp_path, "pkg")) == []


def test_a_field_added_since_a_run_started_is_no_change_while_it_holds_its_default():
    from clab.runs.fingerprint import NO_DEFAULT, changed_fields, field_default
    from clab.runs.runner import spec_fingerprint
    from clab.training.countdown_rl_spec import CountdownRLSpec

    spec = CountdownRLSpec(name="fp", model={"preset": "tiny"})
    new = spec_fingerprint(spec)
    old = {k: v for k, v in new.items() if k != "rollout.batch_size"}  # an older clab's run
    default = lambda key: field_default(CountdownRLSpec, key)  # noqa: E731
    assert changed_fields(old, new, default) == []
    assert changed_fields(old, new) == [
        f"rollout.batch_size: '(absent)' -> {new['rollout.batch_size']!r}"
    ]
    tuned = spec_fingerprint(
        spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"batch_size": 3})})
    )
    assert changed_fields(old, tuned, default) == ["rollout.batch_size: '(absent)' -> 3"]
    # a value that was there and changed is a change, default or not
    assert changed_fields({**new, "seed": 5}, new, default) == ["seed: 5 -> 0"]
    assert field_default(CountdownRLSpec, "data.dir") == "data/continual"  # paths as JSON
    assert field_default(CountdownRLSpec, "model.name_or_path") is None
    assert field_default(CountdownRLSpec, "model") is NO_DEFAULT  # required
    assert field_default(CountdownRLSpec, "no.such.field") is NO_DEFAULT
