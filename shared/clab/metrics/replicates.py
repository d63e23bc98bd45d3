"""Results over training seeds: each metric computed per seed, then a mean with a
between-seed interval.

In this lab effects swing far more between training seeds than test-item
intervals admit, so an experiment run with several seeds reports, for every
number x (a matrix cell, average accuracy, BWT, forgetting, FWT, per task):

- mean over the n seeds: m = (1/n) sum_s x_s;
- 95% interval m +- t(0.975, n-1) * sd / sqrt(n), sd the sample standard
  deviation (n - 1 in the denominator): Student's t over seeds (n >= 2);
- a comparison of two experiments run on the same seeds: the same interval over
  the per-seed differences d_s = x_s(B) - x_s(A) (paired), which removes what
  the two share seed by seed. "Beyond the seed spread" means that interval
  excludes 0.

These intervals are over training seeds; the Wilson and bootstrap intervals of
``clab.metrics.intervals`` are over test items of one run. The two are never
mixed: every aggregate says ``"interval": "seeds"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((a + m2 - 1) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
    front = math.exp(ln + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (no SciPy in the image): bisection on the cdf."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: p in (0, 1) and df > 0 (got p={p}, df={df})")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class SeedEstimate:
    """A mean over seeds with its between-seed interval (None with fewer than 2 seeds)."""

    mean: float | None
    low: float | None
    high: float | None
    values: dict[int, float]  # seed -> that seed's value

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def beyond_spread(self) -> bool:
        """The interval excludes 0 (for a difference: the effect holds over seeds).

        Not for an interval of no width: seeds that all give the same value (a
        difference of exactly +0.05 in each, as coarse success rates do) have no
        spread to measure an effect against, and a t interval of width 0 would call
        any such value certain; scipy's paired t-test gives no p-value there either.
        """
        return self.has_spread and (self.low > 0 or self.high < 0)

    @property
    def has_spread(self) -> bool:
        """An interval of some width: at least two seeds, and not all alike."""
        if self.low is None or self.high is None:
            return False
        return self.high - self.low > 1e-12 * max(1.0, abs(self.mean or 0.0))

    @property
    def verdict(self) -> str:
        """``yes`` (beyond the seed spread), ``no``, or ``no verdict`` where there is no
        spread to judge against (one seed, or seeds all alike)."""
        if not self.has_spread:
            return "no verdict"
        return "yes" if self.beyond_spread else "no"

    def to_json(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "interval": "seeds",
            "values": {str(k): v for k, v in self.values.items()},
        }


def mean_interval(values: Mapping[int, float | None], level: float = LEVEL) -> SeedEstimate:
    """Mean and Student-t interval over the seeds whose value is defined."""
    vals = {
        int(s): float(v) for s, v in values.items() if v is not None and math.isfinite(float(v))
    }
    n = len(vals)
    if n == 0:
        return SeedEstimate(None, None, None, {})
    mean = sum(vals.values()) / n
    if n < 2:
        return SeedEstimate(mean, None, None, vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals.values()) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return SeedEstimate(mean, mean - half, mean + half, vals)


def paired_difference(
    a: Mapping[int, float | None], b: Mapping[int, float | None], level: float = LEVEL
) -> SeedEstimate:
    """b - a seed by seed, over the seeds both have, with the t interval of the
    differences."""
    common = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    return mean_interval({s: float(b[s]) - float(a[s]) for s in common}, level)


# -- whole summaries ---------------------------------------------------------------------------

SCALARS = ("average_accuracy", "backward_transfer", "forgetting", "forward_transfer")
PER_TASK = ("forgetting_per_task", "backward_transfer_per_task")


def _score_blocks(summary: dict) -> dict[str, dict]:
    """score name -> its metrics block (the primary score's is the summary itself)."""
    out = {summary["score"]: summary}
    out.update(summary.get("scores", {}))
    return out


def aggregate_score(blocks: Mapping[int, dict]) -> dict:
    """One score's metrics over seeds: every scalar, per-task value, stage average and
    matrix cell as a :class:`SeedEstimate` (JSON). Seeds whose matrix has another shape
    (a run not finished) are refused: a mean must be over the same stages."""
    shapes = {s: (len(b["matrix"]), len(b["matrix"][0])) for s, b in blocks.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"seeds differ in their evaluated stages: {shapes}")
    first = next(iter(blocks.values()))
    out: dict = {
        "higher_is_better": first.get("higher_is_better", True),
        "stage_tasks": first["stage_tasks"],
        "stages": first.get("stages", len(first["matrix"]) - 1),
    }
    for key in SCALARS:
        out[key] = mean_interval({s: b.get(key) for s, b in blocks.items()}).to_json()
    for key in PER_TASK:
        tasks = sorted({t for b in blocks.values() for t in b.get(key, {})}, key=int)
        out[key] = {
            t: mean_interval({s: b.get(key, {}).get(t) for s, b in blocks.items()}).to_json()
            for t in tasks
        }
    rows, cols = next(iter(shapes.values()))
    out["average_accuracy_per_stage"] = [
        mean_interval({s: b["average_accuracy_per_stage"][i] for s, b in blocks.items()}).to_json()
        for i in range(rows)
    ]
    out["matrix"] = [
        [
            mean_interval({s: b["matrix"][i][j] for s, b in blocks.items()}).to_json()
            for j in range(cols)
        ]
        for i in range(rows)
    ]
    return out


def aggregate_summaries(per_seed: Mapping[int, dict]) -> dict:
    """An experiment's summaries (seed -> summary.json) as one aggregate: per score
    (:func:`aggregate_score`), with the seeds and the task names."""
    if not per_seed:
        raise ValueError("no seeds to aggregate")
    first = next(iter(per_seed.values()))
    scores = {}
    for name in _score_blocks(first):
        blocks = {s: _score_blocks(x).get(name) for s, x in per_seed.items()}
        if all(b is not None for b in blocks.values()):
            scores[name] = aggregate_score(blocks)
    return {
        "seeds": sorted(int(s) for s in per_seed),
        "n_seeds": len(per_seed),
        "interval": f"Student t over training seeds, {LEVEL:.0%}",
        "score": first["score"],
        "task_names": first["task_names"],
        "scores": scores,
    }


def seeds_text(seeds: Sequence[int]) -> str:
    return f"{len(seeds)} seeds ({', '.join(str(s) for s in seeds)})"
