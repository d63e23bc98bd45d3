"""The ``evaluate`` kind (service ``evaluator``): every stage on every task.

Finds the runs under ``checkpoints/`` (those with a ``run.json``), and scores
each complete stage checkpoint not yet in ``metrics/<run>/eval.parquet`` on
every task of the run, with the scorer its ``run.json`` names for the task
(``clab.evaluation.scorers``: Countdown success, SFT answer loss, ...). The
initial checkpoint is stage 0, the baseline of forward transfer. The
settings that shape a score are stored beside the results; a rerun with
other settings is refused, or (``rescore: true``) moves the old results
aside and scores everything again, so results of two settings never mix. Results are
rewritten atomically after each stage, so a crash loses at most the stage in
progress and a rerun adds only what is missing; only stages whose
``COMPLETE`` marker exists are read, so running beside a live trainer is safe.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field
from tqdm import tqdm

from clab.data.countdown.reading import check_dataset
from clab.data.manifest import dataset_digest
from clab.errors import ClabError
from clab.evaluation.experiments import seed_table
from clab.evaluation.scorers import SCORERS, ModelHandle, ScoreSettings
from clab.generation.rollout import require_vllm
from clab.metrics.continual import summarize
from clab.metrics.intervals import cell_interval, continual_intervals
from clab.models.loading import check_weights
from clab.runs.lock import RunLock
from clab.specs import KIND_HELP, Spec
from clab.storage.atomic import read_json, read_parquet_rows, write_json, write_parquet, write_text
from clab.storage.layout import RUN_INFO, Stage, aside_path, complete_stages

EVAL_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("stage", pa.int64()),
        ("stage_name", pa.string()),
        ("round", pa.int64()),
        ("trained_task", pa.int64()),  # -1 for stage 0 (the initial model)
        ("task", pa.int64()),  # index into run.json's tasks
        ("task_name", pa.string()),
        ("scorer", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("n", pa.int64()),
        ("higher_is_better", pa.bool_()),
        ("primary", pa.bool_()),
        # the value's 95% interval (Wilson for a success rate, else a bootstrap over
        # items; docs/metrics.md); null in results scored before items were kept
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("ci_method", pa.string()),
    ]
)
# one row per (stage, task, value, test item): what intervals are computed from
ITEMS_SCHEMA = pa.schema(
    [
        ("stage", pa.int64()),
        ("task", pa.int64()),
        ("metric", pa.string()),
        ("item", pa.int64()),
        ("value", pa.float64()),
        ("weight", pa.float64()),  # null: items weigh the same
        ("aggregate", pa.string()),  # mean | exp_mean
    ]
)
SETTINGS_FILE = "eval_settings.json"
ITEMS_FILE = "items.parquet"


class EvaluateSpec(Spec):
    """Spec of the evaluator."""

    kind: Literal["evaluate"] = Field("evaluate", description=KIND_HELP)
    checkpoints: Path = Field(Path("checkpoints"), description="where the runs are")
    metrics: Path = Field(Path("metrics"), description="where eval results go")
    runs: list[str] | None = Field(None, description="runs to evaluate; null: every run found")
    test_size: int | None = Field(None, ge=1, description="test rows per task; null: all")
    max_new_tokens: int | None = Field(None, ge=1, description="null: each task's own")
    batch_size: int = Field(
        64, ge=1, description="prompts per generate call: larger is faster while memory holds"
    )
    samples_per_group: int = Field(3, ge=0, description="generations kept per task and stage")
    use_gpu: bool = Field(True, description="as Compose reserves a GPU; false on a CPU machine")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute dtype of every engine; auto: bfloat16 on GPU, float32 on CPU"
    )
    engine: Literal["auto", "hf", "hf-static", "vllm"] = Field(
        "auto",
        description="auto: vLLM where it is installed and a GPU is visible, else hf-static on "
        "a GPU (static KV cache, decode step compiled once for every checkpoint), hf on CPU",
    )
    rescore: bool = Field(
        False,
        description="settings differ from the stored results: move those aside and rescore all",
    )

    def reads(self) -> list[Path]:
        return [self.checkpoints, Path("data")]

    def writes(self) -> list[Path]:
        return [self.metrics]

    def settings(self) -> ScoreSettings:
        import torch

        device = "cuda" if self.use_gpu and torch.cuda.is_available() else "cpu"
        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device == "cuda" else "float32"
        engine = self.engine
        if engine == "auto":
            has_vllm = importlib.util.find_spec("vllm") is not None
            engine = ("vllm" if has_vllm else "hf-static") if device == "cuda" else "hf"
        return ScoreSettings(
            test_size=self.test_size,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            samples=self.samples_per_group,
            dtype=dtype,
            device=device,
            engine=engine,
        )

    def run(self) -> None:
        if self.engine == "vllm":
            require_vllm("engine")
        if self.use_gpu:
            import torch

            if not torch.cuda.is_available():
                raise ClabError("use_gpu: true, but no CUDA device is visible (set use_gpu: false)")
        runs = find_runs(self.checkpoints, self.runs)
        if not runs:
            raise ClabError(
                f"checkpoints: no runs under {self.checkpoints}/ (a run folder holds run.json): "
                "train one first (e.g. docker compose up curriculum-trainer-1.5b)"
            )
        for run_dir in runs:
            name = run_name(self.checkpoints, run_dir)
            with RunLock(self.metrics / name, "evaluator", name=".eval.lock"):
                evaluate_run(self, run_dir, name)

        print(seed_table(self.metrics, [run_name(self.checkpoints, r) for r in runs]), end="")


def run_name(root: Path, run_dir: Path) -> str:
    """A run's name: its folder under ``checkpoints/``, ``<sweep>/<branch>`` when nested."""
    return run_dir.relative_to(root).as_posix()


def _runs_in(d: Path) -> list[Path]:
    """A run folder (holding run.json), or a sweep folder's runs one level down."""
    if (d / RUN_INFO).is_file():
        return [d]
    if d.is_dir():
        return sorted(c for c in d.iterdir() if (c / RUN_INFO).is_file())
    return []


def find_runs(root: Path, names: list[str] | None) -> list[Path]:
    """The runs under ``root``: folders holding run.json, and those one level down in a
    sweep folder (``checkpoints/<sweep>/<branch>/run.json``). A name may be a run,
    ``<sweep>/<branch>``, or a sweep (all its branches)."""
    if names is not None:
        missing = [n for n in names if not _runs_in(root / n)]
        if missing:
            raise ClabError(f"runs: no run {', '.join(missing)} under {root}/ (no run.json)")
        return [r for n in names for r in _runs_in(root / n)]
    if not root.is_dir():
        return []
    return [r for d in sorted(root.iterdir()) if not d.name.startswith(".") for r in _runs_in(d)]


def read_eval(path: Path) -> list[dict]:
    return read_parquet_rows(path) if path.is_file() else []


def run_tasks(info: dict) -> list[dict]:
    """The run's tasks from run.json; runs written before tasks were recorded
    (Countdown only) get theirs from the data set and group keys."""
    if "tasks" in info:
        return info["tasks"]
    if not {"groups", "data_dir"} <= set(info):
        raise ClabError("run.json: no 'tasks' (nor the older Countdown keys): not clab's file?")
    return [
        {
            "name": f"g{g}",
            "scorer": "countdown",
            "config": {
                "data_dir": info["data_dir"],
                "group": g,
                "enforce_ops": info["enforce_ops"],
                "max_prompt_length": info["max_prompt_length"],
                "max_response_length": info["max_response_length"],
            },
        }
        for g in info["groups"]
    ]


def _check_settings(spec: EvaluateSpec, out_dir: Path, stored: dict) -> None:
    """A rerun scores with the settings of the stored results, or not at all."""
    path = out_dir / SETTINGS_FILE
    if not path.is_file() or not (out_dir / "eval.parquet").is_file():
        return
    old = json.loads(path.read_text())
    diff = [
        f"{k}: {old.get(k)!r} -> {stored.get(k)!r}"
        for k in sorted(old.keys() | stored.keys())
        if old.get(k) != stored.get(k)
    ]
    if not diff and not (spec.rescore and not (out_dir / ITEMS_FILE).is_file()):
        return  # (rescore: true with the same settings rescores results that lack items)
    if not spec.rescore:
        raise ClabError(
            f"{out_dir}: stored results were scored with other settings ({'; '.join(diff)}); "
            "mixing them would corrupt the matrix. Rerun with the stored settings, or with "
            "rescore: true (--set rescore=true) to move them aside and score every stage again"
        )
    aside = aside_path(out_dir / "eval")  # the results share their folder with training's
    aside.mkdir(parents=True)
    for name in ("eval.parquet", "samples.jsonl", "summary.json", SETTINGS_FILE, ITEMS_FILE):
        if (out_dir / name).exists():
            os.replace(out_dir / name, aside / name)
    print(f"clab: moved the old results of {out_dir.name} aside to {aside}", flush=True)


# Scores of this process by (the weight files' identity, task, settings). A mixing sweep's
# branches share phase A's stages as hard links: each is scored once, not once per branch.
_SCORED: dict[tuple, object] = {}


def weights_identity(stage_dir: Path) -> tuple:
    """The same files (hard links included) give the same identity; a rewrite does not."""
    out = []
    for f in sorted(Path(stage_dir).glob("*.safetensors")):
        st = f.stat()
        out.append((f.name, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def check_trained_on(info: dict, tasks: list[dict], run_dir: Path) -> None:
    """The run's Countdown data set is the one it trained on (run.json's ``inputs``,
    recorded since 2026-12-05): else its stages would be scored on test problems it
    never had, in a matrix whose earlier stages had the old ones."""
    inputs, spec = info.get("inputs"), info.get("spec")
    trained_on = inputs.get("data.dir") if isinstance(inputs, dict) else None
    data = spec.get("data") if isinstance(spec, dict) else None
    run_data = data.get("dir") if isinstance(data, dict) else None
    if trained_on is None or run_data is None:
        return
    for t in tasks:
        data_dir = Path(t["config"]["data_dir"])
        if t["scorer"] == "countdown" and data_dir == Path(run_data):
            if dataset_digest(data_dir) != trained_on:
                raise ClabError(
                    f"{run_dir}: the data set at {data_dir} is not the one this run trained "
                    "on (its files changed since the run started: regenerated with another "
                    "seed or other settings?); its test problems would not be the run's. "
                    "Regenerate it as it was, or leave the run out of the evaluator's runs"
                )
            return


def evaluate_run(spec: EvaluateSpec, run_dir: Path, name: str | None = None) -> dict | None:
    info = read_json(run_dir / RUN_INFO)
    name = name or run_dir.name
    try:
        tasks = run_tasks(info)
    except ClabError as e:
        raise ClabError(f"{run_dir}/{e}") from None
    scorers = [SCORERS[t["scorer"]] for t in tasks]
    for t in tasks:
        if t["scorer"] == "countdown":
            check_dataset(Path(t["config"]["data_dir"]), [t["config"]["group"]])
    settings = spec.settings()
    stored = {**settings.shaping(), "tasks": tasks}
    out_dir = spec.metrics / name
    _check_settings(spec, out_dir, stored)
    eval_path, samples_path = out_dir / "eval.parquet", out_dir / "samples.jsonl"
    items_path = out_dir / ITEMS_FILE
    rows = read_eval(eval_path)
    # results kept from before items were stored have none; new stages add theirs
    item_rows = read_eval(items_path)
    done = {r["stage"] for r in rows}
    samples = samples_path.read_text() if samples_path.is_file() else ""
    todo = [(s, d) for s, d in complete_stages(run_dir) if s.index not in done]
    if todo:  # a run scored in full keeps its results whatever its data set became since
        check_trained_on(info, tasks, run_dir)
    write_json(out_dir / SETTINGS_FILE, stored)
    bar = tqdm(total=len(todo) * len(tasks), desc=f"evaluate {name}", unit="task")
    for stage, stage_dir in todo:
        check_weights(stage_dir)
        handle = ModelHandle(stage_dir, settings)
        trained = stage.task if stage.index else -1
        identity = weights_identity(stage_dir)
        for j, (task, scorer) in enumerate(zip(tasks, scorers, strict=True)):
            key = (identity, json.dumps(task, sort_keys=True), json.dumps(settings.shaping()))
            res = _SCORED.get(key) if identity else None
            if res is None:
                res = _SCORED[key] = scorer(handle, task["config"], settings)
            new, new_items = result_rows(
                res,
                run=name,
                stage=stage,
                stage_name=stage_dir.name,
                trained=trained,
                task_index=j,
                task=task,
            )
            rows += new
            item_rows += new_items
            samples += "".join(
                json.dumps({"stage": stage.index, "stage_name": stage_dir.name, "task": j, **x})
                + "\n"
                for x in res.samples
            )
            bar.update()
        handle.close()
        rows.sort(key=lambda r: (r["stage"], r["task"], r["metric"]))
        write_parquet(eval_path, pa.Table.from_pylist(rows, schema=EVAL_SCHEMA))
        if item_rows:
            write_parquet(items_path, pa.Table.from_pylist(item_rows, schema=ITEMS_SCHEMA))
        write_text(samples_path, samples)
    bar.close()
    return write_summary(
        out_dir,
        name,
        rows,
        [t["name"] for t in tasks],
        item_rows,
        settings.shaping(),
        info.get("kind"),
        info.get("replicate"),
    )


def write_summary(
    out_dir: Path,
    name: str,
    rows: list[dict],
    task_names: list[str],
    item_rows: list[dict],
    settings: dict,
    kind: str | None,
    replicate: dict | None = None,
) -> dict | None:
    """summary.json: the metrics of every value with their intervals, the settings and
    the run's kind and its place among an experiment's seeds (so the page groups runs
    whose checkpoints are elsewhere)."""
    summary = summary_from_rows(rows, task_names, item_rows)
    if summary is not None:
        summary["settings"] = settings
        summary["kind"] = kind
        if replicate is not None:
            summary["replicate"] = replicate
        write_json(out_dir / "summary.json", {"run": name, **summary})
    bad = [r for r in rows if r["value"] is None or not math.isfinite(r["value"])]
    for r in bad:
        print(
            f"clab: {name}: {r['stage_name']} scored {r['metric']} on {r['task_name']} as "
            f"{r['value']} (a diverged model?): the cell and every metric that reads it "
            "are left undefined",
            file=sys.stderr,
            flush=True,
        )
    return summary


def result_rows(
    res,
    *,
    run: str,
    stage: Stage,
    stage_name: str,
    trained: int,
    task_index: int,
    task: dict,
) -> tuple[list[dict], list[dict]]:
    """One scorer result as eval.parquet rows (one per value, with its 95% interval)
    and items.parquet rows (one per value and test item)."""
    rows, item_rows = [], []
    for metric, value in res.values.items():
        items = res.items.get(metric)
        weights = res.item_weights.get(metric)
        how = res.aggregate.get(metric, "mean")
        ci, method = cell_interval(
            float(value),
            res.n,
            None if items is None else np.asarray(items, dtype=float),
            None if weights is None else np.asarray(weights, dtype=float),
            how,
            success_rate=metric == "success_rate",
        )
        item_rows += [
            {
                "stage": stage.index,
                "task": task_index,
                "metric": metric,
                "item": i,
                "value": float(v),
                "weight": None if weights is None else float(weights[i]),
                "aggregate": how,
            }
            for i, v in enumerate(items or [])
        ]
        rows.append(
            {
                "run": run,
                "stage": stage.index,
                "stage_name": stage_name,
                "round": stage.round,
                "trained_task": trained,
                "task": task_index,
                "task_name": task["name"],
                "scorer": task["scorer"],
                "metric": metric,
                "value": float(value),
                "n": res.n,
                "higher_is_better": res.higher_is_better[metric],
                "primary": metric == res.primary,
                "ci_low": None if ci is None else ci[0],
                "ci_high": None if ci is None else ci[1],
                "ci_method": method,
            }
        )
    return rows, item_rows


def value_matrix(rows: list[dict], metric: str, n_tasks: int) -> tuple[np.ndarray, list] | None:
    """R[stage, task] of one metric from eval rows, if every cell of stages 0..T is
    present. A cell scored NaN (a diverged model) stays NaN: the summary then shows
    the stage, with that cell and the metrics that read it undefined, rather than
    leaving the last summary on disk as if the stage had not been scored."""
    rows = [r for r in rows if r["metric"] == metric]
    stages = sorted({r["stage"] for r in rows})
    if not stages or stages != list(range(len(stages))):
        return None
    R = np.full((len(stages), n_tasks), np.nan)
    seen = np.zeros(R.shape, dtype=bool)
    trained: list = [None] * len(stages)
    for r in rows:
        R[r["stage"], r["task"]] = np.nan if r["value"] is None else r["value"]
        seen[r["stage"], r["task"]] = True
        if r["stage"]:
            trained[r["stage"]] = r["trained_task"]
    if not seen.all():
        return None
    return R, trained


def item_arrays(
    item_rows: list[dict], metric: str, n_stages: int, n_tasks: int
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray | None], dict[int, str]] | None:
    """Per task, one metric's items as a (stages, items) array (with weights and the
    aggregate rule), if every stage 0..T stored the same number of items."""
    mine = [r for r in item_rows if r["metric"] == metric]
    if not mine:
        return None
    items: dict[int, np.ndarray] = {}
    weights: dict[int, np.ndarray | None] = {}
    how: dict[int, str] = {}
    for j in range(n_tasks):
        cells = [[r for r in mine if r["task"] == j and r["stage"] == i] for i in range(n_stages)]
        sizes = {len(c) for c in cells}
        if len(sizes) != 1 or 0 in sizes:
            return None
        cells = [sorted(c, key=lambda r: r["item"]) for c in cells]
        items[j] = np.array([[r["value"] for r in c] for c in cells], dtype=float)
        has_w = cells[0][0]["weight"] is not None
        weights[j] = (
            np.array([[r["weight"] for r in c] for c in cells], dtype=float) if has_w else None
        )
        how[j] = cells[0][0].get("aggregate") or "mean"
    return items, weights, how


def summary_from_rows(
    rows: list[dict], task_names: list[str], item_rows: list[dict] | None = None
) -> dict | None:
    """The continual-learning metrics of every scored value; the top level is the
    primary value's (the one each task's scorer names first).

    With per-item results, ``intervals.<value>`` holds each metric's 95% interval
    (paired bootstrap over items) and each cell's (``matrix``: Wilson or bootstrap,
    as stored in eval.parquet); without them, success-rate cells still get Wilson.
    """
    if not rows:
        return None
    metrics = sorted({r["metric"] for r in rows})
    direction = {r["metric"]: r["higher_is_better"] for r in rows}
    primary = next(r["metric"] for r in rows if r["primary"])
    scores, intervals = {}, {}
    for metric in metrics:
        m = value_matrix(rows, metric, len(task_names))
        if m is not None:
            R, trained = m
            scores[metric] = summarize(R, trained, higher_is_better=direction[metric])
            intervals[metric] = _intervals(rows, item_rows or [], metric, R, trained, direction)
    if primary not in scores:
        return None
    n = {r["task_name"]: r["n"] for r in rows if r["metric"] == primary}
    n_items = {
        task_names[j]: int(v.shape[1])
        for j, v in (intervals[primary].pop("_items", None) or {}).items()
    }
    for iv in intervals.values():
        iv.pop("_items", None)
    return {
        **scores[primary],
        "score": primary,
        "task_names": task_names,
        "groups": task_names,
        "n_per_task": n,
        "n_items_per_task": n_items or n,
        "scores": scores,
        "intervals": intervals,
    }


def _intervals(
    rows: list[dict], item_rows: list[dict], metric: str, R: np.ndarray, trained, direction
) -> dict:
    cells: list[list[list[float] | None]] = [[None] * R.shape[1] for _ in range(R.shape[0])]
    method = None
    for r in rows:
        if r["metric"] != metric:
            continue
        lo, hi = r.get("ci_low"), r.get("ci_high")
        if lo is None and metric == "success_rate":  # scored before intervals were stored
            ci, method = cell_interval(r["value"], r["n"], success_rate=True)
            lo, hi = ci if ci else (None, None)
        if lo is not None:
            cells[r["stage"]][r["task"]] = [lo, hi]
            method = r.get("ci_method") or method or "wilson"
    out: dict = {"matrix": cells, "cell_method": method}
    arrays = item_arrays(item_rows, metric, R.shape[0], R.shape[1])
    if arrays is not None and R.shape[0] > 1:
        items, weights, how = arrays
        out.update(continual_intervals(items, weights, how, trained, direction[metric]))
        out["method"] = "paired bootstrap over items"
        out["_items"] = items
    return out
