"""One precision rule for training, validation and evaluation.

Weights stay as saved (fp32); matrix products run in the compute dtype
(bf16 on GPU) through autocast. Training, its validation and the
evaluator's HF path all use this, so one checkpoint gets one score.
"""

from __future__ import annotations

import contextlib

import torch


def compute_autocast(device: str | torch.device, dtype: str | None):
    """``torch.autocast`` to ``dtype`` on ``device``; nothing for fp32 or None."""
    if dtype in (None, "float32"):
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype))
