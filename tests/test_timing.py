import time

import pytest

from clab.tracking.timing import phase


def test_phase_records_its_wall_time_under_time_slash_name():
    timings: dict[str, float] = {}
    with phase("gen", timings):
        time.sleep(0.02)
    assert list(timings) == ["time/gen"]
    assert 0.02 <= timings["time/gen"] < 1.0


def test_a_phase_entered_twice_counts_its_total_and_a_failing_one_still_counts():
    timings: dict[str, float] = {}
    with phase("adv", timings):
        time.sleep(0.01)
    first = timings["time/adv"]
    with pytest.raises(ValueError), phase("adv", timings):
        time.sleep(0.01)
        raise ValueError
    assert timings["time/adv"] >= first + 0.01


def test_work_the_phase_waits_for_at_its_end_is_counted_in_it():
    """On a GPU the kernels a phase queued run after its code returns: the phase
    drains the queue (``before_exit``) so their time is its own, not the next's."""
    timings: dict[str, float] = {}
    with phase("score", timings, before_exit=lambda: time.sleep(0.03)):
        pass
    assert timings["time/score"] >= 0.03
