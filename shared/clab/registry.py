"""Things registered by name: scorers, K-1 selectors, replay strategies, page kinds.

A spec names an algorithm by a string and a module registers it under that
string (as veRL registers its advantage estimators), so adding one touches
no call site. One class for all of them, so each refuses a second entry
under a taken name (the later one would silently win) and a miss is a
one-line ``ClabError`` naming what was asked and what exists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from clab.errors import ClabError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one type, in registration order; ``what`` names them in errors."""

    def __init__(self, what: str):
        self.what = what
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ClabError(f"{self.what} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """The decorator form of ``add``: ``@SCORERS.register("countdown")``."""
        return lambda entry: self.add(name, entry)

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise ClabError(f"{self.what} {name!r} is not known (known: {', '.join(sorted(self))})")
        return self._entries[name]

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def remove(self, name: str) -> T:
        """Take an entry out (a test's temporary registration)."""
        return self._entries.pop(name)

    @contextmanager
    def replaced(self, name: str, entry: T) -> Iterator[T]:
        """Swap a registered entry for the block (a test's spy), then put it back;
        yields the original."""
        original = self[name]
        self._entries[name] = entry
        try:
            yield original
        finally:
            self._entries[name] = original
