"""Seeds derived from a run's seed and a place in the run.

One derivation for every draw, so that a resumed run draws what an
uninterrupted one drew: tuples of ints hash the same in every process and
every Python (no string hashing, which ``PYTHONHASHSEED`` randomises).
"""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(*parts: int, wide: bool = False) -> int:
    """A seed in [0, 2**31) for (run seed, place in the run...), which NumPy and torch
    take. ``wide``: the whole signed hash, which ``random.Random`` takes as it is (the
    K-1 trainer's shuffles were drawn from it, and keep it so their numbers stay)."""
    h = hash(tuple(int(p) for p in parts))
    return h if wide else h % (2**31)


def seed_everything(*parts: int) -> None:
    """Python's, NumPy's and torch's generators from one derived seed."""
    seed = derive_seed(*parts)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
