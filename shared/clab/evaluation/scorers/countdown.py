"""``countdown``: greedy success rate on a Countdown group's test problems.

Success is an exactly correct answer (not the mean reward, which includes the
0.1 format credit); mean reward and response length are reported beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clab.data.countdown.reading import read_group
from clab.evaluation.countdown import VLLMEvaluator, evaluate_problems
from clab.evaluation.scorers.registry import (
    SCORERS,
    ModelHandle,
    ScoreResult,
    ScoreSettings,
)


@SCORERS.register("countdown")
def score_countdown(handle: ModelHandle, task: dict[str, Any], s: ScoreSettings) -> ScoreResult:
    problems = read_group(Path(task["data_dir"]), task["group"], "test", s.test_size, seed=s.seed)
    max_new = s.max_new_tokens or task["max_response_length"]
    if s.engine == "vllm":
        engine = VLLMEvaluator(
            handle.dir,
            task["max_prompt_length"] + max_new,
            dtype=s.dtype,
            tokenizer=handle.tokenizer,
        )
        res = engine.evaluate(
            problems,
            max_prompt_length=task["max_prompt_length"],
            max_new_tokens=max_new,
            enforce_ops=task["enforce_ops"],
            n_samples=s.samples,
        )
    else:
        with handle.autocast():
            res = evaluate_problems(
                handle.model,
                handle.tokenizer,
                problems,
                max_prompt_length=task["max_prompt_length"],
                max_new_tokens=max_new,
                batch_size=s.batch_size,
                enforce_ops=task["enforce_ops"],
                n_samples=s.samples,
                engine=s.hf_engine,
            )
    return ScoreResult(
        values={
            "success_rate": res["success_rate"],
            "reward_mean": res["reward_mean"],
            "response_length_mean": res["response_length_mean"],
        },
        higher_is_better={
            "success_rate": True,
            "reward_mean": True,
            "response_length_mean": True,
        },
        primary="success_rate",
        n=res["n"],
        items={"success_rate": [float(c) for c in res["correct"]]},
        samples=res["samples"],
    )
