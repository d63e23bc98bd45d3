"""Scorers by task kind: how a checkpoint is scored on one task.

A scorer is a plain function registered by name (as veRL registers its
advantage estimators); a run's ``run.json`` names each task's scorer, so the
evaluator needs nothing else to score any experiment kind. A scorer returns
named values, each with its direction (higher or lower is better), the
number of items they rest on, per-item values for intervals, and a few
samples to read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clab.models.loading import load_policy, load_tokenizer
from clab.models.precision import compute_autocast
from clab.registry import Registry


@dataclass(frozen=True)
class ScoreSettings:
    """What shapes a score besides the checkpoint: stored with the results, and a
    rerun with other settings is refused (or rescores everything)."""

    test_size: int | None
    max_new_tokens: int | None
    batch_size: int
    samples: int
    dtype: str  # the compute dtype of every path (autocast on HF, the engine's on vLLM)
    device: str
    engine: str  # hf, hf-static or vllm, resolved
    seed: int = 0

    @property
    def hf_engine(self) -> str:
        """The HF generation path of this setting (vLLM scores Countdown only; other
        scorers, and log-probabilities, run on HF)."""
        return "hf-static" if self.engine == "hf-static" else "hf"

    def shaping(self) -> dict[str, Any]:
        """The settings a score depends on (not batch size or device placement)."""
        return {
            "test_size": self.test_size,
            "max_new_tokens": self.max_new_tokens,
            "samples": self.samples,
            "dtype": self.dtype,
            "engine": self.engine,
            "seed": self.seed,
            "prompt_truncation": "left, to the task's max_prompt_length",
        }


@dataclass
class ScoreResult:
    """What a scorer returns for one checkpoint on one task.

    ``items`` holds per-item values (one per test problem, example or window,
    in the same order at every stage) so that intervals can be computed by
    resampling items. A value is the mean of its items unless
    ``item_weights`` gives weights (e.g. tokens per example, for a loss
    averaged over tokens) or ``aggregate`` says ``exp_mean`` (a perplexity is
    the exponential of the mean token loss over windows).
    """

    values: dict[str, float]
    higher_is_better: dict[str, bool]
    primary: str
    n: int
    items: dict[str, list[float]] = field(default_factory=dict)  # per-item, for intervals
    samples: list[dict[str, Any]] = field(default_factory=list)
    item_weights: dict[str, list[float]] = field(default_factory=dict)
    aggregate: dict[str, str] = field(default_factory=dict)  # metric -> mean | exp_mean


class ModelHandle:
    """A stage's model and tokenizer, loaded once for all its tasks, on demand."""

    def __init__(self, stage_dir: Path, settings: ScoreSettings):
        self.dir, self.settings = Path(stage_dir), settings
        self._model = self._tok = None

    @property
    def model(self):
        if self._model is None:
            # weights as saved (fp32); compute in settings.dtype through autocast, as
            # the RL and SFT trainers validate (K-1 validates in fp32: its in-training
            # perplexities and the evaluator's differ by bf16 rounding on a GPU)
            self._model = load_policy(self.dir, "float32").to(self.settings.device).eval()
        return self._model

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.dir)
        return self._tok

    def autocast(self):
        return compute_autocast(self.settings.device, self.settings.dtype)

    def close(self) -> None:
        self._model = self._tok = None


Scorer = Callable[[ModelHandle, dict[str, Any], ScoreSettings], ScoreResult]
SCORERS: Registry[Scorer] = Registry("scorer")
