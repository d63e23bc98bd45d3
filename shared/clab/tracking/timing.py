"""Named phases whose wall time becomes a metric.

A long step reads as a list of named phases, and the same names tell where
its time went (veRL's ``marked_timer("gen", timing_raw)``): ``with
phase("gen", timings):`` adds the block's seconds to ``timings["time/gen"]``,
so a phase entered twice in one step counts its total.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

PREFIX = "time/"


@contextmanager
def phase(
    name: str, into: dict[str, float], before_exit: Callable[[], object] | None = None
) -> Iterator[None]:
    """Time the block and add its seconds to ``into["time/<name>"]``, even if it raises.

    ``before_exit`` runs before the clock stops: ``torch.cuda.synchronize``, so that
    a phase's asynchronous GPU work is counted in it and not in the next phase."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if before_exit is not None:
            before_exit()
        key = PREFIX + name
        into[key] = into.get(key, 0.0) + time.perf_counter() - start
