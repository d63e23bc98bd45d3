"""Rows of a local data file, whatever its format: Parquet, JSON Lines or JSON.

Users bring their tasks as files of rows (SFT pairs, preference triples); every
data loader reads them the same way, and names the file when it cannot.
"""

from __future__ import annotations

import json
from pathlib import Path

from clab.errors import ClabError


def read_row_file(path: Path) -> list:
    """A ``.parquet`` table, a ``.jsonl`` file (or JSON text with one object a line), or a
    JSON list of rows, bare or under ``"data"``: rows, unchecked (the caller names its
    fields)."""
    if not path.is_file():
        raise ClabError(f"{path}: no such file")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        text = path.read_text()
        if path.suffix == ".jsonl" or (text.lstrip().startswith("{") and "\n{" in text):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise ClabError(f"{path}: not readable as Parquet or JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ClabError(f"{path}: expected a list of rows")
    return data
