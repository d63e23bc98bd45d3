"""plots/index.html as a reader meets it: every kind on one page with its headline
table, figures that exist and are displayed, numbers equal to the summaries, in a
real headless browser without console errors.

The volumes are written through the evaluator's own functions (``result_rows``,
``write_summary``) from synthetic per-item scores, so the test takes seconds; the
end-to-end path (trainer, evaluator, plotter) is tested in test_evaluator_plotter.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from clab.cli import main
from clab.evaluation.evaluator import (
    EVAL_SCHEMA,
    ITEMS_FILE,
    ITEMS_SCHEMA,
    result_rows,
    write_summary,
)
from clab.evaluation.scorers import ScoreResult
from clab.storage.atomic import write_json, write_parquet
from clab.storage.layout import Stage
from conftest import REPO

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_run(
    root: Path,
    name: str,
    kind: str,
    tasks: list[str],
    score,  # (stage, task) -> ScoreResult
    train: list[dict] | None = None,
    val: list[dict] | None = None,
    samples: list[dict] | None = None,
    replicate: dict | None = None,
) -> None:
    """A run's volumes as the trainer and the evaluator write them."""
    ck, out = root / "checkpoints" / name, root / "metrics" / name
    task_refs = [{"name": t, "scorer": "x", "config": {}} for t in tasks]
    info = {"kind": kind, "name": name, "tasks": task_refs}
    write_json(ck / "run.json", {**info, "replicate": replicate} if replicate else info)
    rows, items = [], []
    for i in range(len(tasks) + 1):
        stage = Stage(i, 0, i - 1 if i else 0)
        for j, t in enumerate(task_refs):
            r, it = result_rows(
                score(i, j),
                run=name,
                stage=stage,
                stage_name=stage.name,
                trained=i - 1 if i else -1,
                task_index=j,
                task=t,
            )
            rows += r
            items += it
    write_parquet(out / "eval.parquet", pa.Table.from_pylist(rows, schema=EVAL_SCHEMA))
    write_parquet(out / ITEMS_FILE, pa.Table.from_pylist(items, schema=ITEMS_SCHEMA))
    write_summary(out, name, rows, tasks, items, {"test_size": None}, kind, replicate)
    _jsonl(out / "train.jsonl", train or [])
    _jsonl(out / "val.jsonl", val or [])
    _jsonl(out / "samples.jsonl", samples or [])


def countdown_run(root: Path, name: str, peak: float, rng, replicate: dict | None = None) -> None:
    """Four groups: each rises during its stage, then falls (forgetting)."""
    n = 60

    def p(i: int, j: int) -> float:
        if i == 0 or j > i - 1:
            return 0.05
        return peak if j == i - 1 else peak / (i - j + 1)

    def score(i, j):
        x = (rng.random(n) < p(i, j)).astype(float).tolist()
        return ScoreResult(
            values={"success_rate": float(np.mean(x)), "reward_mean": 0.1 + 0.9 * np.mean(x)},
            higher_is_better={"success_rate": True, "reward_mean": True},
            primary="success_rate",
            n=n,
            items={"success_rate": x},
        )

    train, val, step = [], [], 0
    for stage in range(1, 5):
        for k in range(10):
            step += 1
            train.append(
                {
                    "global_step": step,
                    "step_in_stage": k + 1,
                    "stage": stage,
                    "task": stage - 1,
                    "group": stage - 1,
                    "success_rate": min(1.0, 0.1 * k * peak),
                    "policy_loss": 1e-3 * math.sin(step),
                    "value_loss": 0.5 / step,
                    "weight_change_run": 0.001 * step,
                    "weight_change_stage": 0.001 * (k + 1),
                    "normalized_grad": 0.01,
                    "response_length_mean": 30 + k,
                    "response_length_max": 60,
                }
            )
        for g in range(4):
            val.append(
                {
                    "global_step": step,
                    "stage": stage,
                    "trained_task": stage - 1,
                    "task": f"g{g}",
                    "group": g,
                    "primary": "success_rate",
                    "n": 40,
                    "success_rate": p(stage, g),
                }
            )
    write_run(
        root, name, "countdown-rl", [f"g{g}" for g in range(4)], score, train, val,
        replicate=replicate,
    )  # fmt: skip


def k1_run(root: Path, name: str, method: str, rng) -> None:
    corpora = ["prose", "code", "docstrings"]

    def score(i, j):
        base = 6.5 - (1.0 if (i and j == i - 1) else 0.3 * (i > j))
        losses = (base + 0.2 * rng.standard_normal(30)).tolist()
        mean = float(np.mean(losses))
        return ScoreResult(
            values={"perplexity": math.exp(mean), "token_loss": mean},
            higher_is_better={"perplexity": False, "token_loss": False},
            primary="perplexity",
            n=30 * 31,
            items={"perplexity": losses, "token_loss": losses},
            aggregate={"perplexity": "exp_mean"},
            samples=[{"prompt": "the cat", "response": f"sat on the {method} \x17mat"}],
        )

    groups = ["embed", "layer0.attn", "layer0.ffn", "head"]
    train = [
        {
            "global_step": s,
            "step_in_stage": (s - 1) % 8 + 1,
            "stage": (s - 1) // 8 + 1,
            "task": (s - 1) // 8,
            "loss": 6.5 - 0.01 * s,
            "selected": groups if method == "dense" else groups[(s % 3) : (s % 3) + 2],
            "fraction_updated": 1.0 if method == "dense" else 0.5,
            "weight_change_run": 0.01 * s,
            "weight_change_stage": 0.01 * ((s - 1) % 8 + 1),
        }
        for s in range(1, 25)
    ]
    write_run(root, name, "k1-lm", corpora, score, train)


def mixing_run(root: Path, name: str, rng) -> None:
    """A kind no page view is registered for (nested: <sweep>/<branch>), scored by a
    token-weighted loss."""

    def score(i, j):
        losses = (2.0 - 0.5 * (i > j) + 0.1 * rng.standard_normal(20)).tolist()
        w = rng.integers(5, 30, 20).astype(float).tolist()
        v = float(np.dot(losses, w) / np.sum(w))
        return ScoreResult(
            values={"answer_loss": v},
            higher_is_better={"answer_loss": False},
            primary="answer_loss",
            n=20,
            items={"answer_loss": losses},
            item_weights={"answer_loss": w},
        )

    write_run(root, name, "sft-mixing", ["math", "hotpot"], score)


SEEDS = (0, 1, 2)


def replicate(experiment: str, seed: int) -> dict:
    return {"experiment": experiment, "variant_axis": None, "variant": None, "seed": seed,
            "seeds": list(SEEDS), "data_seed": 0}  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Every kind's volumes, plotted once for the read-only tests of this module."""
    root = tmp_path_factory.mktemp("page")
    rng = np.random.default_rng(0)
    (root / "services").symlink_to(REPO / "services")
    countdown_run(root, "exp-curriculum", 0.8, rng)
    countdown_run(root, "exp-control", 0.4, rng)
    for seed in SEEDS:  # an experiment of three training seeds, and its control
        for exp, peak in (("seeded-curriculum", 0.8 - 0.1 * seed), ("seeded-control", 0.3)):
            countdown_run(root, f"{exp}-s{seed}", peak, rng, replicate(exp, seed))
    for m in ("k1", "dense", "random_k"):
        k1_run(root, f"lm-{m}", m, rng)
    mixing_run(root, "mix/replay", rng)
    mixing_run(root, "mix/none", rng)
    _jsonl(  # trained, not evaluated yet
        root / "metrics/fresh-curriculum/train.jsonl",
        [{"global_step": 1, "stage": 1, "task": 0, "success_rate": 0.1}],
    )
    old = os.getcwd()
    os.chdir(root)
    try:
        plot()
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def volumes(built: Path, monkeypatch) -> Path:
    """The plotted volumes as the current folder (read only)."""
    monkeypatch.chdir(built)
    return built


@pytest.fixture
def own_volumes(built: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy, for tests that plot again."""
    root = tmp_path / "v"
    shutil.copytree(built, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


def plot() -> str:
    assert main(["run", "services/plotter.yaml"]) == 0
    return page_text()


def page_text() -> str:
    return Path("plots/index.html").read_text()


def summaries() -> dict[str, dict]:
    return {
        p.parent.relative_to("metrics").as_posix(): json.loads(p.read_text())
        for p in Path("metrics").rglob("summary.json")
    }


def headline_cells(page: str) -> dict[tuple[str, str], float]:
    """(run, column key) -> the exact number in the headline tables."""
    out = {}
    for table in re.findall(r"<table class='headline'.*?</table>", page, re.S):
        for run, row in re.findall(r"<tr data-run='([^']+)'[^>]*>(.*?)</tr>", table, re.S):
            for key, value in re.findall(r"data-key='(\w+)' data-value='([^']+)'", row):
                out[run, key] = float(value)
    return out


def test_one_page_every_kind_headline_numbers_equal_the_summaries(volumes):
    page = page_text()
    # grouped by kind, the registered ones by their titles, the others still shown
    assert "Curriculum RL on Countdown" in page and "Sparse updates (K-1)" in page
    assert "Runs of kind sft-mixing" in page
    assert page.index("kind-countdown-rl") < page.index("kind-k1-lm") < page.index("kind-sft")
    # every evaluated run in its kind's headline table, with the summary's numbers
    cells = headline_cells(page)
    for run, s in summaries().items():
        if "replicate" in s:  # one row for the experiment's seeds: test_seeds_...
            assert (run, "forgetting") not in cells
            continue
        for key in ("average_accuracy", "backward_transfer", "forgetting"):
            assert cells[run, key] == pytest.approx(s[key]), (run, key)
    # a run not evaluated yet says so instead of vanishing
    assert re.search(r"fresh-curriculum.*?not evaluated yet", page, re.S)
    # related runs side by side: curriculum with its control, a sweep's methods, a
    # nested sweep's branches
    assert "Side by side: exp-curriculum, exp-control" in page
    assert "Side by side: lm-k1, lm-dense, lm-random_k" in page
    assert "Side by side: mix/none, mix/replay" in page


def test_an_experiment_of_seeds_is_one_row_with_its_mean_band_and_paired_comparison(volumes):
    """Three seeds: one headline row, the mean over seeds with a Student-t interval over
    seeds, said to be over seeds; a figure with the mean, its band and each seed; the
    control compared seed by seed; a single run says its interval is over test items."""
    import statistics

    page = page_text()
    s = summaries()
    cells = headline_cells(page)
    t2 = 4.302653  # t(0.975, 2)
    for exp in ("seeded-curriculum", "seeded-control"):
        for key in ("average_accuracy", "backward_transfer", "forgetting"):
            xs = [s[f"{exp}-s{seed}"][key] for seed in SEEDS]
            assert cells[exp, key] == pytest.approx(statistics.mean(xs)), (exp, key)
            half = t2 * statistics.stdev(xs) / 3**0.5
            row = re.search(rf"<tr data-run='{exp}'.*?</tr>", page, re.S).group(0)
            lo, hi = re.search(
                rf"data-key='{key}' data-value='[^']+' data-low='([^']+)' data-high='([^']+)'",
                row,
            ).groups()
            assert (float(lo), float(hi)) == pytest.approx(
                (statistics.mean(xs) - half, statistics.mean(xs) + half)
            )
        assert "data-over='seeds'" in row and "training seeds (n = 3)" in row
    assert re.search(r"<tr data-run='exp-curriculum'[^>]*data-over='items'", page)
    assert "test items of one run" in page
    # the band figure and each seed's run, folded under the aggregate
    fig = "seeds/seeded-curriculum-average.png"
    assert fig in page and Path("plots", fig).stat().st_size > 10_000
    assert "each seed's run (6)" in page
    # the control against the curriculum, paired seed by seed
    table = re.search(
        r"<table class='comparison' data-base='seeded-curriculum' "
        r"data-other='seeded-control'>.*?</table>",
        page,
        re.S,
    ).group(0)
    d = [s[f"seeded-control-s{x}"]["average_accuracy"] - s[f"seeded-curriculum-s{x}"]
         ["average_accuracy"] for x in SEEDS]  # fmt: skip
    half = t2 * statistics.stdev(d) / 3**0.5
    beyond = statistics.mean(d) + half < 0 or statistics.mean(d) - half > 0
    assert f"data-metric='average_accuracy' data-beyond='{str(beyond).lower()}'" in table
    assert beyond  # a peak of 0.3 against 0.6 to 0.8: beyond the seed spread


def test_intervals_are_shown_and_contain_their_values(volumes):
    page = page_text()
    spans = re.findall(
        r"data-key='(\w+)' data-value='([^']+)' data-low='([^']+)' data-high='([^']+)'", page
    )
    assert len(spans) > 40
    for _, v, lo, hi in spans:
        assert float(lo) - 1e-9 <= float(v) <= float(hi) + 1e-9
    s = summaries()["exp-curriculum"]
    lo, hi = s["intervals"]["success_rate"]["forgetting"]
    assert lo <= s["forgetting"] <= hi and hi - lo > 0.01  # 60 problems: not a point
    # a success-rate cell's interval is Wilson's (n = 60), wider at 0 than a normal one
    cell = s["intervals"]["success_rate"]["matrix"][0][0]
    assert cell[0] >= 0 and cell[1] > s["matrix"][0][0]


def test_every_figure_exists_once_and_is_not_blank(volumes):
    import matplotlib.image as mpimg

    page = page_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == len(set(srcs)) >= 20
    digests = {}
    for src in srcs:
        p = Path("plots") / src
        assert p.is_file(), src
        img = mpimg.imread(p)
        assert img.shape[0] > 150 and img.shape[1] > 300 and float(np.std(img)) > 0.01, src
        digests.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(src)
    assert all(len(v) == 1 for v in digests.values()), "the same figure twice"
    # the sweep's figures are drawn once per sweep, not once per method
    assert sum("matrices" in s for s in srcs) == 1
    assert not any(s.startswith("lm-dense/eval_matrix") for s in srcs)
    # nothing half-written left behind (atomic writes)
    assert not [p for p in Path("plots").rglob("*") if ".partial" in p.name or "tmp" in p.name]


def test_figures_read_correctly(own_volumes, monkeypatch):
    """Legends never cover an axes; stage axes have one integer tick per stage; each
    training panel says what it shows, and each loss has its own axis."""
    from clab.plotting import figures

    real = figures.save
    checked = {"legends": 0, "stage_axes": 0}
    titles: dict[str, list[str]] = {}

    def check(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles[Path(path).as_posix()] = [ax.get_title(loc="left") for ax in fig.axes]
        for ax in fig.axes:
            leg = ax.get_legend()
            if leg is not None and ax.get_lines():
                a, b = ax.get_window_extent(renderer), leg.get_window_extent(renderer)
                assert b.x0 >= a.x1 - 1 or b.y0 >= a.y1 - 1, f"{path}: legend over the axes"
                checked["legends"] += 1
            if "stage" in ax.get_xlabel() and ax.get_xlabel() != "stage: corpus trained":
                ticks = ax.get_xticks()
                assert np.allclose(ticks, np.round(ticks)), f"{path}: ticks {ticks}"
                assert len(set(ticks)) == len(ticks)
                checked["stage_axes"] += 1
        return real(fig, path)

    monkeypatch.setattr(figures, "save", check)
    plot()
    assert checked["legends"] > 10 and checked["stage_axes"] >= 4
    t = titles["plots/exp-curriculum/training.png"]
    assert any(x.startswith("Training success on the group being trained") for x in t)
    assert any(x.startswith("Validation success rate (greedy) of every task") for x in t)
    assert any("n = 40" in x and "Wilson" in x for x in t)
    assert "Policy loss" in t and "Value loss (critic)" in t  # one axis each


def test_clab_report_prints_the_page_numbers(volumes, capsys):
    page = page_text()
    cells = headline_cells(page)
    assert main(["report", "exp-curriculum", "lm", "mix"]) == 0
    out = capsys.readouterr().out
    from clab.plotting.runs import Estimate

    for run in ("exp-curriculum", "lm-k1", "lm-dense", "lm-random_k", "mix/replay"):
        line = next(x for x in out.splitlines() if x.startswith(run + " "))
        s = summaries()[run]
        iv = s["intervals"][s["score"]]
        for key in ("average_accuracy", "forgetting"):
            assert cells[run, key] == pytest.approx(s[key])
            assert Estimate(s[key], tuple(iv[key])).text() in line, (run, key, line)
    assert "exp-curriculum: per task (success rate)" in out
    assert main(["report", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_a_registered_kind_plugs_in_its_figures_and_the_page_updates_in_place(own_volumes):
    from clab.plotting import figures
    from clab.plotting.registry import PAGE_KINDS, Figure, Section, register_page_kind

    assert "mixing-only figure" not in page_text()

    def run_figures(run, out):
        fig, ax = figures.plt.subplots()
        ax.plot([0, 1], [1, 0])
        return [
            Section("Losses", [Figure(figures.save(fig, out / "mine.png"), "mixing-only figure")])
        ]

    register_page_kind("sft-mixing", title="Replay mixing", run_figures=run_figures)
    try:
        page = plot()
    finally:
        PAGE_KINDS.remove("sft-mixing")
    assert "Replay mixing" in page and "mixing-only figure" in page
    assert "mix--replay/mine.png" in page and Path("plots/mix--replay/mine.png").is_file()


def test_a_sweep_of_many_branches_wraps_three_abreast_so_each_stays_readable(own_volumes):
    rng = np.random.default_rng(1)
    for branch in ("random", "easy", "hard"):  # with none and replay: five branches
        mixing_run(own_volumes, f"mix/{branch}", rng)
    page = plot()
    group = page[page.index("Side by side: mix/") :]
    group = group[: group.index("</section>")]
    assert group.count("<div class='run' ") == 5
    assert "grid-template-columns:repeat(3," in group and "repeat(5," not in group
    # pairs stay two abreast
    assert "grid-template-columns:repeat(2," in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_in_a_headless_browser(volumes, tmp_path):
    """Loads without console errors; every image loads and is displayed; the tables
    hold the summaries' numbers. Required in CI (which installs chromium)."""
    from clab.plotting.browser import find_chromium, inspect_page

    if find_chromium() is None:
        if CI:
            pytest.fail("CI=true but no chromium on PATH: .ci/run installs it")
        pytest.skip("chromium not installed here (CI installs it and runs this test)")
    shot = tmp_path / "page.png"
    rep = inspect_page(Path("plots/index.html"), screenshot=shot, shot_height=1800)
    assert rep.errors == [], rep.errors
    assert len(rep.images) >= 20
    for img in rep.images:
        assert img["complete"] and img["naturalWidth"] > 0 and img["visible"], img
    headline = [t for t in rep.tables if t["cls"] == "headline"]
    assert {t["kind"] for t in headline} == {"countdown-rl", "k1-lm", "sft-mixing"}
    s = summaries()
    for exp in ("seeded-curriculum", "seeded-control"):  # one row stands for its seeds
        runs = [s.pop(f"{exp}-s{x}") for x in SEEDS]
        s[exp] = {k: float(np.mean([r[k] for r in runs])) for k in
                  ("average_accuracy", "backward_transfer", "forgetting")}  # fmt: skip
    seen = set()
    for t in headline:
        for row in t["rows"]:
            if row["run"] not in s:
                assert "not evaluated yet" in row["cells"][1]["text"]
                continue
            assert row["over"] == ("seeds" if row["run"].startswith("seeded-") else "items")
            for c in row["cells"]:
                if c["key"] in ("average_accuracy", "backward_transfer", "forgetting"):
                    want = s[row["run"]][c["key"]]
                    assert c["value"] == pytest.approx(want)
                    shown = float(c["text"].split(" ")[0])  # what a reader sees, rounded
                    assert shown == pytest.approx(want, abs=0.051 if abs(want) > 10 else 5e-4)
            seen.add(row["run"])
    assert seen == set(s)
    assert shot.stat().st_size > 50_000
    if os.environ.get("CLAB_SCREENSHOT"):  # to refresh docs/: CLAB_SCREENSHOT=docs/page.png
        shutil.copy(shot, REPO / os.environ["CLAB_SCREENSHOT"])  # relative to the repo


# -- continual DPO ------------------------------------------------------------------------

DPO_SCORES = ("reward_score", "win_rate", "implicit_accuracy", "implicit_margin")


def dpo_run(root: Path, name: str, keep: float, rng) -> None:
    """Two preference tasks, scored as the preference scorer scores them; the second
    task's reward model is at chance level (accuracy 0.5)."""
    tasks, n = ["t0-helpful", "t1-concise"], 24

    def score(i, j):
        learned = i > j and (j == i - 1 or rng.random() < keep)
        p = 0.8 if learned else 0.5
        wins = (rng.random(n) < p).astype(float)
        wins[0] = 0.5  # a tie: the cell is not a pure success rate
        impl = (rng.random(n) < p).astype(float)
        margins = (0.3 * learned + 0.1 * rng.standard_normal(n)).tolist()
        rewards = (learned + 0.5 * rng.standard_normal(n)).tolist()
        values = [rewards, wins.tolist(), impl.tolist(), margins]
        return ScoreResult(
            values={k: float(np.mean(v)) for k, v in zip(DPO_SCORES, values, strict=True)},
            higher_is_better=dict.fromkeys(DPO_SCORES, True),
            primary="reward_score",
            n=n,
            items=dict(zip(DPO_SCORES, values, strict=True)),
        )

    samples = [
        {"stage": i, "stage_name": f"s{i}", "task": j, "prompt": f"p{k} <b>bold</b> & co",
         "response": f"<script>alert({i})</script>\x07 r{k}", "reward": 0.1 * k,
         "baseline_response": "<i>base</i>", "baseline_reward": 0.0}
        for i in range(3) for j in range(2) for k in range(3)
    ]  # fmt: skip
    train = [
        {"global_step": s, "step_in_stage": (s - 1) % 5 + 1, "stage": (s - 1) // 5 + 1,
         "task": (s - 1) // 5, "loss": 0.69 - 0.02 * s, "rewards/accuracies": 0.5 + 0.04 * s}
        for s in range(1, 11)
    ]  # fmt: skip
    write_run(root, name, "continual-dpo", tasks, score, train, samples=samples)
    write_json(
        root / "metrics" / name / "reward_models.json",
        {"run": name, "tasks": {
            "t0-helpful": {"accuracy": 0.9, "n_test": 40, "interval": [0.77, 0.96],
                           "chance_level": False, "reused_from": None},
            "t1-concise": {"accuracy": 0.5, "n_test": 40, "reused_from": None},
        }},
    )  # fmt: skip


@pytest.fixture(scope="module")
def dpo_page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    rng = np.random.default_rng(1)
    (root / "services").symlink_to(REPO / "services")
    dpo_run(root, "demo-dpo", 0.2, rng)
    dpo_run(root, "demo-dpo-ewc", 0.9, rng)
    old = os.getcwd()
    os.chdir(root)
    try:
        plot()
    finally:
        os.chdir(old)
    return root


def test_the_dpo_section_has_every_score_once_warnings_and_escaped_samples(dpo_page):
    page = (dpo_page / "plots/index.html").read_text()
    assert "Continual DPO" in page and "kind-continual-dpo" in page
    assert "Side by side: demo-dpo, demo-dpo-ewc" in page  # plain first, EWC beside it
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == len(set(srcs))
    for run in ("demo-dpo", "demo-dpo-ewc"):
        for score in DPO_SCORES:
            for fig in ("eval_matrix", "forgetting"):
                assert srcs.count(f"{run}/{fig}-{score}.png") == 1, (run, fig, score)
        assert srcs.count(f"{run}/reward-models.png") == 1
        assert srcs.count(f"{run}/training.png") == 1
    assert srcs.count("compare/demo-dpo-dpo-average.png") == 1
    for score in DPO_SCORES:
        assert srcs.count(f"compare/demo-dpo-forgetting-{score}.png") == 1
    for src in srcs:
        assert (dpo_page / "plots" / src).stat().st_size > 10_000, src
    # the reward model at 0.5 is flagged (no interval stored: Wilson from n), once per run;
    # the one well above chance is not
    warnings = re.findall(r"<p class='missing warning' data-task='([^']+)'>", page)
    assert warnings == ["t1-concise", "t1-concise"]
    assert "reward model t1-concise is at chance level" in page
    assert "reward model t0-helpful is at chance level" not in page
    # samples: escaped, control characters made visible, a few per checkpoint and task
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "p0 &lt;b&gt;bold&lt;/b&gt; &amp; co" in page and "\x07" not in page
    assert page.count("&lt;script&gt;alert(2)") == 2 * 2 * 2  # runs x tasks x shown
    # the headline holds each run's reward score from its summary
    cells = headline_cells(page)
    for run in ("demo-dpo", "demo-dpo-ewc"):
        s = json.loads((dpo_page / "metrics" / run / "summary.json").read_text())
        assert s["score"] == "reward_score"
        assert cells[run, "forgetting"] == pytest.approx(s["forgetting"])


def test_a_stage_scored_nan_is_summarized_and_shown_not_left_stale(own_volumes, capsys):
    """A diverged model's NaN loss: the summary still covers every stage, with that
    cell and what reads it undefined, the evaluator says which cell, the page draws it."""
    rng = np.random.default_rng(2)

    def score(i, j):
        losses = (2.0 + 0.1 * rng.standard_normal(20)).tolist()
        if (i, j) == (2, 0):
            losses = [math.nan] * 20
        return ScoreResult(
            values={"answer_loss": float(np.mean(losses))},
            higher_is_better={"answer_loss": False},
            primary="answer_loss",
            n=20,
            items={"answer_loss": losses},
        )

    write_run(own_volumes, "mix/diverged", "sft-mixing", ["math", "hotpot"], score)
    assert "r0-g1 scored answer_loss on math as nan" in capsys.readouterr().err
    s = summaries()["mix/diverged"]
    assert s["stages"] == 2 and s["matrix"][2][0] is None and s["matrix"][1][0] is not None
    assert s["forgetting_per_task"] == {"0": None}
    page = plot()
    assert "mix/diverged" in page
