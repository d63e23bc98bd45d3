"""What a kind's figure functions return: figures with captions, in titled sections.

Kept apart from the registry so that the figure modules and the registry can
import them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Figure:
    """A PNG the plotter wrote, and a caption that says what it shows."""

    path: Path
    caption: str


@dataclass
class Section:
    """A titled block of figures; ``html`` is an already-escaped fragment (a table of
    samples, say) shown after them."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    html: str = ""
