"""Named phases whose wall time becomes a metric.

A long step reads as a list of named phases, and the same names tell where
its time went (veRL's ``marked_timer("gen", timing_raw)``): ``with
phase("gen", timings):`` adds the block's seconds to ``timings["time/gen"]``,
so a phase entered twice in one step counts its total.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PREFIX = "time/"


@contextmanager
def phase(name: str, into: dict[str, float]) -> Iterator[None]:
    """Time the block and add its seconds to ``into["time/<name>"]``, even if it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        key = PREFIX + name
        into[key] = into.get(key, 0.0) + time.perf_counter() - start
