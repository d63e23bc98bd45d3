"""Continual-learning metrics against hand-worked matrices."""

import math

import numpy as np
import pytest

from clab.metrics.continual import (
    average_accuracy,
    backward_transfer,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    rise_per_stage,
    summarize,
)

# 3 tasks, one round: row 0 = before training, row i = after training task i-1.
R = np.array(
    [
        [0.1, 0.0, 0.2],
        [0.8, 0.1, 0.2],
        [0.6, 0.9, 0.3],
        [0.5, 0.7, 0.9],
    ]
)
TASKS = [None, 0, 1, 2]


def test_average_accuracy_per_stage():
    assert average_accuracy(R).tolist() == pytest.approx([0.1, 1.1 / 3, 1.8 / 3, 2.1 / 3])


def test_backward_transfer():
    # tasks 0, 1 (not the last): (0.5 - 0.8) and (0.7 - 0.9) -> mean -0.25
    assert backward_transfer(R, TASKS) == pytest.approx(-0.25)


def test_forgetting_chaudhry():
    # task 0: max(0.8, 0.6) - 0.5 = 0.3; task 1: max(0.1, 0.9) - 0.7 = 0.2
    assert forgetting_per_task(R, TASKS) == pytest.approx({0: 0.3, 1: 0.2})
    assert forgetting(R, TASKS) == pytest.approx(0.25)


def test_forward_transfer():
    # task 1: R[1,1] - R[0,1] = 0.1; task 2: R[2,2] - R[0,2] = 0.1
    assert forward_transfer(R, TASKS) == pytest.approx(0.1)


def test_repeated_rounds_use_the_last_training_of_each_task():
    # 2 tasks x 2 rounds: stages train 0, 1, 0, 1
    R2 = np.array(
        [
            [0.0, 0.0],
            [0.5, 0.0],
            [0.2, 0.6],
            [0.7, 0.3],
            [0.4, 0.8],
        ]
    )
    tasks = [None, 0, 1, 0, 1]
    # task 0 last trained at stage 3 (0.7) -> BWT = 0.4 - 0.7
    assert backward_transfer(R2, tasks) == pytest.approx(-0.3)
    # forgetting of task 0: max over l=1..3 of R[l,0] = 0.7 -> 0.7 - 0.4
    assert forgetting(R2, tasks) == pytest.approx(0.3)
    # FWT: task 1 first trained at stage 2: R[1,1] - R[0,1] = 0
    assert forward_transfer(R2, tasks) == pytest.approx(0.0)


def test_rise_is_what_each_stage_taught_its_own_task():
    # R[1,0] - R[0,0] = 0.7; R[2,1] - R[1,1] = 0.8; R[3,2] - R[2,2] = 0.6
    assert rise_per_stage(R, TASKS) == pytest.approx([0.7, 0.8, 0.6])
    L = np.array([[3.0, 3.0], [1.0, 2.5], [1.6, 0.9]])  # losses: a fall is a rise
    assert rise_per_stage(L, [None, 0, 1], higher_is_better=False) == pytest.approx([2.0, 1.6])
    two_rounds = [None, 0, 1, 0]
    R2 = np.array([[0.0, 0.0], [0.5, 0.1], [0.3, 0.6], [0.7, 0.4]])
    assert rise_per_stage(R2, two_rounds) == pytest.approx([0.5, 0.5, 0.4])  # 0.7 - 0.3


def test_losses_flip_the_signs():
    L = np.array(
        [
            [3.0, 3.0],
            [1.0, 2.5],
            [1.6, 0.9],
        ]
    )
    tasks = [None, 0, 1]
    # loss on task 0 rose from 1.0 to 1.6: forgetting +0.6, BWT -0.6
    assert forgetting(L, tasks, higher_is_better=False) == pytest.approx(0.6)
    assert backward_transfer(L, tasks, higher_is_better=False) == pytest.approx(-0.6)
    # FWT: training task 0 lowered task 1's loss from 3.0 to 2.5: +0.5
    assert forward_transfer(L, tasks, higher_is_better=False) == pytest.approx(0.5)


def test_single_stage_has_no_backward_metrics():
    s = summarize(np.array([[0.1, 0.2], [0.5, 0.2]]), [None, 0])
    assert s["backward_transfer"] is None and s["forgetting"] is None
    assert s["average_accuracy"] == pytest.approx(0.35)
    assert s["forward_transfer"] is None


def test_summary_is_consistent_and_validates_shape():
    s = summarize(R, TASKS)
    assert s["forgetting"] == pytest.approx(0.25) and s["stages"] == 3
    assert s["forgetting_per_task"] == pytest.approx({"0": 0.3, "1": 0.2})
    with pytest.raises(ValueError, match="stage_tasks"):
        summarize(R, [None, 0])
    assert math.isnan(forward_transfer(R[:2], TASKS[:2]))


def test_a_nan_cell_undefines_what_reads_it_wherever_it_sits_and_the_summary_is_strict_json():
    import json

    for row in (1, 2):  # Python's max() kept or dropped the NaN by its position
        bad = R.copy()
        bad[row, 0] = np.nan
        assert math.isnan(forgetting_per_task(bad, TASKS)[0])
        s = summarize(bad, TASKS)
        assert s["forgetting_per_task"] == {"0": None, "1": pytest.approx(0.2)}
        assert s["matrix"][row][0] is None and s["matrix"][3] == pytest.approx([0.5, 0.7, 0.9])
        assert s["average_accuracy_per_stage"][row] is None
        assert s["average_accuracy"] == pytest.approx(0.7)  # row T is whole
        assert s["forgetting"] is None
        json.dumps(s, allow_nan=False)  # no bare NaN for a strict reader


def test_forgetting_reads_trained_stages_only_and_skips_untrained_tasks():
    """Row 0 (the model before training) never counts as a task's best, even when it
    is: forgetting measures what training taught and then lost. A task no stage
    trained has nothing to forget (left out of forgetting and BWT) but still counts
    in the average accuracy."""
    R0 = np.array(
        [
            [0.9, 0.5, 0.0],  # before training: task 0 at 0.9
            [0.6, 0.4, 0.1],  # trained task 0
            [0.2, 0.3, 0.8],  # trained task 2; task 1 never trained
        ]
    )
    tasks = [None, 0, 2]
    assert forgetting_per_task(R0, tasks) == pytest.approx({0: 0.4})  # 0.6 - 0.2, not 0.7
    assert backward_transfer(R0, tasks) == pytest.approx(-0.4)
    assert average_accuracy(R0)[-1] == pytest.approx(1.3 / 3)


def test_forgetting_counts_a_best_reached_before_the_task_was_trained():
    """Chaudhry et al.'s max runs over every stage before the last, also those before
    the task's own stage (docs/metrics.md: on purpose): training task 1 raised task 0
    to 0.7, its own stage left it at 0.5, the end at 0.3. Forgetting 0.4; BWT, from
    the task's own last stage, -0.2 (Avalanche's forgetting would be 0.2)."""
    R1 = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.7, 0.5, 0.0],  # trained task 1
            [0.5, 0.4, 0.0],  # trained task 0
            [0.3, 0.4, 0.9],  # trained task 2
        ]
    )
    tasks = [None, 1, 0, 2]
    assert forgetting_per_task(R1, tasks) == pytest.approx({0: 0.4, 1: 0.1})
    assert backward_transfer(R1, tasks) == pytest.approx(-0.15)  # (-0.2 + -0.1) / 2
