"""Evaluator and plotter on a tiny trained run: incremental, idempotent, consistent
with the metric formulas, and figures a browser can show."""

import json
import os
import shutil
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pyarrow.parquet as pq
import pytest

from clab.cli import main
from clab.metrics.continual import backward_transfer, forgetting, forward_transfer
from clab.storage.layout import COMPLETE_MARKER
from conftest import REPO
from rl_spec import write_spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> Path:
    """A tiny PPO run through 4 groups, trained once for this module."""
    import os

    root = tmp_path_factory.mktemp("stack")
    (root / "data").mkdir()
    (root / "data/continual").symlink_to(dataset)
    old = os.getcwd()
    os.chdir(root)
    try:
        spec = write_spec(
            root / "run.yaml", name="demo-curriculum", max_steps_per_stage=2, save_steps=0
        )
        assert main(["run", str(spec)]) == 0
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def stack(trained, tmp_path, monkeypatch) -> Path:
    """A private copy of the trained run's volumes, as the current folder."""
    root = tmp_path / "stack"
    shutil.copytree(trained, root, symlinks=True)
    (root / "services").symlink_to(REPO / "services")
    monkeypatch.chdir(root)
    return root


def evaluate(*sets: str) -> int:
    args = [
        "run",
        "services/evaluator.yaml",
        "--set",
        "test_size=4",
        "--set",
        "use_gpu=false",
        "--set",
        "samples_per_group=2",
    ]
    for s in sets:
        args += ["--set", s]
    return main(args)


def wide(path="metrics/demo-curriculum/eval.parquet") -> list[dict]:
    """The long eval rows (one per metric) as one row per (stage, task)."""
    out: dict = {}
    for r in pq.read_table(path).to_pylist():
        row = out.setdefault((r["stage"], r["task"]), {k: r[k] for k in r if k != "value"})
        row[r["metric"]] = r["value"]
    return [out[k] for k in sorted(out)]


def test_every_stage_on_every_group_including_the_initial_model(stack):
    assert evaluate() == 0
    rows = wide()
    assert [(r["stage"], r["task"]) for r in rows] == [(s, g) for s in range(5) for g in range(4)]
    assert rows[0]["stage_name"] == "initial" and rows[0]["trained_task"] == -1
    assert [r["trained_task"] for r in rows if r["task"] == 0] == [-1, 0, 1, 2, 3]
    for r in rows:
        assert r["n"] == 4 and 0 <= r["success_rate"] <= r["reward_mean"] + 1e-9 <= 1 + 1e-9
        assert r["run"] == "demo-curriculum" and r["response_length_mean"] > 0
        assert r["scorer"] == "countdown" and r["task_name"] == f"g{r['task']}"
    samples = Path("metrics/demo-curriculum/samples.jsonl").read_text().splitlines()
    assert len(samples) == 5 * 4 * 2
    assert {"stage", "task", "response", "score", "reason"} <= set(json.loads(samples[0]))


def test_summary_matches_the_formulas_on_the_matrix_it_wrote(stack):
    assert evaluate() == 0
    R = np.zeros((5, 4))
    for r in wide():
        R[r["stage"], r["task"]] = r["success_rate"]
    tasks = [None, 0, 1, 2, 3]
    s = json.loads(Path("metrics/demo-curriculum/summary.json").read_text())
    assert s["matrix"] == R.tolist()
    assert s["average_accuracy"] == pytest.approx(R[4].mean())
    assert s["backward_transfer"] == pytest.approx(backward_transfer(R, tasks))
    assert s["forgetting"] == pytest.approx(forgetting(R, tasks))
    assert s["forward_transfer"] == pytest.approx(forward_transfer(R, tasks))
    # and by hand, from the definitions
    assert s["backward_transfer"] == pytest.approx(
        np.mean([R[4, j] - R[j + 1, j] for j in range(3)])
    )


def test_incremental_idempotent_and_blind_to_incomplete_stages(stack):
    assert evaluate() == 0
    path = Path("metrics/demo-curriculum/eval.parquet")
    first = path.read_bytes()
    assert evaluate() == 0
    assert path.read_bytes() == first  # nothing new, nothing rewritten
    run = Path("checkpoints/demo-curriculum")
    # a stage a trainer is still writing: no marker yet, so not evaluated
    shutil.copytree(run / "r0-g3", run / "r1-g0")
    (run / "r1-g0" / COMPLETE_MARKER).unlink()
    assert evaluate() == 0
    assert path.read_bytes() == first
    # the trainer finishes it: only its rows are added
    (run / "r1-g0" / COMPLETE_MARKER).write_text(
        json.dumps({"index": 5, "round": 1, "task": 0, "global_step": 10})
    )
    assert evaluate() == 0
    rows = wide()
    assert len(rows) == 24 and [r["stage"] for r in rows[-4:]] == [5] * 4


def test_a_crash_mid_evaluation_keeps_whole_stages_only(stack, monkeypatch):
    import clab.evaluation.scorers.countdown as ev  # where the scorer looks it up

    real = ev.evaluate_problems
    calls = {"n": 0}

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:  # in stage 1, group 2
            raise RuntimeError("killed")
        return real(*a, **k)

    monkeypatch.setattr(ev, "evaluate_problems", dies)
    with pytest.raises(RuntimeError):
        evaluate()
    assert {r["stage"] for r in wide()} == {0}  # stage 0 whole, stage 1 absent, not half
    monkeypatch.setattr(ev, "evaluate_problems", real)
    assert evaluate() == 0
    assert len(wide()) == 20


def test_a_rerun_with_other_settings_never_mixes_results(stack, capsys):
    """Another test size used to keep the old rows beside the new ones (forgetting
    doubled); now it exits 2 naming the setting, or rescores every stage."""
    assert evaluate("test_size=2") == 0
    assert evaluate("test_size=4") == 2
    err = capsys.readouterr().err
    assert "test_size: 2 -> 4" in err and "rescore" in err
    assert {r["n"] for r in wide()} == {2}  # untouched
    assert evaluate("test_size=4", "rescore=true") == 0
    rescored = Path("metrics/demo-curriculum/summary.json").read_text()
    assert {r["n"] for r in wide()} == {4}
    assert len(list(Path("metrics/demo-curriculum").glob("eval.old-*/eval.parquet"))) == 1
    # the same numbers as a fresh evaluation with those settings
    shutil.rmtree("metrics/demo-curriculum")
    assert evaluate("test_size=4") == 0
    fresh = json.loads(Path("metrics/demo-curriculum/summary.json").read_text())
    assert json.loads(rescored)["matrix"] == fresh["matrix"]
    assert fresh["settings"]["test_size"] == 4 and fresh["settings"]["dtype"] == "float32"


def test_a_second_evaluator_on_the_same_run_exits_2_naming_the_holder(stack, capsys):
    from clab.runs.lock import RunLock

    with RunLock("metrics/demo-curriculum", "evaluator", name=".eval.lock"):
        assert evaluate() == 2
    err = capsys.readouterr().err
    assert f"pid {__import__('os').getpid()}" in err and "evaluator" in err


def test_unknown_run_is_a_clear_error(stack, capsys):
    assert evaluate("runs=[nope]") == 2
    assert "no run nope" in capsys.readouterr().err


def not_blank(path: Path) -> bool:
    img = mpimg.imread(path)
    return img.shape[0] > 100 and img.shape[1] > 100 and float(np.std(img)) > 0.01


def test_per_item_results_give_every_cell_and_metric_an_interval(stack):
    """Items are stored beside eval.parquet (the same test problems at every stage), so
    each cell has a Wilson interval and each continual metric a paired bootstrap one."""
    assert evaluate() == 0
    items = pq.read_table("metrics/demo-curriculum/items.parquet").to_pylist()
    assert len(items) == 5 * 4 * 4  # stages x groups x test problems (success_rate)
    by_cell: dict = {}
    for it in items:
        by_cell.setdefault((it["stage"], it["task"]), []).append(it["value"])
    for r in pq.read_table("metrics/demo-curriculum/eval.parquet").to_pylist():
        if r["metric"] == "success_rate":
            assert np.mean(by_cell[r["stage"], r["task"]]) == pytest.approx(r["value"])
            assert r["ci_method"] == "wilson" and r["ci_low"] <= r["value"] <= r["ci_high"]
    s = json.loads(Path("metrics/demo-curriculum/summary.json").read_text())
    iv = s["intervals"]["success_rate"]
    assert s["kind"] == "countdown-rl" and s["n_items_per_task"] == {f"g{g}": 4 for g in range(4)}
    for key in ("average_accuracy", "backward_transfer", "forgetting"):
        assert iv[key][0] - 1e-9 <= s[key] <= iv[key][1] + 1e-9
    assert set(iv["forgetting_per_task"]) == set(s["forgetting_per_task"])


def test_results_scored_before_items_were_kept_still_plot_and_rescore_adds_them(stack):
    assert evaluate() == 0
    d = Path("metrics/demo-curriculum")
    (d / "items.parquet").unlink()
    old = pq.read_table(d / "eval.parquet").drop(["ci_low", "ci_high", "ci_method"])
    pq.write_table(old, d / "eval.parquet")
    s = json.loads((d / "summary.json").read_text())
    s.pop("intervals")
    (d / "summary.json").write_text(json.dumps(s))
    assert main(["run", "services/plotter.yaml"]) == 0  # Wilson cells from value and n
    page = Path("plots/index.html").read_text()
    assert __import__("re").search(r"data-key='final' data-value='[^']+' data-low=", page)
    assert evaluate("rescore=true") == 0  # same settings: rescored because items lacked
    assert (d / "items.parquet").is_file()
    assert "intervals" in json.loads((d / "summary.json").read_text())


def test_plots_and_index_page(stack):
    assert evaluate() == 0
    # a control run beside it, for the comparison figures
    shutil.copytree("metrics/demo-curriculum", "metrics/demo-control")
    assert main(["run", "services/plotter.yaml"]) == 0
    for name in ("demo-curriculum", "demo-control"):
        for fig in ("training", "eval_matrix", "eval_per_task", "forgetting"):
            assert not_blank(Path(f"plots/{name}/{fig}.png")), (name, fig)
    compare = sorted(p.name for p in Path("plots/compare").glob("*.png"))
    assert compare == [
        "demo-curriculum-vs-demo-control-forgetting.png",
        "demo-curriculum-vs-demo-control.png",
    ]
    assert all(not_blank(Path("plots/compare") / c) for c in compare)
    page = Path("plots/index.html").read_text()
    pngs = {p.relative_to("plots").as_posix() for p in Path("plots").rglob("*.png")}
    srcs = __import__("re").findall(r"<img src='([^']+)'", page)
    assert pngs == set(srcs) and len(srcs) == len(set(srcs))  # each figure once
    assert "backward transfer" in page and "forgetting" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium not here")
def test_index_page_loads_every_image_in_headless_chromium(stack):
    from clab.plotting.browser import inspect_page

    assert evaluate() == 0
    assert main(["run", "services/plotter.yaml"]) == 0
    rep = inspect_page(Path("plots/index.html"))
    n = len(list(Path("plots").rglob("*.png")))
    assert rep.errors == [] and len(rep.images) == n
    assert all(i["naturalWidth"] > 0 and i["visible"] for i in rep.images), rep.images


def test_vllm_engine_where_vllm_is_absent_says_so(stack, capsys):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    assert evaluate("engine=vllm") == 2
    assert "engine: vllm is not installed here" in capsys.readouterr().err
