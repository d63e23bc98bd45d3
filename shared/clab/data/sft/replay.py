"""Which examples of task A are replayed while training on task B.

A strategy is a plain function registered by name (as clab's other
algorithms are): it takes task A's examples, how many to keep, the examples'
levels and per-example losses where it needs them, and a seeded generator,
and returns the chosen example ids. Levels and losses are looked up by each
example's own id, never by position (the public code looked levels up by
position after a length filter had dropped rows, misaligning them), and
ties are broken by a seeded shuffle, never by file order.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from clab.errors import ClabError
from clab.registry import Registry
from clab.storage.atomic import write_json

_LEVEL = re.compile(r"(\d+)")


class Strategy(Protocol):
    def __call__(
        self,
        ids: list[str],
        k: int,
        rng: random.Random,
        *,
        levels: dict[str, int | None],
        losses: dict[str, float],
    ) -> list[str]: ...


STRATEGIES: Registry[Strategy] = Registry("replay strategy")


def parse_level(raw: object) -> int | None:
    """ "Level 3" -> 3, 3 -> 3; anything without a level number -> None ("Level ?")."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    m = _LEVEL.search(str(raw)) if raw is not None else None
    return int(m.group(1)) if m else None


def replay_count(fraction: float, of: str, n_a: int, n_b: int) -> int:
    """How many of A's examples to mix in: ``fraction`` of B's training-set size
    (``of: b``, as the public experiment counts it) or of A's (``of: a``)."""
    base = n_b if of == "b" else n_a
    return min(n_a, round(fraction * base))


def _shuffled(ids: Sequence[str], rng: random.Random) -> list[str]:
    out = list(ids)
    rng.shuffle(out)
    return out


def _by_key(ids, key, k, rng, reverse) -> list[str]:
    """The first ``k`` of ``ids`` sorted by ``key`` after a seeded shuffle (Python's
    sort is stable, so ties keep the shuffled order)."""
    return sorted(_shuffled(ids, rng), key=key, reverse=reverse)[:k]


def _with_levels(ids, levels) -> list[str]:
    missing = [i for i in ids if i not in levels]
    if missing:
        raise ClabError(f"replay: {len(missing)} examples have no level entry (e.g. {missing[0]})")
    return [i for i in ids if levels[i] is not None]


@STRATEGIES.register("difficulty_hard")
def difficulty_hard(ids, k, rng, *, levels, **_) -> list[str]:
    """The highest levels first; examples without a parseable level are left out."""
    return _by_key(_with_levels(ids, levels), lambda i: levels[i], k, rng, reverse=True)


@STRATEGIES.register("difficulty_easy")
def difficulty_easy(ids, k, rng, *, levels, **_) -> list[str]:
    return _by_key(_with_levels(ids, levels), lambda i: levels[i], k, rng, reverse=False)


@STRATEGIES.register("random")
def random_subset(ids, k, rng, **_) -> list[str]:
    return _shuffled(ids, rng)[:k]


@STRATEGIES.register("loss_descending")
def loss_descending(ids, k, rng, *, losses, **_) -> list[str]:
    """The examples the phase-A model finds hardest (highest per-example loss)."""
    return _by_key(list(ids), lambda i: losses[i], k, rng, reverse=True)


@STRATEGIES.register("loss_ascending")
def loss_ascending(ids, k, rng, *, losses, **_) -> list[str]:
    return _by_key(list(ids), lambda i: losses[i], k, rng, reverse=False)


@STRATEGIES.register("none")
def no_replay(ids, k, rng, **_) -> list[str]:
    """The baseline that shows how much is forgotten at all."""
    return []


def select_replay(
    strategy: str,
    ids: Sequence[str],
    k: int,
    seed: int,
    *,
    levels: dict[str, int | None] | None = None,
    losses: dict[str, float] | None = None,
) -> list[str]:
    rng = random.Random(f"{seed}:{strategy}")  # a str seed is hashed stably, unlike hash()
    return STRATEGIES[strategy](list(ids), k, rng, levels=levels or {}, losses=losses or {})


# -- the per-example loss cache -------------------------------------------------------------


def cache_key(adapter_files: Sequence[Path], examples: Sequence[dict], max_length: int) -> str:
    """What per-example losses depend on: the adapter's bytes, the examples (id, prompt,
    answer) and the truncation length. A cache with another key is recomputed."""
    h = hashlib.sha256()
    for f in sorted(adapter_files, key=lambda p: p.name):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    for e in examples:
        h.update(json.dumps([e["id"], e["prompt"], e["answer"]]).encode())
    h.update(str(max_length).encode())
    return h.hexdigest()


def cached_losses(
    path: Path, key: str, compute: Callable[[], dict[str, float]]
) -> tuple[dict[str, float], bool]:
    """(losses, reused): the stored losses when their key matches, else ``compute()``,
    stored with the key (atomically) before it is returned."""

    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["losses"], True
    losses = compute()
    write_json(path, {"key": key, "losses": losses})
    return losses, False
