"""One server per SQLite data directory: an exclusive lock on ``{data_dir}/server.lock``.

SQLite serves one server process: two would both render, both send jobs and both spend label
counters, and nothing in the file could keep them apart. A second ``esl serve`` (or
``esl demo``) on the same directory therefore stops at once with one line naming the process
that holds it. Short commands (``esl tokens create``, ``esl identities add``…) do not take the
lock: they open the database beside the running server, as SQLite allows. Several servers on
one database is what PostgreSQL is for.

The lock is an ``flock`` held by the open file: the kernel drops it when the process ends,
however it ends (kill -9 included), so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from eslserver.private_files import create_private
from eslserver.startup import StartupError

__all__ = ["InstanceLock", "LOCK_NAME"]

LOCK_NAME = "server.lock"


class InstanceLock:
    """Held from `acquire` to `release` (or the end of the process)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `StartupError` naming the process that has it."""
        create_private(self.path)
        fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "another process"
            os.close(fd)
            raise StartupError("data_dir", f"another eslserver is already serving the data directory "
                                           f"{self.path.parent} (pid {holder}); stop it first, or give this one "
                                           "its own --data (several servers on one database need PostgreSQL: "
                                           "--database postgresql://…)") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the next server in; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file drops the flock
