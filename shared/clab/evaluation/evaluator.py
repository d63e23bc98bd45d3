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
import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from tqdm import tqdm

from clab.data.countdown.reading import check_dataset
from clab.errors import ClabError
from clab.evaluation.scorers import ModelHandle, ScoreSettings, get_scorer
from clab.metrics.continual import summarize
from clab.models.loading import check_weights
from clab.runs.lock import RunLock
from clab.specs import Spec
from clab.storage.atomic import write_json, write_parquet, write_text
from clab.storage.layout import RUN_INFO, complete_stages

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
    ]
)
SETTINGS_FILE = "eval_settings.json"


class EvaluateSpec(Spec):
    """Spec of the evaluator."""

    kind: Literal["evaluate"] = "evaluate"
    checkpoints: Path = Field(Path("checkpoints"), description="where the runs are")
    metrics: Path = Field(Path("metrics"), description="where eval results go")
    runs: list[str] | None = Field(None, description="runs to evaluate; null: every run found")
    test_size: int | None = Field(None, ge=1, description="test rows per task; null: all")
    max_new_tokens: int | None = Field(None, ge=1, description="null: each task's own")
    batch_size: int = Field(64, ge=1)
    samples_per_group: int = Field(3, ge=0, description="generations kept per task and stage")
    use_gpu: bool = Field(True, description="as Compose reserves a GPU; false on a CPU machine")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute dtype of every engine; auto: bfloat16 on GPU, float32 on CPU"
    )
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="auto: vLLM where it is installed and a GPU is visible, else HF"
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
            engine = "vllm" if device == "cuda" and has_vllm else "hf"
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
            from clab.generation.rollout import require_vllm

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
            with RunLock(self.metrics / run_dir.name, "evaluator", name=".eval.lock"):
                evaluate_run(self, run_dir)


def find_runs(root: Path, names: list[str] | None) -> list[Path]:
    if names is not None:
        missing = [n for n in names if not (root / n / RUN_INFO).is_file()]
        if missing:
            raise ClabError(f"runs: no run {', '.join(missing)} under {root}/ (no run.json)")
        return [root / n for n in names]
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if (d / RUN_INFO).is_file())


def read_eval(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.is_file() else []


def run_tasks(info: dict) -> list[dict]:
    """The run's tasks from run.json; runs written before tasks were recorded
    (Countdown only) get theirs from the data set and group keys."""
    if "tasks" in info:
        return info["tasks"]
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
    if not diff:
        return
    if not spec.rescore:
        raise ClabError(
            f"{out_dir}: stored results were scored with other settings ({'; '.join(diff)}); "
            "mixing them would corrupt the matrix. Rerun with the stored settings, or with "
            "rescore: true (--set rescore=true) to move them aside and score every stage again"
        )
    aside = out_dir / f"eval.old-{time.strftime('%Y%m%d-%H%M%S')}"
    aside.mkdir(parents=True)
    for name in ("eval.parquet", "samples.jsonl", "summary.json", SETTINGS_FILE):
        if (out_dir / name).exists():
            os.replace(out_dir / name, aside / name)
    print(f"clab: moved the old results of {out_dir.name} aside to {aside}", flush=True)


def evaluate_run(spec: EvaluateSpec, run_dir: Path) -> dict | None:
    info = json.loads((run_dir / RUN_INFO).read_text())
    name = run_dir.name
    tasks = run_tasks(info)
    scorers = [get_scorer(t["scorer"]) for t in tasks]
    for t in tasks:
        if t["scorer"] == "countdown":
            check_dataset(Path(t["config"]["data_dir"]), [t["config"]["group"]])
    settings = spec.settings()
    stored = {**settings.shaping(), "tasks": tasks}
    out_dir = spec.metrics / name
    _check_settings(spec, out_dir, stored)
    eval_path, samples_path = out_dir / "eval.parquet", out_dir / "samples.jsonl"
    rows = read_eval(eval_path)
    done = {r["stage"] for r in rows}
    samples = samples_path.read_text() if samples_path.is_file() else ""
    todo = [(s, d) for s, d in complete_stages(run_dir) if s.index not in done]
    write_json(out_dir / SETTINGS_FILE, stored)
    bar = tqdm(total=len(todo) * len(tasks), desc=f"evaluate {name}", unit="task")
    for stage, stage_dir in todo:
        check_weights(stage_dir)
        handle = ModelHandle(stage_dir, settings)
        trained = stage.task if stage.index else -1
        for j, (task, scorer) in enumerate(zip(tasks, scorers, strict=True)):
            res = scorer(handle, task["config"], settings)
            for metric, value in res.values.items():
                rows.append(
                    {
                        "run": name,
                        "stage": stage.index,
                        "stage_name": stage_dir.name,
                        "round": stage.round,
                        "trained_task": trained,
                        "task": j,
                        "task_name": task["name"],
                        "scorer": task["scorer"],
                        "metric": metric,
                        "value": float(value),
                        "n": res.n,
                        "higher_is_better": res.higher_is_better[metric],
                        "primary": metric == res.primary,
                    }
                )
            samples += "".join(
                json.dumps({"stage": stage.index, "stage_name": stage_dir.name, "task": j, **x})
                + "\n"
                for x in res.samples
            )
            bar.update()
        handle.close()
        rows.sort(key=lambda r: (r["stage"], r["task"], r["metric"]))
        write_parquet(eval_path, pa.Table.from_pylist(rows, schema=EVAL_SCHEMA))
        write_text(samples_path, samples)
    bar.close()
    summary = summary_from_rows(rows, [t["name"] for t in tasks])
    if summary is not None:
        summary["settings"] = settings.shaping()
        write_json(out_dir / "summary.json", {"run": name, **summary})
    return summary


def value_matrix(rows: list[dict], metric: str, n_tasks: int) -> tuple[np.ndarray, list] | None:
    """R[stage, task] of one metric from eval rows, if stages 0..T are all present."""
    rows = [r for r in rows if r["metric"] == metric]
    stages = sorted({r["stage"] for r in rows})
    if not stages or stages != list(range(len(stages))):
        return None
    R = np.full((len(stages), n_tasks), np.nan)
    trained: list = [None] * len(stages)
    for r in rows:
        R[r["stage"], r["task"]] = r["value"]
        if r["stage"]:
            trained[r["stage"]] = r["trained_task"]
    if np.isnan(R).any():
        return None
    return R, trained


def summary_from_rows(rows: list[dict], task_names: list[str]) -> dict | None:
    """The continual-learning metrics of every scored value; the top level is the
    primary value's (the one each task's scorer names first)."""
    if not rows:
        return None
    metrics = sorted({r["metric"] for r in rows})
    direction = {r["metric"]: r["higher_is_better"] for r in rows}
    primary = next(r["metric"] for r in rows if r["primary"])
    scores = {}
    for metric in metrics:
        m = value_matrix(rows, metric, len(task_names))
        if m is not None:
            R, trained = m
            scores[metric] = summarize(R, trained, higher_is_better=direction[metric])
    if primary not in scores:
        return None
    n = {r["task_name"]: r["n"] for r in rows if r["metric"] == primary}
    return {
        **scores[primary],
        "score": primary,
        "task_names": task_names,
        "groups": task_names,
        "n_per_task": n,
        "scores": scores,
    }
