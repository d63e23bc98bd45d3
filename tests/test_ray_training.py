"""Ray Train with 2 CPU workers (gloo): DDP PPO on the tiny model, on a local Ray
that the test starts and stops itself."""

import json
from pathlib import Path

import pytest

from clab.cli import main
from clab.storage.layout import complete_stages
from clab.tracking.metrics_log import read_rows
from rl_spec import write_spec


@pytest.mark.slow
def test_two_cpu_workers_train_in_sync(run_dir):
    spec = write_spec(
        run_dir / "ray.yaml",
        name="ray",
        data__groups=[0, 1],
        max_steps_per_stage=2,
        resources={"num_workers": 2},
        batch={"train": 4, "val": 4, "mini": 4, "micro": 2},
    )
    assert main(["run", str(spec)]) == 0
    stages = complete_stages("checkpoints/ray")
    assert [d.name for _, d in stages] == ["initial", "r0-g0", "r0-g1"]
    for _, d in stages[1:]:
        # written only after every worker's weights were checked equal
        assert json.loads((d / "COMPLETE").read_text())["workers"] == 2
    # one writer: each step exactly once, not once per worker
    assert [r["global_step"] for r in read_rows("metrics/ray/train.jsonl")] == [1, 2, 3, 4]
    assert Path("logs/ray/ray").is_dir()
