"""Stratifying Countdown rows by how many numbers a problem has.

Problems with 3 and 4 numbers differ in difficulty, so a test set or a capped
read whose mix of counts differs from the training set's measures another
task. Every test set and every cap therefore takes each count in proportion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def count_quotas(counts: dict[int, int], size: int) -> dict[int, int]:
    """Split ``size`` rows over the strata in proportion to ``counts``.

    Largest remainder: each quota is within one row of its exact share
    ``size * counts[k] / total``, and the quotas add up to ``size``.
    """
    total = sum(counts.values())
    quotas = {k: size * c // total for k, c in counts.items()}
    by_remainder = sorted(counts, key=lambda k: (-(size * counts[k] % total), k))
    for k in by_remainder[: size - sum(quotas.values())]:
        quotas[k] += 1
    return quotas


def stratified_first(strata: Sequence[int], size: int) -> list[int]:
    """Positions of the first rows of each stratum, ``count_quotas`` of each, in order.

    On rows in random order this is a stratified random sample of ``size`` rows.
    """
    if size >= len(strata):
        return list(range(len(strata)))
    left = count_quotas(Counter(strata), size)
    picked = []
    for i, k in enumerate(strata):
        if left[k]:
            left[k] -= 1
            picked.append(i)
    return picked


def stratified_sample(strata: Sequence[int], size: int, rng: np.random.Generator) -> list[int]:
    """A random ``size``-subset of positions with each stratum in proportion, sorted."""
    order = rng.permutation(len(strata))
    picked = stratified_first([strata[i] for i in order], size)
    return sorted(int(order[p]) for p in picked)
