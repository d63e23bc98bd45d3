"""The registered scorers; importing this package registers every one of them."""

from clab.evaluation.scorers import answer_loss, countdown, perplexity, preference
from clab.evaluation.scorers.registry import (
    SCORERS,
    ModelHandle,
    ScoreResult,
    ScoreSettings,
)

__all__ = [
    "SCORERS",
    "ModelHandle",
    "ScoreResult",
    "ScoreSettings",
    "answer_loss",
    "countdown",
    "perplexity",
    "preference",
]
