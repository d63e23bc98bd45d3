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
        text = path.read_text(encoding="utf-8-sig")  # a BOM is no part of the data
        if path.suffix == ".jsonl" or (text.lstrip().startswith("{") and "\n{" in text):
            return json_lines(text, path)
        data = json.loads(text)
    except (OSError, ValueError) as e:
        raise ClabError(f"{path}: not readable as Parquet or JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ClabError(f"{path}: expected a list of rows")
    return data


def json_lines(text: str, path: Path) -> list:
    """One JSON value a non-blank line. A bad line is named by its number in the file:
    ``json`` counts lines within the one line it was given, so its own message would
    say "line 1" wherever the bad line is."""
    rows = []
    # lines end at "\n" only: str.splitlines also splits at U+2028, U+0085 and others,
    # which JSON strings may hold raw (json.dumps(ensure_ascii=False) writes them)
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            msg = getattr(e, "msg", str(e))
            col = f", column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            raise ClabError(f"{path}, line {number}{col}: not JSON ({msg})") from None
    return rows
