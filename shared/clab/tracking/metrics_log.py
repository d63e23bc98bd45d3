"""Append-only JSONL metrics that survive a kill and a resume.

A metrics file grows by one line per logging step, too often to rewrite
whole. Each row goes out in a single ``write`` and is flushed to the
operating system, so a killed process leaves at most one torn last line;
readers skip it. Rows are forced to disk (fsync) only when the runner makes
a checkpoint durable (``sync``) and at ``close``: an fsync per row cost a
few milliseconds a step, several percent of a small model's training, and a
machine crash loses nothing a resume needs, since the file is cut back to
the checkpoint's step anyway. On resume the file is cut back (atomically) to
the rows at or before the checkpoint's step, so a rerun neither duplicates
nor loses steps.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from clab.storage.atomic import write_text


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line from a kill
    return rows


class MetricsLog:
    """One JSONL file; ``step_key`` orders rows for truncation on resume."""

    def __init__(self, path: str | Path, step_key: str = "global_step"):
        self.path = Path(path)
        self.step_key = step_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None

    def truncate_after(self, step: int) -> None:
        """Keep rows with ``step_key <= step``; drop later ones and torn lines."""
        rows = [r for r in read_rows(self.path) if r.get(self.step_key, 0) <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def log(self, row: dict[str, Any]) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def sync(self) -> None:
        """Force the rows written so far to disk: before a checkpoint that follows them."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None
