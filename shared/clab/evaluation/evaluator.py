"""The ``evaluate`` kind (service ``evaluator``): every stage on every task.

Finds the runs under ``checkpoints/`` (those with a ``run.json``), and scores
each complete stage checkpoint not yet in ``metrics/<run>/eval.parquet`` on
every group's test set: greedy generation, scored by the shared reward. The
initial checkpoint is stage 0, the baseline of forward transfer. Results are
rewritten atomically after each stage, so a crash loses at most the stage in
progress and a rerun adds only what is missing; only stages whose
``COMPLETE`` marker exists are read, so running beside a live trainer is safe.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from tqdm import tqdm

from clab.data.countdown.reading import check_dataset, read_group
from clab.errors import ClabError
from clab.metrics.continual import summarize
from clab.specs import Spec
from clab.storage.atomic import write_json, write_parquet, write_text
from clab.storage.layout import RUN_INFO, complete_stages

EVAL_SCHEMA = pa.schema(
    [
        ("run", pa.string()),
        ("stage", pa.int64()),
        ("stage_name", pa.string()),
        ("round", pa.int64()),
        ("trained_group", pa.int64()),  # -1 for stage 0 (the initial model)
        ("eval_group", pa.int64()),
        ("n", pa.int64()),
        ("success_rate", pa.float64()),
        ("reward_mean", pa.float64()),
        ("response_length_mean", pa.float64()),
    ]
)


class EvaluateSpec(Spec):
    """Spec of the evaluator."""

    kind: Literal["evaluate"] = "evaluate"
    checkpoints: Path = Field(Path("checkpoints"), description="where the runs are")
    metrics: Path = Field(Path("metrics"), description="where eval results go")
    runs: list[str] | None = Field(None, description="runs to evaluate; null: every run found")
    test_size: int | None = Field(None, ge=1, description="test rows per group; null: all")
    max_new_tokens: int | None = Field(None, ge=1, description="null: the run's response length")
    batch_size: int = Field(64, ge=1)
    samples_per_group: int = Field(3, ge=0, description="generations kept per group and stage")
    use_gpu: bool = False
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="auto: vLLM where it is installed and a GPU is visible, else HF"
    )

    def reads(self) -> list[Path]:
        return [self.checkpoints, Path("data")]

    def writes(self) -> list[Path]:
        return [self.metrics]

    def run(self) -> None:
        if self.engine == "vllm":
            from clab.generation.rollout import require_vllm

            require_vllm("engine")
        runs = find_runs(self.checkpoints, self.runs)
        if not runs:
            raise ClabError(
                f"checkpoints: no runs under {self.checkpoints}/ (a run folder holds run.json): "
                "train one first (e.g. docker compose up curriculum-trainer-1.5b)"
            )
        for run_dir in runs:
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


def evaluate_run(spec: EvaluateSpec, run_dir: Path) -> dict | None:
    import torch

    from clab.evaluation.countdown import VLLMEvaluator, evaluate_problems
    from clab.models.loading import load_policy, load_tokenizer

    info = json.loads((run_dir / RUN_INFO).read_text())
    name = run_dir.name
    data_dir, groups = Path(info["data_dir"]), info["groups"]
    check_dataset(data_dir, groups)
    out_dir = spec.metrics / name
    eval_path, samples_path = out_dir / "eval.parquet", out_dir / "samples.jsonl"
    rows = read_eval(eval_path)
    done = {r["stage"] for r in rows}
    samples = samples_path.read_text() if samples_path.is_file() else ""
    todo = [(s, d) for s, d in complete_stages(run_dir) if s.index not in done]
    tests = {g: read_group(data_dir, g, "test", spec.test_size) for g in groups}
    device = "cuda" if spec.use_gpu and torch.cuda.is_available() else "cpu"
    max_new = spec.max_new_tokens or info["max_response_length"]
    use_vllm = spec.engine == "vllm" or (
        spec.engine == "auto" and device == "cuda" and importlib.util.find_spec("vllm") is not None
    )
    bar = tqdm(
        total=len(todo) * len(groups), desc=f"evaluate {name}", unit="group", dynamic_ncols=True
    )
    for stage, stage_dir in todo:
        if use_vllm:
            engine = VLLMEvaluator(stage_dir, info["max_prompt_length"] + max_new)
        else:
            model = load_policy(stage_dir).to(device)
            tok = load_tokenizer(stage_dir)
        trained = groups[stage.task] if stage.index else -1
        for g in groups:
            res = (
                engine.evaluate(
                    tests[g],
                    max_new_tokens=max_new,
                    enforce_ops=info["enforce_ops"],
                    n_samples=spec.samples_per_group,
                )
                if use_vllm
                else evaluate_problems(
                    model,
                    tok,
                    tests[g],
                    max_prompt_length=info["max_prompt_length"],
                    max_new_tokens=max_new,
                    batch_size=spec.batch_size,
                    enforce_ops=info["enforce_ops"],
                    n_samples=spec.samples_per_group,
                )
            )
            rows.append(
                {
                    "run": name,
                    "stage": stage.index,
                    "stage_name": stage_dir.name,
                    "round": stage.round,
                    "trained_group": trained,
                    "eval_group": g,
                    "n": res["n"],
                    "success_rate": res["success_rate"],
                    "reward_mean": res["reward_mean"],
                    "response_length_mean": res["response_length_mean"],
                }
            )
            samples += "".join(
                json.dumps(
                    {"stage": stage.index, "stage_name": stage_dir.name, "eval_group": g, **s}
                )
                + "\n"
                for s in res["samples"]
            )
            bar.update()
        rows.sort(key=lambda r: (r["stage"], r["eval_group"]))
        write_parquet(eval_path, pa.Table.from_pylist(rows, schema=EVAL_SCHEMA))
        write_text(samples_path, samples)
    bar.close()
    summary = summary_from_rows(rows, groups)
    if summary is not None:
        write_json(out_dir / "summary.json", {"run": name, **summary})
    return summary


def success_matrix(rows: list[dict], groups: list[int]) -> tuple[np.ndarray, list] | None:
    """R[stage, group] from eval rows, if stages 0..T are all present."""
    stages = sorted({r["stage"] for r in rows})
    if not stages or stages != list(range(len(stages))):
        return None
    R = np.full((len(stages), len(groups)), np.nan)
    trained: list = [None] * len(stages)
    for r in rows:
        R[r["stage"], groups.index(r["eval_group"])] = r["success_rate"]
        if r["stage"]:
            trained[r["stage"]] = groups.index(r["trained_group"])
    if np.isnan(R).any():
        return None
    return R, trained


def summary_from_rows(rows: list[dict], groups: list[int]) -> dict | None:
    m = success_matrix(rows, groups)
    if m is None:
        return None
    R, trained = m
    out = summarize(R, trained, higher_is_better=True)
    out["score"] = "success_rate"
    out["groups"] = groups
    return out
