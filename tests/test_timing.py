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
