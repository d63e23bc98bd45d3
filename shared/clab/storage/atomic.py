"""Atomic writes into the volumes.

Services only talk through files, so a reader (another service, a person, a
crashed-and-restarted run) must never see half a file. Every write goes to a
temporary sibling and is renamed into place; ``os.replace`` is atomic on POSIX
within one file system, and a sibling is always on the same one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from clab.errors import ClabError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: os.umask can only be read by setting it

# Staging names carry their writer: ".<name>.<pid>-<start>.<random>.<partial|tmp>",
# where <start> is the process's start time (Linux clock ticks since boot, 0 where
# unknown), so that a pid reused by another process (pid 1 of every container)
# is not mistaken for the dead writer.
_STAGING_RE = re.compile(r"^\..+\.(\d+)-(\d+)\.[^.]+\.(partial|tmp)$")


def _start_time(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name may hold spaces


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid)}"


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return start == 0 or _start_time(pid) in (0, start)


def clean_stale_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging leftovers of dead writers directly inside ``folder``.

    A writer killed with SIGKILL cannot clean up, so its ``.partial`` folders
    (from :func:`atomic_dir`) and ``.tmp`` files (from :func:`atomic_path`) stay
    beside their target. Each name records its writer's pid and start time; an
    entry is removed only when that process no longer runs (as seen from this
    pid namespace), so a live writer's staging is never touched. Entries
    without that record (made by older clab versions) are left alone. Call it
    at the start of a run, before writing. Returns what was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        m = _STAGING_RE.match(entry.name)
        if m is None or _alive(int(m[1]), int(m[2])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def check_writable(path: str | os.PathLike[str], field: str) -> None:
    """Fail with one line naming ``field`` and the folder if ``path`` cannot be created.

    Checked before any work, so an unwritable output ends the run at once
    instead of after hours of generation, with a traceback naming nothing.
    """
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ClabError(f"{field}: cannot write {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ClabError(f"{field}: cannot write {path}: the folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide it from other services
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike[str], keys: tuple[str, ...] = ()) -> dict:
    """A JSON object clab wrote (run.json, summary.json, ...). One that is not JSON, not
    an object, or lacks one of ``keys`` (edited by hand, from another program) is a
    ClabError naming the file and what is wrong, not a traceback later on."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClabError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(obj, dict):
        raise ClabError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ClabError(f"{path}: no {', '.join(repr(k) for k in missing)} (not clab's file?)")
    return obj


def read_parquet_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A Parquet file's rows; one that is not Parquet is a ClabError naming it."""
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowException) as e:
        raise ClabError(
            f"{path}: not a readable Parquet file ({' '.join(str(e).split())})"
        ) from None


def write_parquet(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write a Parquet file atomically, with settings that make it reproducible.

    No pandas metadata and a fixed compression, so the same table gives the
    same bytes: data sets are compared by sha256 in their manifests.
    """
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", store_schema=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a whole folder in a staging sibling, then swap it in.

    A data set is several files that belong together (four groups, two splits,
    a manifest); swapping the folder means a reader sees the old set or the
    new one, never a mix, and a run that dies half-way leaves the old set as
    it was. The two renames of the swap leave a window of microseconds in
    which the folder is absent, never one in which it is partial.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".partial", dir=path.parent)
    )
    os.chmod(staging, 0o777 & ~_UMASK)
    try:
        yield staging
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(staging, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
