"""``preference``: how a checkpoint does on a preference task (continual DPO).

Values, each a matrix and its forgetting/BWT in the evaluator's summary:

- ``reward_score`` (primary): the mean score, under the task's own reward
  model, of completions sampled from the checkpoint on the task's test
  prompts (temperature and new tokens from the run's spec, seeded: every
  checkpoint draws with the same noise).
- ``win_rate``: the share of test prompts where the checkpoint's completion
  outscores the stage-0 model's under that reward model (a tie counts one
  half, so stage 0 scores exactly 0.5 against itself).
- ``implicit_accuracy``: DPO's implicit preference accuracy on the test
  pairs, beta * log(pi / pi_0) of chosen above rejected, with the stage-0
  model as pi_0 for every checkpoint so the matrix compares like with like
  (a tie counts one half: stage 0 is exactly 0.5). beta cancels in the sign.
- ``implicit_margin``: the mean of that implicit reward margin,
  beta * (log(pi / pi_0)(chosen) - log(pi / pi_0)(rejected)) (stage 0: 0).
  The accuracy saturates at 0 or 1 once a conflicting task has moved the
  policy far; the margin still shows how far a later stage moved it back.

Generation is HF's for every engine setting (hf-static where it is set). The stage-0 model's
completions and log-probabilities are computed once per evaluator process
and task, and reused for every later checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clab.data.preference.tasks import read_split
from clab.errors import ClabError
from clab.evaluation.preference import pair_logps, preference_accuracy, reward_scores, sample
from clab.evaluation.scorers.registry import (
    SCORERS,
    ModelHandle,
    ScoreResult,
    ScoreSettings,
)
from clab.models.loading import load_tokenizer
from clab.storage.layout import COMPLETE_MARKER
from clab.training.reward_models import load_reward_model

_BASELINE: dict[tuple, dict[str, Any]] = {}
_REWARD: dict[str, tuple] = {}


def _policy_side(model, tok, rows, task: dict[str, Any], s: ScoreSettings) -> dict[str, Any]:
    prompts = [r["prompt"] for r in rows]
    texts = sample(
        model,
        tok,
        prompts,
        temperature=task["temperature"],
        max_new_tokens=s.max_new_tokens or task["max_new_tokens"],
        max_prompt_length=task["max_prompt_length"],
        seed=s.seed,
        batch_size=s.batch_size,
        engine=s.hf_engine,
    )
    c, r = pair_logps(model, tok, rows, task["max_length"], s.batch_size)
    return {"texts": texts, "chosen": c, "rejected": r}


def _reward_model(folder: str, device: str):
    if folder not in _REWARD:
        if not (Path(folder) / COMPLETE_MARKER).is_file():
            raise ClabError(f"{folder}: the task's reward model is missing or incomplete")
        _REWARD.clear()  # one at a time: a 0.5B reward model is 2 GB
        _REWARD[folder] = (load_reward_model(folder).to(device).eval(), load_tokenizer(folder))
    return _REWARD[folder]


@SCORERS.register("preference")
def score_preference(handle: ModelHandle, task: dict[str, Any], s: ScoreSettings) -> ScoreResult:
    rows = read_split(task["data"], s.test_size)
    prompts = [r["prompt"] for r in rows]
    with handle.autocast():
        mine = _policy_side(handle.model, handle.tokenizer, rows, task, s)
    key = (str(Path(task["baseline"]).resolve()), task["data"], s.test_size, s.max_new_tokens,
           s.seed, s.dtype, task["temperature"])  # fmt: skip
    if Path(handle.dir).resolve() == Path(task["baseline"]).resolve():
        _BASELINE[key] = mine
    if key not in _BASELINE:
        base = ModelHandle(Path(task["baseline"]), s)
        with base.autocast():
            _BASELINE[key] = _policy_side(base.model, base.tokenizer, rows, task, s)
        base.close()
    zero = _BASELINE[key]
    rm, rm_tok = _reward_model(task["reward_model"], s.device)
    rm_len = task.get("reward_max_length", task["max_length"])  # runs before it: dpo's
    with handle.autocast(), torch.no_grad():
        r_mine = reward_scores(rm, rm_tok, prompts, mine["texts"], rm_len, s.batch_size)
        if "rewards" not in zero:
            zero["rewards"] = reward_scores(
                rm, rm_tok, prompts, zero["texts"], rm_len, s.batch_size
            )
    win = preference_accuracy(r_mine, zero["rewards"])
    c = [a - b for a, b in zip(mine["chosen"], zero["chosen"], strict=True)]
    r = [a - b for a, b in zip(mine["rejected"], zero["rejected"], strict=True)]
    implicit = [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(c, r, strict=True)]
    margins = [task["beta"] * (x - y) for x, y in zip(c, r, strict=True)]
    wins = [
        1.0 if a > b else 0.5 if a == b else 0.0
        for a, b in zip(r_mine, zero["rewards"], strict=True)
    ]
    return ScoreResult(
        values={
            "reward_score": sum(r_mine) / len(r_mine),
            "win_rate": win,
            "implicit_accuracy": sum(implicit) / len(implicit),
            "implicit_margin": sum(margins) / len(margins),
        },
        higher_is_better={
            "reward_score": True,
            "win_rate": True,
            "implicit_accuracy": True,
            "implicit_margin": True,
        },
        primary="reward_score",
        n=len(rows),
        items={
            "reward_score": r_mine,
            "win_rate": wins,
            "implicit_accuracy": implicit,
            "implicit_margin": margins,
        },
        samples=[
            {
                "prompt": p,
                "response": t,
                "reward": rw,
                "baseline_response": bt,
                "baseline_reward": br,
            }
            for p, t, rw, bt, br in list(
                zip(prompts, mine["texts"], r_mine, zero["texts"], zero["rewards"], strict=True)
            )[: s.samples]
        ],
    )
