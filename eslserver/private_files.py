"""Files only the server's (or gateway's) own user may read: label keys live in them.

The database holds label keys (sealed) and token hashes, the secret key file the key that
unseals them, the gateway's spool the job envelopes. Each is created 0600 and its directory
0700, whatever the umask; the commands that run for long (``esl serve``, ``esl demo``,
``esl gateway``, ``esl simulate``) also set the umask to 077 at start (`restrict_umask`), so
that every other file they write (snapshots, the simulated labels' flash, broker files) is
private too. A file an older release created 0644 is tightened once, with one info line.

Nothing here imports beyond the standard library: the gateway uses it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import Final

__all__ = ["DIR_MODE", "FILE_MODE", "create_private", "private_dir", "restrict_umask", "tighten", "write_private"]

log = logging.getLogger(__name__)

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700
UMASK: Final = 0o077


def restrict_umask() -> int:
    """Files and directories this process creates from now on are its user's only (umask
    077); returns the previous umask."""
    return os.umask(UMASK)


def private_dir(path: Path) -> Path:
    """`path` as a directory, created 0700 (with its missing parents) when it is not there; an
    existing directory is left as it is (it may be the operator's, e.g. the working directory)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def create_private(path: Path) -> bool:
    """Create `path` as an empty 0600 file (and its directory, `private_dir`) unless it
    exists; True when it was created. Created with that mode from the start, never widened
    first; an existing file is left as it is (`tighten` it)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def tighten(path: Path, *, also: tuple[str, ...] = ()) -> bool:
    """Take group and other permissions off `path` (and off ``path + suffix`` for each of
    `also` that exists: SQLite's ``-wal`` and ``-shm``), saying so in one info line; True if
    anything changed. A file that is not ours to change is left as it is, with a warning."""
    changed: list[str] = []
    was = 0
    for name in (str(path), *(str(path) + suffix for suffix in also)):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            os.chmod(name, mode & ~0o077)
        except OSError as exc:
            log.warning("%s is readable by other users (mode %04o) and cannot be tightened: %s",
                        name, mode, exc.strerror or exc)
            continue
        changed.append(name)
        was |= mode
    if changed:
        log.info("tightened %s from mode %04o to %04o: it holds keys, only this user may read it",
                 ", ".join(changed), was, was & ~0o077)
    return bool(changed)


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) as a 0600 file, atomically: a reader (a broker
    reloading its password file) sees the old file or the new one, never half of it."""
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)  # an older leftover of the same name kept its mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
