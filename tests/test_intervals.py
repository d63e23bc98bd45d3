"""95% intervals: Wilson for success rates, a paired bootstrap over items for the
continual-learning metrics, each containing its value."""

import math

import numpy as np
import pytest

from clab.metrics.continual import summarize
from clab.metrics.intervals import cell_interval, continual_intervals, wilson


def test_wilson_matches_the_textbook_values_and_has_width_at_zero():
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    lo, hi = wilson(0, 200)
    assert lo == 0 and hi == pytest.approx(0.0188, abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_a_cell_gets_wilson_for_0_1_items_and_a_bootstrap_otherwise():
    ci, how = cell_interval(0.3, 10, np.array([1.0] * 3 + [0.0] * 7))
    assert how == "wilson" and ci == pytest.approx(list(wilson(3, 10)))
    ci, how = cell_interval(0.3, 10, success_rate=True)  # no items stored: from value and n
    assert how == "wilson"
    losses = np.random.default_rng(0).normal(5.0, 0.5, 200)
    ci, how = cell_interval(float(np.exp(losses.mean())), 200, losses, how="exp_mean")
    assert how == "bootstrap" and ci[0] < math.exp(losses.mean()) < ci[1]
    assert cell_interval(2.0, 10) == (None, None)  # a loss without items: none


def test_paired_bootstrap_intervals_contain_the_metrics_and_shrink_with_n():
    rng = np.random.default_rng(1)
    stage_tasks = [None, 0, 1]
    widths = []
    for n in (50, 800):
        p = np.array([[0.1, 0.1], [0.8, 0.1], [0.4, 0.9]])  # task 0 forgets 0.4
        items = {j: (rng.random((3, n)) < p[:, [j]]).astype(float) for j in range(2)}
        R = np.stack([items[j].mean(axis=1) for j in range(2)], axis=1)
        s = summarize(R, stage_tasks)
        iv = continual_intervals(items, {0: None, 1: None}, {}, stage_tasks, True)
        for key in ("average_accuracy", "backward_transfer", "forgetting"):
            assert iv[key][0] - 1e-9 <= s[key] <= iv[key][1] + 1e-9, key
        assert iv["forgetting_per_task"]["0"][0] > 0.05  # clearly forgot, at either n
        widths.append(iv["forgetting"][1] - iv["forgetting"][0])
    assert widths[1] < widths[0] / 2


def test_wilson_bounds_are_exactly_0_and_1_at_no_and_every_success():
    for n in (1, 7, 10, 200):
        assert wilson(n, n)[1] == 1.0 and wilson(0, n)[0] == 0.0
        assert wilson(n, n)[0] < 1.0 and wilson(0, n)[1] > 0.0
