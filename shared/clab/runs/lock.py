"""One writer per run: a lock held for the whole life of a trainer or evaluator.

Two processes writing the same run interleave metrics rows and overwrite
each other's checkpoints without any error. The lock is an ``flock`` on a
file in the run folder: the kernel drops it when its holder dies (even by
``kill -9``), so a lock left by a dead process is simply taken over, and
nobody has to delete a stale file by hand. The file also says who holds it
(host, pid, command), so the second process can name the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from clab.errors import ClabError

LOCK_FILE = ".lock"


class RunLock:
    """``with RunLock(run_dir, "trainer"):`` or ``lock.acquire()`` / ``lock.release()``."""

    def __init__(self, folder: str | Path, what: str, name: str = LOCK_FILE):
        self.path = Path(folder) / name
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ClabError(
                f"{self.path}: cannot create the run's lock file: {e.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClabError(
                f"{self.path.parent}: another {self.holder_text()} is using this run; "
                "wait for it to finish or stop it (a lock of a dead process is taken over "
                "automatically)"
            ) from None
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "what": self.what,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv)[:500],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def holder_text(self) -> str:
        """Who holds the lock, as the holder wrote it: what, host and pid."""
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            info = {}
        if not info:
            return "process"
        return (
            f"{info.get('what', 'process')} (host {info.get('host', '?')}, "
            f"pid {info.get('pid', '?')}, since {info.get('since', '?')})"
        )

    def release(self) -> None:
        if self._fd is None:
            return
        # the file stays: removing it would let a third process lock a new inode
        # while a second one still waits on the old
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
